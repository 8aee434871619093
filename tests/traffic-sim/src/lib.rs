//! The pure logic of `sluice-traffic-sim`, a stand-in for a real service in end-to-end tests.
//!
//! Pods on kwok's fake nodes serve nothing, so the simulator invents their traffic: it groups a
//! namespace's Ready pods into versions (`app` label × pod-template hash, Sluice's or else Argo
//! Rollouts'), splits each app's requests between its versions as its HTTPRoute (through the
//! Services it names, each reaching the Ready pods its whole selector matches) or, without one, its
//! pod counts would, copies them to the versions the route mirrors to, and counts requests, errors
//! and latencies per version as a real service's metrics would. Requests a route sends to a Service
//! that selects no Ready pod fail: a 503 under `pod_template_hash="none"`.
//!
//! Everything here is deterministic: fractional accumulators instead of dice, so counts are exact.

pub mod load;
pub mod metrics;
pub mod split;
pub mod version;

use std::collections::BTreeMap;
use std::time::Duration;

pub use load::{TickRequests, VersionLoad};
pub use metrics::{Metrics, UNSERVED_CODE, UNSERVED_HASH};
pub use split::{
    Backend, Mirror, ServiceTarget, TrafficSplit, mirror_shares, split_traffic, traffic_shares,
};
pub use version::{Behaviour, Version, VersionKey, pod_template_hash, versions};

/// Turns traffic shares into requests, tick by tick, and records them.
pub struct Simulator {
    namespace: String,
    requests_per_second: f64,
    loads: BTreeMap<VersionKey, VersionLoad>,
    /// The mirrored copies each version serves, counted apart from its users' requests.
    mirror_loads: BTreeMap<VersionKey, VersionLoad>,
    /// Per app, the carried-over fraction of a request no pod served.
    unserved_pending: BTreeMap<String, f64>,
    metrics: Metrics,
}

impl Simulator {
    /// A simulator for `namespace` in which every app receives `requests_per_second` in total.
    pub fn new(namespace: &str, requests_per_second: f64) -> Self {
        Self {
            namespace: namespace.to_owned(),
            requests_per_second,
            loads: BTreeMap::new(),
            mirror_loads: BTreeMap::new(),
            unserved_pending: BTreeMap::new(),
            metrics: Metrics::new(),
        }
    }

    /// The metrics recorded so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves `elapsed` worth of requests to `versions`, split by `shares` (per app, summing to 1),
    /// and mirrored copies by `mirrored` (per version, a fraction of its app's requests): a mirrored
    /// version serves (and counts) its copies, but no user gets its answer.
    pub fn step(
        &mut self,
        versions: &BTreeMap<VersionKey, Version>,
        shares: &BTreeMap<VersionKey, f64>,
        mirrored: &BTreeMap<VersionKey, f64>,
        elapsed: Duration,
    ) {
        for (key, version) in versions {
            // Every version's series exist from the start, so an error ratio reads 0, not "no data".
            self.metrics.declare(&self.namespace, key);
            for (fraction, loads, mirror) in [
                (shares.get(key), &mut self.loads, false),
                (mirrored.get(key), &mut self.mirror_loads, true),
            ] {
                let fraction = fraction.copied().unwrap_or(0.0);
                if fraction <= 0.0 {
                    continue;
                }
                let requests = self.requests_per_second * fraction * elapsed.as_secs_f64();
                let served = loads
                    .entry(key.clone())
                    .or_default()
                    .advance(requests, &version.behaviour);
                self.metrics.record(&self.namespace, key, &served, mirror);
            }
        }
    }

    /// Fails `elapsed` worth of the requests that `unserved` (per app, a fraction of its requests,
    /// as [`split_traffic`] gives it) sends to Services selecting no Ready pod: counted as 503s.
    /// Every app named has its series, at zero if nothing failed.
    pub fn fail_unserved(&mut self, unserved: &BTreeMap<String, f64>, elapsed: Duration) {
        for (app, fraction) in unserved {
            self.metrics.declare_unserved(&self.namespace, app);
            if *fraction <= 0.0 {
                continue;
            }
            let pending = self.unserved_pending.entry(app.clone()).or_insert(0.0);
            *pending += self.requests_per_second * fraction * elapsed.as_secs_f64();
            let count = (*pending + load::EPSILON).floor();
            *pending -= count;
            self.metrics
                .record_unserved(&self.namespace, app, count as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(error_rate: f64) -> Version {
        Version::new(
            2,
            Behaviour {
                error_rate,
                ..Behaviour::default()
            },
            BTreeMap::new(),
        )
    }

    #[test]
    fn counts_are_exact_and_every_version_has_both_codes() -> anyhow::Result<()> {
        let aaa = VersionKey::new("web", "aaa");
        let bbb = VersionKey::new("web", "bbb");
        let versions = BTreeMap::from([(aaa.clone(), version(0.0)), (bbb.clone(), version(0.05))]);
        let shares = traffic_shares(&versions, &BTreeMap::new(), &[]);
        let mut sim = Simulator::new("ns", 200.0);
        for _ in 0..10 {
            sim.step(
                &versions,
                &shares,
                &BTreeMap::new(),
                Duration::from_millis(100),
            );
        }
        let text = sim.metrics().encode()?;
        for line in [
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="200"} 100"#,
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="500"} 0"#,
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="bbb",code="200"} 95"#,
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="bbb",code="500"} 5"#,
            r#"sim_http_request_duration_seconds_count{namespace="ns",app="web",pod_template_hash="bbb"} 100"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        Ok(())
    }

    #[test]
    fn counters_keep_counting_after_a_version_goes_away() -> anyhow::Result<()> {
        let aaa = VersionKey::new("web", "aaa");
        let versions = BTreeMap::from([(aaa.clone(), version(0.0))]);
        let shares = traffic_shares(&versions, &BTreeMap::new(), &[]);
        let mut sim = Simulator::new("ns", 10.0);
        sim.step(&versions, &shares, &BTreeMap::new(), Duration::from_secs(1));
        sim.step(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Duration::from_secs(1),
        );
        sim.step(&versions, &shares, &BTreeMap::new(), Duration::from_secs(1));
        let text = sim.metrics().encode()?;
        let line = r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="200"} 20"#;
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        Ok(())
    }

    #[test]
    fn requests_to_a_service_selecting_nothing_are_503s() -> anyhow::Result<()> {
        let aaa = VersionKey::new("web", "aaa");
        let versions = BTreeMap::from([(aaa.clone(), version(0.0))]);
        let mut sim = Simulator::new("ns", 100.0);
        // A quarter of the requests go to a Service selecting no Ready pod.
        let shares = BTreeMap::from([(aaa.clone(), 0.75)]);
        let unserved = BTreeMap::from([("web".to_owned(), 0.25), ("api".to_owned(), 0.0)]);
        for _ in 0..10 {
            sim.step(
                &versions,
                &shares,
                &BTreeMap::new(),
                Duration::from_millis(100),
            );
            sim.fail_unserved(&unserved, Duration::from_millis(100));
        }
        let text = sim.metrics().encode()?;
        for line in [
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="200"} 75"#,
            r#"sim_http_requests_total{namespace="ns",app="web",pod_template_hash="none",code="503"} 25"#,
            r#"sim_http_requests_total{namespace="ns",app="api",pod_template_hash="none",code="503"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        Ok(())
    }
}
