//! Prometheus answers as a server (or anything at a tenant's address) sends them: any bytes are
//! read into a result or an error, within the caps, without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_analysis::prometheus::parse_answer(
        "http://prometheus.monitoring.svc:9090",
        "200 OK",
        "application/json",
        data,
    );
});
