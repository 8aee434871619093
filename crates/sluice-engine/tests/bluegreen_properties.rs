//! Property tests of the blue-green state machine: random strategies and random histories (time
//! passing, pods becoming ready or never ready, new templates, people's actions, pre- and
//! post-promotion verdicts) are driven through the real decision code against a small simulated
//! cluster, and the safety invariants are checked after every reconcile.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use sluice_api::common::{AnalysisTemplateRef, RolloutAnalysis};
use sluice_api::gate::{GateState, InFlightPolicy};
use sluice_api::rollout::{BlueGreenStrategy, RolloutSpec, RolloutStatus, RolloutStrategy};
use sluice_engine::bluegreen;
use sluice_engine::gate::{self, Gating};
use sluice_engine::release::{Actions, Plan, ReplicaSetView, Snapshot};
use sluice_engine::runs::RunSlot;

use common::{
    SimReplicaSets, SimRuns, cases, execute, gate_view, held, later_reconcile_changes_nothing,
    later_than, mark, no_run_forgotten, plan_is_a_fixed_point, recorded_runs,
    second_reconcile_changes_nothing, views,
};

#[derive(Clone, Debug)]
enum Event {
    Tick(i64),
    PodsReady,
    NewTemplate(usize, bool),
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause,
    Resume,
    /// A pre-promotion verdict, if that run is wanted.
    Pre(u8),
    /// A post-promotion verdict, if that run is wanted.
    Post(u8),
    /// The error-budget gate selecting the Rollout: 0 none, 1 Open, 2 Frozen, 3 Unknown; with the
    /// in-flight policy 0 HoldAtNextStep, 1 Abort, 2 Continue.
    Gate(u8, u8),
    /// The controller dies while applying the next reconcile's plan, after its first `n` writes
    /// (see `World::apply_partly`): the next reconcile starts from the status and the world as far
    /// as they were written, and acts again on a request it had not recorded as handled.
    Crash(u8),
    /// The next reconcile sees the ReplicaSets' availability as it was before the last reconcile:
    /// their status lags (a scale-down not yet counted). Never their size or scale-down time as
    /// they were before the controller's own last write to them, nor an older Rollout: the
    /// controller waits for its cache to catch up with its own writes.
    Stale,
}

fn event_strategy() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (1..=120i64).prop_map(Event::Tick),
        8 => Just(Event::PodsReady),
        2 => (0..3usize, prop::bool::weighted(0.8)).prop_map(|(t, good)| Event::NewTemplate(t, good)),
        2 => Just(Event::Promote),
        1 => Just(Event::PromoteFull),
        1 => Just(Event::Abort),
        1 => Just(Event::Retry),
        1 => Just(Event::Pause),
        1 => Just(Event::Resume),
        2 => (0..4u8).prop_map(Event::Pre),
        2 => (0..4u8).prop_map(Event::Post),
        2 => (0..4u8, 0..3u8).prop_map(|(g, p)| Event::Gate(g, p)),
        2 => (0..7u8).prop_map(Event::Crash),
        2 => Just(Event::Stale),
    ]
}

/// The blue-green knobs, drawn per case.
#[derive(Clone, Debug)]
struct Knobs {
    auto: Option<bool>,
    auto_seconds: Option<i32>,
    preview: Option<i32>,
    pre: bool,
    post: bool,
    delay: Option<i32>,
    revision_limit: Option<i32>,
    abort_delay: Option<i32>,
    deadline_seconds: i32,
    deadline_abort: bool,
    history: i32,
}

fn knobs_strategy() -> impl Strategy<Value = Knobs> {
    (
        (
            prop::option::of(any::<bool>()),
            prop::option::of(0..=300i32),
            prop::option::of(0..=12i32),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::option::of(0..=120i32),
            prop::option::of(0..=2i32),
            prop::option::of(0..=120i32),
            30..=900i32,
            any::<bool>(),
            0..=3i32,
        ),
    )
        .prop_map(
            |(
                (auto, auto_seconds, preview, pre, post),
                (delay, revision_limit, abort_delay, deadline_seconds, deadline_abort, history),
            )| Knobs {
                auto,
                auto_seconds,
                preview,
                pre,
                post,
                delay,
                revision_limit,
                abort_delay,
                deadline_seconds,
                deadline_abort,
                history,
            },
        )
}

fn analysis() -> RolloutAnalysis {
    RolloutAnalysis {
        templates: vec![AnalysisTemplateRef {
            template_name: "t".into(),
            cluster_scope: false,
        }],
        args: vec![],
        dry_run: vec![],
        measurement_retention: vec![],
    }
}

fn spec(replicas: i32, k: &Knobs) -> RolloutSpec {
    RolloutSpec {
        replicas,
        selector: LabelSelector {
            match_labels: Some([("app".to_owned(), "x".to_owned())].into()),
            match_expressions: None,
        },
        template: None,
        workload_ref: None,
        require_image_digest: false,
        pre_deployment_checks: Vec::new(),
        webhooks: Vec::new(),
        notifications: Vec::new(),
        min_ready_seconds: None,
        revision_history_limit: k.history,
        release_history_limit: 20,
        circuit_breaker: None,
        paused: false,
        progress_deadline_seconds: k.deadline_seconds,
        progress_deadline_abort: k.deadline_abort,
        restart_at: None,
        rollback_window: None,
        analysis: None,
        strategy: RolloutStrategy {
            canary: None,
            blue_green: Some(BlueGreenStrategy {
                active_service: "active".into(),
                preview_service: Some("preview".into()),
                auto_promotion_enabled: k.auto,
                auto_promotion_seconds: k.auto_seconds,
                preview_replica_count: k.preview,
                pre_promotion_analysis: k.pre.then(analysis),
                post_promotion_analysis: k.post.then(analysis),
                pre_promotion_confidence: None,
                scale_down_delay_seconds: k.delay,
                scale_down_delay_revision_limit: k.revision_limit,
                abort_scale_down_delay_seconds: k.abort_delay,
                active_metadata: None,
                preview_metadata: None,
                anti_affinity: None,
            }),
        },
    }
}

#[derive(Clone)]
struct World {
    spec: RolloutSpec,
    status: RolloutStatus,
    current: String,
    good: BTreeMap<String, bool>,
    rss: SimReplicaSets,
    now: Timestamp,
    /// The AnalysisRuns the Rollout owns, with their verdicts.
    runs: SimRuns,
    /// The next reconcile dies after this many writes (see `Event::Crash`).
    crash_after: Option<u8>,
    /// The ReplicaSets before the last reconcile's writes, and whether the next reconcile sees
    /// their availability.
    rss_before: Option<SimReplicaSets>,
    stale_next: bool,
    /// Every run a written status has named.
    recorded_runs: BTreeSet<String>,
    /// The request the controller died acting on, still to be carried out.
    unfinished: Actions,
    /// A second revision was ever set: from then on, active must always be fully available.
    released: bool,
    gating: Gating,
}

const HASHES: [&str; 3] = ["aaaa", "bbbb", "cccc"];

impl World {
    fn new(replicas: i32, k: &Knobs) -> World {
        World {
            spec: spec(replicas, k),
            status: RolloutStatus::default(),
            current: HASHES[0].to_owned(),
            good: [(HASHES[0].to_owned(), true)].into(),
            rss: BTreeMap::new(),
            now: Timestamp::from_second(1_800_000_000).expect("time"),
            runs: SimRuns::default(),
            crash_after: None,
            rss_before: None,
            stale_next: false,
            recorded_runs: BTreeSet::new(),
            unfinished: Actions::default(),
            released: false,
            gating: Gating::default(),
        }
    }

    fn strategy(&self) -> &BlueGreenStrategy {
        self.spec.strategy.blue_green.as_ref().expect("blue-green")
    }

    fn views(&self) -> Vec<ReplicaSetView> {
        views(&self.rss)
    }

    fn decide(&self, status: &RolloutStatus, actions: Actions) -> Plan {
        self.decide_at(status, actions, self.now)
    }

    fn decide_at(&self, status: &RolloutStatus, actions: Actions, now: Timestamp) -> Plan {
        let views = self.views();
        let snapshot = Snapshot {
            name: "web",
            generation: 1,
            spec: &self.spec,
            status,
            current_hash: &self.current,
            replica_sets: &views,
            runs: &self.runs.runs,
            pods: &[],
            actions,
            request: None,
            invalid_spec: None,
            gating: &self.gating,
            workload_replicas: None,
            images: &[],
            requester: None,
            request_reason: None,
            circuit: &Default::default(),
            history: &[],
            plan_pin: None,
            hook_answers: &[],
            now,
        };
        sluice_engine::decide(
            &snapshot,
            sluice_engine::Strategy::BlueGreen(self.strategy()),
        )
    }

    /// Applies the first `writes` kinds of the plan's writes, in the executor's order (create, scale
    /// up, scale-down deadlines, the status, runs, scale down; deletions come after all of them): a
    /// crash part way.
    fn apply_partly(&mut self, plan: &Plan, writes: u8) {
        let good = self.good.get(&self.current).copied().unwrap_or(true);
        let at = (self.current.as_str(), good, self.now);
        if execute(&mut self.rss, &mut self.runs, plan, at, writes) {
            self.record(plan);
        }
    }

    /// This world with only the plan's scale-down deadlines written.
    fn with_marks(&self, plan: &Plan) -> World {
        let mut marked = self.clone();
        mark(&mut marked.rss, plan);
        marked
    }

    /// Applies the whole plan: old ReplicaSets go last, once the status no longer names them.
    fn apply(&mut self, plan: &Plan) {
        self.apply_partly(plan, u8::MAX);
    }

    /// Writes the plan's status.
    fn record(&mut self, plan: &Plan) {
        self.status = plan.status.clone();
        self.recorded_runs.extend(recorded_runs(&self.status));
    }
}

/// Checks every safety invariant of one reconcile, on the world with the plan applied.
fn check(
    world: &World,
    before: &RolloutStatus,
    plan: &Plan,
    actions: Actions,
) -> Result<(), TestCaseError> {
    let r = world.spec.replicas;
    let status = &plan.status;
    let stable = status
        .stable_rs
        .clone()
        .expect("a stable revision once reconciled");
    let releasing = stable != world.current;
    let active = &plan.traffic.stable_hash;
    let planned = |hash: &str| plan.scale.get(hash).copied().unwrap_or(0);

    prop_assert_eq!(plan.traffic.canary_weight, 0, "no weighted routing");
    // Preview selects the current revision; after an abort, the active one (no Service selects the
    // aborted version).
    let preview = if status.abort { active } else { &world.current };
    prop_assert_eq!(
        &plan.traffic.canary_hash,
        preview,
        "preview off its version"
    );
    let bg = status.blue_green.as_ref().expect("blue-green status");
    prop_assert_eq!(bg.active_selector.as_ref(), Some(active));
    prop_assert_eq!(bg.preview_selector.as_ref(), Some(preview));
    // Active is stable, or the current revision once switched.
    prop_assert!(
        *active == stable || *active == world.current,
        "active {active} is neither stable {stable} nor current"
    );
    // Active selects a ReplicaSet that exists and is fully available at full size (the very first
    // revision excepted, before its pods are up), and that is not being scaled down.
    let active_rs = world.rss.get(active.as_str());
    if world.released {
        let rs = active_rs.expect("active ReplicaSet exists");
        prop_assert!(
            rs.replicas >= r && rs.available >= r,
            "active {active} has {}/{} available of {r}",
            rs.available,
            rs.replicas
        );
    }
    prop_assert!(planned(active) >= r, "active {active} scaled below {r}");
    // Only idle, old ReplicaSets are deleted.
    for hash in &plan.delete {
        prop_assert!(
            *hash != stable && *hash != world.current && hash != active,
            "deleting a live revision {hash}"
        );
    }
    // Stable (the version active may return to) stays whole.
    prop_assert_eq!(planned(&stable), r, "stable {} not at full size", stable);
    // Abort: active back on stable, at full size.
    if status.abort {
        prop_assert!(releasing, "abort outside a release");
        prop_assert_eq!(active, &stable, "aborted with active off stable");
    }
    // The stage never goes back within a revision, except by an explicit retry.
    if before.current_pod_hash.as_deref() == Some(world.current.as_str()) && !actions.retry {
        let old = before.current_step_index.unwrap_or(0);
        prop_assert!(
            status.current_step_index.unwrap_or(0) >= old,
            "stage went back from {old} to {:?}",
            status.current_step_index
        );
    }
    // A new revision held by a gate gets no pods; a release held before the switch does not switch.
    if releasing && held(status) {
        if !gate::admitted(status, &world.current) {
            prop_assert_eq!(planned(&world.current), 0, "pods for a held revision");
        }
        if held(before) && bluegreen::stage(before) < bluegreen::Stage::PostPromotionAnalysis {
            prop_assert_eq!(active, &stable, "switched while held");
        }
    }
    // The switch happens only once the new version is fully available.
    if releasing && *active == world.current {
        prop_assert!(!status.abort);
        prop_assert!(bluegreen::stage(status) >= bluegreen::Stage::PostPromotionAnalysis);
    }
    Ok(())
}

fn actions_for(event: &Event) -> Actions {
    let mut a = Actions::default();
    match event {
        Event::Promote => a.promote = true,
        Event::PromoteFull => a.promote_full = true,
        Event::Abort => a.abort = true,
        Event::Retry => a.retry = true,
        Event::Pause => a.pause = true,
        Event::Resume => a.resume = true,
        _ => {}
    }
    a
}

fn run(world: &mut World, events: &[Event]) -> Result<(), TestCaseError> {
    for event in events {
        match event {
            Event::Tick(secs) => {
                world.now = world
                    .now
                    .checked_add(SignedDuration::from_secs(*secs))
                    .expect("time")
            }
            Event::PodsReady => {
                for rs in world.rss.values_mut() {
                    rs.available = if rs.good { rs.replicas } else { 0 };
                }
            }
            Event::NewTemplate(t, good) => {
                if world.current != HASHES[*t] {
                    world.released = true;
                }
                world.current = HASHES[*t].to_owned();
                world.good.entry(world.current.clone()).or_insert(*good);
            }
            // Verdicts arrive only for a run the controller started.
            Event::Pre(v) => {
                world.runs.judge(&world.status, RunSlot::PrePromotion, *v);
            }
            Event::Post(v) => {
                world.runs.judge(&world.status, RunSlot::PostPromotion, *v);
            }
            Event::Gate(g, p) => {
                let policy = match p {
                    0 => InFlightPolicy::HoldAtNextStep,
                    1 => InFlightPolicy::Abort,
                    _ => InFlightPolicy::Continue,
                };
                world.gating.gates = match g {
                    0 => vec![],
                    1 => vec![gate_view(GateState::Open, policy)],
                    2 => vec![gate_view(GateState::Frozen, policy)],
                    _ => vec![gate_view(GateState::Unknown, policy)],
                };
            }
            Event::Crash(writes) => {
                world.crash_after = Some(*writes);
                continue;
            }
            Event::Stale => {
                world.stale_next = true;
                continue;
            }
            _ => {}
        }
        // A request the controller died acting on is still on the Rollout (claimed, not recorded
        // as handled): the next reconcile acts on it, unless a new one replaced it.
        let actions = match actions_for(event) {
            none if none == Actions::default() => std::mem::take(&mut world.unfinished),
            asked => {
                world.unfinished = Actions::default();
                asked
            }
        };
        let before = world.status.clone();
        let stale = std::mem::take(&mut world.stale_next)
            .then(|| world.rss_before.clone())
            .flatten();
        let rss_before = world.rss.clone();
        if let Some(stale) = stale {
            let mut seen = world.clone();
            for (hash, rs) in &mut seen.rss {
                rs.available = stale.get(hash).map_or(0, |old| old.available);
            }
            let plan = seen.decide(&before, actions);
            // Safe in the world as it is, with the plan applied.
            world.apply(&plan);
            world.rss_before = Some(rss_before);
            check(world, &before, &plan, actions)
                .map_err(|e| TestCaseError::fail(format!("after a stale view: {e}")))?;
            no_run_forgotten(&world.runs, &world.recorded_runs)?;
            continue;
        }
        let plan = world.decide(&before, actions);
        if let Some(writes) = world.crash_after.take() {
            world.unfinished = actions;
            // The plan itself keeps the promises (checked on a copy with it all applied); the
            // world only gets its first writes, and the next reconcile starts from there.
            let mut whole = world.clone();
            whole.apply(&plan);
            check(&whole, &before, &plan, actions)?;
            world.apply_partly(&plan, writes);
            world.rss_before = Some(rss_before);
            no_run_forgotten(&world.runs, &world.recorded_runs)?;
            continue;
        }
        // Its own status wakes nothing, but its scale-down deadlines (ReplicaSet annotations) are
        // what the next reconcile sees.
        let marked = world.with_marks(&plan);
        plan_is_a_fixed_point(&plan, &marked.decide(&plan.status, Actions::default()))?;
        world.apply(&plan);
        world.rss_before = Some(rss_before);
        no_run_forgotten(&world.runs, &world.recorded_runs)?;
        check(world, &before, &plan, actions)?;
        // A reconcile applied twice changes nothing: with the plan applied and nothing new in the
        // world, the next reconcile keeps the same targets and records no new transition.
        let again = world.decide(&world.status, Actions::default());
        second_reconcile_changes_nothing(&plan, &again)?;
        if let Some(later) = later_than(world.now, &again) {
            let later = world.decide_at(&again.status, Actions::default(), later);
            later_reconcile_changes_nothing(&again, &later)?;
        }
        prop_assert_eq!(again.status.abort, plan.status.abort);
    }
    Ok(())
}

/// Promoted in full (post-promotion analysis skipped), the switch and the completion fall in one
/// decision: the old active still keeps its pods for `scaleDownDelaySeconds`, and is not scaled
/// down at once by the pass that already counts the new version as stable.
#[test]
fn a_full_promotion_keeps_the_old_active_for_its_scale_down_delay() -> Result<(), TestCaseError> {
    let knobs = Knobs {
        auto: Some(false),
        auto_seconds: None,
        preview: None,
        pre: false,
        post: true,
        delay: None,
        revision_limit: None,
        abort_delay: None,
        deadline_seconds: 600,
        deadline_abort: false,
        history: 10,
    };
    let mut world = World::new(3, &knobs);
    run(
        &mut world,
        &[
            Event::PodsReady,
            Event::PodsReady,
            Event::NewTemplate(1, true),
            Event::PodsReady,
        ],
    )?;
    let promote_full = Actions {
        promote_full: true,
        ..Actions::default()
    };
    let plan = world.decide(&world.status.clone(), promote_full);
    prop_assert_eq!(plan.traffic.stable_hash.as_str(), HASHES[1]);
    prop_assert_eq!(
        plan.scale.get(HASHES[0]),
        Some(&3),
        "old active scaled down at once"
    );
    prop_assert!(
        plan.scale_down_at
            .get(HASHES[0])
            .is_some_and(Option::is_some)
    );
    Ok(())
}

proptest! {
    // 2000 cases per run; PROPTEST_CASES=50000 for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn bluegreen_invariants_hold_over_random_histories(
        replicas in 1..=10i32,
        knobs in knobs_strategy(),
        events in prop::collection::vec(event_strategy(), 1..80),
    ) {
        let mut world = World::new(replicas, &knobs);
        // The first revision becomes stable before the history starts.
        run(&mut world, &[Event::PodsReady, Event::PodsReady])?;
        run(&mut world, &events)?;
    }

    #[test]
    fn a_good_release_completes_when_people_promote_and_time_passes(
        replicas in 1..=10i32,
        mut knobs in knobs_strategy(),
        auto in any::<bool>(),
    ) {
        knobs.auto = Some(auto);
        knobs.deadline_seconds = 600;
        knobs.deadline_abort = false;
        let mut world = World::new(replicas, &knobs);
        run(&mut world, &[Event::PodsReady, Event::PodsReady, Event::NewTemplate(1, true)])?;
        for _ in 0..200 {
            let mut round = vec![Event::PodsReady, Event::Tick(60), Event::Pre(1), Event::Post(1)];
            if !auto {
                round.push(Event::Promote);
            }
            run(&mut world, &round)?;
            if world.status.stable_rs.as_deref() == Some(HASHES[1]) {
                break;
            }
        }
        prop_assert_eq!(world.status.stable_rs.as_deref(), Some(HASHES[1]), "release did not complete");
        prop_assert!(!world.status.abort);
        run(&mut world, &[Event::PodsReady, Event::Tick(130), Event::PodsReady])?;
        prop_assert_eq!(world.rss[HASHES[1]].replicas, replicas);
        prop_assert_eq!(world.rss.get(HASHES[0]).map_or(0, |rs| rs.replicas), 0, "old version not scaled down");
        prop_assert_eq!(world.status.phase, Some(sluice_api::rollout::RolloutPhase::Healthy));
    }
}
