//! Durations as a tenant writes them (`interval`, `initialDelay`, pauses): parsed without panic or
//! overflow, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sluice_engine::duration::parse(&text);
});
