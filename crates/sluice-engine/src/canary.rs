//! The canary state machine: from what the controller observed and the time, the next status and
//! what to change in the cluster. Pure: no client, no clock of its own.
//!
//! A release is the pair (stable hash, current hash). While they differ, the release walks the
//! steps in `status.currentStepIndex`, which never goes back within a revision. Traffic only moves to
//! the canary once the canary's pods for that weight are available, and on abort it goes back to
//! stable at once, with stable scaled to full size.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use sluice_api::release::AbortCause;
use sluice_api::rollout::{
    CanaryStatus, CanaryStep, CanaryStrategy, PauseCondition, RolloutPhase, RolloutStatus,
    TrafficWeight, TrafficWeights,
};

use crate::checks::{self, Checked};
use crate::conditions;
use crate::duration;
use crate::events::Event;
use crate::gate::refuse_promotion_while_held;
use crate::gate::{self, Gated};
use crate::release::{
    AnalysisOutcome, DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS, DEFAULT_SCALE_DOWN_DELAY_SECONDS,
    ManagedRouteRule, Plan, ReplicaSetView, Snapshot, Traffic, Verdicts, add, converged, earliest,
    fill_counts, history_to_delete, observed, pause_reason, progress_deadline, until,
};
use crate::replicas::{self, Counts, Observed};
use crate::runs::RunPlan;
use crate::webhooks::{BeforePods, Hooks};

/// The weight the steps ask for at `index`: the last `setWeight` at or before it, 100 past the end.
pub fn step_weight(steps: &[CanaryStep], index: usize) -> i32 {
    if index >= steps.len() {
        return 100;
    }
    steps[..=index]
        .iter()
        .rev()
        .find_map(|s| s.set_weight)
        .unwrap_or(0)
}

/// The canary's size at `index` with a traffic router: a `setCanaryScale` in force, or the weight's
/// share; never zero while the steps send it traffic, since traffic must not go to pods that are not there.
/// The canary's pods at step `index` with a router: its share of `replicas` (or what
/// `setCanaryScale` says), and while it has traffic at least `minPodsPerReplicaSet` (default 1).
fn routed_canary_replicas(canary: &CanaryStrategy, replicas: i32, index: usize) -> i32 {
    let steps = &canary.steps;
    let scaled = explicit_canary_replicas(replicas, steps, index);
    if step_weight(steps, index) > 0 {
        scaled.max(canary.min_pods_per_replica_set.unwrap_or(1).max(1))
    } else {
        scaled
    }
}

fn explicit_canary_replicas(replicas: i32, steps: &[CanaryStep], index: usize) -> i32 {
    if index < steps.len() {
        for step in steps[..=index].iter().rev() {
            if let Some(scale) = &step.set_canary_scale {
                if scale.match_traffic_weight == Some(true) {
                    break;
                }
                if let Some(n) = scale.replicas {
                    return n.min(replicas);
                }
                if let Some(w) = scale.weight {
                    return replicas::desired_for_weight(replicas, w).canary;
                }
            }
        }
    }
    replicas::desired_for_weight(replicas, step_weight(steps, index)).canary
}

struct Decision<'a> {
    s: &'a Snapshot<'a>,
    /// The verdicts of the release's analysis runs.
    v: &'a Verdicts,
    canary: &'a CanaryStrategy,
    status: RolloutStatus,
    events: Vec<Event>,
    requeue_after: Option<Duration>,
    scale: BTreeMap<String, i32>,
    scale_down_at: BTreeMap<String, Option<Timestamp>>,
    /// The release's analysis runs were dropped in this decision (a new revision, a retry): the
    /// verdicts in the snapshot belong to the old runs and do not count.
    runs_forgotten: bool,
    /// An error-budget gate holds the release, with this message.
    held: Option<String>,
    /// What aborted the release in this decision.
    aborted_by: Option<AbortCause>,
    /// Pre-deployment checks (or `pre-rollout` webhooks) are running, with this message: the new
    /// version gets no pods yet.
    checking: Option<String>,
    /// The webhooks' calls and Events.
    hooks: Hooks<'a>,
    /// A `confirm-rollout` or `confirm-promotion` webhook has not answered 2xx: the release waits,
    /// with this message.
    confirming: Option<String>,
}

impl<'a> Decision<'a> {
    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.events.push(Event {
            warning,
            reason,
            message,
        });
    }

    fn observed(&self, hash: &str) -> Observed {
        observed(self.s, hash)
    }

    fn has_pause(&self, reason: &str) -> bool {
        self.status
            .pause_conditions
            .iter()
            .any(|p| p.reason == reason)
    }

    fn add_pause(&mut self, reason: &str) {
        if !self.has_pause(reason) {
            self.status.pause_conditions.push(PauseCondition {
                reason: reason.to_owned(),
                start_time: Time(self.s.now),
            });
        }
    }

    fn remove_pause(&mut self, reason: &str) {
        self.status.pause_conditions.retain(|p| p.reason != reason);
    }

    /// The canary weight in force before this decision, for the current canary only.
    fn previous_weight(&self) -> i32 {
        self.status
            .canary
            .as_ref()
            .and_then(|c| c.weights.as_ref())
            .filter(|w| w.canary.pod_template_hash.as_deref() == Some(self.s.current_hash))
            .map_or(0, |w| w.canary.weight)
    }

    fn routed(&self) -> bool {
        self.canary.traffic_routing.is_some()
    }

    /// `dynamicStableScale`: stable is sized to the traffic it keeps (the schema allows it only
    /// with a router).
    fn dynamic(&self) -> bool {
        self.routed() && self.canary.dynamic_stable_scale
    }

    /// Stable's pods while the canary has `weight`: all of them, or with `dynamicStableScale` its
    /// share of `replicas` (at least `minPodsPerReplicaSet` while it has traffic).
    fn stable_for_weight(&self, weight: i32) -> i32 {
        let replicas = self.s.spec.replicas;
        if !self.dynamic() {
            return replicas;
        }
        if weight >= 100 {
            return 0;
        }
        let least = self.canary.min_pods_per_replica_set.unwrap_or(1).max(1);
        replicas::desired_for_weight(replicas, weight)
            .stable
            .max(least)
            .min(replicas)
    }
}

/// Decides the next step of a canary Rollout.
pub(crate) fn decide(s: &Snapshot<'_>, v: &Verdicts, canary: &CanaryStrategy) -> Plan {
    let mut d = Decision {
        s,
        v,
        canary,
        status: s.status.clone(),
        events: Vec::new(),
        requeue_after: None,
        scale: BTreeMap::new(),
        scale_down_at: BTreeMap::new(),
        runs_forgotten: false,
        held: None,
        aborted_by: None,
        checking: None,
        hooks: Hooks::new(&s.spec.webhooks, s.current_hash, s.hook_answers),
        confirming: None,
    };
    let steps = &canary.steps;
    let step_count = i32::try_from(steps.len()).unwrap_or(i32::MAX);
    let current = s.current_hash.to_owned();

    // A new revision starts a new release (or, back to stable, ends the one in flight).
    if d.status.current_pod_hash.as_deref() != Some(current.as_str()) {
        d.status.current_pod_hash = Some(current.clone());
        d.status.pause_conditions.clear();
        d.status.controller_pause = false;
        d.status.abort = false;
        d.status.aborted_at = None;
        d.status.promote_full = false;
        // A revision released again is asked afresh, not answered by an earlier release's record.
        d.hooks.new_revision(&mut d.status);
        forget_analysis_runs(&mut d);
        match d.status.stable_rs.clone() {
            None => {
                d.status.stable_rs = Some(current.clone());
                d.status.current_step_index = Some(step_count);
                d.event(
                    false,
                    "InitialRevision",
                    format!("first revision {current} is released at full size"),
                );
            }
            Some(stable) if stable == current => {
                d.status.current_step_index = Some(step_count);
                d.event(
                    false,
                    "RolledBackToStable",
                    format!("template is back to stable {stable}: the release is cancelled"),
                );
            }
            Some(stable) => {
                d.status.current_step_index = Some(0);
                d.event(
                    false,
                    "ReleaseStarted",
                    format!(
                        "new revision {current} (stable {stable}): {} steps to go",
                        steps.len()
                    ),
                );
            }
        }
    }
    let stable = d
        .status
        .stable_rs
        .clone()
        .unwrap_or_else(|| current.clone());
    let releasing = stable != current;

    // People's requests.
    let mut promote = s.actions.promote;
    if s.actions.retry && d.status.abort {
        d.status.abort = false;
        d.status.aborted_at = None;
        d.status.current_step_index = Some(0);
        d.status.pause_conditions.clear();
        // The aborted release's runs keep their verdicts; the retry measures afresh.
        forget_analysis_runs(&mut d);
        // A retry starts the release again: the gates and the checks have their say again.
        gate::forget_admission(&mut d.status);
        crate::checks::rerun(&mut d.status, &current);
        d.hooks.rerun(&mut d.status);
        d.event(
            false,
            "RolloutRetried",
            "release retried from its first step".to_owned(),
        );
    }
    if s.actions.abort && releasing && !d.status.abort {
        abort(&mut d, AbortCause::User, "aborted by a user");
    }
    if let Some(problem) = s.invalid_spec
        && releasing
        && !d.status.abort
    {
        // It cannot go on safely: back to stable, through whatever routing is left.
        abort(
            &mut d,
            AbortCause::InvalidSpec,
            &format!("aborted: invalid spec: {problem}"),
        );
    }
    if s.actions.promote_full && releasing && !d.status.abort && !d.status.promote_full {
        d.status.promote_full = true;
        d.event(
            false,
            "RolloutPromotedFull",
            "promoted in full: remaining steps skipped".to_owned(),
        );
    }
    if s.actions.pause && !d.has_pause(pause_reason::PAUSED_BY_USER) {
        d.add_pause(pause_reason::PAUSED_BY_USER);
        d.event(false, "RolloutPaused", "paused by a user".to_owned());
    }
    if s.actions.resume && d.has_pause(pause_reason::PAUSED_BY_USER) {
        d.remove_pause(pause_reason::PAUSED_BY_USER);
        d.event(false, "RolloutResumed", "resumed by a user".to_owned());
    }

    let gated = gate_release(&mut d, releasing);
    if let Gated::Abort { message } = &gated {
        abort(&mut d, AbortCause::ErrorBudget, message);
    }
    d.held = gated.held().map(str::to_owned);
    refuse_promotion_while_held(
        &mut d.events,
        d.held.as_deref(),
        &mut promote,
        s.actions.promote_full,
    );
    if releasing
        && !d.status.abort
        && gate::admitted(&d.status, &current)
        && let Some(why) = d.hooks.rollback(&mut d.status)
    {
        abort(&mut d, AbortCause::Webhook, &why);
    }
    // A release the gates let start, and whether it has yet to create a pod or send traffic.
    let starting =
        (releasing && !d.status.abort && gate::admitted(&d.status, &current)).then(|| {
            d.status.current_step_index.unwrap_or(0) == 0
                && d.previous_weight() == 0
                && d.observed(&current).replicas == 0
        });
    if let Some(starting) = starting {
        match d.hooks.before_pods(&mut d.status, starting) {
            BeforePods::Go => {}
            BeforePods::Confirming(message) => d.confirming = Some(message),
            BeforePods::Running(message) => d.checking = Some(message),
            BeforePods::Failed(message) => abort(&mut d, AbortCause::Webhook, &message),
        }
    }
    // The checks start once the webhooks confirmed the release (pre-rollout runs beside them).
    if let Some(starting) = starting.filter(|_| !d.status.abort && d.confirming.is_none()) {
        let checked = checks::decide(
            &mut d.status,
            &s.spec.pre_deployment_checks,
            &current,
            starting,
            &v.checks,
            (s.now, s.generation),
            &mut d.events,
        );
        match checked {
            Checked::Go => {}
            Checked::Running(message) => {
                d.checking = Some(match d.checking.take() {
                    Some(hooks) => format!("{message}; {hooks}"),
                    None => message,
                });
            }
            Checked::Failed(message) => {
                abort(&mut d, AbortCause::PreDeploymentCheck, &message);
            }
        }
    }
    let waits =
        matches!(gated, Gated::HoldNew { .. }) || d.checking.is_some() || d.confirming.is_some();

    let mut weight;
    if !releasing {
        weight = 0;
        d.status.current_step_index = Some(step_count);
        settle_on_stable(&mut d, &stable, None);
    } else if d.status.abort {
        weight = scale_for_abort(&mut d, &stable, &current);
    } else if waits {
        // The new revision waits (for the gates, or its checks): stable serves everything, the new
        // ReplicaSet has no pods.
        weight = 0;
        d.scale.insert(stable.clone(), s.spec.replicas);
        d.scale.insert(current.clone(), 0);
        scale_down_others(&mut d, &stable, &current);
    } else {
        let (offered, announced) = (promote, d.events.len());
        let from = d.status.current_step_index.unwrap_or(0) + 1;
        judge_background(&mut d, &mut promote);
        let (index, w) = walk_steps(&mut d, &mut promote);
        if offered && !promote {
            // Announced before what the promote let happen.
            d.events.insert(
                announced,
                Event {
                    warning: false,
                    reason: "RolloutPromoted",
                    message: format!("promoted by a person at step {from} of {}", steps.len()),
                },
            );
        }
        weight = w;
        if d.dynamic() && w > d.previous_weight() {
            // The weight this plan puts in force lets stable shrink: look again once it is.
            d.requeue_after = earliest(d.requeue_after, Duration::from_secs(1));
        }
        d.status.current_step_index = Some(i32::try_from(index).unwrap_or(i32::MAX));
        if index >= steps.len() && !d.status.abort {
            d.confirming = d.hooks.confirm_promotion(&mut d.status);
        }
        if index >= steps.len() && d.confirming.is_some() {
            // Every step ran; the new version becomes stable once the webhooks confirm. Until then
            // it keeps the last step's pods and traffic.
            match steps.len().checked_sub(1) {
                Some(last) => scale_for_step(&mut d, &stable, &current, last),
                None => {
                    weight = 0;
                    d.scale.insert(stable.clone(), s.spec.replicas);
                    d.scale.insert(current.clone(), 0);
                    scale_down_others(&mut d, &stable, &current);
                }
            }
        } else if index >= steps.len() {
            if let Some(w) = finish(&mut d, &stable, &current) {
                weight = w;
            }
        } else {
            scale_for_step(&mut d, &stable, &current, index);
        }
        if d.status.abort {
            weight = scale_for_abort(&mut d, &stable, &current);
        }
    }

    let stable = d
        .status
        .stable_rs
        .clone()
        .unwrap_or_else(|| current.clone());
    if stable == current {
        weight = 0;
    }
    if gate::settle(
        &mut d.status,
        s.gating,
        &current,
        s.now,
        s.generation,
        &mut d.events,
    ) {
        d.held = None;
    }
    d.hooks.settle(
        &mut d.status,
        d.confirming.is_some(),
        stable == current,
        s.now,
    );
    summarize(&mut d, &stable, weight);
    if check_progress(&mut d, &stable, &current) {
        // The deadline aborted the release: traffic back to stable now, not on the next reconcile.
        d.scale.clear();
        weight = scale_for_abort(&mut d, &stable, &current);
        summarize(&mut d, &stable, weight);
    }
    let delete = history_to_delete(d.s, &d.scale, &[&stable, &current]);
    // After an abort no Service selects the aborted version: the canary Service serves stable too
    // (without a router, its selector is all that sends traffic to a version).
    // (With dynamicStableScale the canary keeps its pods and Service while traffic moves back.)
    let canary_hash = if d.status.abort && weight == 0 {
        stable.clone()
    } else {
        current
    };
    // Header and mirror routes stand while the release walks its steps, and go when it ends or is
    // aborted.
    let step_index = d
        .status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0);
    let managed_routes = if releasing && !d.status.abort && stable != canary_hash {
        managed_routes(d.canary, step_index)
    } else {
        Vec::new()
    };
    let traffic = Traffic {
        canary_weight: weight,
        canary_hash,
        stable_hash: stable,
        managed_routes,
        leave_services: false,
    };
    conditions::keep_transition_times(&s.status.conditions, &mut d.status.conditions);
    let create_current = !waits && !s.replica_sets.iter().any(|rs| rs.hash == s.current_hash);
    let avoid = (create_current
        && d.canary.anti_affinity.is_some()
        && traffic.stable_hash != s.current_hash)
        .then(|| traffic.stable_hash.clone());
    Plan {
        status: d.status,
        create_current,
        avoid,
        scale: d.scale,
        scale_down_at: d.scale_down_at,
        delete,
        traffic,
        runs: RunPlan::default(),
        evict: Vec::new(),
        pod_metadata: Vec::new(),
        workload_replicas: None,
        aborted_by: d.aborted_by,
        ended_release: None,
        events: d.events.into_iter().chain(d.hooks.events).collect(),
        requeue_after: d.requeue_after,
        webhooks: d.hooks.calls,
    }
}

/// The header and mirror routes in force at step `index` of a release: those the steps before it
/// set and did not remove since (a step without `match` removes its route), in `managedRoutes`
/// order. None once every step has run: the release is completing.
pub fn managed_routes(canary: &CanaryStrategy, index: usize) -> Vec<ManagedRouteRule> {
    if index >= canary.steps.len() {
        return Vec::new();
    }
    let mut set: BTreeMap<&str, ManagedRouteRule> = BTreeMap::new();
    for step in canary.steps.iter().take(index) {
        if let Some(header) = &step.set_header_route {
            if header.matches.is_empty() {
                set.remove(header.name.as_str());
            } else {
                set.insert(&header.name, ManagedRouteRule::Header(header.clone()));
            }
        }
        if let Some(mirror) = &step.set_mirror_route {
            if mirror.matches.is_empty() {
                set.remove(mirror.name.as_str());
            } else {
                set.insert(&mirror.name, ManagedRouteRule::Mirror(mirror.clone()));
            }
        }
    }
    canary
        .traffic_routing
        .iter()
        .flat_map(|routing| &routing.managed_routes)
        .filter_map(|route| set.remove(route.name.as_str()))
        .collect()
}

/// Asks the gates about the release of the current revision (shared with blue-green in spirit: each
/// strategy decides what a hold means for its own steps).
fn gate_release(d: &mut Decision<'_>, releasing: bool) -> Gated {
    let s = d.s;
    let going = releasing && !d.status.abort;
    gate::gate_release(
        &mut d.status,
        s.gating,
        s.current_hash,
        going,
        s.now,
        s.generation,
        &mut d.events,
    )
}

/// Drops the runs recorded for the release, so that new ones are started.
fn forget_analysis_runs(d: &mut Decision<'_>) {
    d.runs_forgotten = true;
    if let Some(c) = d.status.canary.as_mut() {
        c.current_step_analysis_run_status = None;
        c.current_background_analysis_run_status = None;
        // A new release (or a retry) is scored afresh.
        c.confidence = None;
    }
}

/// Background analysis: a failure aborts; an inconclusive verdict pauses for a person, whose promote
/// lets the release go on with a fresh run.
fn judge_background(d: &mut Decision<'_>, promote: &mut bool) {
    if d.runs_forgotten {
        return;
    }
    match d.v.background.clone() {
        Some(AnalysisOutcome::Failed(why)) => {
            abort(
                d,
                AbortCause::Analysis,
                &format!("background analysis failed: {why}"),
            );
        }
        Some(AnalysisOutcome::Inconclusive(why)) => {
            if std::mem::take(promote) {
                d.remove_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                d.status.controller_pause = !d.status.pause_conditions.is_empty();
                if let Some(c) = d.status.canary.as_mut() {
                    c.current_background_analysis_run_status = None;
                }
            } else if !d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS) {
                d.add_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                d.status.controller_pause = true;
                d.event(
                    true,
                    "AnalysisInconclusive",
                    format!("background analysis inconclusive: {why}; waiting for a person"),
                );
            }
        }
        Some(AnalysisOutcome::Running | AnalysisOutcome::Successful) | None => {}
    }
}

fn abort(d: &mut Decision<'_>, cause: AbortCause, reason: &str) {
    d.aborted_by = Some(cause);
    d.status.abort = true;
    d.status.aborted_at = Some(Time(d.s.now));
    d.status.message = Some(format!(
        "release aborted: {reason}; all traffic is back on stable"
    ));
    d.event(true, "RolloutAborted", format!("release aborted: {reason}"));
}

/// Walks the steps from the persisted index as far as they complete now. Returns the index reached
/// and the canary weight to put in force.
fn walk_steps(d: &mut Decision<'_>, promote: &mut bool) -> (usize, i32) {
    let steps = &d.canary.steps;
    let mut index = usize::try_from(d.status.current_step_index.unwrap_or(0))
        .unwrap_or(0)
        .min(steps.len());
    // A hold keeps a full promotion waiting too: it is recorded and goes ahead once released.
    if d.status.promote_full && d.held.is_none() {
        return (steps.len(), d.previous_weight());
    }
    let held = d.s.spec.paused
        || d.has_pause(pause_reason::PAUSED_BY_USER)
        || (d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS)
            && !d.runs_forgotten
            && matches!(d.v.background, Some(AnalysisOutcome::Inconclusive(_))));
    // The verdict handed in belongs to the step at the persisted index only.
    let analysed_step = index;
    let mut weight = d.previous_weight().min(step_weight(steps, index));
    while index < steps.len() && !held && !d.status.abort {
        let step = &steps[index];
        let mut done = false;
        if step.set_weight.is_some() || step.set_canary_scale.is_some() {
            if let Some(w) = reached_weight(d, index) {
                weight = w;
                done = true;
            }
        } else if let Some(pause) = &step.pause {
            if !d.has_pause(pause_reason::CANARY_PAUSE_STEP) && !*promote {
                let how = match &pause.duration {
                    Some(IntOrString::Int(seconds)) => format!("for {seconds}s"),
                    Some(IntOrString::String(limit)) => format!("for {limit}"),
                    None => "waiting for a person to promote".to_owned(),
                };
                d.event(
                    false,
                    "PausedAtStep",
                    format!("paused at step {}: {how}", index + 1),
                );
            }
            d.add_pause(pause_reason::CANARY_PAUSE_STEP);
            d.status.controller_pause = true;
            let started = d
                .status
                .pause_conditions
                .iter()
                .find(|p| p.reason == pause_reason::CANARY_PAUSE_STEP)
                .map_or(d.s.now, |p| p.start_time.0);
            let limit = pause
                .duration
                .as_ref()
                .and_then(duration::from_int_or_string);
            if std::mem::take(promote) {
                done = true;
            } else if let Some(limit) = limit {
                let ends = duration::after(started, limit);
                if d.s.now >= ends {
                    done = true;
                } else {
                    d.requeue_after = earliest(d.requeue_after, until(d.s.now, ends));
                }
            }
            // Under a hold the pause stays recorded (with its start), so that it is not counted again.
            if done && d.held.is_none() {
                d.remove_pause(pause_reason::CANARY_PAUSE_STEP);
                d.status.controller_pause = false;
            }
        } else if step.analysis.is_some() {
            let outcome = (index == analysed_step && !d.runs_forgotten)
                .then(|| d.v.step.clone())
                .flatten();
            match outcome {
                Some(AnalysisOutcome::Successful) => done = true,
                Some(AnalysisOutcome::Failed(why)) => abort(
                    d,
                    AbortCause::Analysis,
                    &format!("step {} analysis failed: {why}", index + 1),
                ),
                Some(AnalysisOutcome::Inconclusive(why)) => {
                    if std::mem::take(promote) {
                        d.remove_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                        done = true;
                    } else if !d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS) {
                        d.add_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                        d.status.controller_pause = true;
                        d.event(
                            true,
                            "AnalysisInconclusive",
                            format!(
                                "step {} analysis inconclusive: {why}; waiting for a person",
                                index + 1
                            ),
                        );
                    }
                }
                Some(AnalysisOutcome::Running) | None => done = std::mem::take(promote),
            }
            if done && d.held.is_none() {
                d.remove_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                d.status.controller_pause = !d.status.pause_conditions.is_empty();
            }
        } else if let Some(confidence) = &step.confidence {
            done = judge_confidence(d, confidence, index, weight, promote);
        } else {
            // setHeaderRoute and setMirrorRoute: the router puts the routes in force with the
            // plan's traffic (see `managed_routes`).
            done = true;
        }
        if !done {
            break;
        }
        if d.held.is_some() {
            // Held at the step boundary: the step ran to its end, the next one does not start.
            break;
        }
        index += 1;
        d.event(
            false,
            "RolloutStepCompleted",
            format!("step {index} of {} completed", steps.len()),
        );
        if let Some(c) = d.status.canary.as_mut() {
            c.current_step_analysis_run_status = None;
        }
    }
    // A step that lowers the weight takes effect at once; raising it waits for the canary's pods.
    (index, weight.min(step_weight(steps, index)))
}

/// A `confidence` step: scored once when reached (recorded in `status.canary.confidence`, with an
/// Event), then acted on: go on, wait for a person's promote (`ConfidenceReview`), or abort.
/// Returns whether the step is done.
fn judge_confidence(
    d: &mut Decision<'_>,
    step: &sluice_api::rollout::ConfidenceStep,
    index: usize,
    weight: i32,
    promote: &mut bool,
) -> bool {
    use sluice_api::rollout::ConfidenceDecision;
    let at = i32::try_from(index).unwrap_or(i32::MAX);
    let recorded = d
        .status
        .canary
        .as_ref()
        .and_then(|c| c.confidence.clone())
        .filter(|c| c.step == at && c.revision == d.s.current_hash);
    let scored = match recorded {
        Some(scored) => scored,
        None => {
            let exposed = weight.max(d.previous_weight());
            let scored = crate::confidence::assess(d.s, &d.status, step, at, exposed);
            let what = match scored.decision {
                ConfidenceDecision::Promote => "the release goes on",
                ConfidenceDecision::Review => "waiting for a person to promote or abort",
                ConfidenceDecision::Abort => "the release is aborted",
            };
            d.event(
                scored.decision != ConfidenceDecision::Promote,
                "ConfidenceScored",
                format!(
                    "step {}: {}; {what}",
                    index + 1,
                    crate::confidence::breakdown(&scored)
                ),
            );
            d.status
                .canary
                .get_or_insert_with(CanaryStatus::default)
                .confidence = Some(scored.clone());
            scored
        }
    };
    let done = match scored.decision {
        ConfidenceDecision::Promote => true,
        ConfidenceDecision::Review => {
            if std::mem::take(promote) {
                true
            } else {
                d.add_pause(pause_reason::CONFIDENCE_REVIEW);
                d.status.controller_pause = true;
                false
            }
        }
        ConfidenceDecision::Abort => {
            abort(
                d,
                AbortCause::LowConfidence,
                &format!(
                    "step {}: confidence {} is below {}",
                    index + 1,
                    scored.score,
                    step.abort_below
                ),
            );
            false
        }
    };
    if done && d.held.is_none() {
        d.remove_pause(pause_reason::CONFIDENCE_REVIEW);
        d.status.controller_pause = !d.status.pause_conditions.is_empty();
    }
    done
}

/// If the canary has the pods that the weight (or canary scale) at `index` needs, the weight to put
/// in force; `None` while it does not yet.
fn reached_weight(d: &Decision<'_>, index: usize) -> Option<i32> {
    let replicas = d.s.spec.replicas;
    let steps = &d.canary.steps;
    let target = step_weight(steps, index);
    let canary = d.observed(d.s.current_hash);
    if d.routed() {
        let needed = routed_canary_replicas(d.canary, replicas, index);
        let stable = d.observed(d.status.stable_rs.as_deref().unwrap_or_default());
        let enough = canary.replicas >= needed
            && canary.available >= needed
            && stable.available >= d.stable_for_weight(target);
        // A weight above what the canary's pods can serve is never put in force.
        (enough && (target == 0 || canary.available > 0)).then_some(target)
    } else {
        // Judged on the counts this reconcile plans, so that the next one finds nothing new to do.
        let stable_hash = d.status.stable_rs.clone().unwrap_or_default();
        let desired = replicas::desired_for_weight(replicas, target);
        let planned = basic_counts(d, &stable_hash, d.s.current_hash, target);
        let stable = d.observed(&stable_hash);
        let at_target = planned == desired
            && canary.available >= desired.canary
            && stable.available.min(planned.stable) >= desired.stable;
        at_target.then_some(target)
    }
}

/// ReplicaSets that are neither stable nor the current canary.
fn others<'b>(d: &'b Decision<'_>) -> impl Iterator<Item = &'b ReplicaSetView> {
    let stable = d.status.stable_rs.clone().unwrap_or_default();
    d.s.replica_sets
        .iter()
        .filter(move |rs| rs.hash != stable && rs.hash != d.s.current_hash)
}

fn scale_for_step(d: &mut Decision<'_>, stable: &str, current: &str, index: usize) {
    let replicas = d.s.spec.replicas;
    let steps = &d.canary.steps;
    if d.routed() {
        // Stable stays at full size until promotion: traffic can return to it at any moment. With
        // dynamicStableScale it keeps the share of the weight in force or the step's, whichever is
        // larger: it shrinks the reconcile after traffic has left it, and grows before a lower
        // weight is put in force.
        let in_force = d.previous_weight().min(step_weight(steps, index));
        d.scale.insert(
            stable.to_owned(),
            d.stable_for_weight(in_force).min(replicas),
        );
        d.scale.insert(
            current.to_owned(),
            routed_canary_replicas(d.canary, replicas, index),
        );
    } else {
        let counts = basic_counts(d, stable, current, step_weight(steps, index));
        d.scale.insert(stable.to_owned(), counts.stable);
        d.scale.insert(current.to_owned(), counts.canary);
    }
    scale_down_others(d, stable, current);
}

fn basic_counts(d: &Decision<'_>, stable: &str, current: &str, weight: i32) -> Counts {
    let replicas = d.s.spec.replicas;
    let (surge, unavailable) = replicas::surge_and_unavailable(
        replicas,
        d.canary.max_surge.as_ref(),
        d.canary.max_unavailable.as_ref(),
    );
    let others = others(d).fold(Observed::default(), |acc, rs| Observed {
        replicas: acc.replicas + rs.replicas,
        available: acc.available + rs.available,
    });
    // Iterate to the counts that a reconcile right after this one would keep: scaling moves pods'
    // targets at once, availability only when pods become ready, so this settles in a few rounds.
    let desired = replicas::desired_for_weight(replicas, weight);
    let (mut canary, mut stable_rs) = (d.observed(current), d.observed(stable));
    let mut others = others;
    let mut counts = Counts {
        canary: canary.replicas,
        stable: stable_rs.replicas,
    };
    for _ in 0..8 {
        let next = replicas::next_counts(
            replicas,
            surge,
            unavailable,
            desired,
            canary,
            stable_rs,
            others,
        );
        // Superseded ReplicaSets are planned to zero in this same reconcile.
        let had_others = std::mem::take(&mut others).replicas > 0;
        if !had_others && canary.replicas == next.canary && stable_rs.replicas == next.stable {
            counts = next;
            break;
        }
        counts = next;
        canary = Observed {
            replicas: next.canary,
            available: canary.available.min(next.canary),
        };
        stable_rs = Observed {
            replicas: next.stable,
            available: stable_rs.available.min(next.stable),
        };
    }
    counts
}

/// Superseded ReplicaSets go to zero, except old stables whose scale-down delay is still running.
/// `scaleDownDelayRevisionLimit`: how many old ReplicaSets may keep pods during their delay.
fn revision_limit(d: &Decision<'_>) -> usize {
    d.canary
        .scale_down_delay_revision_limit
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(0))
}

fn scale_down_others(d: &mut Decision<'_>, stable: &str, current: &str) {
    hold_within_delay(d, &[stable, current], 0);
}

/// Every ReplicaSet but those in `skip`: one within its scale-down delay keeps its pods, the newest
/// `scaleDownDelayRevisionLimit` of them at most (`kept` already count against it); the others go
/// to zero.
fn hold_within_delay(d: &mut Decision<'_>, skip: &[&str], mut kept: usize) {
    let now = d.s.now;
    let limit = revision_limit(d);
    let mut others: Vec<&ReplicaSetView> =
        d.s.replica_sets
            .iter()
            .filter(|rs| !skip.contains(&rs.hash.as_str()))
            .collect();
    others.sort_by_key(|rs| std::cmp::Reverse(rs.created));
    let mut requeue = d.requeue_after;
    let mut scale = Vec::new();
    for rs in others {
        match rs.scale_down_at {
            Some(at) if at > now && rs.replicas > 0 && kept < limit => {
                kept += 1;
                requeue = earliest(requeue, until(now, at));
                scale.push((rs.hash.clone(), rs.replicas));
            }
            _ => scale.push((rs.hash.clone(), 0)),
        }
    }
    d.requeue_after = requeue;
    d.scale.extend(scale);
}

/// Past the last step (or promoted in full): bring the canary to full size, move all traffic, and
/// make it stable. Returns the weight to put in force.
fn finish(d: &mut Decision<'_>, stable: &str, current: &str) -> Option<i32> {
    let replicas = d.s.spec.replicas;
    let canary = d.observed(current);
    let ready = canary.replicas >= replicas && canary.available >= replicas;
    if d.routed() {
        let in_force = d.previous_weight();
        d.scale
            .insert(stable.to_owned(), d.stable_for_weight(in_force));
        d.scale.insert(current.to_owned(), replicas);
        scale_down_others(d, stable, current);
        if !ready {
            return None;
        }
    } else {
        let counts = basic_counts(d, stable, current, 100);
        d.scale.insert(stable.to_owned(), counts.stable);
        d.scale.insert(current.to_owned(), counts.canary);
        scale_down_others(d, stable, current);
        let ready = counts.canary >= replicas && canary.available >= replicas;
        if !(ready && counts.stable == 0) {
            return None;
        }
    }
    // Promote: the canary becomes stable.
    d.status.stable_rs = Some(current.to_owned());
    d.status.promote_full = false;
    d.status.pause_conditions.clear();
    d.status.controller_pause = false;
    d.event(
        false,
        "RolloutCompleted",
        format!("revision {current} is stable"),
    );
    let delay = if d.routed() {
        i64::from(
            d.canary
                .scale_down_delay_seconds
                .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
        )
    } else {
        0
    };
    settle_on_stable(d, current, Some((stable, delay)));
    Some(100)
}

/// The release is over (or there is none): stable at full size, everything else scaled down, an old
/// stable after its delay.
fn settle_on_stable(d: &mut Decision<'_>, stable: &str, previous_stable: Option<(&str, i64)>) {
    d.scale.insert(stable.to_owned(), d.s.spec.replicas);
    // Old ReplicaSets within their delay keep their pods, the newest `scaleDownDelayRevisionLimit`
    // of them at most (the stable just replaced is the newest).
    let limit = revision_limit(d);
    let mut kept = 0;
    if let Some((old, delay)) = previous_stable {
        if delay > 0 && limit > 0 {
            kept = 1;
            let at = add(d.s.now, delay);
            d.scale_down_at.insert(old.to_owned(), Some(at));
            d.requeue_after = earliest(d.requeue_after, until(d.s.now, at));
            d.scale.insert(old.to_owned(), d.observed(old).replicas);
        } else {
            d.scale.insert(old.to_owned(), 0);
        }
    }
    let skip: Vec<&str> = std::iter::once(stable)
        .chain(previous_stable.map(|(old, _)| old))
        .collect();
    hold_within_delay(d, &skip, kept);
}

/// An aborted release: stable back to full size and traffic back on it. Returns the canary's weight:
/// 0, or with `dynamicStableScale` what stable's available pods cannot serve yet (traffic moves
/// back as they become available, and the canary keeps the pods that serve the rest).
fn scale_for_abort(d: &mut Decision<'_>, stable: &str, current: &str) -> i32 {
    let replicas = d.s.spec.replicas;
    d.scale.insert(stable.to_owned(), replicas);
    let canary = d.observed(current);
    if d.dynamic() {
        let available = d.observed(stable).available.min(replicas);
        let served = if replicas == 0 {
            100
        } else {
            i32::try_from(i64::from(available) * 100 / i64::from(replicas)).unwrap_or(100)
        };
        let weight = (100 - served).clamp(0, d.previous_weight());
        // The pods for what is left of its traffic (at least minPodsPerReplicaSet while it has any).
        let needed = if weight > 0 {
            replicas::desired_for_weight(replicas, weight)
                .canary
                .max(d.canary.min_pods_per_replica_set.unwrap_or(1))
        } else {
            0
        };
        if weight > 0 || d.canary.abort_scale_down_delay_seconds.is_none() {
            d.scale.insert(current.to_owned(), needed);
            scale_down_others(d, stable, current);
            return weight;
        }
    }
    if d.routed() {
        let delay = d
            .canary
            .abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS);
        let aborted = d.status.aborted_at.as_ref().map_or(d.s.now, |t| t.0);
        if delay == 0 {
            d.scale.insert(current.to_owned(), canary.replicas);
        } else {
            let at = add(aborted, i64::from(delay));
            if d.s.now >= at {
                d.scale.insert(current.to_owned(), 0);
            } else {
                d.scale.insert(current.to_owned(), canary.replicas);
                d.requeue_after = earliest(d.requeue_after, until(d.s.now, at));
            }
        }
    } else {
        // Without a router the canary's pods take traffic by their number: remove them now.
        d.scale.insert(current.to_owned(), 0);
    }
    scale_down_others(d, stable, current);
    0
}

/// Fills in the counts, weights, phase, message and conditions.
fn summarize(d: &mut Decision<'_>, stable: &str, weight: i32) {
    let s = d.s;
    let replicas = s.spec.replicas;
    fill_counts(s, &mut d.status);
    let steps = d.canary.steps.len();
    let index = usize::try_from(d.status.current_step_index.unwrap_or(0))
        .unwrap_or(0)
        .min(steps);
    d.status.step_progress = (steps > 0).then(|| format!("{index}/{steps}"));
    let weights = TrafficWeights {
        canary: TrafficWeight {
            weight,
            pod_template_hash: Some(s.current_hash.to_owned()),
            service_name: d.canary.canary_service.clone(),
        },
        stable: TrafficWeight {
            weight: 100 - weight,
            pod_template_hash: Some(stable.to_owned()),
            service_name: d.canary.stable_service.clone(),
        },
    };
    d.status
        .canary
        .get_or_insert_with(CanaryStatus::default)
        .weights = Some(weights);

    let stable_view = d.observed(stable);
    let releasing = stable != s.current_hash;
    let converged = converged(s, stable, &d.scale, &d.scale_down_at);
    let paused = s.spec.paused || !d.status.pause_conditions.is_empty() || d.held.is_some();
    let (phase, message) = if d.status.abort {
        let message = d
            .status
            .message
            .clone()
            .unwrap_or_else(|| "release aborted".to_owned());
        (RolloutPhase::Degraded, message)
    } else if let (true, Some(checking)) = (releasing, d.checking.as_deref()) {
        (
            RolloutPhase::Progressing,
            format!("new revision {} waits: {checking}", s.current_hash),
        )
    } else if let (true, Some(held)) = (releasing, d.held.as_deref()) {
        let message = if gate::admitted(&d.status, s.current_hash) {
            format!("release held after step {index}/{steps}: {held}")
        } else {
            format!("new revision {} waits: {held}", s.current_hash)
        };
        (RolloutPhase::Paused, message)
    } else if releasing && paused {
        let reasons: Vec<&str> = d
            .status
            .pause_conditions
            .iter()
            .map(|p| p.reason.as_str())
            .collect();
        let review = d
            .status
            .canary
            .as_ref()
            .and_then(|c| c.confidence.as_ref())
            .filter(|_| d.has_pause(pause_reason::CONFIDENCE_REVIEW));
        let why = if s.spec.paused {
            "spec.paused".to_owned()
        } else if let Some(score) = review {
            format!(
                "{}: {}; promote to go on, abort to stop",
                reasons.join(", "),
                crate::confidence::breakdown(score)
            )
        } else if let Some(confirming) = &d.confirming {
            format!("{}: {confirming}", reasons.join(", "))
        } else {
            reasons.join(", ")
        };
        (
            RolloutPhase::Paused,
            format!("paused at step {index}/{steps}: {why}"),
        )
    } else if releasing {
        (
            RolloutPhase::Progressing,
            format!("step {index}/{steps}: {weight}% of traffic on the canary"),
        )
    } else if converged {
        (
            RolloutPhase::Healthy,
            format!("revision {stable} is stable and fully available"),
        )
    } else {
        (
            RolloutPhase::Progressing,
            format!(
                "{}/{replicas} pods of {stable} available",
                stable_view.available
            ),
        )
    };
    d.status.phase = Some(phase);
    d.status.message = Some(message.clone());

    let available = stable_view.available >= replicas;
    conditions::set_release(
        &mut d.status.conditions,
        &conditions::ReleaseState {
            phase,
            paused,
            converged,
            stalled: d.status.abort,
            available: (
                available,
                format!("{}/{replicas} stable pods available", stable_view.available),
            ),
            message: &message,
            now: s.now,
            generation: s.generation,
        },
    );
}
/// Tracks progress and enforces `progressDeadlineSeconds`: a release that neither completes a step
/// nor gains available pods for that long is marked Degraded (ProgressDeadlineExceeded), and aborted
/// if `progressDeadlineAbort` says so. Time spent paused or aborted does not count.
/// Returns true if it aborted the release.
fn check_progress(d: &mut Decision<'_>, stable: &str, current: &str) -> bool {
    let paused = d.s.spec.paused || !d.status.pause_conditions.is_empty() || d.held.is_some();
    let deadline = progress_deadline(d.s, &mut d.status, &d.scale, paused, (stable, current));
    if let Some(at) = deadline.requeue_after {
        d.requeue_after = earliest(d.requeue_after, at);
    }
    d.events.extend(deadline.event);
    match deadline.abort {
        Some(why) => {
            abort(d, AbortCause::ProgressDeadline, &why);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_routes_follow_the_steps_before_the_index_in_managed_routes_order() {
        let canary: CanaryStrategy = serde_json::from_value(serde_json::json!({
            "canaryService": "c", "stableService": "s",
            "trafficRouting": {"gatewayAPI": {"httpRoute": "r"},
                               "managedRoutes": [{"name": "header"}, {"name": "mirror"}]},
            "steps": [
                {"setMirrorRoute": {"name": "mirror", "match": [{"path": {"prefix": "/"}}]}},
                {"setHeaderRoute": {"name": "header", "match": [{"headerName": "x", "headerValue": {"exact": "1"}}]}},
                {"setWeight": 10},
                {"setMirrorRoute": {"name": "mirror"}},
                {"pause": {}}
            ]
        }))
        .expect("canary");
        let names = |index| {
            managed_routes(&canary, index)
                .iter()
                .map(|r| r.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert!(names(0).is_empty());
        assert_eq!(names(1), ["mirror"]);
        assert_eq!(names(2), ["header", "mirror"]);
        assert_eq!(names(4), ["header"], "the mirror was removed at step 3");
        assert!(names(5).is_empty(), "every step has run");
    }
}
