//! Sluice's release engine: pure decisions, no I/O.
//!
//! The controller takes a snapshot (the Rollout, the ReplicaSets, AnalysisRuns and pods it owns,
//! people's requests) and the time, asks [`decide`] for a [`release::Plan`], and applies it.
//! Because nothing here reads a clock or a client, property tests drive thousands of random
//! histories through the same code that runs in the cluster.

pub mod adaptive;
pub mod analysis;
pub mod bluegreen;
pub mod breaker;
pub mod canary;
pub mod checks;
pub mod conditions;
pub mod confidence;
pub mod duration;
pub mod events;
pub mod gate;
pub mod hash;
pub mod history;
pub mod images;
pub mod judge;
pub mod pods;
pub mod release;
pub mod replicas;
pub mod restart;
pub mod runs;
pub mod takeover;
pub mod webhooks;
pub mod workload;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sluice_api::rollout::{BlueGreenStrategy, CanaryStrategy, RolloutPhase, RolloutStatus};

use events::Event;
use release::{Actions, Plan, ReplicaSetView, Snapshot};

/// A Rollout's release strategy.
#[derive(Clone, Copy, Debug)]
pub enum Strategy<'a> {
    Canary(&'a CanaryStrategy),
    BlueGreen(&'a BlueGreenStrategy),
}

/// How many passes of a strategy's state machine one decision may take before it stops and asks to
/// be woken again shortly. Every transition settles in a few; the bound only keeps a mistake from
/// spinning.
const MAX_PASSES: usize = 8;

/// Decides the next step of a release: everything the controller then does, and nothing it has to
/// work out for itself.
///
/// The strategy's state machine runs again on the status it produced (same observation, same
/// time, no new requests) until nothing more changes, so a plan stands on its own and the
/// controller need not be woken by its own status write to finish a transition. Each pass reads the
/// verdicts of the runs its status records; then the release's runs are planned.
pub fn decide(s: &Snapshot<'_>, strategy: Strategy<'_>) -> Plan {
    // The spec passed the controller's checks, or a release in flight meets a spec gone invalid (a
    // missing Service, route or template: aborted below; with no release in flight it is
    // `hold_invalid_spec`'s).
    let mut valid = s.status.clone();
    if s.invalid_spec.is_none() {
        conditions::set(
            &mut valid.conditions,
            "InvalidSpec",
            conditions::ConditionStatus::False,
            "SpecValid",
            "the spec is valid",
            s.now,
            s.generation,
        );
    }
    // The controller got this far: a failure of an earlier reconcile is over.
    valid
        .conditions
        .retain(|c| c.type_ != CONDITION_RECONCILE_ERROR);
    // A ReplicaSet's status lags its size: just scaled down, it may still count pods it is
    // removing. Never more available pods than it is meant to have, so that a release never
    // sends traffic to, or shrinks stable for, pods on their way out.
    let counted: Vec<ReplicaSetView> = s
        .replica_sets
        .iter()
        .map(|rs| ReplicaSetView {
            available: rs.available.min(rs.replicas),
            ..rs.clone()
        })
        .collect();
    // Adaptive plans: the release runs the steps of the plan chosen when it started.
    let choice = match strategy {
        Strategy::Canary(c) => c.adaptive.as_ref().map(|a| adaptive::plan_for(s, a)),
        Strategy::BlueGreen(_) => None,
    };
    let adapted = match (strategy, &choice) {
        (Strategy::Canary(c), Some(choice)) => Some(adaptive::adapt(c, choice.profile)),
        _ => None,
    };
    let strategy = adapted.as_ref().map_or(strategy, Strategy::Canary);
    // The circuit breaker holds new releases as an error-budget gate does.
    let gating = crate::gate::Gating {
        circuit_hold: breaker::of(s).and_then(|b| b.hold(s.name)),
        ..s.gating.clone()
    };
    let s = &Snapshot {
        status: &valid,
        replica_sets: &counted,
        gating: &gating,
        ..s.clone()
    };
    let pass = |snapshot: &Snapshot<'_>| {
        let verdicts = runs::verdicts(
            snapshot.status,
            snapshot.runs,
            snapshot.current_hash,
            strategy,
        );
        match strategy {
            Strategy::Canary(c) => canary::decide(snapshot, &verdicts, c),
            Strategy::BlueGreen(b) => bluegreen::decide(snapshot, &verdicts, b),
        }
    };
    let mut plan = pass(s);
    let mut before = s.status.clone();
    let mut passes = 1;
    while plan.status != before {
        if passes == MAX_PASSES {
            // Not settled (a mistake in a state machine): look again soon rather than spin here.
            plan.requeue_after = release::earliest(plan.requeue_after, Duration::from_secs(1));
            break;
        }
        passes += 1;
        // The next pass sees the scale-down deadlines the earlier ones set, as the next reconcile
        // would: a version switched away from keeps its pods for its delay, not only until the
        // pass that no longer counts it as serving.
        let views: Vec<ReplicaSetView> = s
            .replica_sets
            .iter()
            .map(|rs| ReplicaSetView {
                scale_down_at: plan
                    .scale_down_at
                    .get(&rs.hash)
                    .copied()
                    .unwrap_or(rs.scale_down_at),
                ..rs.clone()
            })
            .collect();
        let mut next = pass(&Snapshot {
            status: &plan.status,
            actions: Actions::default(),
            replica_sets: &views,
            ..s.clone()
        });
        // What the earlier passes asked for still stands unless a later pass says otherwise.
        next.create_current |= plan.create_current;
        next.aborted_by = next.aborted_by.or(plan.aborted_by);
        let mut scale_down_at = std::mem::take(&mut plan.scale_down_at);
        scale_down_at.append(&mut next.scale_down_at);
        next.scale_down_at = scale_down_at;
        let mut events = std::mem::take(&mut plan.events);
        events.append(&mut next.events);
        next.events = events;
        before = std::mem::replace(&mut plan, next).status;
    }
    runs::plan_runs(s, strategy, &mut plan);
    if s.actions.restart {
        restart::record_request(&mut plan, s.now);
    }
    if let Some(problem) = s.invalid_spec {
        // The release in flight was aborted above; the Rollout says why, as for a spec held invalid.
        let (held, event) = hold_invalid_spec(&plan.status, problem, s.generation, s.now);
        plan.status = held;
        plan.events.extend(event);
    }
    if let Some(request) = s.request {
        // Recorded with what the request did, in the same status write: acted on exactly once.
        plan.status.handled_request = Some(request.to_owned());
    }
    workload::decide(s, &mut plan);
    restart::decide(s, strategy, &mut plan);
    history::decide(s, strategy, &mut plan, choice.as_ref());
    breaker::record(s, &mut plan);
    plan.pod_metadata = pods::role_metadata(strategy, &plan.traffic, s.pods);
    plan
}

/// What a spec that only the controller can find wrong (a missing Service, route or template)
/// means: nothing moves, stable keeps serving, and the Rollout says why: `InvalidSpec` and
/// `Stalled` True, `Ready` False, phase Degraded, and an Event the first time this problem is seen.
pub fn hold_invalid_spec(
    status: &RolloutStatus,
    problem: &str,
    generation: i64,
    now: Timestamp,
) -> (RolloutStatus, Option<Event>) {
    let mut next = status.clone();
    let already = conditions::get(&next.conditions, "InvalidSpec")
        .is_some_and(|c| c.status == "True" && c.message == problem);
    for (type_, condition) in [
        ("InvalidSpec", conditions::ConditionStatus::True),
        ("Stalled", conditions::ConditionStatus::True),
        ("Ready", conditions::ConditionStatus::False),
    ] {
        conditions::set(
            &mut next.conditions,
            type_,
            condition,
            "InvalidSpec",
            problem,
            now,
            generation,
        );
    }
    next.phase = Some(RolloutPhase::Degraded);
    next.message = Some(format!("invalid spec: {problem}"));
    next.observed_generation = Some(generation);
    let event = (!already).then(|| Event {
        warning: true,
        reason: "InvalidSpec",
        message: problem.to_owned(),
    });
    (next, event)
}

/// Condition type set while the controller cannot carry out its decisions for a Rollout.
pub const CONDITION_RECONCILE_ERROR: &str = "ReconcileError";

/// What a reconcile that failed (`reason`: the kind of failure; `problem`: in the API server's own
/// words, with the object being written) means for the Rollout's status: nothing else changes (the
/// failed step is retried with backoff, and stable keeps serving), and the Rollout says so:
/// `ReconcileError` True, phase Degraded with the problem as its message, and an Event the first
/// time this problem is seen. The next reconcile that succeeds takes the condition away.
pub fn hold_reconcile_error(
    status: &RolloutStatus,
    reason: &str,
    problem: &str,
    generation: i64,
    now: Timestamp,
) -> (RolloutStatus, Option<Event>) {
    let mut next = status.clone();
    let already = conditions::get(&next.conditions, CONDITION_RECONCILE_ERROR)
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == problem);
    conditions::set(
        &mut next.conditions,
        CONDITION_RECONCILE_ERROR,
        conditions::ConditionStatus::True,
        reason,
        problem,
        now,
        generation,
    );
    next.phase = Some(RolloutPhase::Degraded);
    next.message = Some(format!("reconcile failed, retrying: {problem}"));
    let event = (!already).then(|| Event {
        warning: true,
        reason: "ReconcileError",
        message: problem.to_owned(),
    });
    (next, event)
}
