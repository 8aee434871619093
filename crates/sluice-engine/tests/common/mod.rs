//! What the canary and blue-green property tests share: a gate in a given state, whether a status
//! says the release is held, analysis verdicts, the case count, and the check that a reconcile
//! applied twice changes nothing.

use proptest::prelude::*;
use sluice_api::gate::{
    BudgetThresholds, ErrorBudgetGateStatus, GateState, InFlightPolicy, UnknownPolicy,
};
use sluice_api::rollout::RolloutStatus;
use sluice_engine::canary::{AnalysisOutcome, Plan};
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

/// An analysis verdict from a drawn number: Running, Successful, Inconclusive, or Failed.
pub fn outcome(v: u8) -> AnalysisOutcome {
    match v {
        0 => AnalysisOutcome::Running,
        1 => AnalysisOutcome::Successful,
        2 => AnalysisOutcome::Inconclusive("no data".into()),
        _ => AnalysisOutcome::Failed("error-rate 0.07 >= 0.05".into()),
    }
}

/// `PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// With `plan` applied and nothing new in the world, the next reconcile (`again`) keeps the same
/// targets and records no new transition.
pub fn second_reconcile_changes_nothing(plan: &Plan, again: &Plan) -> Result<(), TestCaseError> {
    let mut kept = plan.scale.clone();
    kept.retain(|hash, _| !plan.delete.contains(hash));
    prop_assert_eq!(&again.scale, &kept, "second reconcile changed the scale");
    prop_assert_eq!(
        &again.traffic,
        &plan.traffic,
        "second reconcile changed the traffic"
    );
    prop_assert_eq!(
        again.status.current_step_index,
        plan.status.current_step_index
    );
    prop_assert_eq!(
        &again.status.pause_conditions,
        &plan.status.pause_conditions
    );
    prop_assert_eq!(again.status.phase, plan.status.phase);
    prop_assert_eq!(&again.status.stable_rs, &plan.status.stable_rs);
    prop_assert!(
        again.events.is_empty(),
        "second reconcile emitted {:?}",
        again.events
    );
    Ok(())
}
