//! What every metric provider offers (compare Argo Rollouts' `metric/provider.go`), and the one place
//! that maps a metric's `provider` to its implementation.
//!
//! Adding a provider: a module here implementing [`Provider`], a field in the API's `MetricProvider`,
//! and a variant of [`MetricSource`]. The compiler points at every other place: [`MetricSource::of`]
//! destructures `MetricProvider` in full and matches all its fields, and [`MetricSource`]'s own
//! `Provider` implementation matches all its variants.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::analysis::{AnalysisPhase, Measurement, Metric, MetricProvider};
use sluice_api::common::PrometheusConnection;

use crate::baseline::BaselineProvider;
use crate::job::JobProvider;
use crate::prometheus::{Connection, PrometheusProvider};
use crate::web::WebProvider;

/// What a measurement knows of the run it belongs to, besides its metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunContext<'a> {
    /// The canary's pod-template hash: the run's `sluice.dev/pod-template-hash` label.
    pub canary_hash: Option<&'a str>,
    /// The stable version's pod-template hash, if there is a stable version: the run's
    /// `sluice.dev/stable-pod-template-hash` annotation.
    pub stable_hash: Option<&'a str>,
}

/// A source of measurements.
pub trait Provider {
    /// The provider's name, as in the API (`prometheus`, `baseline`), for messages and logs.
    fn name(&self) -> &'static str;

    /// The Prometheus-compatible server the provider queries, if it queries one; the caller resolves
    /// its Secrets into the [`Connection`] passed to [`measure`](Self::measure) (without one, that
    /// connection carries only the address policy).
    fn connection(&self) -> Option<&PrometheusConnection>;

    /// What makes every measurement fail whatever the arguments (a condition that does not compile or
    /// can never be evaluated), found when a template is applied. Nothing, by default.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// What would make every measurement of a run fail, found before the first one: what
    /// [`validate`](Self::validate) finds, or a placeholder with no argument. `args` holds
    /// `args.NAME` values.
    fn check(&self, args: &BTreeMap<String, String>) -> Result<(), String> {
        let _ = args;
        self.validate()
    }

    /// What makes every measurement fail that only evaluating the conditions shows (one that gives
    /// neither true nor false, one too costly to evaluate), found by the evaluator once per text.
    /// `Err`: the evaluator could not run, so nothing is known. Nothing, by default.
    fn check_conditions(&self) -> impl Future<Output = Result<Result<(), String>, String>> + Send {
        async { Ok(Ok(())) }
    }

    /// Takes one measurement, never failing silently: what went wrong is an Error measurement saying
    /// why. `args` holds `args.NAME` values; `now` is the clock the measurement is timed with.
    fn measure(
        &self,
        connection: &Connection,
        args: &BTreeMap<String, String>,
        run: &RunContext<'_>,
        now: impl Fn() -> Timestamp + Send + Sync,
    ) -> impl Future<Output = Measurement> + Send;
}

/// A metric's provider: one variant per provider module.
#[derive(Debug)]
pub enum MetricSource<'a> {
    /// A PromQL query judged by the metric's conditions.
    Prometheus(PrometheusProvider<'a>),
    /// The statistical baseline judge.
    Baseline(BaselineProvider<'a>),
    /// An HTTP request whose JSON answer the metric's conditions judge.
    Web(WebProvider<'a>),
    /// A Job per measurement, which the controller starts and reads.
    Job(JobProvider<'a>),
}

/// A metric that names no provider (the CRD's validation should make this impossible): each of its
/// measurements is an Error with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metric {metric:?} has no usable provider")]
pub struct NoProvider {
    pub metric: String,
}

impl<'a> MetricSource<'a> {
    /// The provider of `metric`: the only place that reads `metric.provider`. Should more than one be
    /// set (validation forbids it), the first in the API's order wins.
    pub fn of(metric: &'a Metric) -> Result<Self, NoProvider> {
        // In full, with no `..`: a provider added to the API is a compile error here until it is mapped.
        let MetricProvider {
            prometheus,
            baseline,
            web,
            job,
        } = &metric.provider;
        match (prometheus, baseline, web, job) {
            (Some(spec), _, _, _) => Ok(Self::Prometheus(PrometheusProvider::new(spec, metric))),
            (None, Some(spec), _, _) => Ok(Self::Baseline(BaselineProvider::new(spec))),
            (None, None, Some(spec), _) => Ok(Self::Web(WebProvider::new(spec, metric))),
            (None, None, None, Some(spec)) => Ok(Self::Job(JobProvider::new(spec))),
            (None, None, None, None) => Err(NoProvider {
                metric: metric.name.clone(),
            }),
        }
    }
}

impl Provider for MetricSource<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Prometheus(p) => p.name(),
            Self::Baseline(p) => p.name(),
            Self::Web(p) => p.name(),
            Self::Job(p) => p.name(),
        }
    }

    fn connection(&self) -> Option<&PrometheusConnection> {
        match self {
            Self::Prometheus(p) => p.connection(),
            Self::Baseline(p) => p.connection(),
            Self::Web(p) => p.connection(),
            Self::Job(p) => p.connection(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Prometheus(p) => p.validate(),
            Self::Baseline(p) => p.validate(),
            Self::Web(p) => p.validate(),
            Self::Job(p) => p.validate(),
        }
    }

    fn check(&self, args: &BTreeMap<String, String>) -> Result<(), String> {
        match self {
            Self::Prometheus(p) => p.check(args),
            Self::Baseline(p) => p.check(args),
            Self::Web(p) => p.check(args),
            Self::Job(p) => p.check(args),
        }
    }

    async fn check_conditions(&self) -> Result<Result<(), String>, String> {
        match self {
            Self::Prometheus(p) => p.check_conditions().await,
            Self::Baseline(p) => p.check_conditions().await,
            Self::Web(p) => p.check_conditions().await,
            Self::Job(p) => p.check_conditions().await,
        }
    }

    async fn measure(
        &self,
        connection: &Connection,
        args: &BTreeMap<String, String>,
        run: &RunContext<'_>,
        now: impl Fn() -> Timestamp + Send + Sync,
    ) -> Measurement {
        match self {
            Self::Prometheus(p) => p.measure(connection, args, run, now).await,
            Self::Baseline(p) => p.measure(connection, args, run, now).await,
            Self::Web(p) => p.measure(connection, args, run, now).await,
            Self::Job(p) => p.measure(connection, args, run, now).await,
        }
    }
}

/// A measurement that could not be taken, with why.
pub fn error_measurement(message: String, now: impl Fn() -> Timestamp) -> Measurement {
    let at = Time(now());
    Measurement {
        phase: AnalysisPhase::Error,
        value: None,
        started_at: Some(at.clone()),
        finished_at: Some(at),
        message: Some(message),
        metadata: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(provider: serde_json::Value) -> Metric {
        serde_json::from_value(serde_json::json!({
            "name": "errors",
            "successCondition": "result[0] < 1",
            "provider": provider,
        }))
        .expect("metric")
    }

    fn prometheus() -> serde_json::Value {
        serde_json::json!({"address": "http://prometheus:9090", "query": "up"})
    }

    fn baseline() -> serde_json::Value {
        serde_json::json!({
            "prometheus": {"address": "http://judge:9090"},
            "metrics": [{"name": "errors", "errorRatio": {"errorQuery": "e", "totalQuery": "t"}}]
        })
    }

    #[test]
    fn each_api_provider_maps_to_its_provider_and_none_to_the_error() {
        let m = metric(serde_json::json!({"prometheus": prometheus()}));
        let source = MetricSource::of(&m).expect("prometheus");
        assert!(matches!(source, MetricSource::Prometheus(_)), "{source:?}");
        assert_eq!(source.name(), "prometheus");
        assert_eq!(
            source.connection().map(|c| c.address.as_str()),
            Some("http://prometheus:9090")
        );

        let m = metric(serde_json::json!({"baseline": baseline()}));
        let source = MetricSource::of(&m).expect("baseline");
        assert!(matches!(source, MetricSource::Baseline(_)), "{source:?}");
        assert_eq!(source.name(), "baseline");
        assert_eq!(
            source.connection().map(|c| c.address.as_str()),
            Some("http://judge:9090")
        );

        let m = metric(serde_json::json!({}));
        let missing = MetricSource::of(&m).expect_err("no provider");
        assert_eq!(
            missing.to_string(),
            "metric \"errors\" has no usable provider"
        );

        // Validation forbids both; should it be bypassed, the query is measured, as before.
        let m = metric(serde_json::json!({"prometheus": prometheus(), "baseline": baseline()}));
        assert!(matches!(
            MetricSource::of(&m),
            Ok(MetricSource::Prometheus(_))
        ));
    }

    #[test]
    fn an_error_measurement_says_why_and_when() {
        let at = Timestamp::from_second(1_700_000_000).expect("timestamp");
        let m = error_measurement("down".to_owned(), || at);
        assert_eq!(m.phase, AnalysisPhase::Error);
        assert_eq!(m.message.as_deref(), Some("down"));
        assert_eq!(m.started_at, Some(Time(at)));
        assert_eq!(m.finished_at, Some(Time(at)));
        assert_eq!(m.value, None);
    }
}
