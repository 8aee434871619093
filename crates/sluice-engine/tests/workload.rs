//! Taking over a Deployment (`workloadRef`): the Deployment keeps serving until the Rollout's own
//! pods do, is scaled down as `scaleDown` asks, and the Services are pointed at the Rollout's pods
//! only once they are all available (or a release needs them pinned).

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use sluice_api::rollout::{RolloutSpec, RolloutStatus};
use sluice_engine::gate::Gating;
use sluice_engine::release::{Actions, Plan, ReplicaSetView, Snapshot};
use sluice_engine::workload::progressive_replicas;

fn spec(scale_down: &str, replicas: i32) -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "web"}},
        // As the controller resolves it: the Deployment's template in `template`.
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "app", "image": "web:1"}]}},
        "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                        "scaleDown": scale_down},
        "strategy": {"canary": {"canaryService": "web-canary", "stableService": "web-stable",
                                "steps": [{"setWeight": 50}, {"pause": {}}]}}
    }))
    .expect("spec")
}

/// A small cluster: the Rollout's ReplicaSets and the Deployment's replicas.
struct World {
    spec: RolloutSpec,
    status: RolloutStatus,
    current: String,
    replica_sets: Vec<ReplicaSetView>,
    deployment: i32,
}

impl World {
    fn new(scale_down: &str, replicas: i32, deployment: i32) -> Self {
        Self {
            spec: spec(scale_down, replicas),
            status: RolloutStatus::default(),
            current: "aaaa".to_owned(),
            replica_sets: Vec::new(),
            deployment,
        }
    }

    /// One reconcile: the plan, applied (ReplicaSets sized, pods not yet available).
    fn reconcile(&mut self) -> Plan {
        let gating = Gating::default();
        let snapshot = Snapshot {
            name: "web",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            current_hash: &self.current,
            replica_sets: &self.replica_sets,
            runs: &[],
            pods: &[],
            actions: Actions::default(),
            request: None,
            invalid_spec: None,
            gating: &gating,
            workload_replicas: Some(self.deployment),
            now: Timestamp::from_second(1_000).expect("time"),
        };
        let plan = sluice_engine::decide(
            &snapshot,
            sluice_engine::Strategy::Canary(
                self.spec.strategy.canary.as_ref().expect("canary strategy"),
            ),
        );
        if plan.create_current && !self.replica_sets.iter().any(|r| r.hash == self.current) {
            self.replica_sets.push(ReplicaSetView {
                hash: self.current.clone(),
                replicas: 0,
                available: 0,
                scale_down_at: None,
                created: Timestamp::from_second(1_000).expect("time"),
            });
        }
        for rs in &mut self.replica_sets {
            if let Some(n) = plan.scale.get(&rs.hash) {
                rs.replicas = *n;
                rs.available = rs.available.min(*n);
            }
        }
        if let Some(n) = plan.workload_replicas {
            self.deployment = n;
        }
        self.status = plan.status.clone();
        plan
    }

    fn set_available(&mut self, hash: &str, available: i32) {
        for rs in &mut self.replica_sets {
            if rs.hash == hash {
                rs.available = available.min(rs.replicas);
            }
        }
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
    }
}

#[test]
fn progressively_hands_the_deployment_over_as_the_rollouts_pods_become_available() {
    let mut world = World::new("progressively", 3, 5);
    let plan = world.reconcile();
    assert!(
        plan.traffic.leave_services,
        "the Deployment's pods still serve through the Services"
    );
    assert_eq!(
        plan.workload_replicas, None,
        "nothing available yet: 5 stay"
    );
    assert_eq!(
        world.status.workload.as_ref().map(|w| w.replicas_before),
        Some(5)
    );
    let mut sizes = Vec::new();
    for available in 1..=3 {
        world.set_available("aaaa", available);
        let plan = world.reconcile();
        sizes.push(world.deployment);
        assert_eq!(plan.traffic.leave_services, available < 3);
    }
    assert_eq!(sizes, [4, 2, 0]);
    assert!(world.status.workload.as_ref().is_some_and(|w| w.taken_over));
    // The Rollout's pods failing after the takeover do not bring the Deployment back.
    world.set_available("aaaa", 1);
    let plan = world.reconcile();
    assert_eq!((plan.workload_replicas, world.deployment), (None, 0));
    assert!(!plan.traffic.leave_services);
    // A second look changes nothing.
    let status = world.status.clone();
    let plan = world.reconcile();
    assert_eq!(plan.status, status);
    assert!(World::reasons(&plan).is_empty());
}

#[test]
fn progressively_scales_the_deployment_back_up_if_the_rollouts_pods_fail_before_the_takeover() {
    let mut world = World::new("progressively", 4, 4);
    world.reconcile();
    world.set_available("aaaa", 3);
    world.reconcile();
    assert_eq!(world.deployment, 1);
    world.set_available("aaaa", 0);
    let plan = world.reconcile();
    assert_eq!(plan.workload_replicas, Some(4));
    assert!(World::reasons(&plan).contains(&"WorkloadScaled"));
}

#[test]
fn onsuccess_scales_the_deployment_to_zero_once_the_rollout_serves_at_full_size() {
    let mut world = World::new("onsuccess", 3, 3);
    world.reconcile();
    world.set_available("aaaa", 2);
    world.reconcile();
    assert_eq!(world.deployment, 3);
    world.set_available("aaaa", 3);
    let plan = world.reconcile();
    assert_eq!(plan.workload_replicas, Some(0));
    assert!(World::reasons(&plan).contains(&"WorkloadTakenOver"));
}

#[test]
fn never_leaves_the_deployment_and_a_new_template_is_a_release_with_pinned_services() {
    let mut world = World::new("never", 2, 2);
    world.reconcile();
    world.set_available("aaaa", 2);
    let plan = world.reconcile();
    assert_eq!((plan.workload_replicas, world.deployment), (None, 2));
    assert!(!plan.traffic.leave_services);
    // The Deployment's template changes: a canary release like any other.
    world.current = "bbbb".to_owned();
    let plan = world.reconcile();
    assert!(!plan.traffic.leave_services);
    assert_eq!(plan.traffic.stable_hash, "aaaa");
    assert_eq!(world.status.current_step_index, Some(0));
}

#[test]
fn a_release_before_the_takeover_pins_the_services() {
    let mut world = World::new("progressively", 2, 2);
    world.reconcile();
    world.set_available("aaaa", 1);
    world.reconcile();
    world.current = "bbbb".to_owned();
    let plan = world.reconcile();
    assert!(
        !plan.traffic.leave_services,
        "a canary needs its Services pinned"
    );
    assert_eq!(
        world.deployment, 1,
        "the Deployment keeps the share stable lacks"
    );
}

#[test]
fn without_a_workload_nothing_is_recorded() {
    let mut world = World::new("never", 1, 1);
    world.spec.workload_ref = None;
    let plan = world.reconcile();
    assert_eq!(plan.status.workload, None);
    assert_eq!(plan.workload_replicas, None);
    assert!(!plan.traffic.leave_services);
}

proptest! {
    /// The Deployment and the Rollout's stable pods together never serve fewer pods than the
    /// smaller of the two sizes, and the Deployment never grows beyond what it had.
    #[test]
    fn progressively_never_drops_capacity(before in 0..50i32, wanted in 0..50i32, available in 0..60i32) {
        let left = progressive_replicas(before, wanted, available);
        prop_assert!(left >= 0 && left <= before.max(0));
        prop_assert!(left + available.min(wanted) >= before.min(wanted));
        if available >= wanted {
            prop_assert_eq!(left, 0);
        }
    }
}
