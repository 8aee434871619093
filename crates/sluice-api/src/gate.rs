//! The `ErrorBudgetGate`: an SLO whose error budget decides whether the Rollouts it selects may start
//! new releases.
//!
//! Budget math (SRE workbook): with objective `o` (as a fraction) and error ratio `e` over the SLO
//! window, the budget left is `1 - e / (1 - o)`; the burn rate over a shorter window `w` is
//! `e(w) / (1 - o)`. A burn-rate alert fires only while both its long and its short window exceed the factor.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PrometheusConnection, duration_rule, prometheus_duration_rule};

/// An SLO whose remaining error budget and burn rates decide whether the Rollouts it selects may start
/// new releases.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ErrorBudgetGate",
    namespaced,
    status = "ErrorBudgetGateStatus",
    shortname = "ebg",
    category = "sluice",
    doc = "An SLO whose remaining error budget and burn rates decide whether the Rollouts it selects may start new releases.",
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "Open, Warning, Frozen, CriticalOnly or Unknown"
    ),
    printcolumn(
        name = "Budget Left",
        type_ = "number",
        json_path = ".status.budgetRemainingPercent",
        description = "Error budget left over the SLO window, in percent"
    ),
    printcolumn(
        name = "Objective",
        type_ = "number",
        json_path = ".spec.objective",
        description = "SLO objective, in percent"
    ),
    printcolumn(
        name = "Window",
        type_ = "string",
        json_path = ".spec.window",
        description = "SLO window"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = 1,
        description = "Why the gate is in this state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBudgetGateSpec {
    /// Selects the Rollouts, in the gate's namespace, whose releases this gate holds.
    pub selector: LabelSelector,
    /// The SLO objective in percent, strictly between 0 and 100, e.g. 99.9.
    #[x_kube(validation = Rule::new("self > 0.0 && self < 100.0").message("objective must be strictly between 0 and 100, e.g. 99.9"))]
    pub objective: f64,
    /// The SLO window over which the budget is spent, e.g. `28d` or `30d`.
    #[serde(default = "default_window")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = prometheus_duration_rule())]
    pub window: String,
    /// How good and bad events are counted: exactly one of `events`, `sloth` or `pyrra`.
    pub sli: ServiceLevelIndicator,
    /// Remaining-budget thresholds, in percent of the budget.
    #[serde(default)]
    pub thresholds: BudgetThresholds,
    /// Burn-rate alerts that freeze releases while both of their windows burn faster than the factor,
    /// even with budget left. Defaults to 1h/5m at 14.4 and 6h/30m at 6.
    #[serde(default = "default_burn_rate_alerts")]
    #[schemars(length(max = 8))]
    pub burn_rate_alerts: Vec<BurnRateAlert>,
    /// Where to send the queries.
    pub prometheus: PrometheusConnection,
    /// Time between evaluations, e.g. `1m`. Defaults to `1m`.
    #[serde(default = "default_evaluation_interval")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = duration_rule())]
    pub evaluation_interval: String,
    /// What the gate does when Prometheus cannot be queried or has no data. Defaults to `Hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unknown: Option<UnknownPolicy>,
    /// What happens to a release already in flight when the gate freezes. Defaults to `HoldAtNextStep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_releases: Option<InFlightPolicy>,
}

fn default_window() -> String {
    "28d".to_owned()
}
fn default_evaluation_interval() -> String {
    "1m".to_owned()
}
/// The workbook's paging pairs, applied when `burnRateAlerts` is absent: 1h/5m at 14.4× (2% of a
/// 30-day budget in an hour) and 6h/30m at 6× (5% in six hours).
pub fn default_burn_rate_alerts() -> Vec<BurnRateAlert> {
    vec![
        BurnRateAlert {
            long_window: "1h".to_owned(),
            short_window: "5m".to_owned(),
            factor: 14.4,
        },
        BurnRateAlert {
            long_window: "6h".to_owned(),
            short_window: "30m".to_owned(),
            factor: 6.0,
        },
    ]
}

/// How the gate counts good and bad events: exactly one of `events`, `sloth` or `pyrra`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.events), has(self.sloth), has(self.pyrra)].exists_one(x, x)").message("sli sets exactly one of events, sloth or pyrra"))]
pub struct ServiceLevelIndicator {
    /// Raw queries for bad and all events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventQueries>,
    /// Recording rules generated by Sloth (`slo:sli_error:ratio_rate*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sloth: Option<SlothSlo>,
    /// Recording rules generated by Pyrra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pyrra: Option<PyrraSlo>,
}

/// Where an SLI's error ratio comes from: the one source it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliSource<'a> {
    Events(&'a EventQueries),
    Sloth(&'a SlothSlo),
    Pyrra(&'a PyrraSlo),
}

impl ServiceLevelIndicator {
    /// The one source the SLI sets, or what is wrong (the schema refuses the same at apply).
    pub fn source(&self) -> Result<SliSource<'_>, String> {
        match (&self.events, &self.sloth, &self.pyrra) {
            (Some(events), None, None) => Ok(SliSource::Events(events)),
            (None, Some(sloth), None) => Ok(SliSource::Sloth(sloth)),
            (None, None, Some(pyrra)) => Ok(SliSource::Pyrra(pyrra)),
            _ => Err("sli must set exactly one of events, sloth or pyrra".to_owned()),
        }
    }
}

/// Raw PromQL queries for bad and all events; `{{window}}` is replaced by the window being evaluated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.errorQuery.contains('{{window}}') && self.totalQuery.contains('{{window}}')").message("errorQuery and totalQuery must both use {{window}}, e.g. sum(increase(http_requests_total{code=~\"5..\"}[{{window}}]))"))]
pub struct EventQueries {
    /// Bad events over `{{window}}`, e.g. `sum(increase(http_requests_total{job="checkout",code=~"5.."}[{{window}}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub error_query: String,
    /// All events over `{{window}}`, e.g. `sum(increase(http_requests_total{job="checkout"}[{{window}}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub total_query: String,
}

/// An SLO defined with Sloth, read from its recording rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlothSlo {
    /// The `sloth_service` label.
    #[schemars(length(min = 1, max = 253))]
    pub service: String,
    /// The `sloth_slo` label.
    #[schemars(length(min = 1, max = 253))]
    pub slo: String,
}

/// An SLO defined with Pyrra, read from its recording rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PyrraSlo {
    /// Name of the Pyrra SLO (the `slo` label on its recording rules).
    #[schemars(length(min = 1, max = 253))]
    pub slo: String,
    /// The base name of the recorded metric, e.g. `http_requests` for `http_requests:burnrate5m`.
    #[schemars(length(min = 1, max = 253))]
    pub metric: String,
}

/// Thresholds on the error budget left, in percent of the budget. They must be ordered
/// `criticalOnlyBelow < freezeBelow < unfreezeAbove` and `freezeBelow <= warnBelow`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.criticalOnlyBelow < self.freezeBelow").message("thresholds.criticalOnlyBelow must be below thresholds.freezeBelow").field_path(".criticalOnlyBelow"))]
#[x_kube(validation = Rule::new("self.freezeBelow < self.unfreezeAbove").message("thresholds.unfreezeAbove must be above thresholds.freezeBelow, so a frozen gate does not flap").field_path(".unfreezeAbove"))]
#[x_kube(validation = Rule::new("self.freezeBelow <= self.warnBelow").message("thresholds.warnBelow must not be below thresholds.freezeBelow").field_path(".warnBelow"))]
pub struct BudgetThresholds {
    /// Below this the gate is Warning: releases go on, with a warning. Defaults to 25.
    #[serde(default = "default_warn_below")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub warn_below: f64,
    /// Below this the gate is Frozen: new releases wait. Defaults to 10.
    #[serde(default = "default_freeze_below")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub freeze_below: f64,
    /// Below this only revisions marked critical pass. Defaults to 5.
    #[serde(default = "default_critical_only_below")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub critical_only_below: f64,
    /// A frozen gate opens again only above this. Defaults to 15.
    #[serde(default = "default_unfreeze_above")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub unfreeze_above: f64,
}

impl Default for BudgetThresholds {
    fn default() -> Self {
        Self {
            warn_below: default_warn_below(),
            freeze_below: default_freeze_below(),
            critical_only_below: default_critical_only_below(),
            unfreeze_above: default_unfreeze_above(),
        }
    }
}

fn default_warn_below() -> f64 {
    25.0
}
fn default_freeze_below() -> f64 {
    10.0
}
fn default_critical_only_below() -> f64 {
    5.0
}
fn default_unfreeze_above() -> f64 {
    15.0
}

/// A multi-window burn-rate alert: it fires while the burn rate over both windows exceeds `factor`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.shortWindow.matches('^[0-9]+[smh]$') && self.longWindow.matches('^[0-9]+[smh]$')) || duration(self.shortWindow) < duration(self.longWindow)").message("shortWindow must be shorter than longWindow").field_path(".shortWindow"))]
pub struct BurnRateAlert {
    /// The long window, e.g. `1h`.
    #[schemars(length(max = 16))]
    #[x_kube(validation = prometheus_duration_rule())]
    pub long_window: String,
    /// The short window that confirms the burn is still going on, e.g. `5m`.
    #[schemars(length(max = 16))]
    #[x_kube(validation = prometheus_duration_rule())]
    pub short_window: String,
    /// Burn rate above which the alert fires, e.g. 14.4 (2% of a 30-day budget in one hour).
    #[x_kube(validation = Rule::new("self > 0.0").message("factor must be greater than 0"))]
    pub factor: f64,
}

/// What a gate does when it cannot evaluate (Prometheus unreachable, no data).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UnknownPolicy {
    /// Hold new releases until the gate can evaluate again. Rollbacks always pass.
    Hold,
    /// Let releases through.
    Allow,
}

/// What a freeze does to a release already in flight.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InFlightPolicy {
    /// Finish the current step, then wait.
    HoldAtNextStep,
    /// Abort the release; traffic returns to stable.
    Abort,
    /// Let it finish.
    Continue,
}

/// The gate's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GateState {
    /// Budget is healthy: releases pass.
    Open,
    /// Budget is below warnBelow: releases pass, with a warning.
    Warning,
    /// Budget is below freezeBelow, or a burn-rate alert fires: new releases wait.
    Frozen,
    /// Budget is below criticalOnlyBelow: only revisions marked critical pass.
    CriticalOnly,
    /// The gate could not be evaluated; `onUnknown` decides.
    Unknown,
}

/// The last evaluation of a gate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBudgetGateStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Open, Warning, Frozen, CriticalOnly or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GateState>,
    /// A CamelCase reason for the state, e.g. `BudgetExhausted`, `FastBurn`, `PrometheusUnreachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence on the state, with the figures that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the gate entered its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Error budget left over the SLO window, in percent (negative when overspent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining_percent: Option<f64>,
    /// Error ratio over the SLO window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// Burn rates of the configured alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub burn_rates: Vec<BurnRateStatus>,
    /// When the gate was last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// When the gate will next be evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_evaluation_time: Option<Time>,
    /// The most recent state transitions, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<GateTransition>,
    /// Ready, ReleasesHeld, and the kstatus conditions Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The burn rates of one alert at the last evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BurnRateStatus {
    /// The alert's long window.
    pub long_window: String,
    /// The alert's short window.
    pub short_window: String,
    /// The alert's factor.
    pub factor: f64,
    /// Burn rate over the long window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_burn_rate: Option<f64>,
    /// Burn rate over the short window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_burn_rate: Option<f64>,
    /// Both windows exceed the factor.
    pub firing: bool,
}

/// One change of a gate's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateTransition {
    /// The state left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<GateState>,
    /// The state entered.
    pub to: GateState,
    /// When.
    pub at: Time,
    /// Why, with the figures.
    pub reason: String,
}
