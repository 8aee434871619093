//! The simulated service's metrics, as a real one would export them.
//!
//! `sim_http_requests_total{namespace, app, pod_template_hash, code}` counts requests (mirrored
//! copies included, as a real service counts what it serves): code 200 or 500 from a version, and
//! code 503 under `pod_template_hash="none"` ([`UNSERVED_HASH`]) for those a route sent to a
//! Service that selected no Ready pod (as a gateway would count them; they have no latency),
//! `sim_http_mirrored_requests_total{namespace, app, pod_template_hash}` the mirrored copies among
//! them, and `sim_http_request_duration_seconds{namespace, app, pod_template_hash}` is their
//! latency histogram.
//! Series are never removed, so counters never reset while the process runs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::load::TickRequests;
use crate::version::VersionKey;

/// The latency histogram's buckets, in seconds (`+Inf` is implied).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
];

/// The `pod_template_hash` of requests no pod served (code 503): their Service selected none.
pub const UNSERVED_HASH: &str = "none";

/// The code of requests no pod served.
pub const UNSERVED_CODE: &str = "503";

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The simulated namespace.
    pub namespace: String,
    /// The pods' `app` label.
    pub app: String,
    /// The pods' pod-template hash, or [`UNSERVED_HASH`].
    pub pod_template_hash: String,
    /// The HTTP status code: "200" or "500", or [`UNSERVED_CODE`].
    pub code: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The simulated namespace.
    pub namespace: String,
    /// The pods' `app` label.
    pub app: String,
    /// The pods' pod-template hash.
    pub pod_template_hash: String,
}

type HistogramFamily = Family<VersionLabels, Histogram, fn() -> Histogram>;

/// The registry and the two metric families in it.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    mirrored: Family<VersionLabels, Counter>,
    durations: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let mirrored = Family::<VersionLabels, Counter>::default();
        let durations: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "sim_http_requests",
            "Simulated HTTP requests, by version and status code",
            requests.clone(),
        );
        registry.register(
            "sim_http_mirrored_requests",
            "Simulated mirrored copies of requests a version served (answers discarded)",
            mirrored.clone(),
        );
        registry.register(
            "sim_http_request_duration_seconds",
            "Latency of simulated HTTP requests, by version",
            durations.clone(),
        );
        Self {
            registry,
            requests,
            mirrored,
            durations,
        }
    }

    /// Creates a version's series at zero, if they do not exist yet.
    pub fn declare(&self, namespace: &str, version: &VersionKey) {
        for code in ["200", "500"] {
            let _ = self
                .requests
                .get_or_create(&request_labels(namespace, version, code));
        }
        let _ = self
            .mirrored
            .get_or_create(&version_labels(namespace, version));
        let _ = self
            .durations
            .get_or_create(&version_labels(namespace, version));
    }

    /// Counts what a version served in one tick (`mirrored`: copies of others' requests).
    pub fn record(
        &self,
        namespace: &str,
        version: &VersionKey,
        served: &TickRequests,
        mirrored: bool,
    ) {
        if mirrored {
            self.mirrored
                .get_or_create(&version_labels(namespace, version))
                .inc_by(served.ok + served.errors);
        }
        self.requests
            .get_or_create(&request_labels(namespace, version, "200"))
            .inc_by(served.ok);
        self.requests
            .get_or_create(&request_labels(namespace, version, "500"))
            .inc_by(served.errors);
        let histogram = self
            .durations
            .get_or_create(&version_labels(namespace, version));
        for latency in &served.latencies_seconds {
            histogram.observe(*latency);
        }
    }

    /// Creates an app's series of unserved requests at zero, if it does not exist yet.
    pub fn declare_unserved(&self, namespace: &str, app: &str) {
        let _ = self
            .requests
            .get_or_create(&unserved_labels(namespace, app));
    }

    /// Counts `count` of an app's requests that no pod served (answered 503).
    pub fn record_unserved(&self, namespace: &str, app: &str, count: u64) {
        self.requests
            .get_or_create(&unserved_labels(namespace, app))
            .inc_by(count);
    }

    /// The metrics in OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn request_labels(namespace: &str, version: &VersionKey, code: &str) -> RequestLabels {
    RequestLabels {
        namespace: namespace.to_owned(),
        app: version.app.clone(),
        pod_template_hash: version.hash.clone(),
        code: code.to_owned(),
    }
}

fn unserved_labels(namespace: &str, app: &str) -> RequestLabels {
    RequestLabels {
        namespace: namespace.to_owned(),
        app: app.to_owned(),
        pod_template_hash: UNSERVED_HASH.to_owned(),
        code: UNSERVED_CODE.to_owned(),
    }
}

fn version_labels(namespace: &str, version: &VersionKey) -> VersionLabels {
    VersionLabels {
        namespace: namespace.to_owned(),
        app: version.app.clone(),
        pod_template_hash: version.hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_has_the_documented_buckets() -> anyhow::Result<()> {
        let metrics = Metrics::new();
        let version = VersionKey::new("web", "aaa");
        metrics.record(
            "ns",
            &version,
            &TickRequests {
                ok: 2,
                errors: 0,
                latencies_seconds: vec![0.04, 0.12],
            },
            false,
        );
        let text = metrics.encode()?;
        let labels = r#"namespace="ns",app="web",pod_template_hash="aaa""#;
        for line in [
            format!(r#"sim_http_request_duration_seconds_bucket{{le="0.025",{labels}}} 0"#),
            format!(r#"sim_http_request_duration_seconds_bucket{{le="0.05",{labels}}} 1"#),
            format!(r#"sim_http_request_duration_seconds_bucket{{le="0.15",{labels}}} 2"#),
            format!(r#"sim_http_request_duration_seconds_bucket{{le="+Inf",{labels}}} 2"#),
            format!(r#"sim_http_requests_total{{{labels},code="200"}} 2"#),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        Ok(())
    }
}
