//! Restarting a Rollout's pods (`kubectl sluice restart`, or `spec.restartAt`): every pod created
//! before the restart time is evicted, a few at a time, so that no more than `maxUnavailable` (at
//! least one) of the wanted pods are missing at any moment. The ReplicaSets replace them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A pod of one of the Rollout's ReplicaSets, as the controller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// When it was created.
    pub created: Timestamp,
    /// Ready for `minReadySeconds` (counted as serving).
    pub available: bool,
    /// Already being deleted.
    pub terminating: bool,
}

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
/// one-pod Rollout could never restart).
pub fn plan(
    restart_at: Timestamp,
    pods: &[PodView],
    wanted: i32,
    max_unavailable: i32,
) -> RestartPlan {
    let mut old: Vec<&PodView> = pods
        .iter()
        .filter(|p| !p.terminating && p.created < restart_at)
        .collect();
    let available = pods
        .iter()
        .filter(|p| p.available && !p.terminating)
        .count();
    let available = i32::try_from(available).unwrap_or(i32::MAX);
    let missing = (wanted - available).max(0);
    if old.is_empty() {
        let terminating = pods.iter().any(|p| p.terminating && p.created < restart_at);
        return RestartPlan {
            evict: Vec::new(),
            remaining: 0,
            done: !terminating && missing == 0,
        };
    }
    // Pods that serve nothing go first: evicting them costs no capacity.
    old.sort_by_key(|p| (p.available, p.created));
    let mut budget = max_unavailable.max(1) - missing;
    let mut evict = Vec::new();
    for pod in &old {
        if !pod.available {
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

/// Records a person's restart request in the plan: every pod created before now is to be replaced.
/// Pod creation times have whole seconds: round up, so that no pod created before the request passes
/// for a new one (one created in the same second is replaced once more, harmlessly).
pub(crate) fn record_request(plan: &mut crate::release::Plan, now: Timestamp) {
    let at = if now.subsec_nanosecond() == 0 {
        now
    } else {
        Timestamp::from_second(now.as_second() + 1).unwrap_or(now)
    };
    plan.status.restart_requested_at = Some(Time(at));
    plan.events.push(crate::events::Event {
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
            created: Timestamp::from_second(created).expect("time"),
            available,
            terminating: false,
        }
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
