//! What the canary and blue-green property tests share: a gate in a given state, and whether a
//! status says the release is held.

use sluice_api::gate::{
    BudgetThresholds, ErrorBudgetGateStatus, GateState, InFlightPolicy, UnknownPolicy,
};
use sluice_api::rollout::RolloutStatus;
use sluice_engine::gate::{GatePolicy, GateView};

/// A gate named `slo` in `state` (6% of budget left), holding on Unknown, with `in_flight`.
pub fn gate_view(state: GateState, in_flight: InFlightPolicy) -> GateView {
    GateView {
        name: "slo".into(),
        status: Some(ErrorBudgetGateStatus {
            state: Some(state),
            budget_remaining_percent: Some(6.0),
            ..ErrorBudgetGateStatus::default()
        }),
        thresholds: BudgetThresholds::default(),
        policy: GatePolicy {
            on_unknown: UnknownPolicy::Hold,
            in_flight,
        },
    }
}

/// The status's `ReleaseHeld` condition is True.
pub fn held(status: &RolloutStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "ReleaseHeld" && c.status == "True")
}
