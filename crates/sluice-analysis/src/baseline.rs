//! The baseline judge as a metric provider: every judged metric is queried for the canary's and the
//! stable version's pods over the same window (`{{hash}}` selects the version, `{{window}}` the
//! window), and sluice-engine's judge compares them and scores the canary from 0 to 100.
//!
//! With no stable version to compare against (a first release, or stable gone) the measurement is
//! what `onMissingBaseline` says: Inconclusive by default, so a person looks, or Successful.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::analysis::{
    AnalysisPhase, BaselineJudge, ChangeDirection, JudgedMetric, Measurement, MissingBaselinePolicy,
};
use sluice_api::common::PrometheusConnection;
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;
use sluice_engine::judge::{
    self, EventCounts, Histogram, MetricData, MetricPolicy, ScoreThresholds, Verdict,
};

use crate::prometheus::{self, Connection, QueryError};
use crate::provider::{Provider, RunContext, error_measurement};
use crate::substitute;

/// The window queried when the judge does not say.
pub const DEFAULT_WINDOW: &str = "5m";

/// Why a judged metric could not be fetched: the measurement is an Error.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Placing(#[from] crate::SubstituteError),
    #[error("metric {0:?} sets neither errorRatio nor latency")]
    Empty(String),
}

/// A metric's baseline judge.
#[derive(Debug)]
pub struct BaselineProvider<'a> {
    spec: &'a BaselineJudge,
}

impl<'a> BaselineProvider<'a> {
    pub fn new(spec: &'a BaselineJudge) -> Self {
        Self { spec }
    }
}

impl Provider for BaselineProvider<'_> {
    fn name(&self) -> &'static str {
        "baseline"
    }

    fn connection(&self) -> Option<&PrometheusConnection> {
        Some(&self.spec.prometheus)
    }

    /// Needs the canary's hash; without a stable hash the judgement is what `onMissingBaseline` says.
    async fn measure(
        &self,
        connection: &Connection,
        args: &BTreeMap<String, String>,
        run: &RunContext<'_>,
        now: impl Fn() -> Timestamp + Send + Sync,
    ) -> Measurement {
        let Some(canary_hash) = run.canary_hash else {
            return error_measurement(
                format!(
                    "the baseline judge needs the canary's hash in the run's {POD_TEMPLATE_HASH_LABEL} label; runs created by a Rollout have it"
                ),
                now,
            );
        };
        measure(
            connection,
            self.spec,
            args,
            canary_hash,
            run.stable_hash,
            now,
        )
        .await
    }
}

/// Takes one measurement with the baseline judge. `args` holds `args.NAME` values; the hashes select
/// the versions.
async fn measure(
    connection: &Connection,
    spec: &BaselineJudge,
    args: &BTreeMap<String, String>,
    canary_hash: &str,
    stable_hash: Option<&str>,
    now: impl Fn() -> Timestamp,
) -> Measurement {
    let started = now();
    let window = spec
        .window
        .clone()
        .unwrap_or_else(|| DEFAULT_WINDOW.to_owned());
    let mut metadata = BTreeMap::new();
    metadata.insert("canaryHash".to_owned(), canary_hash.to_owned());
    let finish = |phase, value: Option<String>, message: String, metadata| Measurement {
        phase,
        value,
        started_at: Some(Time(started)),
        finished_at: Some(Time(now())),
        message: Some(message),
        metadata,
    };
    let Some(stable_hash) = stable_hash.filter(|s| *s != canary_hash) else {
        let (phase, what) = match spec.on_missing_baseline {
            Some(MissingBaselinePolicy::Successful) => (
                AnalysisPhase::Successful,
                "passes (onMissingBaseline: Successful)",
            ),
            _ => (
                AnalysisPhase::Inconclusive,
                "is inconclusive (onMissingBaseline: Inconclusive): a person decides",
            ),
        };
        return finish(
            phase,
            None,
            format!("no stable version to compare the canary with, so the judgement {what}"),
            metadata,
        );
    };
    metadata.insert("baselineHash".to_owned(), stable_hash.to_owned());

    let policy_base = MetricPolicy {
        confidence_level: spec
            .confidence_level
            .unwrap_or(judge::DEFAULT_CONFIDENCE_LEVEL),
        min_sample_size: spec
            .min_sample_size
            .map_or(judge::DEFAULT_MIN_SAMPLE_SIZE, |n| n as f64),
        ..MetricPolicy::default()
    };
    let mut metrics = Vec::new();
    for judged in &spec.metrics {
        let data = match fetch(connection, judged, args, &window, canary_hash, stable_hash).await {
            Ok(data) => data,
            Err(err) => {
                return finish(
                    AnalysisPhase::Error,
                    None,
                    format!("judged metric {:?}: {err}", judged.name),
                    metadata,
                );
            }
        };
        metrics.push(judge::Metric {
            name: judged.name.clone(),
            data,
            policy: MetricPolicy {
                direction: judged.direction.unwrap_or(ChangeDirection::Increase),
                tolerance: judged.tolerance.unwrap_or(judge::DEFAULT_TOLERANCE),
                ..policy_base
            },
            weight: f64::from(judged.weight.unwrap_or(1)),
            critical: judged.critical,
        });
    }
    let thresholds = ScoreThresholds {
        pass_score: spec.pass_score.unwrap_or(judge::DEFAULT_PASS_SCORE),
        marginal_score: spec.marginal_score.unwrap_or(judge::DEFAULT_MARGINAL_SCORE),
    };
    let judgement = judge::judge(&metrics, &thresholds);
    for m in &judgement.metrics {
        metadata.insert(
            format!("metric.{}", m.name),
            m.classification.message.clone(),
        );
    }
    let phase = match judgement.verdict {
        Verdict::Successful => AnalysisPhase::Successful,
        Verdict::Inconclusive => AnalysisPhase::Inconclusive,
        Verdict::Failed => AnalysisPhase::Failed,
    };
    finish(
        phase,
        Some(format!("{:.1}", judgement.score)),
        judgement.summary,
        metadata,
    )
}

async fn fetch(
    connection: &Connection,
    judged: &JudgedMetric,
    args: &BTreeMap<String, String>,
    window: &str,
    canary: &str,
    stable: &str,
) -> Result<MetricData, FetchError> {
    let values_for = |hash: &str| {
        let mut values = args.clone();
        values.insert("hash".to_owned(), hash.to_owned());
        values.insert("window".to_owned(), window.to_owned());
        values
    };
    if let Some(ratio) = &judged.error_ratio {
        let mut counts = Vec::new();
        for hash in [canary, stable] {
            let values = values_for(hash);
            let errors = sum(connection, &substitute(&ratio.error_query, &values)?).await?;
            let total = sum(connection, &substitute(&ratio.total_query, &values)?).await?;
            counts.push(EventCounts::new(errors, total));
        }
        return Ok(MetricData::ErrorRatio {
            canary: counts[0],
            baseline: counts[1],
        });
    }
    if let Some(latency) = &judged.latency {
        let mut histograms = Vec::new();
        for hash in [canary, stable] {
            let query = substitute(&latency.bucket_query, &values_for(hash))?;
            let series = prometheus::query_series(connection, &query).await?;
            let buckets: Vec<(f64, f64)> = series
                .iter()
                .filter_map(|(labels, count)| {
                    let le = labels.get("le")?;
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((bound, *count))
                })
                .collect();
            histograms.push(Histogram::from_cumulative(&buckets));
        }
        let baseline = histograms
            .pop()
            .unwrap_or_else(|| Histogram::from_cumulative(&[]));
        let canary = histograms
            .pop()
            .unwrap_or_else(|| Histogram::from_cumulative(&[]));
        return Ok(MetricData::Latency { canary, baseline });
    }
    Err(FetchError::Empty(judged.name.clone()))
}

/// The sum of a query's values; no series is 0 (e.g. `sum(increase(errors[5m]))` with no errors yet).
async fn sum(connection: &Connection, query: &str) -> Result<f64, QueryError> {
    let series = prometheus::query_series(connection, query).await?;
    Ok(series
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(policy: Option<MissingBaselinePolicy>) -> BaselineJudge {
        let mut spec: BaselineJudge = serde_json::from_value(serde_json::json!({
            "prometheus": {"address": "http://127.0.0.1:1"},
            "metrics": [{"name": "errors", "errorRatio": {"errorQuery": "e", "totalQuery": "t"}}]
        }))
        .expect("judge");
        spec.on_missing_baseline = policy;
        spec
    }

    /// A first release has no stable version: no query is sent (the address is unreachable), and the
    /// verdict is what onMissingBaseline says, Inconclusive unless set otherwise.
    #[tokio::test]
    async fn a_first_release_without_a_baseline_follows_on_missing_baseline() {
        let connection = Connection::plain("http://127.0.0.1:1");
        let args = BTreeMap::new();
        for (policy, want) in [
            (None, AnalysisPhase::Inconclusive),
            (
                Some(MissingBaselinePolicy::Inconclusive),
                AnalysisPhase::Inconclusive,
            ),
            (
                Some(MissingBaselinePolicy::Successful),
                AnalysisPhase::Successful,
            ),
        ] {
            for stable in [None, Some("abc")] {
                let m = measure(
                    &connection,
                    &judge(policy),
                    &args,
                    "abc",
                    stable,
                    Timestamp::now,
                )
                .await;
                assert_eq!(m.phase, want, "{policy:?} {stable:?}: {:?}", m.message);
                assert!(
                    m.message
                        .as_deref()
                        .is_some_and(|t| t.contains("no stable version")),
                    "{:?}",
                    m.message
                );
            }
        }
    }

    /// Through the provider: the hashes come from the run, and without the canary's there is nothing
    /// to select its series with (no query is sent).
    #[tokio::test]
    async fn the_provider_needs_the_canary_hash_and_says_where_it_comes_from() {
        let connection = Connection::plain("http://127.0.0.1:1");
        let spec = judge(None);
        let provider = BaselineProvider::new(&spec);
        let args = BTreeMap::new();
        let m = provider
            .measure(&connection, &args, &RunContext::default(), Timestamp::now)
            .await;
        assert_eq!(m.phase, AnalysisPhase::Error);
        assert_eq!(
            m.message.as_deref(),
            Some(
                "the baseline judge needs the canary's hash in the run's sluice.dev/pod-template-hash label; runs created by a Rollout have it"
            )
        );
        let run = RunContext {
            canary_hash: Some("abc"),
            stable_hash: None,
        };
        let m = provider
            .measure(&connection, &args, &run, Timestamp::now)
            .await;
        assert_eq!(m.phase, AnalysisPhase::Inconclusive, "{:?}", m.message);
        assert_eq!(
            m.metadata.get("canaryHash").map(String::as_str),
            Some("abc")
        );
    }
}
