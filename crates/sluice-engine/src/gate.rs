//! The `ErrorBudgetGate`'s logic: budget and burn-rate math, the queries a controller must run, the
//! gate's state machine with hysteresis, and whether a Rollout's revision may go ahead.
//!
//! Pure: the controller runs the queries this module plans (a fixed number per gate, however many
//! Rollouts it selects), hands the ratios in with the time, writes the status, publishes the events,
//! and asks [`release_decision`] for each Rollout the gate selects.
//!
//! Math (SRE workbook), with the objective `o` in percent and the error budget `b = 1 - o/100`:
//! the burn rate over a window is `error ratio / b`; the budget left over the SLO window is
//! `1 - error ratio / b`, as a percent, negative when overspent.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
pub use sluice_api::gate::default_burn_rate_alerts;
use sluice_api::gate::{
    BudgetThresholds, BurnRateAlert, BurnRateStatus, ErrorBudgetGateSpec, ErrorBudgetGateStatus,
    GateState, GateTransition, InFlightPolicy, ServiceLevelIndicator, UnknownPolicy,
};
use sluice_api::rollout::{ErrorBudgetBypass, RolloutStatus};

use crate::conditions::{self, ConditionStatus};
use crate::duration;
use crate::events::Event;

/// Annotation on a Rollout that lets its current revision through a holding gate; its value is the
/// reason, recorded in the Rollout's status and an Event. An empty reason does not bypass.
pub const BYPASS_ANNOTATION: &str = "sluice.dev/bypass-error-budget";
/// Annotation marking a revision as a critical fix (value `"true"`): it passes Frozen and
/// CriticalOnly gates.
pub const CRITICAL_ANNOTATION: &str = "sluice.dev/critical";

/// Rollout condition type set while a gate holds the new revision.
pub const CONDITION_RELEASE_HELD: &str = "ReleaseHeld";
/// Hold reason: the budget is below `freezeBelow` (or recovering below `unfreezeAbove`).
pub const REASON_ERROR_BUDGET_EXHAUSTED: &str = "ErrorBudgetExhausted";
/// Hold reason: a burn-rate alert fires.
pub const REASON_ERROR_BUDGET_BURNING: &str = "ErrorBudgetBurning";
/// Hold reason: the budget is below `criticalOnlyBelow` and the revision is not marked critical.
pub const REASON_ERROR_BUDGET_CRITICAL_ONLY: &str = "ErrorBudgetCriticalOnly";
/// Hold reason: the gate cannot be evaluated and its `onUnknown` policy is `Hold`.
pub const REASON_ERROR_BUDGET_UNKNOWN: &str = "ErrorBudgetUnknown";
/// Rollout Event reason when a revision passes a holding gate (bypass or critical marker).
pub const EVENT_RELEASE_BYPASSED: &str = "ErrorBudgetBypassed";

/// Gate condition type: the gate could be evaluated.
pub const CONDITION_READY: &str = "Ready";
/// Gate condition type: the gate currently holds new releases.
pub const CONDITION_RELEASES_HELD: &str = "ReleasesHeld";

/// Gate reason: the budget is above `warnBelow`.
pub const REASON_BUDGET_HEALTHY: &str = "BudgetHealthy";
/// Gate reason: the budget is below `warnBelow`.
pub const REASON_BUDGET_LOW: &str = "BudgetLow";
/// Gate reason: the budget is below `freezeBelow`.
pub const REASON_BUDGET_EXHAUSTED: &str = "BudgetExhausted";
/// Gate reason: a frozen gate's budget is back above `freezeBelow` but not yet above `unfreezeAbove`.
pub const REASON_BUDGET_RECOVERING: &str = "BudgetRecovering";
/// Gate reason: the budget is below `criticalOnlyBelow`.
pub const REASON_BUDGET_CRITICAL: &str = "BudgetCritical";
/// Gate reason: a burn-rate alert fires while the budget is above `freezeBelow`.
pub const REASON_FAST_BURN: &str = "FastBurn";
/// Gate reason: Prometheus could not be queried.
pub const REASON_PROMETHEUS_UNREACHABLE: &str = "PrometheusUnreachable";
/// Gate reason: a planned query returned no data, or there were no events over the SLO window.
pub const REASON_NO_DATA: &str = "NoData";
/// Gate reason: the spec cannot be evaluated (objective outside (0, 100), no SLI).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// Transitions kept in `status.history`, newest last.
pub const HISTORY_LIMIT: usize = 20;
/// Evaluation interval used when the spec's cannot be parsed.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(60);
/// The placeholder in `errorQuery`/`totalQuery` replaced by the window being evaluated.
pub const WINDOW_PLACEHOLDER: &str = "{{window}}";

/// Error ratios measured by the controller, keyed by window exactly as written in the spec (`28d`,
/// `1h`, ...). A NaN value means "no events in that window" (0/0).
pub type Measurements = BTreeMap<String, f64>;

// ---------------------------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------------------------

/// The error budget as a fraction (`1 - objective/100`); `None` unless the objective is in `[0, 100)`.
pub fn error_budget(objective_percent: f64) -> Option<f64> {
    if !(0.0..100.0).contains(&objective_percent) {
        return None;
    }
    let budget = 1.0 - objective_percent / 100.0;
    (budget > 0.0).then_some(budget)
}

/// A measured error ratio made safe: NaN gives `None` (no events), the rest is clamped to `[0, 1]`
/// (a ratio cannot leave it; Prometheus counter resets can make it look as if it did).
pub fn sanitize_ratio(error_ratio: f64) -> Option<f64> {
    (!error_ratio.is_nan()).then(|| error_ratio.clamp(0.0, 1.0))
}

/// Budget left over the SLO window, in percent: `(1 - error_ratio / budget) * 100`, negative when
/// overspent. `None` for a NaN ratio or an objective outside `[0, 100)`.
pub fn budget_remaining_percent(error_ratio: f64, objective_percent: f64) -> Option<f64> {
    Some((1.0 - burn_rate(error_ratio, objective_percent)?) * 100.0)
}

/// Burn rate: `error_ratio / budget`; 1 spends exactly the budget over the SLO window. `None` for a
/// NaN ratio or an objective outside `[0, 100)`.
pub fn burn_rate(error_ratio: f64, objective_percent: f64) -> Option<f64> {
    Some(sanitize_ratio(error_ratio)? / error_budget(objective_percent)?)
}

/// Whether a burn-rate pair fires: both windows known and both strictly above `factor`.
pub fn pair_fires(long_burn_rate: Option<f64>, short_burn_rate: Option<f64>, factor: f64) -> bool {
    matches!((long_burn_rate, short_burn_rate), (Some(l), Some(s)) if l > factor && s > factor)
}

/// The burn rates of each configured pair from the measurements. A window missing or without events
/// has no burn rate, and a pair without both rates does not fire.
pub fn evaluate_burn_rates(
    alerts: &[BurnRateAlert],
    objective_percent: f64,
    measurements: &Measurements,
) -> Vec<BurnRateStatus> {
    let rate = |window: &str| {
        measurements
            .get(window)
            .and_then(|ratio| burn_rate(*ratio, objective_percent))
    };
    alerts
        .iter()
        .map(|alert| {
            let long = rate(&alert.long_window);
            let short = rate(&alert.short_window);
            BurnRateStatus {
                long_window: alert.long_window.clone(),
                short_window: alert.short_window.clone(),
                factor: alert.factor,
                long_burn_rate: long,
                short_burn_rate: short,
                firing: pair_fires(long, short, alert.factor),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Query plan
// ---------------------------------------------------------------------------------------------

/// One error ratio the controller must measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatioQuery {
    /// The window, as written in the spec; the key of the result in [`Measurements`].
    pub window: String,
    /// PromQL answering a single error ratio (bad / all events) over `window`.
    pub promql: String,
}

/// The windows a gate measures: its SLO window first, then each distinct burn-rate window in the
/// order the alerts name them. Its length depends on the spec only, never on the Rollouts selected.
pub fn planned_windows(spec: &ErrorBudgetGateSpec) -> Vec<String> {
    let mut windows = vec![spec.window.clone()];
    for alert in &spec.burn_rate_alerts {
        for window in [&alert.long_window, &alert.short_window] {
            if !windows.contains(window) {
                windows.push(window.clone());
            }
        }
    }
    windows
}

/// The queries of one evaluation, one per [`planned_windows`] entry. `Err` when the SLI sets none
/// (or more than one) of `events`, `sloth`, `pyrra`.
pub fn query_plan(spec: &ErrorBudgetGateSpec) -> Result<Vec<RatioQuery>, String> {
    planned_windows(spec)
        .into_iter()
        .map(|window| {
            let promql = error_ratio_query(&spec.sli, &spec.window, &window)?;
            Ok(RatioQuery { window, promql })
        })
        .collect()
}

/// PromQL for the error ratio over `window`.
///
/// - `events`: `(errorQuery) / (totalQuery)` with every `{{window}}` replaced by `window`.
/// - `sloth`: `slo:sli_error:ratio_rate<window>{sloth_service="…",sloth_slo="…"}`. Sloth records
///   5m, 30m, 1h, 2h, 6h, 1d, 3d and the SLO period; other windows return no data (gate Unknown).
/// - `pyrra`: `<metric>:burnrate<window>{slo="…"}` (Pyrra's burnrate rules hold the error ratio).
///   Pyrra records no burnrate over the SLO window itself: that one is `1 - pyrra_availability{slo}`,
///   which Pyrra writes only with `--generic-rules`, over the window of the Pyrra SLO.
///
/// Recording rules are wrapped in `max(...)` so that several series (a Pyrra grouping, a rule
/// duplicated by two Prometheus replicas) answer one number, the most pessimistic.
pub fn error_ratio_query(
    sli: &ServiceLevelIndicator,
    slo_window: &str,
    window: &str,
) -> Result<String, String> {
    match (&sli.events, &sli.sloth, &sli.pyrra) {
        (Some(events), None, None) => Ok(format!(
            "({}) / ({})",
            events.error_query.replace(WINDOW_PLACEHOLDER, window),
            events.total_query.replace(WINDOW_PLACEHOLDER, window)
        )),
        (None, Some(sloth), None) => Ok(format!(
            "max(slo:sli_error:ratio_rate{window}{{sloth_service=\"{}\",sloth_slo=\"{}\"}})",
            escape_label(&sloth.service),
            escape_label(&sloth.slo)
        )),
        (None, None, Some(pyrra)) if window == slo_window => Ok(format!(
            "1 - max(pyrra_availability{{slo=\"{}\"}})",
            escape_label(&pyrra.slo)
        )),
        (None, None, Some(pyrra)) => Ok(format!(
            "max({}:burnrate{window}{{slo=\"{}\"}})",
            pyrra.metric,
            escape_label(&pyrra.slo)
        )),
        _ => Err("sli must set exactly one of events, sloth or pyrra".to_owned()),
    }
}

/// A PromQL label value, quoted with `"`.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// An Event to publish on the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateEvent {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason, e.g. `GateFrozen`.
    pub reason: &'static str,
    /// What changed, with the figures.
    pub message: String,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct GateEvaluation {
    /// The status to write.
    pub status: ErrorBudgetGateStatus,
    /// Events to publish: one per state transition, none otherwise.
    pub events: Vec<GateEvent>,
    /// Evaluate again after this long.
    pub requeue_after: Duration,
}

/// Whether a gate in `state` holds new releases (without bypass or critical marker).
pub fn holds_releases(state: GateState, on_unknown: UnknownPolicy) -> bool {
    match state {
        GateState::Frozen | GateState::CriticalOnly => true,
        GateState::Unknown => on_unknown == UnknownPolicy::Hold,
        GateState::Open | GateState::Warning => false,
    }
}

/// The spec's `onUnknown`, `Hold` by default.
pub fn on_unknown(spec: &ErrorBudgetGateSpec) -> UnknownPolicy {
    spec.on_unknown.unwrap_or(UnknownPolicy::Hold)
}

/// The spec's `inFlightReleases`, `HoldAtNextStep` by default.
pub fn in_flight_policy(spec: &ErrorBudgetGateSpec) -> InFlightPolicy {
    spec.in_flight_releases
        .unwrap_or(InFlightPolicy::HoldAtNextStep)
}

/// The spec's evaluation interval; [`DEFAULT_EVALUATION_INTERVAL`] when unparsable or zero.
pub fn evaluation_interval(spec: &ErrorBudgetGateSpec) -> Duration {
    duration::parse(&spec.evaluation_interval)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_EVALUATION_INTERVAL)
}

/// The last state the gate had from figures (not Unknown): the previous state, or, if that is
/// Unknown, the state it left to become Unknown. Hysteresis carries over an outage this way.
pub fn last_known_state(previous: Option<&ErrorBudgetGateStatus>) -> Option<GateState> {
    let previous = previous?;
    match previous.state? {
        GateState::Unknown => previous
            .history
            .iter()
            .rev()
            .find(|t| t.to == GateState::Unknown)
            .and_then(|t| t.from)
            .filter(|s| *s != GateState::Unknown),
        state => Some(state),
    }
}

/// The state from the figures, with hysteresis: a gate that held releases (Frozen or CriticalOnly)
/// opens only once the budget is strictly above `unfreezeAbove`. Returns the state and its reason.
pub fn next_state(
    budget_percent: f64,
    fast_burn: bool,
    last_known: Option<GateState>,
    thresholds: &BudgetThresholds,
) -> (GateState, &'static str) {
    let was_held = matches!(
        last_known,
        Some(GateState::Frozen | GateState::CriticalOnly)
    );
    if budget_percent < thresholds.critical_only_below {
        (GateState::CriticalOnly, REASON_BUDGET_CRITICAL)
    } else if budget_percent < thresholds.freeze_below {
        (GateState::Frozen, REASON_BUDGET_EXHAUSTED)
    } else if fast_burn {
        (GateState::Frozen, REASON_FAST_BURN)
    } else if was_held && budget_percent <= thresholds.unfreeze_above {
        (GateState::Frozen, REASON_BUDGET_RECOVERING)
    } else if budget_percent < thresholds.warn_below {
        (GateState::Warning, REASON_BUDGET_LOW)
    } else {
        (GateState::Open, REASON_BUDGET_HEALTHY)
    }
}

/// Evaluates a gate from the measured ratios (`Err` carries why Prometheus could not be queried).
///
/// Unknown when the measurements failed, a planned window is missing, the SLO window had no events,
/// or the spec cannot be evaluated; the figures of the last good evaluation are then kept. A state
/// change sets `since`, appends to the bounded history and emits one Event; the same inputs at the
/// same time give the same status and no event.
pub fn evaluate(
    spec: &ErrorBudgetGateSpec,
    generation: i64,
    previous: Option<&ErrorBudgetGateStatus>,
    measurements: Result<&Measurements, &str>,
    now: Timestamp,
) -> GateEvaluation {
    let mut status = previous.cloned().unwrap_or_default();
    let interval = evaluation_interval(spec);
    let verdict = judge(spec, measurements);
    let (state, reason, message) = match verdict {
        Verdict::Unknown { reason, message } => (GateState::Unknown, reason, message),
        Verdict::Measured {
            error_ratio,
            budget,
            burn_rates,
        } => {
            let fast_burn = burn_rates.iter().any(|b| b.firing);
            let (state, reason) = next_state(
                budget,
                fast_burn,
                last_known_state(previous),
                &spec.thresholds,
            );
            let message = state_message(spec, state, reason, budget, &burn_rates);
            status.error_ratio = Some(error_ratio);
            // Thousandths of a point: far finer than any threshold, and readable in `kubectl get`.
            status.budget_remaining_percent = Some((budget * 1000.0).round() / 1000.0);
            status.burn_rates = burn_rates;
            (state, reason, message)
        }
    };

    let mut events = Vec::new();
    let from = previous.and_then(|p| p.state);
    if from != Some(state) || status.since.is_none() {
        status.since = Some(Time(now));
    }
    if from != Some(state) {
        status.history.push(GateTransition {
            from,
            to: state,
            at: Time(now),
            reason: format!("{reason}: {message}"),
        });
        let excess = status.history.len().saturating_sub(HISTORY_LIMIT);
        status.history.drain(..excess);
        events.push(GateEvent {
            warning: matches!(
                state,
                GateState::Frozen | GateState::CriticalOnly | GateState::Unknown
            ),
            reason: event_reason(state),
            message: format!("{} → {state:?}: {message}", state_word(from)),
        });
    }

    status.observed_generation = Some(generation);
    status.state = Some(state);
    status.reason = Some(reason.to_owned());
    status.message = Some(message.clone());
    status.last_evaluation_time = Some(Time(now));
    status.next_evaluation_time = Some(Time(add(now, interval)));

    let ready = state != GateState::Unknown;
    conditions::set(
        &mut status.conditions,
        CONDITION_READY,
        ConditionStatus::from(ready),
        reason,
        &message,
        now,
        generation,
    );
    // kstatus: an evaluated gate is never mid-way; one whose spec cannot be evaluated is stuck until
    // a person fixes it.
    conditions::set(
        &mut status.conditions,
        "Reconciling",
        ConditionStatus::False,
        "Evaluated",
        &message,
        now,
        generation,
    );
    let stalled = reason == REASON_INVALID_SPEC;
    conditions::set(
        &mut status.conditions,
        "Stalled",
        ConditionStatus::from(stalled),
        if stalled {
            REASON_INVALID_SPEC
        } else {
            "Evaluated"
        },
        &message,
        now,
        generation,
    );
    let held = holds_releases(state, on_unknown(spec));
    let held_message = if held {
        message.clone()
    } else {
        format!("releases pass: {message}")
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_RELEASES_HELD,
        ConditionStatus::from(held),
        reason,
        &held_message,
        now,
        generation,
    );

    GateEvaluation {
        status,
        events,
        requeue_after: interval,
    }
}

enum Verdict {
    Unknown {
        reason: &'static str,
        message: String,
    },
    Measured {
        error_ratio: f64,
        budget: f64,
        burn_rates: Vec<BurnRateStatus>,
    },
}

fn judge(spec: &ErrorBudgetGateSpec, measurements: Result<&Measurements, &str>) -> Verdict {
    if error_budget(spec.objective).is_none() {
        return Verdict::Unknown {
            reason: REASON_INVALID_SPEC,
            message: format!(
                "objective {} is not strictly between 0 and 100",
                spec.objective
            ),
        };
    }
    if let Err(message) = error_ratio_query(&spec.sli, &spec.window, &spec.window) {
        return Verdict::Unknown {
            reason: REASON_INVALID_SPEC,
            message,
        };
    }
    let measurements = match measurements {
        Ok(m) => m,
        Err(why) => {
            return Verdict::Unknown {
                reason: REASON_PROMETHEUS_UNREACHABLE,
                message: format!("Prometheus could not be queried: {why}"),
            };
        }
    };
    let missing: Vec<String> = planned_windows(spec)
        .into_iter()
        .filter(|w| !measurements.contains_key(w))
        .collect();
    if !missing.is_empty() {
        return Verdict::Unknown {
            reason: REASON_NO_DATA,
            message: format!("no data for window(s) {}", missing.join(", ")),
        };
    }
    let slo_ratio = measurements
        .get(&spec.window)
        .and_then(|r| sanitize_ratio(*r));
    let (Some(error_ratio), Some(budget)) = (
        slo_ratio,
        slo_ratio.and_then(|r| budget_remaining_percent(r, spec.objective)),
    ) else {
        return Verdict::Unknown {
            reason: REASON_NO_DATA,
            message: format!("no events over the SLO window {}", spec.window),
        };
    };
    Verdict::Measured {
        error_ratio,
        budget,
        burn_rates: evaluate_burn_rates(&spec.burn_rate_alerts, spec.objective, measurements),
    }
}

fn state_message(
    spec: &ErrorBudgetGateSpec,
    state: GateState,
    reason: &str,
    budget: f64,
    burn_rates: &[BurnRateStatus],
) -> String {
    let t = &spec.thresholds;
    let left = format!(
        "{budget:.1}% of budget left over {} (objective {}%)",
        spec.window, spec.objective
    );
    match (state, reason) {
        (GateState::CriticalOnly, _) => format!(
            "{left}: only critical fixes pass below {}%; releases resume above {}%",
            t.critical_only_below, t.unfreeze_above
        ),
        (GateState::Frozen, REASON_FAST_BURN) => format!(
            "error budget burning fast ({}), {left}; releases resume when the burn stops",
            firing_summary(burn_rates)
        ),
        (GateState::Frozen, REASON_BUDGET_RECOVERING) => format!(
            "{left}, recovering: releases resume above {}%",
            t.unfreeze_above
        ),
        (GateState::Frozen, _) => format!(
            "{left} (freeze below {}%); releases resume above {}%",
            t.freeze_below, t.unfreeze_above
        ),
        (GateState::Warning, _) => format!("{left} (warning below {}%)", t.warn_below),
        _ => left,
    }
}

/// `14.4× over 1h and 20.1× over 5m (above 14.4×)` for each firing pair.
fn firing_summary(burn_rates: &[BurnRateStatus]) -> String {
    let parts: Vec<String> = burn_rates
        .iter()
        .filter(|b| b.firing)
        .map(|b| {
            format!(
                "{:.1}× over {} and {:.1}× over {} (above {}×)",
                b.long_burn_rate.unwrap_or(f64::NAN),
                b.long_window,
                b.short_burn_rate.unwrap_or(f64::NAN),
                b.short_window,
                b.factor
            )
        })
        .collect();
    parts.join("; ")
}

fn event_reason(state: GateState) -> &'static str {
    match state {
        GateState::Open => "GateOpen",
        GateState::Warning => "GateWarning",
        GateState::Frozen => "GateFrozen",
        GateState::CriticalOnly => "GateCriticalOnly",
        GateState::Unknown => "GateUnknown",
    }
}

fn state_word(state: Option<GateState>) -> String {
    state.map_or_else(|| "(new)".to_owned(), |s| format!("{s:?}"))
}

fn add(at: Timestamp, by: Duration) -> Timestamp {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by).ok())
        .unwrap_or(at)
}

// ---------------------------------------------------------------------------------------------
// Rollout side
// ---------------------------------------------------------------------------------------------

/// What the revision a Rollout wants to run is, relative to its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionKind {
    /// A new revision whose release has not started yet.
    NewRelease,
    /// A release already under way (past its first step).
    InFlight,
    /// Going back to the stable template: an abort, a rollback, an undo. Never held.
    Rollback,
}

/// The facts about a revision a gate's decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionFacts {
    /// New, in flight, or back to stable.
    pub kind: RevisionKind,
    /// The reason in [`BYPASS_ANNOTATION`], trimmed; `None` when absent or empty. The controller
    /// passes it only while the bypass has not been used by another revision (one revision each).
    pub bypass_reason: Option<String>,
    /// [`CRITICAL_ANNOTATION`] is `"true"`.
    pub critical: bool,
}

impl RevisionFacts {
    /// The facts from the Rollout's annotations.
    pub fn from_annotations(kind: RevisionKind, annotations: &BTreeMap<String, String>) -> Self {
        Self {
            kind,
            bypass_reason: annotations
                .get(BYPASS_ANNOTATION)
                .map(|r| r.trim())
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            critical: annotations
                .get(CRITICAL_ANNOTATION)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }
    }
}

/// The gate's policies that bear on a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatePolicy {
    /// What an Unknown gate does.
    pub on_unknown: UnknownPolicy,
    /// What a holding gate does to a release in flight.
    pub in_flight: InFlightPolicy,
}

impl GatePolicy {
    /// The policies of `spec`, with the API's defaults (`Hold`, `HoldAtNextStep`).
    pub fn from_spec(spec: &ErrorBudgetGateSpec) -> Self {
        Self {
            on_unknown: on_unknown(spec),
            in_flight: in_flight_policy(spec),
        }
    }
}

/// What a revision may do, from one gate or several folded with [`combine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// Go ahead.
    Allow,
    /// Go ahead although a gate holds: record `reason` in status and an Event
    /// ([`EVENT_RELEASE_BYPASSED`]).
    AllowBypassed {
        /// Why, e.g. the bypass annotation's reason.
        reason: String,
    },
    /// Wait (a new release does not start; one in flight stops at its next step boundary), with
    /// condition [`CONDITION_RELEASE_HELD`].
    Hold {
        /// The condition's CamelCase reason, e.g. [`REASON_ERROR_BUDGET_EXHAUSTED`].
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// Abort the release in flight; traffic returns to stable.
    Abort {
        /// Why.
        message: String,
    },
}

impl ReleaseDecision {
    fn severity(&self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::AllowBypassed { .. } => 1,
            Self::Hold { .. } => 2,
            Self::Abort { .. } => 3,
        }
    }
}

/// Whether gate `gate_name` lets `revision` go ahead.
///
/// Rollbacks always pass. Open and Warning gates pass everything. A Frozen gate holds unless the
/// revision carries a bypass or the critical marker; a CriticalOnly gate only passes revisions
/// marked critical (a bypass alone is not enough below `criticalOnlyBelow`). An Unknown gate (or one
/// never evaluated) follows `onUnknown`, like Frozen when it holds. A release in flight follows
/// `inFlightReleases` (never aborted for an Unknown gate: an outage of Prometheus says nothing of
/// the release).
pub fn release_decision(
    gate_name: &str,
    gate_status: Option<&ErrorBudgetGateStatus>,
    thresholds: &BudgetThresholds,
    policy: &GatePolicy,
    revision: &RevisionFacts,
) -> ReleaseDecision {
    if revision.kind == RevisionKind::Rollback {
        return ReleaseDecision::Allow;
    }
    let state = gate_status
        .and_then(|s| s.state)
        .unwrap_or(GateState::Unknown);
    if !holds_releases(state, policy.on_unknown) {
        return ReleaseDecision::Allow;
    }
    let (reason, message) = hold_reason(gate_name, gate_status, state, thresholds);
    let bypassed_by_critical = revision.critical.then(|| {
        format!("revision marked critical ({CRITICAL_ANNOTATION}) passes gate {gate_name}")
    });
    let bypassed_by_annotation = revision
        .bypass_reason
        .as_ref()
        .map(|why| format!("{BYPASS_ANNOTATION} on gate {gate_name}: {why}"));
    let bypass = match state {
        GateState::CriticalOnly => bypassed_by_critical,
        _ => bypassed_by_critical.or(bypassed_by_annotation),
    };
    if let Some(reason) = bypass {
        return ReleaseDecision::AllowBypassed { reason };
    }
    let message = if state == GateState::CriticalOnly && revision.bypass_reason.is_some() {
        format!("{message} (a bypass needs {CRITICAL_ANNOTATION}: \"true\" below this threshold)")
    } else {
        message
    };
    match (revision.kind, policy.in_flight, state) {
        (RevisionKind::InFlight, InFlightPolicy::Continue, _) => ReleaseDecision::Allow,
        (RevisionKind::InFlight, InFlightPolicy::Abort, s) if s != GateState::Unknown => {
            ReleaseDecision::Abort { message }
        }
        _ => ReleaseDecision::Hold {
            reason: reason.to_owned(),
            message,
        },
    }
}

fn hold_reason(
    gate_name: &str,
    status: Option<&ErrorBudgetGateStatus>,
    state: GateState,
    t: &BudgetThresholds,
) -> (&'static str, String) {
    let budget = status
        .and_then(|s| s.budget_remaining_percent)
        .map_or_else(|| "unknown".to_owned(), |b| format!("{b:.1}%"));
    let gate_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    match state {
        GateState::CriticalOnly => (
            REASON_ERROR_BUDGET_CRITICAL_ONLY,
            format!(
                "gate {gate_name}: {budget} of budget left (only critical fixes below {}%); releases resume above {}%",
                t.critical_only_below, t.unfreeze_above
            ),
        ),
        GateState::Frozen if gate_reason == REASON_FAST_BURN => (
            REASON_ERROR_BUDGET_BURNING,
            format!(
                "gate {gate_name}: error budget burning fast ({}); releases resume when the burn stops",
                status.map_or_else(String::new, |s| firing_summary(&s.burn_rates))
            ),
        ),
        GateState::Unknown => (
            REASON_ERROR_BUDGET_UNKNOWN,
            format!(
                "gate {gate_name}: error budget unknown ({}); releases wait until it can be evaluated",
                status
                    .and_then(|s| s.message.as_deref())
                    .unwrap_or("not evaluated yet")
            ),
        ),
        _ => (
            REASON_ERROR_BUDGET_EXHAUSTED,
            format!(
                "gate {gate_name}: {budget} of budget left (freeze below {}%); releases resume above {}%",
                t.freeze_below, t.unfreeze_above
            ),
        ),
    }
}

/// Folds the decisions of several gates selecting one Rollout: the most restrictive kind wins
/// (Abort > Hold > AllowBypassed > Allow), and its messages (or bypass reasons) are joined with
/// `; `. A Hold keeps the first holding gate's reason. No decisions at all is Allow.
pub fn combine(decisions: impl IntoIterator<Item = ReleaseDecision>) -> ReleaseDecision {
    let decisions: Vec<ReleaseDecision> = decisions.into_iter().collect();
    let Some(worst) = decisions.iter().map(ReleaseDecision::severity).max() else {
        return ReleaseDecision::Allow;
    };
    let mut reason = None;
    let mut texts = Vec::new();
    for decision in decisions.into_iter().filter(|d| d.severity() == worst) {
        match decision {
            ReleaseDecision::Allow => {}
            ReleaseDecision::AllowBypassed { reason: r } => texts.push(r),
            ReleaseDecision::Hold { reason: r, message } => {
                reason.get_or_insert(r);
                texts.push(message);
            }
            ReleaseDecision::Abort { message } => texts.push(message),
        }
    }
    let text = texts.join("; ");
    match worst {
        0 => ReleaseDecision::Allow,
        1 => ReleaseDecision::AllowBypassed { reason: text },
        2 => ReleaseDecision::Hold {
            reason: reason.unwrap_or_else(|| REASON_ERROR_BUDGET_EXHAUSTED.to_owned()),
            message: text,
        },
        _ => ReleaseDecision::Abort { message: text },
    }
}

// ---------------------------------------------------------------------------------------------
// Applying the gates to a Rollout's release
// ---------------------------------------------------------------------------------------------

/// Bypasses kept in a Rollout's `status.errorBudget.bypasses`, newest last.
pub const BYPASS_HISTORY_LIMIT: usize = 10;
/// Stable revisions remembered in `status.errorBudget.releasedRevisions`, newest last.
pub const RELEASED_HISTORY_LIMIT: usize = 10;
/// Rollout Event reason when gates start holding its release.
pub const EVENT_RELEASE_HELD: &str = "ReleaseHeld";
/// Rollout Event reason when no gate holds its release any more.
pub const EVENT_RELEASE_RESUMED: &str = "ReleaseResumed";

/// A gate selecting a Rollout, as the controller's cache holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct GateView {
    /// The gate's name.
    pub name: String,
    /// Its last evaluation (`None`: never evaluated, which counts as Unknown).
    pub status: Option<ErrorBudgetGateStatus>,
    /// Its thresholds, for the messages.
    pub thresholds: BudgetThresholds,
    /// Its policies.
    pub policy: GatePolicy,
}

impl GateView {
    /// The view of gate `name` with `spec` and `status`.
    pub fn new(
        name: &str,
        spec: &ErrorBudgetGateSpec,
        status: Option<&ErrorBudgetGateStatus>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            status: status.cloned(),
            thresholds: spec.thresholds.clone(),
            policy: GatePolicy::from_spec(spec),
        }
    }
}

/// The gates selecting a Rollout and what its current revision carries: the input a release
/// decision needs besides the Rollout's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gating {
    /// The gates selecting the Rollout, in any order.
    pub gates: Vec<GateView>,
    /// The reason in the Rollout's [`BYPASS_ANNOTATION`], trimmed; `None` when absent or empty.
    pub bypass_reason: Option<String>,
    /// The current pod template carries [`CRITICAL_ANNOTATION`]: `"true"`.
    pub critical: bool,
}

impl Gating {
    /// The bypass reason and critical mark from the Rollout's annotations and its pod template's.
    pub fn from_annotations(
        gates: Vec<GateView>,
        rollout_annotations: &BTreeMap<String, String>,
        template_annotations: &BTreeMap<String, String>,
    ) -> Self {
        let facts =
            |annotations| RevisionFacts::from_annotations(RevisionKind::NewRelease, annotations);
        Self {
            gates,
            bypass_reason: facts(rollout_annotations).bypass_reason,
            critical: facts(template_annotations).critical,
        }
    }
}

/// What the gates mean for a release at this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gated {
    /// Go on.
    Go,
    /// The new revision waits: its release does not start (no pods, no traffic, no analysis).
    HoldNew {
        /// Why, for the status message.
        message: String,
    },
    /// The release in flight finishes the step it is on and goes no further.
    HoldInFlight {
        /// Why, for the status message.
        message: String,
    },
    /// Abort the release in flight (`inFlightReleases: Abort`).
    Abort {
        /// Why.
        message: String,
    },
}

impl Gated {
    /// The hold's message, if the release is held.
    pub fn held(&self) -> Option<&str> {
        match self {
            Self::HoldNew { message } | Self::HoldInFlight { message } => Some(message),
            Self::Go | Self::Abort { .. } => None,
        }
    }
}

/// Whether the release of `revision` has started as far as the gates are concerned: they let it
/// through (or no gate held it when it began). The controller starts no analysis before.
pub fn admitted(status: &RolloutStatus, revision: &str) -> bool {
    status
        .error_budget
        .as_ref()
        .and_then(|e| e.admitted_revision.as_deref())
        == Some(revision)
}

/// Forgets which revision was admitted, so that a retried release asks the gates again.
pub fn forget_admission(status: &mut RolloutStatus) {
    if let Some(e) = status.error_budget.as_mut() {
        e.admitted_revision = None;
    }
}

/// Applies the gates to the release of `current`, recording in `status` the admission, the
/// bypasses, the gates holding it and the `ReleaseHeld` condition, and pushing the Events to
/// publish. `releasing`: a release of `current` is under way and not aborted. Going back to a
/// revision that was stable before (an undo, a revert: one of `releasedRevisions`) is a rollback,
/// which no gate holds.
///
/// A bypass reason lets one revision through: once recorded for a revision, the same reason does not
/// let another through (a later revision needs a new reason). A release that started before this
/// status recorded admissions (`errorBudget` absent, past its first step) counts as in flight.
pub fn gate_release(
    status: &mut RolloutStatus,
    gating: &Gating,
    current: &str,
    releasing: bool,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) -> Gated {
    let legacy_in_flight =
        status.error_budget.is_none() && status.current_step_index.unwrap_or(0) > 0;
    remember_stable(status);
    let record = status.error_budget.get_or_insert_with(Default::default);
    let rollback = record.released_revisions.iter().any(|r| r == current);
    if !releasing || rollback {
        release_hold(status, gating, now, generation, events);
        return Gated::Go;
    }
    let kind = if record.admitted_revision.as_deref() == Some(current) || legacy_in_flight {
        RevisionKind::InFlight
    } else {
        RevisionKind::NewRelease
    };
    // One revision per bypass reason.
    let bypass_reason = gating.bypass_reason.clone().filter(|reason| {
        !record
            .bypasses
            .iter()
            .any(|b| !b.critical && b.reason == *reason && b.revision != current)
    });
    let facts = RevisionFacts {
        kind,
        bypass_reason: bypass_reason.clone(),
        critical: gating.critical,
    };
    let decisions: Vec<(String, ReleaseDecision)> = gating
        .gates
        .iter()
        .map(|g| {
            let decision =
                release_decision(&g.name, g.status.as_ref(), &g.thresholds, &g.policy, &facts);
            (g.name.clone(), decision)
        })
        .collect();
    let mut holding: Vec<String> = decisions
        .iter()
        .filter(|(_, d)| matches!(d, ReleaseDecision::Hold { .. }))
        .map(|(name, _)| name.clone())
        .collect();
    holding.sort();
    match combine(decisions.into_iter().map(|(_, d)| d)) {
        ReleaseDecision::Allow => {
            record.admitted_revision = Some(current.to_owned());
            release_hold(status, gating, now, generation, events);
            Gated::Go
        }
        ReleaseDecision::AllowBypassed { reason } => {
            record.admitted_revision = Some(current.to_owned());
            if !record.bypasses.iter().any(|b| b.revision == current) {
                let (why, critical) = if gating.critical {
                    ("critical fix".to_owned(), true)
                } else {
                    (bypass_reason.unwrap_or_default(), false)
                };
                record.bypasses.push(ErrorBudgetBypass {
                    revision: current.to_owned(),
                    reason: why,
                    critical,
                    message: reason.clone(),
                    time: Time(now),
                });
                let excess = record.bypasses.len().saturating_sub(BYPASS_HISTORY_LIMIT);
                record.bypasses.drain(..excess);
                events.push(Event {
                    warning: true,
                    reason: EVENT_RELEASE_BYPASSED,
                    message: format!(
                        "revision {current} goes through holding error-budget gates: {reason}"
                    ),
                });
            }
            release_hold(status, gating, now, generation, events);
            Gated::Go
        }
        ReleaseDecision::Hold { reason, message } => {
            record.held_by = holding;
            let was_held = conditions::get(&status.conditions, CONDITION_RELEASE_HELD)
                .is_some_and(|c| c.status == "True");
            conditions::set(
                &mut status.conditions,
                CONDITION_RELEASE_HELD,
                ConditionStatus::True,
                &reason,
                &message,
                now,
                generation,
            );
            if !was_held {
                events.push(Event {
                    warning: true,
                    reason: EVENT_RELEASE_HELD,
                    message: format!("release of {current} held: {message}"),
                });
            }
            if kind == RevisionKind::NewRelease {
                Gated::HoldNew { message }
            } else {
                Gated::HoldInFlight { message }
            }
        }
        ReleaseDecision::Abort { message } => {
            release_hold(status, gating, now, generation, events);
            Gated::Abort {
                message: format!("error-budget gate: {message}"),
            }
        }
    }
}

/// After a decision: a release that ended (aborted, or its revision now stable) is held no more,
/// and a new stable revision is remembered as one a rollback may go back to. Returns true if the
/// release ended, so that the caller drops its hold too.
pub fn settle(
    status: &mut RolloutStatus,
    gating: &Gating,
    current: &str,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) -> bool {
    remember_stable(status);
    let ended = status.abort || status.stable_rs.as_deref() == Some(current);
    if ended {
        release_hold(status, gating, now, generation, events);
    }
    ended
}

fn remember_stable(status: &mut RolloutStatus) {
    let stable = status.stable_rs.clone();
    let record = status.error_budget.get_or_insert_with(Default::default);
    if let Some(stable) = stable
        && record.released_revisions.last() != Some(&stable)
    {
        record.released_revisions.retain(|r| *r != stable);
        record.released_revisions.push(stable);
        let excess = record
            .released_revisions
            .len()
            .saturating_sub(RELEASED_HISTORY_LIMIT);
        record.released_revisions.drain(..excess);
    }
}

/// No gate holds the release (any more): clears `heldBy` and sets `ReleaseHeld` False, with an Event
/// if it was True. Rollouts no gate ever selected get no condition.
fn release_hold(
    status: &mut RolloutStatus,
    gating: &Gating,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) {
    if let Some(record) = status.error_budget.as_mut() {
        record.held_by.clear();
    }
    let was_held =
        conditions::get(&status.conditions, CONDITION_RELEASE_HELD).map(|c| c.status == "True");
    if was_held.is_none() && gating.gates.is_empty() {
        return;
    }
    let message = if gating.gates.is_empty() {
        "no ErrorBudgetGate selects this Rollout".to_owned()
    } else {
        let names: Vec<&str> = gating.gates.iter().map(|g| g.name.as_str()).collect();
        format!(
            "error-budget gates {} let the release go on",
            names.join(", ")
        )
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_RELEASE_HELD,
        ConditionStatus::False,
        "ReleaseAllowed",
        &message,
        now,
        generation,
    );
    if was_held == Some(true) {
        events.push(Event {
            warning: false,
            reason: EVENT_RELEASE_RESUMED,
            message: "no error-budget gate holds the release any more".to_owned(),
        });
    }
}

/// A promotion does not get past a holding gate (a bypass does): the request is refused with an
/// Event saying how to bypass. `promote --full` stays recorded and goes ahead once released.
pub(crate) fn refuse_promotion_while_held(
    events: &mut Vec<Event>,
    held: Option<&str>,
    promote: &mut bool,
    promote_full: bool,
) {
    let Some(held) = held else { return };
    if *promote || promote_full {
        *promote = false;
        events.push(Event {
            warning: true,
            reason: "PromotionHeld",
            message: format!(
                "promotion waits: an error-budget gate holds the release ({held}); the {} annotation with a reason lets this revision through",
                BYPASS_ANNOTATION
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec_json(extra: serde_json::Value) -> ErrorBudgetGateSpec {
        let mut base = serde_json::json!({
            "selector": {"matchLabels": {"app": "checkout"}},
            "objective": 99.9,
            "window": "28d",
            "sli": {"events": {
                "errorQuery": "sum(increase(http_requests_total{job=\"checkout\",code=~\"5..\"}[{{window}}]))",
                "totalQuery": "sum(increase(http_requests_total{job=\"checkout\"}[{{window}}]))"
            }},
            "prometheus": {"address": "http://prometheus:9090"}
        });
        if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        serde_json::from_value(base).expect("spec")
    }

    fn spec() -> ErrorBudgetGateSpec {
        spec_json(serde_json::json!({}))
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("time")
    }

    /// The SLO-window error ratio that leaves `percent` of a 99.9% budget.
    fn ratio_for_budget(percent: f64) -> f64 {
        (1.0 - percent / 100.0) * 0.001
    }

    /// Measurements with the SLO window at `budget` percent left and every burn window at `burn`×.
    fn measured(budget: f64, burn: f64) -> Measurements {
        let mut m = Measurements::new();
        for window in planned_windows(&spec()) {
            m.insert(window, burn * 0.001);
        }
        m.insert("28d".to_owned(), ratio_for_budget(budget));
        m
    }

    /// Evaluates a series of budgets (no burn) one minute apart, returning every evaluation.
    fn run(spec: &ErrorBudgetGateSpec, budgets: &[f64]) -> Vec<GateEvaluation> {
        let mut status: Option<ErrorBudgetGateStatus> = None;
        let mut out = Vec::new();
        for (i, budget) in budgets.iter().enumerate() {
            let now = at(i64::try_from(i).expect("index") * 60);
            let e = evaluate(spec, 1, status.as_ref(), Ok(&measured(*budget, 0.5)), now);
            status = Some(e.status.clone());
            out.push(e);
        }
        out
    }

    fn states(evaluations: &[GateEvaluation]) -> Vec<GateState> {
        evaluations
            .iter()
            .map(|e| e.status.state.expect("state"))
            .collect()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    use GateState::{CriticalOnly, Frozen, Open, Unknown, Warning};

    // --- math ---------------------------------------------------------------------------------

    #[test]
    fn budget_examples_by_hand() {
        // 99.9%: budget 0.001. 0.0009 spends 90% of it, 0.00095 spends 95%.
        assert!(close(budget_remaining_percent(0.0009, 99.9), 10.0));
        assert!(close(budget_remaining_percent(0.00095, 99.9), 5.0));
        assert!(close(budget_remaining_percent(0.0, 99.9), 100.0));
        assert!(close(budget_remaining_percent(0.001, 99.9), 0.0));
        // Twice the budget: overspent by 100%.
        assert!(close(budget_remaining_percent(0.002, 99.9), -100.0));
        // 99%: budget 0.01; 0.0025 spends a quarter.
        assert!(close(budget_remaining_percent(0.0025, 99.0), 75.0));
    }

    #[test]
    fn burn_rate_examples_by_hand() {
        assert!(close(burn_rate(0.0144, 99.9), 14.4));
        assert!(close(burn_rate(0.001, 99.9), 1.0));
        assert!(close(burn_rate(0.06, 99.0), 6.0));
    }

    #[test]
    fn odd_inputs_do_not_panic_and_are_bounded() {
        assert_eq!(budget_remaining_percent(f64::NAN, 99.9), None);
        assert_eq!(burn_rate(f64::NAN, 99.9), None);
        // Negative ratios clamp to 0, ratios above 1 (or infinite) to 1.
        assert!(close(budget_remaining_percent(-0.5, 99.9), 100.0));
        assert!(close(burn_rate(7.0, 99.9), 1000.0));
        assert!(close(burn_rate(f64::INFINITY, 99.9), 1000.0));
        assert!(close(burn_rate(f64::NEG_INFINITY, 99.9), 0.0));
        // Objectives outside [0, 100) have no budget.
        for objective in [100.0, 120.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(error_budget(objective), None, "{objective}");
            assert_eq!(budget_remaining_percent(0.001, objective), None);
        }
    }

    #[test]
    fn a_pair_fires_only_when_both_windows_exceed_the_factor() {
        assert!(pair_fires(Some(15.0), Some(20.0), 14.4));
        assert!(!pair_fires(Some(15.0), Some(10.0), 14.4), "short recovered");
        assert!(!pair_fires(Some(10.0), Some(20.0), 14.4), "long not yet");
        assert!(!pair_fires(Some(14.4), Some(14.4), 14.4), "strictly above");
        assert!(!pair_fires(None, Some(20.0), 14.4));
        assert!(!pair_fires(Some(20.0), None, 14.4));

        let mut m = Measurements::new();
        m.insert("1h".into(), 0.015); // 15×
        m.insert("5m".into(), 0.02); // 20×
        m.insert("6h".into(), 0.007); // 7×
        m.insert("30m".into(), 0.005); // 5×
        let rates = evaluate_burn_rates(&default_burn_rate_alerts(), 99.9, &m);
        assert_eq!(rates.len(), 2);
        assert!(rates[0].firing);
        assert!(close(rates[0].long_burn_rate, 15.0));
        assert!(!rates[1].firing, "30m at 5× is below 6×");
    }

    #[test]
    fn the_api_defaults_are_the_workbook_pairs() {
        assert_eq!(spec().burn_rate_alerts, default_burn_rate_alerts());
        assert_eq!(spec().thresholds, BudgetThresholds::default());
        assert_eq!(evaluation_interval(&spec()), Duration::from_secs(60));
        assert_eq!(on_unknown(&spec()), UnknownPolicy::Hold);
        assert_eq!(in_flight_policy(&spec()), InFlightPolicy::HoldAtNextStep);
    }

    // --- query plan ---------------------------------------------------------------------------

    #[test]
    fn the_plan_is_the_slo_window_plus_each_distinct_burn_window() {
        assert_eq!(planned_windows(&spec()), ["28d", "1h", "5m", "6h", "30m"]);
        let shared = spec_json(serde_json::json!({"burnRateAlerts": [
            {"longWindow": "1h", "shortWindow": "5m", "factor": 14.4},
            {"longWindow": "6h", "shortWindow": "1h", "factor": 6.0},
            {"longWindow": "1h", "shortWindow": "5m", "factor": 10.0}
        ]}));
        assert_eq!(planned_windows(&shared), ["28d", "1h", "5m", "6h"]);
        let none = spec_json(serde_json::json!({"burnRateAlerts": []}));
        assert_eq!(planned_windows(&none), ["28d"]);
    }

    #[test]
    fn events_queries_substitute_the_window() {
        let plan = query_plan(&spec()).expect("plan");
        assert_eq!(plan.len(), 5);
        assert_eq!(plan[0].window, "28d");
        assert_eq!(
            plan[0].promql,
            "(sum(increase(http_requests_total{job=\"checkout\",code=~\"5..\"}[28d]))) / \
             (sum(increase(http_requests_total{job=\"checkout\"}[28d])))"
        );
        assert!(plan[2].promql.contains("[5m]"));
        assert!(plan.iter().all(|q| !q.promql.contains("{{window}}")));
    }

    #[test]
    fn sloth_and_pyrra_read_their_recording_rules() {
        let sloth = spec_json(
            serde_json::json!({"window": "30d", "sli": {"sloth": {"service": "checkout", "slo": "requests-availability"}}}),
        );
        let plan = query_plan(&sloth).expect("plan");
        assert_eq!(
            plan[0].promql,
            "max(slo:sli_error:ratio_rate30d{sloth_service=\"checkout\",sloth_slo=\"requests-availability\"})"
        );
        assert_eq!(
            plan[2].promql,
            "max(slo:sli_error:ratio_rate5m{sloth_service=\"checkout\",sloth_slo=\"requests-availability\"})"
        );

        let pyrra = spec_json(
            serde_json::json!({"sli": {"pyrra": {"slo": "checkout-\"x\"", "metric": "http_requests"}}}),
        );
        let plan = query_plan(&pyrra).expect("plan");
        assert_eq!(
            plan[0].promql,
            "1 - max(pyrra_availability{slo=\"checkout-\\\"x\\\"\"})"
        );
        assert_eq!(
            plan[1].promql,
            "max(http_requests:burnrate1h{slo=\"checkout-\\\"x\\\"\"})"
        );

        let neither = spec_json(serde_json::json!({"sli": {}}));
        assert!(query_plan(&neither).is_err());
    }

    // --- state machine ------------------------------------------------------------------------

    #[test]
    fn hysteresis_open_warning_frozen_and_back_above_unfreeze() {
        let e = run(&spec(), &[50.0, 20.0, 9.9, 12.0, 14.9, 15.0, 15.1, 30.0]);
        assert_eq!(
            states(&e),
            [Open, Warning, Frozen, Frozen, Frozen, Frozen, Warning, Open]
        );
        let reasons: Vec<&str> = e
            .iter()
            .map(|e| e.status.reason.as_deref().expect("reason"))
            .collect();
        assert_eq!(
            reasons,
            [
                REASON_BUDGET_HEALTHY,
                REASON_BUDGET_LOW,
                REASON_BUDGET_EXHAUSTED,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_LOW,
                REASON_BUDGET_HEALTHY
            ]
        );
        // Events exactly on transitions: first state, Warning, Frozen, Warning, Open.
        let counts: Vec<usize> = e.iter().map(|e| e.events.len()).collect();
        assert_eq!(counts, [1, 1, 1, 0, 0, 0, 1, 1]);
        assert!(e[2].events[0].warning);
        assert_eq!(e[2].events[0].reason, "GateFrozen");
        // `since` moves only on transitions.
        assert_eq!(e[4].status.since, Some(Time(at(120))));
        assert_eq!(e[6].status.since, Some(Time(at(360))));
        let last = &e[7].status;
        assert_eq!(last.history.len(), 5);
        assert_eq!(last.history[2].from, Some(Warning));
        assert_eq!(last.history[2].to, Frozen);
        assert!(
            last.history[2]
                .reason
                .starts_with("BudgetExhausted: 9.9% of budget left")
        );
    }

    #[test]
    fn a_new_gate_between_freeze_and_unfreeze_is_not_frozen() {
        assert_eq!(states(&run(&spec(), &[12.0])), [Warning]);
    }

    #[test]
    fn critical_only_below_critical_threshold_and_back_through_frozen() {
        let e = run(&spec(), &[30.0, 4.0, -20.0, 7.0, 14.0, 16.0]);
        assert_eq!(
            states(&e),
            [Open, CriticalOnly, CriticalOnly, Frozen, Frozen, Warning]
        );
        assert!(close(e[2].status.budget_remaining_percent, -20.0));
    }

    #[test]
    fn a_fast_burn_freezes_with_budget_left_and_the_short_window_ends_it() {
        let spec = spec();
        let mut m = measured(60.0, 0.5);
        m.insert("1h".into(), 0.015);
        m.insert("5m".into(), 0.03);
        let first = evaluate(&spec, 1, None, Ok(&m), at(0));
        assert_eq!(first.status.state, Some(Frozen));
        assert_eq!(first.status.reason.as_deref(), Some(REASON_FAST_BURN));
        assert!(
            first
                .status
                .message
                .as_deref()
                .expect("message")
                .contains("15.0× over 1h and 30.0× over 5m"),
            "{:?}",
            first.status.message
        );
        assert!(first.status.burn_rates[0].firing);
        // Only the long window still burns: the pair stops firing, budget is ample, the gate opens.
        m.insert("5m".into(), 0.0);
        let second = evaluate(&spec, 1, Some(&first.status), Ok(&m), at(60));
        assert_eq!(second.status.state, Some(Open));
        assert_eq!(second.events.len(), 1);
    }

    #[test]
    fn unknown_when_prometheus_fails_or_data_is_missing_and_hysteresis_survives_it() {
        let spec = spec();
        let frozen = evaluate(&spec, 1, None, Ok(&measured(8.0, 0.5)), at(0));
        let down = evaluate(
            &spec,
            1,
            Some(&frozen.status),
            Err("connection refused"),
            at(60),
        );
        assert_eq!(down.status.state, Some(Unknown));
        assert_eq!(
            down.status.reason.as_deref(),
            Some(REASON_PROMETHEUS_UNREACHABLE)
        );
        assert_eq!(down.events.len(), 1);
        assert!(down.events[0].warning);
        // Last figures are kept, Ready is False, releases are held (onUnknown defaults to Hold).
        assert!(close(down.status.budget_remaining_percent, 8.0));
        let ready = conditions::get(&down.status.conditions, CONDITION_READY).expect("ready");
        assert_eq!(ready.status, "False");
        let held = conditions::get(&down.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "True");
        // Back at 12%: between freeze and unfreeze, the gate was frozen before the outage.
        let back = evaluate(
            &spec,
            1,
            Some(&down.status),
            Ok(&measured(12.0, 0.5)),
            at(120),
        );
        assert_eq!(back.status.state, Some(Frozen));

        let mut partial = measured(50.0, 0.5);
        partial.remove("30m");
        let missing = evaluate(&spec, 1, None, Ok(&partial), at(0));
        assert_eq!(missing.status.state, Some(Unknown));
        assert_eq!(missing.status.reason.as_deref(), Some(REASON_NO_DATA));
        assert!(
            missing
                .status
                .message
                .as_deref()
                .expect("m")
                .contains("30m")
        );

        let mut silent = measured(50.0, 0.5);
        silent.insert("28d".into(), f64::NAN);
        let nodata = evaluate(&spec, 1, None, Ok(&silent), at(0));
        assert_eq!(nodata.status.reason.as_deref(), Some(REASON_NO_DATA));

        // NaN on a short window is a quiet window: the gate is evaluated, the pair does not fire.
        let mut quiet = measured(50.0, 20.0);
        quiet.insert("5m".into(), f64::NAN);
        quiet.insert("30m".into(), f64::NAN);
        let e = evaluate(&spec, 1, None, Ok(&quiet), at(0));
        assert_eq!(e.status.state, Some(Open));

        let allow = spec_json(serde_json::json!({"onUnknown": "Allow"}));
        let e = evaluate(&allow, 1, None, Err("timeout"), at(0));
        let held = conditions::get(&e.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "False");
    }

    #[test]
    fn an_invalid_objective_is_unknown_not_a_panic() {
        let mut bad = spec();
        bad.objective = 100.0;
        let e = evaluate(&bad, 1, None, Ok(&measured(50.0, 0.5)), at(0));
        assert_eq!(e.status.state, Some(Unknown));
        assert_eq!(e.status.reason.as_deref(), Some(REASON_INVALID_SPEC));
    }

    #[test]
    fn status_times_conditions_and_requeue() {
        let spec = spec_json(serde_json::json!({"evaluationInterval": "30s"}));
        let e = evaluate(&spec, 7, None, Ok(&measured(50.0, 0.5)), at(0));
        assert_eq!(e.requeue_after, Duration::from_secs(30));
        assert_eq!(e.status.next_evaluation_time, Some(Time(at(30))));
        assert_eq!(e.status.last_evaluation_time, Some(Time(at(0))));
        assert_eq!(e.status.observed_generation, Some(7));
        assert!(close(e.status.error_ratio, ratio_for_budget(50.0)));
        assert_eq!(e.status.burn_rates.len(), 2);
        let ready = conditions::get(&e.status.conditions, CONDITION_READY).expect("ready");
        assert_eq!(ready.status, "True");
        let held = conditions::get(&e.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "False");
    }

    #[test]
    fn history_is_bounded_to_the_newest_transitions() {
        let budgets: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 50.0 } else { 20.0 })
            .collect();
        let e = run(&spec(), &budgets);
        let history = &e[29].status.history;
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history.last().expect("last").at, Time(at(29 * 60)));
        assert_eq!(history[0].at, Time(at(10 * 60)));
        assert!(e.iter().all(|e| e.events.len() == 1));
    }

    // --- Rollout side -------------------------------------------------------------------------

    fn status_at(budget: f64) -> ErrorBudgetGateStatus {
        evaluate(&spec(), 1, None, Ok(&measured(budget, 0.5)), at(0)).status
    }

    fn facts(kind: RevisionKind, annotations: &[(&str, &str)]) -> RevisionFacts {
        let annotations = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RevisionFacts::from_annotations(kind, &annotations)
    }

    fn decide(
        status: Option<&ErrorBudgetGateStatus>,
        policy: GatePolicy,
        f: &RevisionFacts,
    ) -> ReleaseDecision {
        release_decision(
            "checkout-slo",
            status,
            &BudgetThresholds::default(),
            &policy,
            f,
        )
    }

    fn default_policy() -> GatePolicy {
        GatePolicy::from_spec(&spec())
    }

    #[test]
    fn a_frozen_gate_holds_a_new_release_with_the_figures() {
        let frozen = status_at(6.2);
        let d = decide(
            Some(&frozen),
            default_policy(),
            &facts(RevisionKind::NewRelease, &[]),
        );
        assert_eq!(
            d,
            ReleaseDecision::Hold {
                reason: REASON_ERROR_BUDGET_EXHAUSTED.to_owned(),
                message: "gate checkout-slo: 6.2% of budget left (freeze below 10%); releases resume above 15%".to_owned()
            }
        );
        let open = status_at(60.0);
        let warning = status_at(20.0);
        for s in [&open, &warning] {
            assert_eq!(
                decide(
                    Some(s),
                    default_policy(),
                    &facts(RevisionKind::NewRelease, &[])
                ),
                ReleaseDecision::Allow
            );
        }
    }

    #[test]
    fn rollbacks_are_never_held() {
        for status in [status_at(6.2), status_at(2.0), status_at(-50.0)] {
            for on_unknown in [UnknownPolicy::Hold, UnknownPolicy::Allow] {
                for in_flight in [
                    InFlightPolicy::Abort,
                    InFlightPolicy::HoldAtNextStep,
                    InFlightPolicy::Continue,
                ] {
                    let policy = GatePolicy {
                        on_unknown,
                        in_flight,
                    };
                    let f = facts(RevisionKind::Rollback, &[]);
                    assert_eq!(decide(Some(&status), policy, &f), ReleaseDecision::Allow);
                    assert_eq!(decide(None, policy, &f), ReleaseDecision::Allow);
                }
            }
        }
    }

    #[test]
    fn a_bypass_with_a_reason_passes_a_frozen_gate_but_not_critical_only() {
        let frozen = status_at(6.2);
        let bypass = facts(
            RevisionKind::NewRelease,
            &[(BYPASS_ANNOTATION, " INC-42 hotfix ")],
        );
        assert_eq!(bypass.bypass_reason.as_deref(), Some("INC-42 hotfix"));
        match decide(Some(&frozen), default_policy(), &bypass) {
            ReleaseDecision::AllowBypassed { reason } => {
                assert!(reason.contains("INC-42 hotfix"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let empty = facts(RevisionKind::NewRelease, &[(BYPASS_ANNOTATION, "  ")]);
        assert!(matches!(
            decide(Some(&frozen), default_policy(), &empty),
            ReleaseDecision::Hold { .. }
        ));

        let critical_only = status_at(3.0);
        match decide(Some(&critical_only), default_policy(), &bypass) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_CRITICAL_ONLY);
                assert!(message.contains(CRITICAL_ANNOTATION), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn critical_only_passes_only_revisions_marked_critical() {
        let critical_only = status_at(3.0);
        let plain = facts(RevisionKind::NewRelease, &[(CRITICAL_ANNOTATION, "false")]);
        assert!(matches!(
            decide(Some(&critical_only), default_policy(), &plain),
            ReleaseDecision::Hold { .. }
        ));
        let critical = facts(RevisionKind::NewRelease, &[(CRITICAL_ANNOTATION, "true")]);
        assert!(critical.critical);
        assert!(matches!(
            decide(Some(&critical_only), default_policy(), &critical),
            ReleaseDecision::AllowBypassed { .. }
        ));
        // A critical fix passes a Frozen gate too: CriticalOnly is never laxer than Frozen.
        assert!(matches!(
            decide(Some(&status_at(8.0)), default_policy(), &critical),
            ReleaseDecision::AllowBypassed { .. }
        ));
    }

    #[test]
    fn in_flight_releases_follow_the_policy() {
        let frozen = status_at(6.2);
        let in_flight = facts(RevisionKind::InFlight, &[]);
        let policy = |in_flight| GatePolicy {
            on_unknown: UnknownPolicy::Hold,
            in_flight,
        };
        assert!(matches!(
            decide(
                Some(&frozen),
                policy(InFlightPolicy::HoldAtNextStep),
                &in_flight
            ),
            ReleaseDecision::Hold { .. }
        ));
        assert!(matches!(
            decide(Some(&frozen), policy(InFlightPolicy::Abort), &in_flight),
            ReleaseDecision::Abort { .. }
        ));
        assert_eq!(
            decide(Some(&frozen), policy(InFlightPolicy::Continue), &in_flight),
            ReleaseDecision::Allow
        );
        // An outage does not abort a release; it holds it.
        let unknown = evaluate(&spec(), 1, None, Err("down"), at(0)).status;
        assert!(matches!(
            decide(Some(&unknown), policy(InFlightPolicy::Abort), &in_flight),
            ReleaseDecision::Hold { .. }
        ));
    }

    #[test]
    fn unknown_follows_on_unknown_and_a_never_evaluated_gate_is_unknown() {
        let unknown = evaluate(&spec(), 1, None, Err("down"), at(0)).status;
        let new = facts(RevisionKind::NewRelease, &[]);
        let hold = GatePolicy {
            on_unknown: UnknownPolicy::Hold,
            in_flight: InFlightPolicy::HoldAtNextStep,
        };
        let allow = GatePolicy {
            on_unknown: UnknownPolicy::Allow,
            ..hold
        };
        match decide(Some(&unknown), hold, &new) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_UNKNOWN);
                assert!(message.contains("down"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(Some(&unknown), allow, &new), ReleaseDecision::Allow);
        assert!(matches!(
            decide(None, hold, &new),
            ReleaseDecision::Hold { .. }
        ));
        assert_eq!(decide(None, allow, &new), ReleaseDecision::Allow);
    }

    #[test]
    fn a_fast_burn_hold_says_so() {
        let mut m = measured(60.0, 0.5);
        m.insert("1h".into(), 0.015);
        m.insert("5m".into(), 0.03);
        let burning = evaluate(&spec(), 1, None, Ok(&m), at(0)).status;
        match decide(
            Some(&burning),
            default_policy(),
            &facts(RevisionKind::NewRelease, &[]),
        ) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_BURNING);
                assert!(message.contains("15.0× over 1h"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn combine_keeps_the_most_restrictive_with_all_reasons() {
        let hold = |r: &str, m: &str| ReleaseDecision::Hold {
            reason: r.into(),
            message: m.into(),
        };
        assert_eq!(combine([]), ReleaseDecision::Allow);
        assert_eq!(
            combine([ReleaseDecision::Allow, ReleaseDecision::Allow]),
            ReleaseDecision::Allow
        );
        assert_eq!(
            combine([
                ReleaseDecision::Allow,
                hold(REASON_ERROR_BUDGET_EXHAUSTED, "gate a"),
                ReleaseDecision::AllowBypassed { reason: "x".into() },
                hold(REASON_ERROR_BUDGET_BURNING, "gate b"),
            ]),
            hold(REASON_ERROR_BUDGET_EXHAUSTED, "gate a; gate b")
        );
        assert_eq!(
            combine([
                hold("R", "gate a"),
                ReleaseDecision::Abort {
                    message: "gate c".into()
                }
            ]),
            ReleaseDecision::Abort {
                message: "gate c".into()
            }
        );
        assert_eq!(
            combine([
                ReleaseDecision::AllowBypassed { reason: "a".into() },
                ReleaseDecision::Allow,
                ReleaseDecision::AllowBypassed { reason: "b".into() },
            ]),
            ReleaseDecision::AllowBypassed {
                reason: "a; b".into()
            }
        );
    }

    // --- properties ---------------------------------------------------------------------------

    fn view(state: GateState, in_flight: InFlightPolicy) -> GateView {
        GateView {
            name: "checkout-slo".into(),
            status: Some(ErrorBudgetGateStatus {
                state: Some(state),
                budget_remaining_percent: Some(6.2),
                ..ErrorBudgetGateStatus::default()
            }),
            thresholds: BudgetThresholds::default(),
            policy: GatePolicy {
                on_unknown: UnknownPolicy::Hold,
                in_flight,
            },
        }
    }

    fn releasing(stable: &str) -> RolloutStatus {
        RolloutStatus {
            stable_rs: Some(stable.into()),
            ..RolloutStatus::default()
        }
    }

    fn gate_once(
        status: &mut RolloutStatus,
        gating: &Gating,
        current: &str,
    ) -> (Gated, Vec<Event>) {
        let mut events = Vec::new();
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let gated = gate_release(status, gating, current, true, now, 1, &mut events);
        (gated, events)
    }

    #[test]
    fn a_frozen_gate_holds_a_new_revision_and_says_when_it_resumes() {
        let gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::HoldAtNextStep)],
            ..Gating::default()
        };
        let mut status = releasing("v1");
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!(
            gated,
            Gated::HoldNew {
                message: "gate checkout-slo: 6.2% of budget left (freeze below 10%); releases resume above 15%".into()
            }
        );
        let held = conditions::get(&status.conditions, CONDITION_RELEASE_HELD).expect("condition");
        assert_eq!(
            (held.status.as_str(), held.reason.as_str()),
            ("True", REASON_ERROR_BUDGET_EXHAUSTED)
        );
        assert_eq!(
            status.error_budget.as_ref().map(|e| e.held_by.clone()),
            Some(vec!["checkout-slo".to_owned()])
        );
        assert_eq!(events.len(), 1);
        // Holding again says nothing new.
        let (_, events) = gate_once(&mut status, &gating, "v2");
        assert!(events.is_empty());
        assert!(!admitted(&status, "v2"));
    }

    #[test]
    fn a_release_admitted_before_the_freeze_is_held_in_flight_or_aborted_per_policy() {
        for (policy, expected) in [
            (InFlightPolicy::HoldAtNextStep, "hold"),
            (InFlightPolicy::Abort, "abort"),
            (InFlightPolicy::Continue, "go"),
        ] {
            let mut status = releasing("v1");
            let (gated, _) = gate_once(&mut status, &Gating::default(), "v2");
            assert_eq!(gated, Gated::Go);
            assert!(admitted(&status, "v2"));
            let gating = Gating {
                gates: vec![view(GateState::Frozen, policy)],
                ..Gating::default()
            };
            let (gated, _) = gate_once(&mut status, &gating, "v2");
            let kind = match gated {
                Gated::HoldInFlight { .. } => "hold",
                Gated::Abort { .. } => "abort",
                Gated::Go => "go",
                Gated::HoldNew { .. } => "new",
            };
            assert_eq!(kind, expected, "{policy:?}");
        }
    }

    #[test]
    fn a_bypass_reason_lets_one_revision_through_and_is_recorded() {
        let mut gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::HoldAtNextStep)],
            bypass_reason: Some("INC-1234 hotfix".into()),
            critical: false,
        };
        let mut status = releasing("v1");
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!(gated, Gated::Go);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, EVENT_RELEASE_BYPASSED);
        let record = status.error_budget.clone().expect("record");
        assert_eq!(record.bypasses.len(), 1);
        assert_eq!(record.bypasses[0].revision, "v2");
        assert_eq!(record.bypasses[0].reason, "INC-1234 hotfix");
        // The same revision keeps going (one record); the next one needs a new reason.
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!((gated, events.len()), (Gated::Go, 0));
        status.stable_rs = Some("v2".into());
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
        gating.bypass_reason = Some("INC-1235".into());
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert_eq!(gated, Gated::Go);
        assert_eq!(status.error_budget.map(|e| e.bypasses.len()), Some(2));
    }

    #[test]
    fn below_critical_only_a_revision_marked_critical_passes() {
        let mut gating = Gating {
            gates: vec![view(
                GateState::CriticalOnly,
                InFlightPolicy::HoldAtNextStep,
            )],
            bypass_reason: Some("please".into()),
            critical: false,
        };
        let mut status = releasing("v1");
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
        gating.critical = true;
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert_eq!(gated, Gated::Go);
        let record = status.error_budget.expect("record");
        assert!(record.bypasses[0].critical);
    }

    #[test]
    fn going_back_to_a_revision_that_was_stable_is_never_held() {
        let gating = Gating {
            gates: vec![view(GateState::CriticalOnly, InFlightPolicy::Abort)],
            ..Gating::default()
        };
        let mut status = releasing("v1");
        let (_, _) = gate_once(&mut status, &Gating::default(), "v2");
        // v2 became stable; undo to v1 during the freeze.
        status.stable_rs = Some("v2".into());
        let (gated, _) = gate_once(&mut status, &gating, "v1");
        assert_eq!(gated, Gated::Go);
        // A never-released revision is held.
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert!(matches!(gated, Gated::HoldNew { .. }));
    }

    #[test]
    fn a_retry_asks_the_gates_again() {
        let mut status = releasing("v1");
        let (_, _) = gate_once(&mut status, &Gating::default(), "v2");
        forget_admission(&mut status);
        let gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::Abort)],
            ..Gating::default()
        };
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
    }

    proptest! {
        /// Once frozen, a budget that stays strictly between freezeBelow and unfreezeAbove keeps the
        /// gate Frozen, with no event after the freeze.
        #[test]
        fn oscillating_between_the_thresholds_never_unfreezes(
            series in proptest::collection::vec(10.0001f64..14.9999, 1..40)
        ) {
            let mut budgets = vec![50.0, 9.0];
            budgets.extend(series);
            let e = run(&spec(), &budgets);
            for later in &e[2..] {
                prop_assert_eq!(later.status.state, Some(Frozen));
                prop_assert!(later.events.is_empty());
            }
        }

        /// The other side of hysteresis: a gate that is not held stays Warning (never Frozen) while
        /// the budget moves between the thresholds.
        #[test]
        fn an_open_gate_in_the_band_never_freezes(
            series in proptest::collection::vec(10.0001f64..14.9999, 1..40)
        ) {
            let mut budgets = vec![50.0];
            budgets.extend(series);
            let e = run(&spec(), &budgets);
            for later in &e[1..] {
                prop_assert_eq!(later.status.state, Some(Warning));
            }
        }

        /// The same inputs at the same time change nothing and emit nothing.
        #[test]
        fn evaluating_twice_is_idempotent(
            budgets in proptest::collection::vec(-50.0f64..100.0, 0..10),
            last in -50.0f64..100.0,
            long in 0.0f64..0.05,
            short in 0.0f64..0.05,
            fail in any::<bool>(),
        ) {
            let spec = spec();
            let history = run(&spec, &budgets);
            let previous = history.last().map(|e| e.status.clone());
            let mut m = measured(last, 0.5);
            m.insert("1h".into(), long);
            m.insert("5m".into(), short);
            let input = if fail { Err("down") } else { Ok(&m) };
            let now = at(100_000);
            let once = evaluate(&spec, 1, previous.as_ref(), input, now);
            let twice = evaluate(&spec, 1, Some(&once.status), input, now);
            prop_assert_eq!(&twice.status, &once.status);
            prop_assert!(twice.events.is_empty());
        }

        /// Any numbers at all: no panic, and the result is a state.
        #[test]
        fn evaluate_never_panics(
            objective in prop_oneof![Just(f64::NAN), Just(100.0), -10.0f64..110.0],
            ratios in proptest::collection::vec(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -2.0f64..2.0], 5),
        ) {
            let mut spec = spec();
            spec.objective = objective;
            let m: Measurements = planned_windows(&spec).into_iter().zip(ratios).collect();
            let e = evaluate(&spec, 1, None, Ok(&m), at(0));
            prop_assert!(e.status.state.is_some());
            let d = release_decision("g", Some(&e.status), &spec.thresholds, &GatePolicy::from_spec(&spec), &facts(RevisionKind::NewRelease, &[]));
            prop_assert!(d.severity() <= 3);
        }
    }
}
