//! The `ErrorBudgetGate`'s logic: budget and burn-rate math, the windows an evaluation needs, the
//! gate's state machine with hysteresis, and whether a Rollout's revision may go ahead.
//!
//! Pure: the controller measures the error ratio of each window [`planned_windows`] names (a fixed
//! number per gate, however many Rollouts it selects; the PromQL is `sluice_analysis::slo`'s),
//! hands the ratios in with the time, writes the status, publishes the events, and asks
//! [`release_decision`] for each Rollout the gate selects.
//!
//! Math (SRE workbook), with the objective `o` in percent and the error budget `b = 1 - o/100`:
//! the burn rate over a window is `error ratio / b`; the budget left over the SLO window is
//! `1 - error ratio / b`, as a percent, negative when overspent.

mod admission;
mod budget;
mod decision;
mod state;
#[cfg(test)]
mod tests;
mod windows;

use std::collections::BTreeMap;
use std::time::Duration;

pub use sluice_api::gate::default_burn_rate_alerts;

pub(crate) use admission::refuse_promotion_while_held;
pub use admission::{
    BYPASS_HISTORY_LIMIT, EVENT_RELEASE_HELD, EVENT_RELEASE_RESUMED, GateView, Gated, Gating,
    REASON_EVALUATION_STALE, RELEASED_HISTORY_LIMIT, STALE_AFTER_INTERVALS, admitted,
    forget_admission, gate_release, settle,
};
pub use budget::{
    budget_remaining_percent, burn_rate, error_budget, evaluate_burn_rates, pair_fires,
    sanitize_ratio,
};
pub use decision::{
    GatePolicy, ReleaseDecision, RevisionFacts, RevisionKind, combine, release_decision,
};
pub use state::{
    GateEvaluation, GateEvent, evaluate, evaluation_interval, holds_releases, in_flight_policy,
    last_known_state, next_state, on_unknown,
};
pub use windows::planned_windows;

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
