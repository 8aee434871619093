//! The operator's own metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// Reconcile counts, failures and durations.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "rollout_reconciles",
            "Rollout reconciles",
            reconciles.clone(),
        );
        registry.register(
            "rollout_reconcile_failures",
            "Rollout reconciles that failed, by error",
            failures.clone(),
        );
        registry.register(
            "rollout_reconcile_duration_seconds",
            "Time one Rollout reconcile took",
            duration.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            registry,
        }
    }
}
