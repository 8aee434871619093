//! Short scripted releases through the real decision code:
//! - taking over a Deployment (`workloadRef`): the Deployment keeps serving until the Rollout's own
//!   pods do, is scaled down as `scaleDown` asks, and the Services are pointed at the Rollout's pods
//!   only once they are all available (or a release needs them pinned);
//! - the release record (`status.release`): numbers, steps and weights, who acted, how each ended.

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use sluice_api::release::{AbortCause, PlanProfile, ReleaseOutcome, ReleaseProgress};
use sluice_api::rollout::{RolloutSpec, RolloutStatus};
use sluice_engine::breaker::EndedRelease;
use sluice_engine::gate::Gating;
use sluice_engine::release::{Actions, HookAnswer, Plan, ReplicaSetView, Snapshot};
use sluice_engine::runs::{RunSlot, RunView};
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
    /// A person's request for the next reconcile, and who made it.
    request: Option<(Actions, &'static str)>,
    now: i64,
    /// The releases that ended, as the controller reads them from the release records.
    history: Vec<EndedRelease>,
    /// The Rollout's AnalysisRuns.
    runs: Vec<RunView>,
    /// The webhooks' latest answers.
    answers: Vec<HookAnswer>,
}

impl World {
    fn new(scale_down: &str, replicas: i32, deployment: i32) -> Self {
        Self {
            spec: spec(scale_down, replicas),
            status: RolloutStatus::default(),
            current: "aaaa".to_owned(),
            replica_sets: Vec::new(),
            deployment,
            request: None,
            now: 1_000,
            history: Vec::new(),
            answers: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// One reconcile: the plan, applied (ReplicaSets sized, pods not yet available).
    fn reconcile(&mut self) -> Plan {
        let gating = Gating::default();
        let (actions, requester) = self
            .request
            .take()
            .map_or((Actions::default(), None), |(a, by)| (a, Some(by)));
        self.now += 10;
        let images = ["app=web:1".to_owned()];
        let snapshot = Snapshot {
            name: "web",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            current_hash: &self.current,
            replica_sets: &self.replica_sets,
            runs: &self.runs,
            pods: &[],
            actions,
            request: requester.map(|_| "request-1"),
            invalid_spec: None,
            gating: &gating,
            workload_replicas: self.spec.workload_ref.as_ref().map(|_| self.deployment),
            images: &images,
            requester,
            request_reason: None,
            circuit: &Default::default(),
            history: &self.history,
            plan_pin: None,
            hook_answers: &self.answers,
            now: Timestamp::from_second(self.now).expect("time"),
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
                created: Timestamp::from_second(self.now).expect("time"),
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
        for release in plan.ended_release.iter().chain(&self.status.release) {
            let name = format!("web-{}", release.number);
            if !self.history.iter().any(|h| h.name == name)
                && let Some(ended) = EndedRelease::of(name, release)
            {
                self.history.push(ended);
            }
        }
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

fn record(world: &World) -> ReleaseProgress {
    world.status.release.clone().expect("a release record")
}

#[test]
fn the_release_record_follows_each_release_to_its_end() {
    let mut world = World::new("never", 2, 0);
    world.spec.workload_ref = None;
    world.reconcile();
    let first = record(&world);
    assert_eq!((first.number, first.revision.as_str()), (1, "aaaa"));
    assert_eq!(
        first.outcome,
        Some(ReleaseOutcome::Completed),
        "the first revision is released at once"
    );
    assert_eq!(first.images, ["app=web:1"]);
    world.set_available("aaaa", 2);
    world.reconcile();

    // Release 2: 50%, then a pause until promoted.
    world.current = "bbbb".to_owned();
    world.reconcile();
    assert_eq!(record(&world).number, 2);
    world.set_available("bbbb", 1);
    world.reconcile();
    let paused = record(&world);
    assert_eq!(paused.outcome, None);
    let steps: Vec<(i32, i32, bool)> = paused
        .steps
        .iter()
        .map(|s| (s.index, s.weight, s.ended_at.is_some()))
        .collect();
    assert_eq!(steps, [(0, 50, true), (1, 50, false)]);

    // A person aborts it: the record says who and why, then when stable served everything again.
    world.request = Some((
        Actions {
            abort: true,
            ..Actions::default()
        },
        "alice@example.com",
    ));
    world.reconcile();
    let aborted = record(&world);
    assert_eq!(aborted.outcome, Some(ReleaseOutcome::Aborted));
    assert_eq!(aborted.aborted_by, Some(AbortCause::User));
    let last = aborted.timeline.last().expect("timeline");
    assert_eq!(
        (last.reason.as_str(), last.by.as_deref()),
        ("RolloutAborted", Some("alice@example.com"))
    );
    assert!(aborted.steps.iter().all(|s| s.ended_at.is_some()));
    world.set_available("bbbb", 0);
    world.reconcile();
    assert!(
        record(&world).restored_at.is_none(),
        "stable is not fully available yet"
    );
    world.set_available("aaaa", 2);
    world.reconcile();
    assert!(
        record(&world).restored_at.is_some(),
        "stable serves everything again"
    );
    let settled = world.status.clone();
    world.reconcile();
    assert_eq!(
        world.status, settled,
        "an ended release's record does not change"
    );

    // Release 3 is superseded by release 4 before it ends; its end is handed to the controller.
    world.current = "cccc".to_owned();
    let plan = world.reconcile();
    assert_eq!(record(&world).number, 3);
    assert_eq!(plan.ended_release, None, "release 2 had ended already");
    world.current = "dddd".to_owned();
    let plan = world.reconcile();
    let ended = plan
        .ended_release
        .expect("release 3 ended in this decision");
    assert_eq!(
        (ended.number, ended.outcome, ended.reason.as_deref()),
        (
            3,
            Some(ReleaseOutcome::Superseded),
            Some("superseded by revision dddd")
        )
    );
    assert_eq!((record(&world).number, record(&world).outcome), (4, None));
}

#[test]
fn a_completed_adaptive_release_stays_settled_though_the_next_plan_would_differ() {
    let mut world = World::new("never", 2, 0);
    world.spec.workload_ref = None;
    world
        .spec
        .strategy
        .canary
        .as_mut()
        .expect("canary")
        .adaptive =
        Some(serde_json::from_value(serde_json::json!({"lookback": 1})).expect("adaptive"));
    world.reconcile();
    world.set_available("aaaa", 2);
    world.reconcile();
    // Release 2 is aborted: release 3 runs the cautious plan (25%, 50%, pause).
    world.current = "bbbb".to_owned();
    world.reconcile();
    world.request = Some((
        Actions {
            abort: true,
            ..Actions::default()
        },
        "alice",
    ));
    world.reconcile();
    world.current = "cccc".to_owned();
    world.reconcile();
    let plan = record(&world).plan.expect("plan");
    assert_eq!(plan.profile, PlanProfile::Cautious);
    for available in [1, 1, 2] {
        world.set_available("cccc", available);
        world.reconcile();
    }
    assert_eq!(
        world.status.current_step_index,
        Some(2),
        "at the cautious plan's pause"
    );
    world.request = Some((
        Actions {
            promote: true,
            ..Actions::default()
        },
        "alice",
    ));
    world.reconcile();
    world.set_available("cccc", 2);
    world.reconcile();
    assert_eq!(record(&world).outcome, Some(ReleaseOutcome::Completed));
    // Release 3 completed, so the next release would run the Rollout's own steps; this one stays
    // as it ended (its steps, 3/3), reconciled again later: once the old revision's pods are gone,
    // nothing changes.
    world.reconcile();
    assert_eq!(world.status.step_progress.as_deref(), Some("3/3"));
    let settled = world.status.clone();
    for _ in 0..3 {
        let plan = world.reconcile();
        assert_eq!(world.status, settled, "a settled Rollout's status changed");
        assert!(
            World::reasons(&plan).is_empty(),
            "{:?}",
            World::reasons(&plan)
        );
    }
}

/// A retry runs the pre-deployment checks again, though the aborted attempt's canary still has its
/// pods (with a router they stay for `abortScaleDownDelaySeconds`) and its traffic is gone.
#[test]
fn a_retry_runs_the_pre_deployment_checks_again_while_the_aborted_canary_keeps_its_pods() {
    let mut world = World::new("never", 2, 0);
    world.spec = serde_json::from_value(serde_json::json!({
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "app", "image": "web:1"}]}},
        "preDeploymentChecks": [{"name": "tests", "templates": [{"templateName": "tests"}]}],
        "strategy": {"canary": {"canaryService": "web-canary", "stableService": "web-stable",
                                "trafficRouting": {"gatewayAPI": {"httpRoute": "web"}},
                                "steps": [{"setWeight": 50}, {"pause": {}}]}}
    }))
    .expect("spec");
    world.reconcile();
    world.set_available("aaaa", 2);
    world.reconcile();

    world.current = "bbbb".to_owned();
    let plan = world.reconcile();
    let started: Vec<(RunSlot, String)> = plan
        .runs
        .start
        .iter()
        .map(|r| (r.slot, r.name.clone()))
        .collect();
    assert_eq!(
        started,
        [(RunSlot::Check(0), "web-bbbb-check1-1".to_owned())]
    );
    let run = |name: &str| RunView {
        name: name.to_owned(),
        hash: Some("bbbb".to_owned()),
        slot: Some(RunSlot::Check(0)),
        phase: Some(sluice_api::analysis::AnalysisPhase::Successful),
        message: None,
        terminating: false,
        created: None,
        failed_policies: Vec::new(),
    };
    world.runs.push(run("web-bbbb-check1-1"));
    world.reconcile();
    world.set_available("bbbb", 1);
    world.reconcile();
    assert!(
        world
            .status
            .pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep"),
        "{:?}",
        world.status.message
    );

    world.request = Some((
        Actions {
            abort: true,
            ..Actions::default()
        },
        "alice",
    ));
    world.reconcile();
    assert!(world.status.abort);
    let canary_pods = |world: &World| {
        world
            .replica_sets
            .iter()
            .find(|r| r.hash == "bbbb")
            .map_or(0, |r| r.replicas)
    };
    assert!(canary_pods(&world) > 0, "the aborted canary keeps its pods");

    world.request = Some((
        Actions {
            retry: true,
            ..Actions::default()
        },
        "alice",
    ));
    let plan = world.reconcile();
    let started: Vec<String> = plan.runs.start.iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        started,
        ["web-bbbb-check1-2"],
        "{:?} {:?} {:?}",
        world.status.message,
        World::reasons(&plan),
        world.status.pre_deployment_checks
    );
    assert_eq!(
        plan.scale.get("bbbb"),
        Some(&0),
        "no canary pods while the checks run"
    );
}

fn hooked_spec(steps: serde_json::Value) -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "app", "image": "web:1"}]}},
        "webhooks": [
            {"name": "approve", "type": "confirm-rollout", "url": "http://hooks/approve"},
            {"name": "smoke", "type": "pre-rollout", "url": "http://hooks/smoke"},
            {"name": "sign-off", "type": "confirm-promotion", "url": "http://hooks/sign-off"},
            {"name": "stop", "type": "rollback", "url": "http://hooks/stop"},
            {"name": "tell", "type": "post-rollout", "url": "http://hooks/tell"}
        ],
        "strategy": {"canary": {"canaryService": "web-canary", "stableService": "web-stable",
                                "steps": steps}}
    }))
    .expect("spec")
}

fn answer(name: &str, revision: &str, phase: &str, ok: bool) -> HookAnswer {
    HookAnswer {
        name: name.to_owned(),
        revision: revision.to_owned(),
        phase: phase.to_owned(),
        attempt: 1,
        ok,
        message: if ok {
            "answered 200 OK"
        } else {
            "answered 403 Forbidden"
        }
        .to_owned(),
    }
}

fn called(plan: &Plan) -> Vec<(&str, &str)> {
    plan.webhooks
        .iter()
        .map(|c| (c.name.as_str(), c.phase))
        .collect()
}

/// A canary release through its webhooks: confirm-rollout holds it with no canary pod, pre-rollout
/// is called once confirmed, confirm-promotion holds it at its last step, post-rollout is told it
/// completed, and each answer is recorded so a restart (no answers handed in) calls nothing again.
#[test]
fn webhooks_hold_call_and_record_a_canary_release_at_its_moments() {
    let mut world = World::new("never", 2, 0);
    world.spec = hooked_spec(serde_json::json!([{"setWeight": 50}]));
    world.reconcile();
    world.set_available("aaaa", 2);
    let plan = world.reconcile();
    assert!(plan.webhooks.is_empty(), "the first revision calls nothing");

    world.current = "bbbb".to_owned();
    let plan = world.reconcile();
    assert_eq!(
        called(&plan),
        [("stop", "Progressing"), ("approve", "Waiting")]
    );
    assert_eq!(plan.scale.get("bbbb").copied().unwrap_or(0), 0);
    assert!(
        !plan.create_current,
        "no ReplicaSet before the confirmation"
    );
    assert_eq!(
        world.status.phase,
        Some(sluice_api::rollout::RolloutPhase::Paused)
    );

    world.answers = vec![answer("approve", "bbbb", "Waiting", false)];
    let plan = world.reconcile();
    assert!(!plan.create_current && called(&plan).contains(&("approve", "Waiting")));
    assert!(
        world
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("confirm-rollout webhook approve: answered 403")),
        "{:?}",
        world.status.message
    );

    world.answers = vec![answer("approve", "bbbb", "Waiting", true)];
    let plan = world.reconcile();
    assert_eq!(
        called(&plan),
        [("stop", "Progressing"), ("smoke", "Progressing")]
    );
    assert_eq!(
        plan.scale.get("bbbb").copied().unwrap_or(0),
        0,
        "pre-rollout first"
    );

    world
        .answers
        .push(answer("smoke", "bbbb", "Progressing", true));
    let plan = world.reconcile();
    assert!(
        plan.create_current,
        "confirmed and pre-rollout passed: the canary starts"
    );
    world.set_available("bbbb", 1);
    world.reconcile();
    world.set_available("aaaa", 1);
    let plan = world.reconcile();
    assert_eq!(
        called(&plan),
        [("stop", "Progressing"), ("sign-off", "WaitingPromotion")]
    );
    assert_eq!(
        world.status.stable_rs.as_deref(),
        Some("aaaa"),
        "held before promotion"
    );
    assert!(
        world
            .status
            .pause_conditions
            .iter()
            .any(|p| p.reason == "WaitingForConfirmation")
    );

    world
        .answers
        .push(answer("sign-off", "bbbb", "WaitingPromotion", true));
    let mut plan = world.reconcile();
    for _ in 0..4 {
        world.set_available("bbbb", 2);
        world.set_available("aaaa", 2);
        plan = world.reconcile();
    }
    assert_eq!(
        world.status.stable_rs.as_deref(),
        Some("bbbb"),
        "{:?}",
        world.status.message
    );
    assert!(world.status.pause_conditions.is_empty());
    assert_eq!(called(&plan), [("tell", "Succeeded")]);
    world
        .answers
        .push(answer("tell", "bbbb", "Succeeded", true));
    let plan = world.reconcile();
    assert!(plan.webhooks.is_empty());

    // A restart: no answers in memory, nothing called again, nothing written.
    world.answers.clear();
    let status = world.status.clone();
    let plan = world.reconcile();
    assert!(plan.webhooks.is_empty(), "{:?}", called(&plan));
    assert_eq!(plan.status, status);
}

/// A rollback webhook that answers 2xx aborts the release; post-rollout is told it failed; the
/// same revision released again later is asked afresh rather than answered by the old record.
#[test]
fn a_rollback_webhook_aborts_and_a_revision_released_again_is_asked_afresh() {
    let mut world = World::new("never", 2, 0);
    world.spec = hooked_spec(serde_json::json!([{"setWeight": 50}, {"pause": {}}]));
    world.reconcile();
    world.set_available("aaaa", 2);
    world.reconcile();
    world.current = "bbbb".to_owned();
    world.answers = vec![
        answer("approve", "bbbb", "Waiting", true),
        answer("smoke", "bbbb", "Progressing", true),
    ];
    world.reconcile();
    world.reconcile();
    world.set_available("bbbb", 1);
    world.reconcile();
    world
        .answers
        .push(answer("stop", "bbbb", "Progressing", true));
    let plan = world.reconcile();
    assert!(world.status.abort);
    assert_eq!(plan.aborted_by, Some(AbortCause::Webhook));
    assert!(
        world
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("rollback webhook stop asked for it")),
        "{:?}",
        world.status.message
    );
    assert_eq!(called(&plan), [("tell", "Failed")]);

    // Back to stable, then the same revision again: the old answers do not count.
    world.current = "aaaa".to_owned();
    world.reconcile();
    world.answers.clear();
    world.current = "bbbb".to_owned();
    let plan = world.reconcile();
    assert!(!world.status.abort, "{:?}", world.status.message);
    assert_eq!(
        called(&plan),
        [("stop", "Progressing"), ("approve", "Waiting")]
    );
}
