//! Property tests: random step lists and random histories of events (time passing, pods becoming
//! ready or never ready, new templates, people's actions, analysis verdicts) are driven through the
//! real decision code against a small simulated cluster, and the safety invariants are checked after
//! every reconcile.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use sluice_api::common::{AnalysisTemplateRef, RolloutAnalysis};
use sluice_api::gate::{GateState, InFlightPolicy};
use sluice_api::release::{ReleaseOutcome, TIMELINE_LIMIT};
use sluice_api::rollout::CircuitBreaker;
use sluice_api::rollout::{
    BackgroundAnalysis, CanaryStep, CanaryStrategy, GatewayApiRouting, ManagedRoute, PauseStep,
    RolloutSpec, RolloutStatus, RolloutStrategy, RouteMatch, SetCanaryScale, SetMirrorRoute,
    StringMatch, TrafficRouting,
};
use sluice_engine::breaker::{CircuitInputs, EndedRelease};
use sluice_engine::canary::step_weight;
use sluice_engine::gate::{self, Gating};
use sluice_engine::release::{Actions, Plan, ReplicaSetView, Snapshot};
use sluice_engine::replicas;
use sluice_engine::runs::RunSlot;

use common::{
    SimReplicaSets, SimRuns, cases, execute, gate_view, held, later_reconcile_changes_nothing,
    later_than, mark, no_run_forgotten, plan_is_a_fixed_point, recorded_runs,
    second_reconcile_changes_nothing, views,
};

#[derive(Clone, Debug)]
enum Step {
    Weight(i32),
    Pause(Option<i64>),
    Scale(i32),
    Analysis,
    /// A mirror route set (true) or removed (false): routed canaries only.
    Mirror(bool),
}

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
    Verdict(u8),
    Background(u8),
    /// The error-budget gate selecting the Rollout: 0 none, 1 Open, 2 Frozen, 3 CriticalOnly, 4 Unknown.
    Gate(u8),
    /// The bypass annotation: 0 removed, else set with reason `n`.
    Bypass(u8),
    /// The circuit breaker (one failure opens it, for an hour): a release of another Rollout
    /// sharing it just failed (true), or it was reset (false).
    Breaker(bool),
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

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..=100i32).prop_map(Step::Weight),
        prop::option::of(0..=300i64).prop_map(Step::Pause),
        (0..=100i32).prop_map(Step::Scale),
        Just(Step::Analysis),
        any::<bool>().prop_map(Step::Mirror),
    ]
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
        2 => (0..4u8).prop_map(Event::Verdict),
        1 => (0..4u8).prop_map(Event::Background),
        2 => (0..5u8).prop_map(Event::Gate),
        1 => (0..3u8).prop_map(Event::Bypass),
        1 => any::<bool>().prop_map(Event::Breaker),
        2 => (0..7u8).prop_map(Event::Crash),
        2 => Just(Event::Stale),
    ]
}

/// Deadline behaviour and history limit, drawn per case.
#[derive(Clone, Copy, Debug)]
struct Limits {
    deadline_seconds: i32,
    deadline_abort: bool,
    history: i32,
    /// Background analysis from this step, if any.
    background: Option<i32>,
    /// `minPodsPerReplicaSet` of a routed canary.
    min_pods: i32,
    /// `scaleDownDelayRevisionLimit`.
    revision_limit: Option<i32>,
    /// `dynamicStableScale` of a routed canary.
    dynamic: bool,
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    (
        30..=900i32,
        any::<bool>(),
        0..=3i32,
        prop::option::of(0..=3i32),
        1..=3i32,
        prop::option::of(0..=2i32),
        any::<bool>(),
    )
        .prop_map(
            |(
                deadline_seconds,
                deadline_abort,
                history,
                background,
                min_pods,
                revision_limit,
                dynamic,
            )| {
                Limits {
                    deadline_seconds,
                    deadline_abort,
                    history,
                    background,
                    min_pods,
                    revision_limit,
                    dynamic,
                }
            },
        )
}

const RELAXED: Limits = Limits {
    deadline_seconds: 600,
    deadline_abort: false,
    history: 10,
    background: None,
    min_pods: 1,
    revision_limit: None,
    dynamic: false,
};

fn spec(
    replicas: i32,
    steps: &[Step],
    routed: bool,
    surge: i32,
    unavailable: i32,
    limits: Limits,
) -> RolloutSpec {
    let steps = steps
        .iter()
        .filter(|s| routed || !matches!(s, Step::Scale(_) | Step::Mirror(_)))
        .map(|s| {
            let mut step = CanaryStep {
                set_weight: None,
                pause: None,
                set_canary_scale: None,
                analysis: None,
                set_header_route: None,
                set_mirror_route: None,
                confidence: None,
            };
            match s {
                Step::Weight(w) => step.set_weight = Some(*w),
                Step::Pause(d) => {
                    step.pause = Some(PauseStep {
                        duration: d.map(|d| IntOrString::String(format!("{d}s"))),
                    })
                }
                Step::Scale(w) => {
                    step.set_canary_scale = Some(SetCanaryScale {
                        weight: Some(*w),
                        replicas: None,
                        match_traffic_weight: None,
                    })
                }
                Step::Mirror(set) => {
                    step.set_mirror_route = Some(SetMirrorRoute {
                        name: "m".into(),
                        matches: if *set {
                            vec![RouteMatch {
                                method: None,
                                path: Some(StringMatch {
                                    exact: None,
                                    prefix: Some("/".into()),
                                    regex: None,
                                }),
                                headers: Default::default(),
                            }]
                        } else {
                            Vec::new()
                        },
                        percentage: None,
                    })
                }
                Step::Analysis => {
                    step.analysis = Some(RolloutAnalysis {
                        templates: vec![AnalysisTemplateRef {
                            template_name: "t".into(),
                            cluster_scope: false,
                        }],
                        args: vec![],
                        dry_run: vec![],
                        measurement_retention: vec![],
                    })
                }
            }
            step
        })
        .collect();
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
        revision_history_limit: limits.history,
        release_history_limit: 20,
        circuit_breaker: Some(CircuitBreaker {
            failures: 1,
            cooldown: "1h".to_owned(),
            max_cooldown: "24h".to_owned(),
            selector: None,
        }),
        paused: false,
        progress_deadline_seconds: limits.deadline_seconds,
        progress_deadline_abort: limits.deadline_abort,
        restart_at: None,
        rollback_window: None,
        analysis: None,
        strategy: RolloutStrategy {
            canary: Some(CanaryStrategy {
                canary_service: routed.then(|| "canary".to_owned()),
                stable_service: routed.then(|| "stable".to_owned()),
                max_surge: Some(IntOrString::Int(surge)),
                max_unavailable: Some(IntOrString::Int(unavailable)),
                scale_down_delay_seconds: None,
                scale_down_delay_revision_limit: limits.revision_limit,
                abort_scale_down_delay_seconds: None,
                dynamic_stable_scale: routed && limits.dynamic,
                min_pods_per_replica_set: routed.then_some(limits.min_pods),
                steps,
                analysis: limits.background.map(|from| BackgroundAnalysis {
                    templates: vec![AnalysisTemplateRef {
                        template_name: "b".into(),
                        cluster_scope: false,
                    }],
                    args: vec![],
                    dry_run: vec![],
                    measurement_retention: vec![],
                    starting_step: Some(from),
                }),
                traffic_routing: routed.then(|| TrafficRouting {
                    gateway_api: Some(GatewayApiRouting {
                        http_route: "r".into(),
                    }),
                    istio: None,
                    nginx: None,
                    managed_routes: vec![ManagedRoute { name: "m".into() }],
                }),
                canary_metadata: None,
                stable_metadata: None,
                anti_affinity: None,
                adaptive: None,
            }),
            blue_green: None,
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
    /// The ReplicaSets before the last reconcile's writes, and whether the next reconcile sees them.
    rss_before: Option<SimReplicaSets>,
    stale_next: bool,
    /// Every run a written status has named.
    recorded_runs: BTreeSet<String>,
    /// The request the controller died acting on, still to be carried out.
    unfinished: Actions,
    /// The gates selecting the Rollout.
    gating: Gating,
    /// The releases of the Rollouts sharing its circuit breaker.
    circuit: CircuitInputs,
    /// What a holding gate does to a release in flight, drawn per case.
    in_flight: InFlightPolicy,
    /// Revisions that have been stable.
    released: BTreeSet<String>,
}

const HASHES: [&str; 3] = ["aaaa", "bbbb", "cccc"];

impl World {
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
            circuit: &self.circuit,
            history: &[],
            plan_pin: None,
            hook_answers: &[],
            now,
        };
        sluice_engine::decide(
            &snapshot,
            sluice_engine::Strategy::Canary(self.spec.strategy.canary.as_ref().expect("canary")),
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
        if let Some(stable) = &self.status.stable_rs {
            self.released.insert(stable.clone());
        }
    }
}

/// Checks every safety invariant of one reconcile.
fn check(
    world: &World,
    before: &RolloutStatus,
    plan: &Plan,
    actions: Actions,
) -> Result<(), TestCaseError> {
    let canary_spec = world.spec.strategy.canary.as_ref().expect("canary");
    let routed = canary_spec.traffic_routing.is_some();
    let r = world.spec.replicas;
    let status = &plan.status;
    let stable = status
        .stable_rs
        .clone()
        .expect("a stable revision once reconciled");
    let index = usize::try_from(status.current_step_index.unwrap_or(0)).unwrap_or(0);
    let releasing = stable != world.current;
    let weight = plan.traffic.canary_weight;
    let planned = |hash: &str| plan.scale.get(hash).copied().unwrap_or(0);
    let observed = |hash: &str| world.rss.get(hash).cloned();

    prop_assert!((0..=100).contains(&weight), "weight {weight} out of range");
    // Only idle, old ReplicaSets are deleted.
    for hash in &plan.delete {
        prop_assert!(
            *hash != stable && *hash != world.current,
            "deleting a live revision {hash}"
        );
        prop_assert_eq!(planned(hash), 0);
    }
    // Weight never exceeds the current step's.
    if releasing {
        prop_assert!(
            weight <= step_weight(&canary_spec.steps, index),
            "weight {weight} above step {index}'s"
        );
    } else {
        prop_assert_eq!(weight, 0, "no canary traffic once the release is over");
    }
    // Traffic goes only to a canary that has available pods: with a router, at least
    // minPodsPerReplicaSet of them.
    if weight > 0 {
        let canary = observed(&world.current).map_or(0, |rs| rs.available);
        // (Past the last step the canary is sized to `replicas` to take everything.)
        let least = if routed && index < canary_spec.steps.len() {
            canary_spec.min_pods_per_replica_set.unwrap_or(1)
        } else {
            1
        };
        prop_assert!(
            canary >= least,
            "weight {} on a canary with {} available pods, fewer than {}",
            weight,
            canary,
            least
        );
    }
    // Old ReplicaSets keep pods only within scaleDownDelayRevisionLimit.
    if let Some(limit) = canary_spec.scale_down_delay_revision_limit {
        let running = plan
            .scale
            .iter()
            .filter(|(hash, n)| **n > 0 && **hash != stable && **hash != world.current)
            .count();
        prop_assert!(
            running <= usize::try_from(limit).unwrap_or(0),
            "{running} old ReplicaSets keep pods, above the limit {limit}"
        );
    }
    // Header and mirror routes stand only while a release walks its steps: none once it is over or
    // aborted.
    if !releasing || status.abort || index >= canary_spec.steps.len() {
        prop_assert!(
            plan.traffic.managed_routes.is_empty(),
            "managed routes outside a release: {:?}",
            plan.traffic.managed_routes
        );
    }
    // Abort: all traffic on stable, stable at full size.
    let dynamic = canary_spec.dynamic_stable_scale;
    if status.abort {
        // With dynamicStableScale traffic moves back as stable's pods become available: never more
        // on the canary than stable cannot serve yet.
        if dynamic {
            // (Judged against what the decision saw, which may lag: a lagging view keeps traffic
            // on the canary longer, never moves more of it back than stable can take.)
            let before_weight = before
                .canary
                .as_ref()
                .and_then(|c| c.weights.as_ref())
                .filter(|w| w.canary.pod_template_hash.as_deref() == Some(world.current.as_str()))
                .map_or(0, |w| w.canary.weight);
            prop_assert!(
                weight <= before_weight,
                "weight {weight} after abort went up from {before_weight}"
            );
            prop_assert!(
                planned(&world.current) >= replicas::desired_for_weight(r, weight).canary,
                "the aborted canary lost the pods for its remaining {weight}%"
            );
        } else {
            prop_assert_eq!(weight, 0);
        }
        prop_assert_eq!(planned(&stable), r, "stable not at full size after abort");
        // No Service selects the aborted version once no traffic is left on it: without a router
        // the canary Service's selector is what sends it traffic.
        if weight == 0 {
            prop_assert_eq!(
                &plan.traffic.canary_hash,
                &stable,
                "the canary Service still selects the aborted version"
            );
        }
    }
    // Stable keeps its capacity: with a router it stays whole during a release; without one it only
    // shrinks while enough canary pods are available to keep `replicas - maxUnavailable` serving.
    if releasing {
        if routed && dynamic {
            // Stable keeps at least the pods for the traffic the plan leaves on it.
            if weight < 100 {
                let share = replicas::desired_for_weight(r, weight).stable.min(r);
                prop_assert!(
                    planned(&stable) >= share,
                    "stable planned {} for {}% of traffic of {r}",
                    planned(&stable),
                    100 - weight
                );
            }
        } else if routed {
            prop_assert_eq!(planned(&stable), r, "routed release shrank stable");
        } else if let Some(stable_rs) = observed(&stable)
            && planned(&stable) < stable_rs.replicas
        {
            let (_, unavailable) = replicas::surge_and_unavailable(
                r,
                canary_spec.max_surge.as_ref(),
                canary_spec.max_unavailable.as_ref(),
            );
            let canary_available = observed(&world.current).map_or(0, |rs| rs.available);
            let stable_available = stable_rs.available.min(planned(&stable));
            let desired =
                replicas::desired_for_weight(r, step_weight(&canary_spec.steps, index)).stable;
            prop_assert!(
                planned(&stable) >= desired
                    && stable_available + canary_available >= r - unavailable,
                "stable shrank to {} (desired {desired}) with {canary_available} canary pods available",
                planned(&stable)
            );
        }
    } else {
        prop_assert_eq!(
            planned(&stable),
            r,
            "stable not at full size outside a release"
        );
    }
    // A new revision held by a gate gets no pods and no traffic; stable serves at full size.
    if releasing && held(status) && !gate::admitted(status, &world.current) {
        prop_assert_eq!(weight, 0, "traffic on a held revision");
        prop_assert_eq!(planned(&world.current), 0, "pods for a held revision");
        prop_assert_eq!(planned(&stable), r, "stable shrank for a held revision");
    }
    // A release held in flight goes no further than the step it was on.
    if held(before)
        && held(status)
        && before.current_pod_hash.as_deref() == Some(world.current.as_str())
        && before.current_step_index < Some(i32::try_from(canary_spec.steps.len()).unwrap_or(0))
        && !actions.retry
    {
        prop_assert_eq!(
            status.current_step_index,
            before.current_step_index,
            "a held release moved on"
        );
    }
    // Going back to a revision that was stable is never held.
    if world.released.contains(&world.current) {
        prop_assert!(!held(status), "a rollback to {} was held", world.current);
    }
    // The step index never goes back within a revision, except by an explicit retry.
    if before.current_pod_hash.as_deref() == Some(world.current.as_str()) && !actions.retry {
        let old = before.current_step_index.unwrap_or(0);
        prop_assert!(
            status.current_step_index.unwrap_or(0) >= old,
            "step went back from {old}"
        );
    }
    check_record(world, before, plan)
}

/// The release record: numbers never go back, an ended release keeps how it ended, the release in
/// flight is the current revision's, an abort says what aborted it, and the record stays bounded.
fn check_record(world: &World, before: &RolloutStatus, plan: &Plan) -> Result<(), TestCaseError> {
    let Some(record) = &plan.status.release else {
        prop_assert!(before.release.is_none(), "the release record was dropped");
        return Ok(());
    };
    if let Some(old) = &before.release {
        prop_assert!(record.number >= old.number, "release number went back");
        if record.number == old.number && old.outcome.is_some() {
            prop_assert_eq!(
                &record.outcome,
                &old.outcome,
                "an ended release changed its outcome"
            );
            prop_assert_eq!(&record.ended_at, &old.ended_at);
        }
        if record.number > old.number && old.outcome.is_none() {
            let ended = plan.ended_release.as_ref();
            prop_assert!(
                ended.is_some_and(|e| e.number == old.number && e.outcome.is_some()),
                "release {} was replaced without ending",
                old.number
            );
        }
    }
    if record.outcome.is_none() {
        prop_assert_eq!(&record.revision, &world.current);
    }
    if record.outcome == Some(ReleaseOutcome::Aborted) {
        prop_assert!(record.aborted_by.is_some(), "an abort without its cause");
    }
    prop_assert!(record.timeline.len() <= TIMELINE_LIMIT);
    prop_assert!(record.steps.windows(2).all(|w| w[0].ended_at.is_some()));
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
                world.current = HASHES[*t].to_owned();
                world.good.entry(world.current.clone()).or_insert(*good);
            }
            // Verdicts arrive only for a run the controller started.
            Event::Background(v) => {
                world.runs.judge(&world.status, RunSlot::Background, *v);
            }
            Event::Verdict(v) => {
                world.runs.judge(&world.status, RunSlot::Step(0), *v);
            }
            Event::Gate(g) => {
                world.gating.gates = match g {
                    0 => vec![],
                    1 => vec![gate_view(GateState::Open, world.in_flight)],
                    2 => vec![gate_view(GateState::Frozen, world.in_flight)],
                    3 => vec![gate_view(GateState::CriticalOnly, world.in_flight)],
                    _ => vec![gate_view(GateState::Unknown, world.in_flight)],
                };
            }
            Event::Bypass(b) => {
                world.gating.bypass_reason = (*b > 0).then(|| format!("incident {b}"));
            }
            Event::Breaker(open) => {
                world.circuit = CircuitInputs::default();
                if *open {
                    world.circuit.ended.push(EndedRelease {
                        revision: String::new(),
                        images: Vec::new(),
                        name: "other-1".to_owned(),
                        outcome: ReleaseOutcome::Aborted,
                        rollback: false,
                        admitted_at: None,
                        ended_at: world.now,
                        reason: "analysis failed".to_owned(),
                    });
                }
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
            // Sound on what it saw, and safe in the world as it is.
            check(&seen, &before, &plan, actions)
                .map_err(|e| TestCaseError::fail(format!("on the stale view: {e}")))?;
            check(world, &before, &plan, actions)
                .map_err(|e| TestCaseError::fail(format!("in the world as it is: {e}")))?;
            world.apply(&plan);
            world.rss_before = Some(rss_before);
            no_run_forgotten(&world.runs, &world.recorded_runs)?;
            continue;
        }
        let plan = world.decide(&before, actions);
        if let Some(writes) = world.crash_after.take() {
            world.unfinished = actions;
            check(world, &before, &plan, actions)?;
            world.apply_partly(&plan, writes);
            world.rss_before = Some(rss_before);
            no_run_forgotten(&world.runs, &world.recorded_runs)?;
            // The next reconcile starts from the status and the world as far as they were
            // written, and is checked like any other.
            continue;
        }
        // Its own status wakes nothing, but its scale-down deadlines (ReplicaSet annotations) are
        // what the next reconcile sees.
        let marked = world.with_marks(&plan);
        plan_is_a_fixed_point(&plan, &marked.decide(&plan.status, Actions::default()))?;
        check(world, &before, &plan, actions)?;

        world.apply(&plan);
        world.rss_before = Some(rss_before);
        no_run_forgotten(&world.runs, &world.recorded_runs)?;
        // A reconcile applied twice changes nothing: with the plan applied and nothing new in the
        // world, the next reconcile keeps the same targets and records no new transition.
        let again = world.decide(&world.status, Actions::default());
        second_reconcile_changes_nothing(&plan, &again)?;
        if let Some(later) = later_than(world.now, &again) {
            let later = world.decide_at(&again.status, Actions::default(), later);
            later_reconcile_changes_nothing(&again, &later)?;
        }
    }
    Ok(())
}

proptest! {
    // 2000 cases per run; PROPTEST_CASES=50000 for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn canary_invariants_hold_over_random_histories(
        replicas in 1..=10i32,
        steps in prop::collection::vec(step_strategy(), 0..8),
        routed in any::<bool>(),
        surge in 0..=3i32,
        unavailable in 0..=3i32,
        events in prop::collection::vec(event_strategy(), 1..80),
        limits in limits_strategy(),
        in_flight in prop_oneof![
            Just(InFlightPolicy::HoldAtNextStep),
            Just(InFlightPolicy::Abort),
            Just(InFlightPolicy::Continue),
        ],
    ) {
        let spec = spec(replicas, &steps, routed, surge, unavailable, limits);
        let mut world = World {
            spec,
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
            gating: Gating::default(),
            circuit: CircuitInputs::default(),
            in_flight,
            released: BTreeSet::new(),
        };
        // The first revision becomes stable before the history starts.
        run(&mut world, &[Event::PodsReady, Event::PodsReady])?;
        run(&mut world, &events)?;
    }

    #[test]
    fn a_good_release_completes_when_people_promote_and_time_passes(
        replicas in 1..=10i32,
        steps in prop::collection::vec(step_strategy(), 0..8),
        routed in any::<bool>(),
        surge in 0..=3i32,
        unavailable in 0..=3i32,
    ) {
        let spec = spec(replicas, &steps, routed, surge, unavailable, RELAXED);
        let mut world = World {
            spec,
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
            gating: Gating::default(),
            circuit: CircuitInputs::default(),
            in_flight: InFlightPolicy::HoldAtNextStep,
            released: BTreeSet::new(),
        };
        run(&mut world, &[Event::PodsReady, Event::PodsReady, Event::NewTemplate(1, true)])?;
        for _ in 0..200 {
            run(&mut world, &[Event::PodsReady, Event::Tick(60), Event::Verdict(1), Event::Promote])?;
            if world.status.stable_rs.as_deref() == Some(HASHES[1]) {
                break;
            }
        }
        prop_assert_eq!(world.status.stable_rs.as_deref(), Some(HASHES[1]), "release did not complete");
        run(&mut world, &[Event::PodsReady, Event::Tick(60), Event::PodsReady])?;
        let stable = &world.rss[HASHES[1]];
        prop_assert_eq!(stable.replicas, replicas);
    }
}
