//! What the canary and blue-green property tests share: a gate in a given state, whether a status
//! says the release is held, analysis verdicts, the case count, and the check that a reconcile
//! applied twice changes nothing.

use proptest::prelude::*;
use sluice_api::gate::{
    BudgetThresholds, ErrorBudgetGateStatus, GateState, InFlightPolicy, UnknownPolicy,
};
use sluice_api::rollout::RolloutStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_api::analysis::AnalysisPhase;
use sluice_engine::gate::{GatePolicy, GateView};
use sluice_engine::release::{Plan, ReplicaSetView};
use sluice_engine::runs::{RunSlot, RunView};

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
        interval: std::time::Duration::from_secs(60),
    }
}

/// The status's `ReleaseHeld` condition is True.
pub fn held(status: &RolloutStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "ReleaseHeld" && c.status == "True")
}

/// The AnalysisRuns of the simulated cluster, as the controller keeps them: created, stopped and
/// deleted as plans say, each with the verdict a test gives it.
#[derive(Clone, Debug, Default)]
pub struct SimRuns {
    pub runs: Vec<RunView>,
}

impl SimRuns {
    /// Applies a plan's run changes; `hash` is the revision the started runs measure.
    pub fn apply(&mut self, plan: &Plan, hash: &str) {
        for start in &plan.runs.start {
            if !self.runs.iter().any(|r| r.name == start.name) {
                self.runs.push(RunView {
                    name: start.name.clone(),
                    hash: Some(hash.to_owned()),
                    slot: Some(start.slot),
                    phase: None,
                    message: None,
                    terminating: false,
                    failed_policies: Vec::new(),
                    created: None,
                });
            }
        }
        for name in &plan.runs.terminate {
            if let Some(run) = self.runs.iter_mut().find(|r| r.name == *name) {
                run.terminating = true;
            }
        }
        self.runs.retain(|r| !plan.runs.delete.contains(&r.name));
    }

    /// Gives the run recorded in `status` for `slot` the verdict drawn as `v`: 0 Running,
    /// 1 Successful, 2 Inconclusive, else Failed. Returns whether there was such a run.
    pub fn judge(&mut self, status: &RolloutStatus, slot: RunSlot, v: u8) -> bool {
        let record = match slot {
            RunSlot::Step(_) => status
                .canary
                .as_ref()
                .and_then(|c| c.current_step_analysis_run_status.as_ref()),
            RunSlot::Background => status
                .canary
                .as_ref()
                .and_then(|c| c.current_background_analysis_run_status.as_ref()),
            RunSlot::PrePromotion => status
                .blue_green
                .as_ref()
                .and_then(|b| b.pre_promotion_analysis_run_status.as_ref()),
            RunSlot::PostPromotion => status
                .blue_green
                .as_ref()
                .and_then(|b| b.post_promotion_analysis_run_status.as_ref()),
            RunSlot::Check(i) => status
                .pre_deployment_checks
                .as_ref()
                .and_then(|c| c.checks.get(usize::try_from(i).ok()?))
                .and_then(|c| c.analysis_run.as_ref()),
        };
        let Some(run) = record.and_then(|r| self.runs.iter_mut().find(|run| run.name == r.name))
        else {
            return false;
        };
        let (phase, message) = match v {
            0 => (AnalysisPhase::Running, None),
            1 => (AnalysisPhase::Successful, None),
            2 => (AnalysisPhase::Inconclusive, Some("no data")),
            _ => (AnalysisPhase::Failed, Some("error-rate 0.07 >= 0.05")),
        };
        run.phase = Some(phase);
        run.message = message.map(str::to_owned);
        run.failed_policies = if phase == AnalysisPhase::Failed {
            vec![None]
        } else {
            Vec::new()
        };
        true
    }
}

/// The names of the runs `status` records, one per slot.
pub fn recorded_runs(status: &RolloutStatus) -> Vec<String> {
    sluice_engine::runs::recorded_run_names(status)
}

/// No run is forgotten: every run that exists was named by a status that was written before it
/// (`recorded`). A run created but never recorded, when the controller died between the two
/// writes, would be replaced by another and its verdict, perhaps a failure, never read.
pub fn no_run_forgotten(runs: &SimRuns, recorded: &BTreeSet<String>) -> Result<(), TestCaseError> {
    for run in &runs.runs {
        prop_assert!(
            recorded.contains(&run.name),
            "run {} exists but no written status ever named it",
            run.name
        );
    }
    Ok(())
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

/// A time after `now` at which nothing the reconcile `again` scheduled has come due yet: half way to
/// its requeue, or an hour on when it scheduled nothing. `None` when the requeue is too close to
/// leave room.
pub fn later_than(now: Timestamp, again: &Plan) -> Option<Timestamp> {
    let wait = match again.requeue_after {
        Some(d) if d < Duration::from_secs(2) => return None,
        Some(d) => d / 2,
        None => Duration::from_secs(3600),
    };
    let wait = SignedDuration::try_from(wait).ok()?;
    now.checked_add(wait).ok()
}

/// Time passing alone changes nothing before the requeue the last reconcile asked for: a reconcile
/// at a later `now`, of the same world, writes the same status (no timestamp refreshed every time,
/// which would turn every settled Rollout into a loop through its own watch) and records nothing.
pub fn later_reconcile_changes_nothing(again: &Plan, later: &Plan) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        &later.status,
        &again.status,
        "a reconcile later, with nothing else new, changed the status"
    );
    prop_assert_eq!(
        &later.scale,
        &again.scale,
        "a later reconcile changed the scale"
    );
    prop_assert_eq!(
        &later.traffic,
        &again.traffic,
        "a later reconcile changed the traffic"
    );
    prop_assert!(
        later.events.is_empty(),
        "a later reconcile emitted {:?}",
        later.events
    );
    Ok(())
}

/// The controller is not woken by its own status writes, so a plan must stand on its own: decided
/// again from the status it writes, in the same world at the same time (`own`), nothing more
/// happens, and whatever `own` would wait for, the plan already asked to be woken for in time.
pub fn plan_is_a_fixed_point(plan: &Plan, own: &Plan) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        &own.status,
        &plan.status,
        "its own status moved the decision on"
    );
    prop_assert_eq!(&own.scale, &plan.scale, "its own status changed the scale");
    prop_assert_eq!(
        &own.traffic,
        &plan.traffic,
        "its own status changed the traffic"
    );
    prop_assert!(
        own.events.is_empty(),
        "its own status emitted {:?}",
        own.events
    );
    if let Some(wait) = own.requeue_after {
        prop_assert!(
            plan.requeue_after.is_some_and(|asked| asked <= wait),
            "the plan asked to be woken after {:?}, but its status waits for {:?}",
            plan.requeue_after,
            wait
        );
    }
    Ok(())
}

/// A ReplicaSet in the simulated cluster.
#[derive(Clone, Debug)]
pub struct SimRs {
    pub replicas: i32,
    pub available: i32,
    /// Its pods become available when ready (a good image) or never.
    pub good: bool,
    pub scale_down_at: Option<Timestamp>,
    pub created: Timestamp,
}

/// The simulated cluster's ReplicaSets, by pod-template hash.
pub type SimReplicaSets = BTreeMap<String, SimRs>;

/// The ReplicaSets as the controller observes them.
pub fn views(rss: &SimReplicaSets) -> Vec<ReplicaSetView> {
    rss.iter()
        .map(|(hash, rs)| ReplicaSetView {
            hash: hash.clone(),
            replicas: rs.replicas,
            available: rs.available,
            scale_down_at: rs.scale_down_at,
            created: rs.created,
        })
        .collect()
}

/// The executor's writes before the status, the first `writes` of them: create the current
/// ReplicaSet (`good` or not, at `now`), scale up, record scale-down deadlines.
pub fn add_replica_sets(
    rss: &mut SimReplicaSets,
    plan: &Plan,
    (current, good, now): (&str, bool, Timestamp),
    writes: u8,
) {
    if writes >= 1 && plan.create_current && !rss.contains_key(current) {
        rss.insert(
            current.to_owned(),
            SimRs {
                replicas: 0,
                available: 0,
                good,
                scale_down_at: None,
                created: now,
            },
        );
    }
    if writes >= 2 {
        resize(rss, plan, true);
    }
    if writes >= 3 {
        mark(rss, plan);
    }
}

/// Sets the sizes the plan scales up (`up`) or down (else).
pub fn resize(rss: &mut SimReplicaSets, plan: &Plan, up: bool) {
    for (hash, replicas) in &plan.scale {
        if let Some(rs) = rss.get_mut(hash)
            && (*replicas > rs.replicas) == up
        {
            rs.replicas = *replicas;
            rs.available = rs.available.min(*replicas);
        }
    }
}

/// Records the plan's scale-down deadlines.
pub fn mark(rss: &mut SimReplicaSets, plan: &Plan) {
    for (hash, at) in &plan.scale_down_at {
        if let Some(rs) = rss.get_mut(hash) {
            rs.scale_down_at = *at;
        }
    }
}

/// The executor's writes, the first `writes` of them in its order: create, scale up, scale-down
/// deadlines, (4) the status, runs, scale down; deletions come after all of them. Returns whether
/// the status was written: the caller records it.
pub fn execute(
    rss: &mut SimReplicaSets,
    runs: &mut SimRuns,
    plan: &Plan,
    (current, good, now): (&str, bool, Timestamp),
    writes: u8,
) -> bool {
    add_replica_sets(rss, plan, (current, good, now), writes);
    if writes >= 5 {
        runs.apply(plan, current);
    }
    if writes >= 6 {
        resize(rss, plan, false);
    }
    if writes == u8::MAX {
        for hash in &plan.delete {
            rss.remove(hash);
        }
    }
    writes >= 4
}
