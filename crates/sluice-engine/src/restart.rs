//! Restarting a Rollout's pods (`kubectl sluice restart`, or `spec.restartAt`): every pod created
//! before the restart time is evicted, a few at a time, so that no more than `maxUnavailable` (at
//! least one) of the wanted pods are missing at any moment. The ReplicaSets replace them.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::Strategy;
use crate::events::Event;
use crate::pods::PodView;
use crate::release::{Plan, Snapshot, earliest, until};
use crate::replicas;

/// How soon to look again while a restart replaces pods, if no pod or ReplicaSet change comes first
/// (an eviction a PodDisruptionBudget refused is tried again then).
const RESTART_POLL: Duration = Duration::from_secs(5);

/// What to do for a restart now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartPlan {
    /// Pods to evict now.
    pub evict: Vec<String>,
    /// Pods created before the restart time that are still there, including those evicted now.
    pub remaining: usize,
    /// Every pod is newer than the restart time and the wanted pods are all available.
    pub done: bool,
}

/// Which pods to evict now for a restart at `restart_at`, when the Rollout's ReplicaSets want
/// `wanted` pods in all and at most `max_unavailable` of them may be missing (at least one, or a
/// one-pod Rollout could never restart). `available` says which pods serve.
pub fn plan(
    restart_at: Timestamp,
    pods: &[&PodView],
    available: impl Fn(&PodView) -> bool,
    wanted: i32,
    max_unavailable: i32,
) -> RestartPlan {
    let mut old: Vec<(&PodView, bool)> = pods
        .iter()
        .filter(|p| !p.terminating && p.created < restart_at)
        .map(|p| (*p, available(p)))
        .collect();
    let serving = pods
        .iter()
        .filter(|p| !p.terminating && available(p))
        .count();
    let serving = i32::try_from(serving).unwrap_or(i32::MAX);
    let missing = (wanted - serving).max(0);
    if old.is_empty() {
        let terminating = pods.iter().any(|p| p.terminating && p.created < restart_at);
        return RestartPlan {
            evict: Vec::new(),
            remaining: 0,
            done: !terminating && missing == 0,
        };
    }
    // Pods that serve nothing go first: evicting them costs no capacity.
    old.sort_by_key(|(p, available)| (*available, p.created));
    let mut budget = max_unavailable.max(1) - missing;
    let mut evict = Vec::new();
    for (pod, available) in &old {
        if !available {
            evict.push(pod.name.clone());
        } else if budget > 0 {
            budget -= 1;
            evict.push(pod.name.clone());
        }
    }
    RestartPlan {
        evict,
        remaining: old.len(),
        done: false,
    }
}

/// The restart in force (the later of `spec.restartAt` and the last `kubectl sluice restart`), in
/// the plan: the pods to evict now, when to look again, and `status.restartedAt` with an Event once
/// every pod is newer and the ReplicaSets have all their pods available again.
pub(crate) fn decide(s: &Snapshot<'_>, strategy: Strategy<'_>, out: &mut Plan) {
    let requested = [
        s.spec.restart_at.as_ref(),
        out.status.restart_requested_at.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.0)
    .max();
    let Some(target) = requested else {
        return;
    };
    // One already completed is not repeated; one in the future waits for its time.
    if out
        .status
        .restarted_at
        .as_ref()
        .is_some_and(|done| done.0 >= target)
    {
        return;
    }
    if target > s.now {
        out.requeue_after = earliest(out.requeue_after, until(s.now, target));
        return;
    }
    let pods: Vec<&PodView> = s
        .pods
        .iter()
        .filter(|p| s.replica_sets.iter().any(|rs| rs.hash == p.hash))
        .collect();
    let min_ready = s.spec.min_ready_seconds.unwrap_or(0);
    let wanted: i32 = out.scale.values().sum();
    let (surge, unavailable) = match strategy {
        Strategy::Canary(c) => (c.max_surge.as_ref(), c.max_unavailable.as_ref()),
        Strategy::BlueGreen(_) => (None, None),
    };
    let max_unavailable = replicas::surge_and_unavailable(s.spec.replicas, surge, unavailable).1;
    let restart = plan(
        target,
        &pods,
        |p| p.available(min_ready, s.now),
        wanted,
        max_unavailable,
    );
    // Done when the pods say so and the ReplicaSets agree (their status lags the pods a little).
    let replica_sets_available: i32 = s.replica_sets.iter().map(|rs| rs.available).sum();
    if restart.done && replica_sets_available >= wanted {
        out.status.restarted_at = Some(Time(target));
        out.events.push(Event {
            warning: false,
            reason: "RolloutRestarted",
            message: format!("every pod was created after {target}"),
        });
        return;
    }
    out.evict = restart.evict;
    // Pod and ReplicaSet changes wake the Rollout; time alone makes a ready pod available.
    let next_available = pods
        .iter()
        .filter_map(|p| p.available_at(min_ready, s.now))
        .min()
        .map(|at| until(s.now, at));
    out.requeue_after = earliest(
        out.requeue_after,
        next_available.map_or(RESTART_POLL, |d| d.min(RESTART_POLL)),
    );
}

/// Records a person's restart request in the plan: every pod created before now is to be replaced.
/// Pod creation times have whole seconds: round up, so that no pod created before the request passes
/// for a new one (one created in the same second is replaced once more, harmlessly).
pub(crate) fn record_request(plan: &mut Plan, now: Timestamp) {
    let at = if now.subsec_nanosecond() == 0 {
        now
    } else {
        Timestamp::from_second(now.as_second() + 1).unwrap_or(now)
    };
    plan.status.restart_requested_at = Some(Time(at));
    plan.events.push(Event {
        warning: false,
        reason: "RolloutRestartRequested",
        message: "restart requested: every pod will be replaced, a few at a time".to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, created: i64, available: bool) -> PodView {
        PodView {
            name: name.to_owned(),
            hash: "abc".to_owned(),
            created: Timestamp::from_second(created).expect("time"),
            ready_since: available.then_some(Timestamp::UNIX_EPOCH),
            terminating: false,
            labels: Default::default(),
            annotations: Default::default(),
        }
    }

    fn plan(restart_at: Timestamp, pods: &[PodView], wanted: i32, max: i32) -> RestartPlan {
        let pods: Vec<&PodView> = pods.iter().collect();
        super::plan(restart_at, &pods, |p| p.ready_since.is_some(), wanted, max)
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    #[test]
    fn evicts_the_oldest_within_the_unavailability_budget() {
        let pods = [pod("a", 10, true), pod("b", 5, true), pod("c", 20, true)];
        let plan = plan(at(100), &pods, 3, 1);
        assert_eq!(plan.evict, ["b"]);
        assert_eq!(plan.remaining, 3);
        assert!(!plan.done);
    }

    #[test]
    fn waits_while_a_replacement_is_not_yet_available() {
        let pods = [
            pod("a", 10, true),
            pod("b", 5, true),
            pod("new", 200, false),
        ];
        assert!(plan(at(100), &pods, 3, 1).evict.is_empty());
    }

    #[test]
    fn a_one_pod_rollout_with_no_unavailability_still_restarts() {
        let plan = plan(at(100), &[pod("a", 10, true)], 1, 0);
        assert_eq!(plan.evict, ["a"]);
    }

    #[test]
    fn unavailable_old_pods_go_first_and_cost_nothing() {
        let pods = [
            pod("a", 10, true),
            pod("sick", 20, false),
            pod("c", 30, true),
        ];
        let plan = plan(at(100), &pods, 3, 1);
        // One pod is already missing, so only the sick one goes.
        assert_eq!(plan.evict, ["sick"]);
    }

    #[test]
    fn done_once_every_pod_is_newer_and_available() {
        let pods = [pod("a", 110, true), pod("b", 120, true)];
        assert!(plan(at(100), &pods, 2, 1).done);
        let mut leaving = pod("old", 10, true);
        leaving.terminating = true;
        let pods = [pod("a", 110, true), pod("b", 120, true), leaving];
        assert!(!plan(at(100), &pods, 2, 1).done);
        assert!(!plan(at(100), &[pod("a", 110, false)], 1, 1).done);
    }
}
