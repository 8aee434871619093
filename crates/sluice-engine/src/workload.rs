//! Taking over a Deployment (`spec.workloadRef`, as Argo Rollouts): the Rollout runs pods of its own
//! from the Deployment's template, leaves its Services selecting the Deployment's pods until its own
//! are all available, and scales the Deployment down as `scaleDown` asks.
//!
//! The takeover completes once: the first time the stable revision is fully available with no
//! release in flight. Until then stable capacity is the Deployment's and the Rollout's pods
//! together; after, the Deployment is down for good (`onsuccess`, `progressively`) and a change to
//! its template is a release like any other.

use sluice_api::rollout::{WorkloadScaleDown, WorkloadStatus};

use crate::events::Event;
use crate::release::{Plan, Snapshot, observed};

/// The Deployment's replicas `progressively` leaves while the Rollout's stable revision has
/// `available` of its `wanted` pods: the share not yet served by the Rollout, of what the
/// Deployment had (`before`), rounded up so that the two together never serve less than either
/// alone would at full size.
pub fn progressive_replicas(before: i32, wanted: i32, available: i32) -> i32 {
    if wanted <= 0 || before <= 0 {
        return 0;
    }
    let missing = i64::from((wanted - available.clamp(0, wanted)).max(0));
    let (before, wanted) = (i64::from(before), i64::from(wanted));
    i32::try_from((before * missing + wanted - 1) / wanted).unwrap_or(i32::MAX)
}

/// Adds the takeover to a plan: records it in `status.workload`, holds the Services on the
/// Deployment's pods until it completes, and sizes the Deployment.
pub(crate) fn decide(s: &Snapshot<'_>, plan: &mut Plan) {
    let (Some(reference), Some(observed_replicas)) =
        (s.spec.workload_ref.as_ref(), s.workload_replicas)
    else {
        plan.status.workload = None;
        return;
    };
    let mut state = match plan.status.workload.clone() {
        Some(state) if state.name == reference.name => state,
        // First sight of this Deployment: what it runs now is what the Rollout takes over.
        _ => WorkloadStatus {
            name: reference.name.clone(),
            replicas_before: observed_replicas,
            taken_over: false,
        },
    };
    let stable = plan.status.stable_rs.clone();
    let releasing = stable.as_deref() != Some(s.current_hash);
    let available = stable
        .as_deref()
        .map_or(0, |hash| observed(s, hash).available);
    if !state.taken_over && !releasing && available >= s.spec.replicas {
        state.taken_over = true;
        plan.events.push(Event {
            warning: false,
            reason: "WorkloadTakenOver",
            message: format!(
                "the Rollout's {available} pods serve in place of Deployment {}'s",
                reference.name
            ),
        });
    }
    // While the Deployment's pods still serve, the Rollout's Services keep selecting them (the
    // Rollout's own pods join as they become ready); a release in flight needs its Services pinned.
    plan.traffic.leave_services = !state.taken_over && !releasing;
    let wanted = match reference.scale_down.unwrap_or_default() {
        WorkloadScaleDown::Never => None,
        WorkloadScaleDown::OnSuccess => state.taken_over.then_some(0),
        WorkloadScaleDown::Progressively if state.taken_over => Some(0),
        WorkloadScaleDown::Progressively => Some(progressive_replicas(
            state.replicas_before,
            s.spec.replicas,
            available,
        )),
    };
    if let Some(wanted) = wanted.filter(|n| *n != observed_replicas) {
        plan.workload_replicas = Some(wanted);
        plan.events.push(Event {
            warning: false,
            reason: "WorkloadScaled",
            message: format!(
                "Deployment {} scaled from {observed_replicas} to {wanted} (workloadRef.scaleDown)",
                reference.name
            ),
        });
    }
    plan.status.workload = Some(state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressively_keeps_the_share_the_rollout_does_not_serve_yet() {
        assert_eq!(progressive_replicas(5, 3, 0), 5);
        assert_eq!(progressive_replicas(5, 3, 1), 4);
        assert_eq!(progressive_replicas(5, 3, 2), 2);
        assert_eq!(progressive_replicas(5, 3, 3), 0);
        assert_eq!(progressive_replicas(3, 3, 1), 2);
        assert_eq!(progressive_replicas(3, 3, 7), 0);
        assert_eq!(progressive_replicas(3, 0, 0), 0);
        assert_eq!(progressive_replicas(0, 3, 0), 0);
        assert_eq!(progressive_replicas(i32::MAX, i32::MAX, 1), i32::MAX - 1);
    }
}
