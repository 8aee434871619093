//! The operator's own metrics, served on `/metrics`: reconcile counts, failures and durations, and
//! what users watch releases by (phase per Rollout, aborts, analysis measurements).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_api::analysis::AnalysisPhase;
use sluice_api::rollout::{RolloutPhase, RolloutStatus};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tracing::{Span, span};
use tracing_subscriber::Registry as SpanRegistry;
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// A Rollout, by namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub rollout: String,
}

/// A Rollout and one phase it may be in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub rollout: String,
    pub phase: Phase,
}

/// A Rollout's phase, as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Phase {
    Healthy,
    Progressing,
    Paused,
    Degraded,
}

impl From<RolloutPhase> for Phase {
    fn from(phase: RolloutPhase) -> Self {
        match phase {
            RolloutPhase::Healthy => Self::Healthy,
            RolloutPhase::Progressing => Self::Progressing,
            RolloutPhase::Paused => Self::Paused,
            RolloutPhase::Degraded => Self::Degraded,
        }
    }
}

/// One measurement's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasurementLabels {
    pub namespace: String,
    pub metric: String,
    pub phase: String,
}

/// An ErrorBudgetGate, by namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub namespace: String,
    pub gate: String,
}

/// A burn rate of an ErrorBudgetGate, by window.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BurnRateLabels {
    pub namespace: String,
    pub gate: String,
    pub window: String,
}

/// One kind of request to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    /// The resource's plural (`rollouts`, `replicasets`, ...), with `/status` for the subresource.
    pub resource: String,
}

/// A Rollout's releases that ended one way.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub namespace: String,
    pub rollout: String,
    /// Completed, Aborted or Superseded.
    pub outcome: String,
    /// What aborted it (Analysis, User, ProgressDeadline, InvalidSpec, ErrorBudget); empty otherwise.
    pub cause: String,
}

/// A Rollout's circuit breaker in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitLabels {
    pub namespace: String,
    pub rollout: String,
    /// Closed, Open or HalfOpen.
    pub state: String,
}

/// Seconds from minutes to a day: how long releases take, and how long stable takes to come back.
const RELEASE_SECONDS: [f64; 10] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

fn release_seconds() -> Histogram {
    Histogram::new(RELEASE_SECONDS)
}

/// Everything the operator counts.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// 1 for the phase each Rollout is in, 0 for the others.
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    /// Releases aborted, by Rollout.
    pub aborts: Family<RolloutLabels, Counter>,
    /// Analysis measurements taken, by metric and outcome.
    pub measurements: Family<MeasurementLabels, Counter>,
    /// Error budget left per gate, in percent (negative when overspent).
    pub gate_budget_remaining: Family<GateLabels, Gauge<f64, AtomicU64>>,
    /// 1 while a gate holds releases.
    pub gate_held: Family<GateLabels, Gauge>,
    /// Burn rate per gate and window (1 spends the budget exactly over the SLO window).
    pub gate_burn_rate: Family<BurnRateLabels, Gauge<f64, AtomicU64>>,
    /// Gate evaluations.
    pub gate_evaluations: Family<GateLabels, Counter>,
    /// Prometheus queries issued by gate evaluations: a fixed number per evaluation.
    pub gate_queries: Family<GateLabels, Counter>,
    /// Requests sent to the API server, by verb and resource (watches included, as one request each
    /// time one is opened).
    pub api_requests: Family<RequestLabels, Counter>,
    /// Requests sent by each Rollout reconcile (a settled Rollout's: none).
    pub reconcile_requests: Histogram,
    /// 1 for the state each Rollout's circuit breaker is in, 0 for the others.
    pub circuit_state: Family<CircuitLabels, Gauge>,
    /// Circuit breaker transitions, by the state entered.
    pub circuit_transitions: Family<CircuitLabels, Counter>,
    /// New releases a circuit breaker held (counted when the hold starts).
    pub circuit_holds: Family<RolloutLabels, Counter>,
    /// Releases started, by Rollout (deployment frequency).
    pub releases_started: Family<RolloutLabels, Counter>,
    /// Releases ended, by Rollout and outcome (change failure rate: the aborted share).
    pub releases_finished: Family<OutcomeLabels, Counter>,
    /// Seconds from a release's start to its completion, by Rollout (lead time through the pipeline).
    pub release_duration: Family<RolloutLabels, Histogram, fn() -> Histogram>,
    /// Seconds from an abort to stable serving everything again, by Rollout (time to restore).
    pub restore_duration: Family<RolloutLabels, Histogram, fn() -> Histogram>,
    /// The reconciles under way, for [`Self::reconcile_requests`].
    pub open_reconciles: OpenReconciles,
    /// Rollout reconciles running now (at most `--concurrency`).
    pub reconciles_running: Gauge,
    /// The share of traffic on each canary Rollout's new version, in percent.
    pub canary_weight: Family<RolloutLabels, Gauge>,
    /// The canary steps each Rollout has completed in its release (its total once it is stable).
    pub canary_step: Family<RolloutLabels, Gauge>,
    /// The metric names each namespace's measurements are counted under (see [`Self::measured`]).
    measured_names:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<String>>>,
    pub registry: Registry,
}

/// Metric names a namespace's measurements are counted under; past them, [`OTHER_METRICS`]. Names
/// are a tenant's text: without a bound, runs with ever new names would grow `/metrics` for ever.
pub const MAX_METRIC_NAMES_PER_NAMESPACE: usize = 64;
/// The metric label of measurements past a namespace's bound.
pub const OTHER_METRICS: &str = "_other";

/// The Rollout reconciles under way, each with the requests it sent so far, by its tracing span.
///
/// The client sends from a task of its own (a buffer in front of the connection); the buffer carries
/// the caller's span along, so a request is attributed to the reconcile whose span it was sent in.
#[derive(Clone, Default)]
pub struct OpenReconciles {
    open: Arc<Mutex<HashMap<span::Id, u64>>>,
}

impl OpenReconciles {
    /// Starts counting the requests sent within `span`.
    pub fn begin(&self, span: &Span) {
        if let (Some(id), Ok(mut open)) = (span.id(), self.open.lock()) {
            open.insert(id, 0);
        }
    }

    /// Stops counting for `span`: the requests it sent, if it was counted.
    pub fn end(&self, span: &Span) -> Option<u64> {
        let id = span.id()?;
        self.open.lock().ok()?.remove(&id)
    }

    /// Counts one request for the reconcile whose span (or a span within it) is current.
    pub fn count_current(&self) {
        Span::current().with_subscriber(|(id, dispatch)| {
            let Some(registry) = dispatch.downcast_ref::<SpanRegistry>() else {
                return;
            };
            let (Some(current), Ok(mut open)) = (registry.span(id), self.open.lock()) else {
                return;
            };
            for span in current.scope() {
                if let Some(count) = open.get_mut(&span.id()) {
                    *count += 1;
                    return;
                }
            }
        });
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        let aborts = Family::<RolloutLabels, Counter>::default();
        let measurements = Family::<MeasurementLabels, Counter>::default();
        let gate_budget_remaining = Family::<GateLabels, Gauge<f64, AtomicU64>>::default();
        let gate_held = Family::<GateLabels, Gauge>::default();
        let gate_burn_rate = Family::<BurnRateLabels, Gauge<f64, AtomicU64>>::default();
        let gate_evaluations = Family::<GateLabels, Counter>::default();
        let gate_queries = Family::<GateLabels, Counter>::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        let reconcile_requests = Histogram::new([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]);
        let releases_started = Family::<RolloutLabels, Counter>::default();
        let circuit_state = Family::<CircuitLabels, Gauge>::default();
        let circuit_transitions = Family::<CircuitLabels, Counter>::default();
        let circuit_holds = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "circuit_breaker_state",
            "1 for the state each Rollout's circuit breaker is in (Closed, Open, HalfOpen), 0 for the others",
            circuit_state.clone(),
        );
        registry.register(
            "circuit_breaker_transitions",
            "Circuit breaker transitions, by the state entered",
            circuit_transitions.clone(),
        );
        registry.register(
            "circuit_breaker_holds",
            "New releases a circuit breaker held",
            circuit_holds.clone(),
        );
        let releases_finished = Family::<OutcomeLabels, Counter>::default();
        let release_duration =
            Family::<RolloutLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                release_seconds,
            );
        let restore_duration =
            Family::<RolloutLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                release_seconds,
            );
        registry.register(
            "releases_started",
            "Releases started, by Rollout (deployment frequency), counted when the release record is first written",
            releases_started.clone(),
        );
        registry.register(
            "releases_finished",
            "Releases ended, by Rollout, outcome (Completed, Aborted, Superseded) and what aborted them (change failure rate)",
            releases_finished.clone(),
        );
        registry.register(
            "release_duration_seconds",
            "Seconds from a release's start to its completion, by Rollout (lead time through the release)",
            release_duration.clone(),
        );
        registry.register(
            "release_restore_seconds",
            "Seconds from an abort to stable serving everything again (no traffic on the aborted revision, stable fully available), by Rollout (time to restore)",
            restore_duration.clone(),
        );
        registry.register(
            "rollout_reconcile_api_requests",
            "API requests sent by one Rollout reconcile (a settled Rollout's: 0; Events are sent apart, by a background task)",
            reconcile_requests.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb and resource (a settled Rollout costs none)",
            api_requests.clone(),
        );
        registry.register(
            "gate_burn_rate",
            "Burn rate per ErrorBudgetGate and window (1 spends the budget exactly over the SLO window)",
            gate_burn_rate.clone(),
        );
        registry.register(
            "gate_evaluations",
            "ErrorBudgetGate evaluations",
            gate_evaluations.clone(),
        );
        registry.register(
            "gate_queries",
            "Prometheus queries issued by ErrorBudgetGate evaluations (a fixed number per evaluation, however many Rollouts a gate selects)",
            gate_queries.clone(),
        );
        registry.register(
            "gate_budget_remaining_percent",
            "Error budget left per ErrorBudgetGate, in percent of the budget",
            gate_budget_remaining.clone(),
        );
        registry.register(
            "gate_holds_releases",
            "1 while an ErrorBudgetGate holds new releases",
            gate_held.clone(),
        );
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
        registry.register(
            "rollout_phase",
            "1 for the phase each Rollout is in (Healthy, Progressing, Paused, Degraded), 0 for the others",
            rollout_phase.clone(),
        );
        registry.register(
            "rollout_aborts",
            "Releases aborted (by a person, a failed analysis or the progress deadline)",
            aborts.clone(),
        );
        registry.register(
            "analysis_measurements",
            "Analysis measurements taken, by metric and outcome",
            measurements.clone(),
        );
        let reconciles_running = Gauge::default();
        registry.register(
            "rollout_reconciles_running",
            "Rollout reconciles running now (at most --concurrency; more means a queue)",
            reconciles_running.clone(),
        );
        let canary_weight = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_canary_weight",
            "Share of traffic on each canary Rollout's new version, in percent",
            canary_weight.clone(),
        );
        let canary_step = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_canary_step",
            "Canary steps each Rollout has completed in its release (all of them once it is stable)",
            canary_step.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            rollout_phase,
            aborts,
            measurements,
            gate_budget_remaining,
            gate_held,
            gate_burn_rate,
            gate_evaluations,
            gate_queries,
            api_requests,
            reconcile_requests,
            circuit_state,
            circuit_transitions,
            circuit_holds,
            releases_started,
            releases_finished,
            release_duration,
            restore_duration,
            open_reconciles: OpenReconciles::default(),
            reconciles_running,
            canary_weight,
            canary_step,
            measured_names: std::sync::Mutex::default(),
            registry,
        }
    }
}

impl Metrics {
    /// Records where a canary Rollout's release stands: its weight and the steps completed.
    pub fn set_progress(&self, namespace: &str, rollout: &str, status: &RolloutStatus) {
        let Some(canary) = status.canary.as_ref() else {
            return;
        };
        let labels = RolloutLabels {
            namespace: namespace.to_owned(),
            rollout: rollout.to_owned(),
        };
        let weight = canary.weights.as_ref().map_or(0, |w| w.canary.weight);
        self.canary_weight
            .get_or_create(&labels)
            .set(i64::from(weight));
        self.canary_step
            .get_or_create(&labels)
            .set(i64::from(status.current_step_index.unwrap_or(0)));
    }

    /// Records the phase a Rollout is now in.
    pub fn set_phase(&self, namespace: &str, rollout: &str, phase: RolloutPhase) {
        let current = Phase::from(phase);
        for candidate in [
            Phase::Healthy,
            Phase::Progressing,
            Phase::Paused,
            Phase::Degraded,
        ] {
            self.rollout_phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    rollout: rollout.to_owned(),
                    phase: candidate,
                })
                .set(i64::from(candidate == current));
        }
    }

    /// Records a Rollout's circuit breaker state, its transitions and its holds in this plan.
    pub fn record_circuit(
        &self,
        namespace: &str,
        rollout: &str,
        breaker: Option<&sluice_api::rollout::CircuitBreakerStatus>,
        events: &[sluice_engine::events::Event],
    ) {
        let labels = |state: &str| CircuitLabels {
            namespace: namespace.to_owned(),
            rollout: rollout.to_owned(),
            state: state.to_owned(),
        };
        if let Some(breaker) = breaker {
            let now = format!("{:?}", breaker.state);
            for state in ["Closed", "Open", "HalfOpen"] {
                self.circuit_state
                    .get_or_create(&labels(state))
                    .set(i64::from(state == now));
            }
        }
        for event in events {
            let entered = match event.reason {
                "CircuitOpened" => "Open",
                "CircuitHalfOpen" => "HalfOpen",
                "CircuitClosed" => "Closed",
                "ReleaseHeld" if event.message.contains("circuit breaker") => {
                    self.circuit_holds
                        .get_or_create(&RolloutLabels {
                            namespace: namespace.to_owned(),
                            rollout: rollout.to_owned(),
                        })
                        .inc();
                    continue;
                }
                _ => continue,
            };
            self.circuit_transitions
                .get_or_create(&labels(entered))
                .inc();
        }
    }

    /// Counts what a release record's write says that the record did not say before: a release
    /// started, ended (and how long it took), stable restored after an abort. Counted once per
    /// record whatever restarts in between, since what the record said is read back.
    pub fn record_release(
        &self,
        namespace: &str,
        rollout: &str,
        before: &crate::release_record::Known,
        release: &sluice_api::release::ReleaseProgress,
    ) {
        let labels = RolloutLabels {
            namespace: namespace.to_owned(),
            rollout: rollout.to_owned(),
        };
        if !before.exists() {
            self.releases_started.get_or_create(&labels).inc();
        }
        let seconds =
            |from: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
             to: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
                to.0.duration_since(from.0).as_secs_f64().max(0.0)
            };
        if let (Some(outcome), false) = (release.outcome, before.ended()) {
            self.releases_finished
                .get_or_create(&OutcomeLabels {
                    namespace: namespace.to_owned(),
                    rollout: rollout.to_owned(),
                    outcome: format!("{outcome:?}"),
                    cause: release
                        .aborted_by
                        .map(|c| format!("{c:?}"))
                        .unwrap_or_default(),
                })
                .inc();
            if outcome == sluice_api::release::ReleaseOutcome::Completed
                && let Some(ended) = &release.ended_at
            {
                self.release_duration
                    .get_or_create(&labels)
                    .observe(seconds(&release.started_at, ended));
            }
        }
        if let (Some(restored), Some(ended), false) =
            (&release.restored_at, &release.ended_at, before.restored())
        {
            self.restore_duration
                .get_or_create(&labels)
                .observe(seconds(ended, restored));
        }
    }

    /// Drops the series of a deleted Rollout, so that `/metrics` does not report it for ever.
    pub fn forget_rollout(&self, namespace: &str, rollout: &str) {
        for phase in [
            Phase::Healthy,
            Phase::Progressing,
            Phase::Paused,
            Phase::Degraded,
        ] {
            self.rollout_phase.remove(&PhaseLabels {
                namespace: namespace.to_owned(),
                rollout: rollout.to_owned(),
                phase,
            });
        }
        let labels = RolloutLabels {
            namespace: namespace.to_owned(),
            rollout: rollout.to_owned(),
        };
        self.aborts.remove(&labels);
        self.canary_weight.remove(&labels);
        self.canary_step.remove(&labels);
        self.releases_started.remove(&labels);
        self.circuit_holds.remove(&labels);
        for state in ["Closed", "Open", "HalfOpen"] {
            let circuit = CircuitLabels {
                namespace: namespace.to_owned(),
                rollout: rollout.to_owned(),
                state: state.to_owned(),
            };
            self.circuit_state.remove(&circuit);
            self.circuit_transitions.remove(&circuit);
        }
        self.release_duration.remove(&labels);
        self.restore_duration.remove(&labels);
        for outcome in ["Completed", "Aborted", "Superseded"] {
            for cause in [
                "",
                "Analysis",
                "User",
                "ProgressDeadline",
                "InvalidSpec",
                "ErrorBudget",
            ] {
                self.releases_finished.remove(&OutcomeLabels {
                    namespace: namespace.to_owned(),
                    rollout: rollout.to_owned(),
                    outcome: outcome.to_owned(),
                    cause: cause.to_owned(),
                });
            }
        }
    }

    /// Drops the series of a deleted gate (its burn rates by the windows its last status had).
    pub fn forget_gate(&self, gate: &sluice_api::ErrorBudgetGate) {
        use kube::ResourceExt as _;
        let labels = GateLabels {
            namespace: gate.namespace().unwrap_or_default(),
            gate: gate.name_any(),
        };
        self.gate_budget_remaining.remove(&labels);
        self.gate_held.remove(&labels);
        self.gate_evaluations.remove(&labels);
        self.gate_queries.remove(&labels);
        for burn in gate.status.iter().flat_map(|s| s.burn_rates.iter()) {
            for window in [&burn.long_window, &burn.short_window] {
                self.gate_burn_rate.remove(&BurnRateLabels {
                    namespace: labels.namespace.clone(),
                    gate: labels.gate.clone(),
                    window: window.clone(),
                });
            }
        }
    }

    /// Counts a measurement.
    pub fn measured(&self, namespace: &str, metric: &str, phase: AnalysisPhase) {
        let counted = self
            .measured_names
            .lock()
            .ok()
            .and_then(|mut seen| {
                let names = seen.entry(namespace.to_owned()).or_default();
                if names.contains(metric) || names.len() < MAX_METRIC_NAMES_PER_NAMESPACE {
                    names.insert(metric.to_owned());
                    Some(metric)
                } else {
                    None
                }
            })
            .unwrap_or(OTHER_METRICS);
        self.measurements
            .get_or_create(&MeasurementLabels {
                namespace: namespace.to_owned(),
                metric: counted.to_owned(),
                phase: format!("{phase:?}"),
            })
            .inc();
    }
}

/// The verb and resource of a request to the API server, from its method and path.
pub fn request_labels(method: &http::Method, uri: &http::Uri) -> RequestLabels {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/..., /apis/group/version/...: then [namespaces/ns/]resource[/name[/subresource]].
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [] => "other".to_owned(),
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, subresource, ..] => format!("{resource}/{subresource}"),
    };
    let named = rest.len() >= 2;
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    RequestLabels {
        verb: verb.to_owned(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: http::Method, uri: &str) -> (String, String) {
        let l = request_labels(&method, &uri.parse().expect("uri"));
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            (
                http::Method::GET,
                "/apis/sluice.dev/v1alpha1/rollouts?watch=true&resourceVersion=1",
                ("watch", "rollouts"),
            ),
            (
                http::Method::GET,
                "/apis/apps/v1/namespaces/a/replicasets?labelSelector=x",
                ("list", "replicasets"),
            ),
            (
                http::Method::GET,
                "/api/v1/namespaces/a/services/web",
                ("get", "services"),
            ),
            (
                http::Method::PATCH,
                "/apis/sluice.dev/v1alpha1/namespaces/a/rollouts/web/status",
                ("patch", "rollouts/status"),
            ),
            (
                http::Method::POST,
                "/api/v1/namespaces/a/pods/p/eviction",
                ("create", "pods/eviction"),
            ),
            (
                http::Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                ("create", "events"),
            ),
            (
                http::Method::DELETE,
                "/apis/apps/v1/namespaces/a/replicasets/web-1",
                ("delete", "replicasets"),
            ),
            (
                http::Method::GET,
                "/apis/sluice.dev/v1alpha1/clusteranalysistemplates/t",
                ("get", "clusteranalysistemplates"),
            ),
        ];
        for (method, uri, (verb, resource)) in cases {
            assert_eq!(
                labels(method, uri),
                (verb.to_owned(), resource.to_owned()),
                "{uri}"
            );
        }
    }
}

#[cfg(test)]
mod dashboard_tests {
    use super::*;

    /// Every metric the chart's Grafana dashboards query is one the controller exports (each
    /// recorded once, since a family without samples is not written out).
    #[test]
    fn every_metric_the_dashboards_query_is_exported() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        use sluice_api::release::{AbortCause, ReleaseOutcome, ReleaseProgress};
        let metrics = Metrics::default();
        let at = |s| Time(Timestamp::from_second(s).expect("time"));
        let aborted = ReleaseProgress {
            number: 1,
            revision: "a".to_owned(),
            images: Vec::new(),
            started_at: at(0),
            admitted_at: None,
            plan: None,
            rollback: false,
            ended_at: Some(at(60)),
            outcome: Some(ReleaseOutcome::Aborted),
            aborted_by: Some(AbortCause::Analysis),
            reason: None,
            restored_at: Some(at(70)),
            steps: Vec::new(),
            timeline: Vec::new(),
            timeline_dropped: 0,
            confidence: Vec::new(),
        };
        let completed = ReleaseProgress {
            number: 2,
            outcome: Some(ReleaseOutcome::Completed),
            aborted_by: None,
            restored_at: None,
            ..aborted.clone()
        };
        let before = crate::release_record::Known::default();
        metrics.record_release("ns", "web", &before, &aborted);
        metrics.record_release("ns", "web", &before, &completed);
        let breaker = sluice_api::rollout::CircuitBreakerStatus::default();
        let held = sluice_engine::events::Event {
            warning: true,
            reason: "ReleaseHeld",
            message: "release of b held: circuit breaker open".to_owned(),
        };
        metrics.record_circuit("ns", "web", Some(&breaker), &[held]);
        metrics.set_phase("ns", "web", sluice_api::rollout::RolloutPhase::Progressing);
        metrics.set_progress(
            "ns",
            "web",
            &sluice_api::rollout::RolloutStatus {
                canary: Some(Default::default()),
                ..Default::default()
            },
        );
        let _ = metrics.aborts.get_or_create(&RolloutLabels {
            namespace: "ns".to_owned(),
            rollout: "web".to_owned(),
        });
        let _ = metrics.measurements.get_or_create(&MeasurementLabels {
            namespace: "ns".to_owned(),
            metric: "error-rate".to_owned(),
            phase: "Successful".to_owned(),
        });
        let gate = GateLabels {
            namespace: "ns".to_owned(),
            gate: "checkout".to_owned(),
        };
        metrics.gate_budget_remaining.get_or_create(&gate).set(50.0);
        metrics.gate_held.get_or_create(&gate).set(0);
        metrics.gate_evaluations.get_or_create(&gate).inc();
        metrics
            .gate_burn_rate
            .get_or_create(&BurnRateLabels {
                namespace: "ns".to_owned(),
                gate: "checkout".to_owned(),
                window: "1h".to_owned(),
            })
            .set(1.0);
        let _ = metrics.failures.get_or_create(&ErrorLabels {
            error: "Kube".to_owned(),
        });
        let _ = metrics.api_requests.get_or_create(&RequestLabels {
            verb: "patch".to_owned(),
            resource: "rollouts".to_owned(),
        });
        let mut exported = String::new();
        prometheus_client::encoding::text::encode(&mut exported, &metrics.registry)
            .expect("encode");
        // Every dashboard the chart ships, however many there are.
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/sluice/files/dashboards");
        let mut dashboards = Vec::new();
        for entry in std::fs::read_dir(&folder).expect("dashboards") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("dashboard");
                serde_json::from_str::<serde_json::Value>(&text).expect("a dashboard is JSON");
                dashboards.push(text);
            }
        }
        assert!(
            dashboards.len() >= 2,
            "{} dashboards found",
            dashboards.len()
        );
        let mut checked = 0;
        for dashboard in &dashboards {
            for (at, _) in dashboard.match_indices("sluice_") {
                let name: String = dashboard[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let family = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .fold(name.as_str(), |n, suffix| {
                        n.strip_suffix(suffix).unwrap_or(n)
                    });
                assert!(
                    exported.contains(&format!("# TYPE {family} ")),
                    "the dashboard queries {name}, which the controller does not export"
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} metric references found");
    }
}

#[cfg(test)]
mod cardinality_tests {
    use super::*;

    /// A tenant's ever new metric names add at most a bounded number of series per namespace;
    /// past it they are counted under `_other`, and another namespace keeps its own names.
    #[test]
    fn measurement_series_are_bounded_per_namespace() {
        let metrics = Metrics::default();
        for i in 0..1000 {
            metrics.measured("noisy", &format!("m{i}"), AnalysisPhase::Successful);
        }
        metrics.measured("quiet", "error-rate", AnalysisPhase::Successful);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encode");
        let series = text
            .lines()
            .filter(|l| l.contains("namespace=\"noisy\"") && !l.starts_with('#'))
            .count();
        assert_eq!(
            series,
            MAX_METRIC_NAMES_PER_NAMESPACE + 1,
            "{series} series"
        );
        assert!(text.contains("metric=\"_other\""));
        assert!(text.contains("namespace=\"quiet\""));
    }
}
