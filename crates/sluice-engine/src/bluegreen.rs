//! The blue-green state machine: from what the controller observed and the time, the next status
//! and what to change in the cluster. Pure: no client, no clock of its own.
//!
//! It shares the canary's types ([`Snapshot`], [`Plan`], ...), read this way for blue-green:
//! - `Plan.traffic.stable_hash` is the hash the **active** Service must select, and
//!   `Plan.traffic.canary_hash` the hash the **preview** Service selects; `canary_weight` is always 0
//!   (no weighted routing).
//! - `Snapshot.step_analysis` is the verdict of the pre-promotion run and
//!   `Snapshot.background_analysis` that of the post-promotion run (`None`: not started). The
//!   controller starts the pre-promotion run while [`wants_pre_promotion_analysis`] holds and the
//!   post-promotion run while [`wants_post_promotion_analysis`] holds, and drops a run once it is no
//!   longer wanted.
//! - `status.currentStepIndex` records the [`Stage`] of the release (see [`stage`]); like a canary
//!   step it never goes back within a revision, except by a retry.
//!
//! A release is the pair (stable hash, current hash). The new ReplicaSet comes up at
//! `previewReplicaCount` behind the preview Service while active stays on stable at full size; once
//! the preview is available, pre-promotion analysis runs, then the release waits for promotion (a
//! person, or `autoPromotionSeconds`); the new ReplicaSet is scaled to full size and, once fully
//! available, active switches to it in one change. Post-promotion analysis then runs with the old
//! version still at full size, so that a failure can switch back at once. When it passes the new
//! version becomes stable and the old one is scaled down after `scaleDownDelaySeconds`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::release::AbortCause;
use sluice_api::rollout::{
    BlueGreenStatus, BlueGreenStrategy, PauseCondition, RolloutPhase, RolloutStatus,
};

use crate::conditions;
use crate::events::Event;
use crate::gate::refuse_promotion_while_held;
use crate::gate::{self, Gated};
use crate::release::{
    AnalysisOutcome, DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS, DEFAULT_SCALE_DOWN_DELAY_SECONDS,
    Plan, ReplicaSetView, Snapshot, Traffic, Verdicts, add, converged, earliest, fill_counts,
    history_to_delete, observed, pause_reason, progress_deadline, until,
};
use crate::replicas::Observed;
use crate::runs::RunPlan;
use crate::webhooks::{BeforePods, Hooks};

/// Pause reason while the release waits for promotion (a person, or `autoPromotionSeconds`).
pub const BLUE_GREEN_PAUSE: &str = "BlueGreenPause";

/// Where a blue-green release stands, in order; persisted as `status.currentStepIndex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The new ReplicaSet comes up at preview size; active stays on stable.
    Preview,
    /// The preview is fully available; pre-promotion analysis runs (if configured).
    PrePromotionAnalysis,
    /// Waiting for promotion: a person, or `autoPromotionSeconds`.
    AwaitingPromotion,
    /// Promoted: the new ReplicaSet is scaled to full size before the switch (`scaleUpPreviewCheckPoint`).
    ScalingUp,
    /// Active selects the new version; post-promotion analysis runs (if configured), old version kept whole.
    PostPromotionAnalysis,
    /// The new version is stable (or there is no release).
    Completed,
}

impl Stage {
    const ALL: [Stage; 6] = [
        Stage::Preview,
        Stage::PrePromotionAnalysis,
        Stage::AwaitingPromotion,
        Stage::ScalingUp,
        Stage::PostPromotionAnalysis,
        Stage::Completed,
    ];

    /// The value stored in `status.currentStepIndex`.
    pub fn index(self) -> i32 {
        match self {
            Stage::Preview => 0,
            Stage::PrePromotionAnalysis => 1,
            Stage::AwaitingPromotion => 2,
            Stage::ScalingUp => 3,
            Stage::PostPromotionAnalysis => 4,
            Stage::Completed => 5,
        }
    }

    /// The stage stored as `index`; out-of-range values read as `Preview`, the safe start.
    pub fn from_index(index: i32) -> Stage {
        Stage::ALL
            .into_iter()
            .find(|s| s.index() == index)
            .unwrap_or(Stage::Preview)
    }
}

/// The stage recorded in `status` (`Preview` if none is).
pub fn stage(status: &RolloutStatus) -> Stage {
    status
        .current_step_index
        .map_or(Stage::Preview, Stage::from_index)
}

/// A release is in flight and not aborted.
fn in_flight(status: &RolloutStatus) -> bool {
    !status.abort
        && status.current_pod_hash.is_some()
        && status.current_pod_hash != status.stable_rs
}

/// The controller should have a pre-promotion AnalysisRun of the current revision running.
pub fn wants_pre_promotion_analysis(status: &RolloutStatus, strategy: &BlueGreenStrategy) -> bool {
    strategy.pre_promotion_analysis.is_some()
        && in_flight(status)
        && !status.promote_full
        && stage(status) == Stage::PrePromotionAnalysis
}

/// The controller should have a post-promotion AnalysisRun of the current revision running.
pub fn wants_post_promotion_analysis(status: &RolloutStatus, strategy: &BlueGreenStrategy) -> bool {
    strategy.post_promotion_analysis.is_some()
        && in_flight(status)
        && !status.promote_full
        && stage(status) == Stage::PostPromotionAnalysis
}

/// The hash the active Service selects for this status: the new revision once switched (and not
/// aborted), stable otherwise.
pub fn active_hash(status: &RolloutStatus) -> Option<&str> {
    if in_flight(status) && stage(status) >= Stage::PostPromotionAnalysis {
        status.current_pod_hash.as_deref()
    } else {
        status
            .stable_rs
            .as_deref()
            .or(status.current_pod_hash.as_deref())
    }
}

/// Pods of the new version before promotion: `previewReplicaCount`, at most `replicas`.
fn preview_replicas(replicas: i32, strategy: &BlueGreenStrategy) -> i32 {
    strategy
        .preview_replica_count
        .map_or(replicas, |n| n.clamp(0, replicas.max(0)))
}

struct Decision<'a> {
    s: &'a Snapshot<'a>,
    /// The verdicts of the release's analysis runs.
    v: &'a Verdicts,
    bg: &'a BlueGreenStrategy,
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
    /// The new revision waits for the gates: no pods yet.
    waits: bool,
    /// What aborted the release in this decision.
    aborted_by: Option<AbortCause>,
    /// Pre-deployment checks (or `pre-rollout` webhooks) are running, with this message: the
    /// preview gets no pods yet.
    checking: Option<String>,
    /// The webhooks' calls and Events.
    hooks: Hooks<'a>,
    /// A `confirm-rollout` or `confirm-promotion` webhook has not answered 2xx: the release waits,
    /// with this message.
    confirming: Option<String>,
}

impl Decision<'_> {
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

    /// `hash` has at least `n` pods, all available.
    fn fully_available(&self, hash: &str, n: i32) -> bool {
        let o = self.observed(hash);
        o.replicas >= n && o.available >= n
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

    fn bg_status(&mut self) -> &mut BlueGreenStatus {
        self.status
            .blue_green
            .get_or_insert_with(BlueGreenStatus::default)
    }

    fn set_stage(&mut self, stage: Stage) {
        self.status.current_step_index = Some(stage.index());
    }

    fn stage(&self) -> Stage {
        stage(&self.status)
    }
}

/// Decides the next step of a blue-green Rollout.
pub(crate) fn decide(s: &Snapshot<'_>, v: &Verdicts, strategy: &BlueGreenStrategy) -> Plan {
    let mut d = Decision {
        s,
        v,
        bg: strategy,
        status: s.status.clone(),
        events: Vec::new(),
        requeue_after: None,
        scale: BTreeMap::new(),
        scale_down_at: BTreeMap::new(),
        runs_forgotten: false,
        held: None,
        waits: false,
        aborted_by: None,
        checking: None,
        hooks: Hooks::new(&s.spec.webhooks, s.current_hash, s.hook_answers),
        confirming: None,
    };
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
        forget_release(&mut d);
        match d.status.stable_rs.clone() {
            None => {
                d.status.stable_rs = Some(current.clone());
                d.set_stage(Stage::Completed);
                d.event(
                    false,
                    "InitialRevision",
                    format!("first revision {current} is released at full size"),
                );
            }
            Some(stable) if stable == current => {
                d.set_stage(Stage::Completed);
                d.event(
                    false,
                    "RolledBackToStable",
                    format!("template is back to stable {stable}: the release is cancelled"),
                );
            }
            Some(stable) => {
                d.set_stage(Stage::Preview);
                d.event(
                    false,
                    "ReleaseStarted",
                    format!("new revision {current} (stable {stable}) comes up behind the preview"),
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
    if s.actions.retry && d.status.abort && releasing {
        d.status.abort = false;
        d.status.aborted_at = None;
        d.status.pause_conditions.clear();
        d.status.controller_pause = false;
        d.set_stage(Stage::Preview);
        // The aborted release's runs keep their verdicts; the retry measures afresh.
        forget_release(&mut d);
        // A retry starts the release again: the gates and the checks have their say again.
        gate::forget_admission(&mut d.status);
        crate::checks::rerun(&mut d.status, &current);
        d.hooks.rerun(&mut d.status);
        d.event(
            false,
            "RolloutRetried",
            "release retried from the preview".to_owned(),
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
            "promoted in full: analysis and pauses skipped".to_owned(),
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

    let going = releasing && !d.status.abort;
    let gated = gate::gate_release(
        &mut d.status,
        s.gating,
        &current,
        going,
        s.now,
        s.generation,
        &mut d.events,
    );
    if let Gated::Abort { message } = &gated {
        abort(&mut d, AbortCause::ErrorBudget, message);
    }
    d.held = gated.held().map(str::to_owned);
    d.waits = matches!(gated, Gated::HoldNew { .. });
    refuse_promotion_while_held(
        &mut d.events,
        d.held.as_deref(),
        &mut promote,
        s.actions.promote_full,
    );

    // The gates hold the new revision back: nothing of it is called or checked yet.
    let gate_waits = d.waits;
    if releasing
        && !d.status.abort
        && !gate_waits
        && gate::admitted(&d.status, &current)
        && let Some(why) = d.hooks.rollback(&mut d.status)
    {
        abort(&mut d, AbortCause::Webhook, &why);
    }
    // A release the gates let start, and whether its preview has yet to get a pod.
    let starting =
        (releasing && !d.status.abort && !gate_waits && gate::admitted(&d.status, &current))
            .then(|| d.stage() == Stage::Preview && d.observed(&current).replicas == 0);
    if let Some(starting) = starting {
        match d.hooks.before_pods(&mut d.status, starting) {
            BeforePods::Go => {}
            BeforePods::Confirming(message) => {
                d.confirming = Some(message);
                d.waits = true;
            }
            BeforePods::Running(message) => {
                d.checking = Some(message);
                d.waits = true;
            }
            BeforePods::Failed(message) => abort(&mut d, AbortCause::Webhook, &message),
        }
    }
    // The checks start once the webhooks confirmed the release (pre-rollout runs beside them).
    if let Some(starting) = starting.filter(|_| !d.status.abort && d.confirming.is_none()) {
        let checked = crate::checks::decide(
            &mut d.status,
            &s.spec.pre_deployment_checks,
            &current,
            starting,
            &v.checks,
            (s.now, s.generation),
            &mut d.events,
        );
        match checked {
            crate::checks::Checked::Go => {}
            crate::checks::Checked::Running(message) => {
                d.checking = Some(match d.checking.take() {
                    Some(hooks) => format!("{message}; {hooks}"),
                    None => message,
                });
                d.waits = true;
            }
            crate::checks::Checked::Failed(message) => {
                abort(&mut d, AbortCause::PreDeploymentCheck, &message);
            }
        }
    }
    if releasing && !d.status.abort && !d.waits {
        walk(&mut d, &mut promote, &stable, &current);
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
        d.waits = false;
    }
    let completed = d.status.stable_rs.as_deref() == Some(current.as_str());
    d.hooks
        .settle(&mut d.status, d.confirming.is_some(), completed, s.now);
    plan_scale(&mut d, &current);
    summarize(&mut d, &current);
    let stable = d
        .status
        .stable_rs
        .clone()
        .unwrap_or_else(|| current.clone());
    if check_progress(&mut d, &stable, &current) {
        // The deadline aborted the release: active back on stable now, not on the next reconcile.
        d.scale.clear();
        d.scale_down_at.clear();
        plan_scale(&mut d, &current);
        summarize(&mut d, &current);
    }
    let active = active_hash(&d.status)
        .unwrap_or(current.as_str())
        .to_owned();
    let delete = history_to_delete(d.s, &d.scale, &[&stable, &current, &active]);
    conditions::keep_transition_times(&s.status.conditions, &mut d.status.conditions);
    let waits = d.waits;
    let aborted = d.status.abort;
    let create_current = !waits && !s.replica_sets.iter().any(|rs| rs.hash == s.current_hash);
    let avoid = (create_current && d.bg.anti_affinity.is_some() && active != s.current_hash)
        .then(|| active.clone());
    Plan {
        status: d.status,
        create_current,
        avoid,
        scale: d.scale,
        scale_down_at: d.scale_down_at,
        delete,
        traffic: Traffic {
            canary_weight: 0,
            // After an abort the preview Service selects the active version too: no Service selects
            // the aborted one.
            canary_hash: if aborted { active.clone() } else { current },
            stable_hash: active,
            managed_routes: Vec::new(),
            leave_services: false,
        },
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

/// Drops the release's analysis runs and check point, so that a fresh release starts.
fn forget_release(d: &mut Decision<'_>) {
    d.runs_forgotten = true;
    if let Some(bg) = d.status.blue_green.as_mut() {
        bg.pre_promotion_analysis_run_status = None;
        bg.post_promotion_analysis_run_status = None;
        bg.scale_up_preview_check_point = false;
        // A new release (or a retry) is scored afresh.
        bg.confidence = None;
    }
}

fn abort(d: &mut Decision<'_>, cause: AbortCause, reason: &str) {
    d.aborted_by = Some(cause);
    d.status.abort = true;
    d.status.aborted_at = Some(Time(d.s.now));
    d.status.promote_full = false;
    d.remove_pause(BLUE_GREEN_PAUSE);
    d.remove_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
    d.remove_pause(pause_reason::CONFIDENCE_REVIEW);
    d.status.controller_pause = false;
    d.status.message = Some(format!(
        "release aborted: {reason}; active is back on stable"
    ));
    d.event(true, "RolloutAborted", format!("release aborted: {reason}"));
}

/// The verdict handed in for `stage`'s run, if it counts: the run must belong to the stage the
/// persisted status was at, and not have been dropped in this decision.
fn verdict(d: &Decision<'_>, stage: Stage) -> Option<AnalysisOutcome> {
    if d.runs_forgotten || self::stage(d.s.status) != stage {
        return None;
    }
    match stage {
        Stage::PrePromotionAnalysis => d.v.step.clone(),
        Stage::PostPromotionAnalysis => d.v.background.clone(),
        _ => None,
    }
}

/// What an analysis stage does with its verdict: true if the stage is complete.
fn judge(d: &mut Decision<'_>, stage: Stage, promote: &mut bool) -> bool {
    let which = if stage == Stage::PrePromotionAnalysis {
        "pre-promotion"
    } else {
        "post-promotion"
    };
    let done = match verdict(d, stage) {
        Some(AnalysisOutcome::Successful) => true,
        Some(AnalysisOutcome::Failed(why)) => {
            abort(
                d,
                AbortCause::Analysis,
                &format!("{which} analysis failed: {why}"),
            );
            false
        }
        Some(AnalysisOutcome::Inconclusive(why)) => {
            if std::mem::take(promote) {
                true
            } else {
                if !d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS) {
                    d.add_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
                    d.event(
                        true,
                        "AnalysisInconclusive",
                        format!("{which} analysis inconclusive: {why}; waiting for a person"),
                    );
                }
                false
            }
        }
        // A person may skip a running analysis, as with a canary analysis step.
        Some(AnalysisOutcome::Running) | None => std::mem::take(promote),
    };
    if done {
        d.remove_pause(pause_reason::INCONCLUSIVE_ANALYSIS);
        let reason = if stage == Stage::PrePromotionAnalysis {
            "PrePromotionAnalysisCompleted"
        } else {
            "PostPromotionAnalysisCompleted"
        };
        d.event(false, reason, format!("{which} analysis completed"));
    }
    done
}

/// Walks the stages from the persisted one as far as they complete now.
fn walk(d: &mut Decision<'_>, promote: &mut bool, stable: &str, current: &str) {
    let replicas = d.s.spec.replicas;
    let preview = preview_replicas(replicas, d.bg);
    let held = d.s.spec.paused || d.has_pause(pause_reason::PAUSED_BY_USER);
    // A release cannot be complete while stable differs from current: start it over safely.
    if d.stage() == Stage::Completed {
        d.set_stage(Stage::Preview);
    }
    while !held && !d.status.abort {
        if d.held.is_some() && d.stage() < Stage::PostPromotionAnalysis {
            // Held before the switch: the preview stays as it is and active stays on stable. A
            // failing pre-promotion analysis still aborts; a promotion waits for the gates.
            if d.stage() == Stage::PrePromotionAnalysis
                && let Some(AnalysisOutcome::Failed(why)) = verdict(d, Stage::PrePromotionAnalysis)
            {
                abort(
                    d,
                    AbortCause::Analysis,
                    &format!("pre-promotion analysis failed: {why}"),
                );
            }
            break;
        }
        let full = d.status.promote_full;
        let next = match d.stage() {
            Stage::Preview => {
                if !d.fully_available(current, preview) {
                    break;
                }
                d.event(
                    false,
                    "PreviewAvailable",
                    format!("preview {current} is fully available ({preview} pods)"),
                );
                Stage::PrePromotionAnalysis
            }
            Stage::PrePromotionAnalysis => {
                if full
                    || d.bg.pre_promotion_analysis.is_none()
                    || judge(d, Stage::PrePromotionAnalysis, promote)
                {
                    Stage::AwaitingPromotion
                } else {
                    break;
                }
            }
            Stage::AwaitingPromotion => {
                if full {
                    d.remove_pause(pause_reason::CONFIDENCE_REVIEW);
                } else if !judge_confidence(d, *promote) {
                    break;
                }
                if !awaited_promotion(d, promote, current) {
                    break;
                }
                Stage::ScalingUp
            }
            Stage::ScalingUp => {
                d.bg_status().scale_up_preview_check_point = true;
                // Active switches once the `confirm-promotion` webhooks agree (asked while the
                // preview scales up)...
                d.confirming = d.hooks.confirm_promotion(&mut d.status);
                if d.confirming.is_some() {
                    break;
                }
                // ...and never points at a ReplicaSet that is not fully available.
                if !d.fully_available(current, replicas) {
                    break;
                }
                d.event(
                    false,
                    "ActiveSwitched",
                    format!("active switched from {stable} to {current}"),
                );
                Stage::PostPromotionAnalysis
            }
            Stage::PostPromotionAnalysis => {
                if full
                    || d.bg.post_promotion_analysis.is_none()
                    || judge(d, Stage::PostPromotionAnalysis, promote)
                {
                    Stage::Completed
                } else {
                    break;
                }
            }
            Stage::Completed => {
                complete(d, current);
                break;
            }
        };
        d.set_stage(next);
    }
    d.status.controller_pause = d.has_pause(BLUE_GREEN_PAUSE)
        || d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS)
        || d.has_pause(pause_reason::CONFIDENCE_REVIEW);
}

/// `prePromotionConfidence`: scored once when the preview is ready for promotion (recorded in
/// `status.blueGreen.confidence`, with an Event), then acted on: go on to promotion, wait for a
/// person (`ConfidenceReview`; their promote also promotes), or abort. Returns whether it lets the
/// release go on to promotion.
fn judge_confidence(d: &mut Decision<'_>, promote: bool) -> bool {
    use sluice_api::rollout::ConfidenceDecision;
    let Some(step) = d.bg.pre_promotion_confidence.as_ref() else {
        return true;
    };
    let recorded = d
        .status
        .blue_green
        .as_ref()
        .and_then(|b| b.confidence.clone())
        .filter(|c| c.revision == d.s.current_hash);
    let scored = match recorded {
        Some(scored) => scored,
        None => {
            let scored = crate::confidence::assess(d.s, &d.status, step, 0, 0);
            let what = match scored.decision {
                ConfidenceDecision::Promote => "the release goes on to promotion",
                ConfidenceDecision::Review => "waiting for a person to promote or abort",
                ConfidenceDecision::Abort => "the release is aborted",
            };
            d.event(
                scored.decision != ConfidenceDecision::Promote,
                "ConfidenceScored",
                format!(
                    "before promotion: {}; {what}",
                    crate::confidence::breakdown(&scored)
                ),
            );
            d.bg_status().confidence = Some(scored.clone());
            scored
        }
    };
    match scored.decision {
        ConfidenceDecision::Promote => true,
        ConfidenceDecision::Review if promote => {
            d.remove_pause(pause_reason::CONFIDENCE_REVIEW);
            true
        }
        ConfidenceDecision::Review => {
            d.add_pause(pause_reason::CONFIDENCE_REVIEW);
            false
        }
        ConfidenceDecision::Abort => {
            let message = format!(
                "confidence {} before promotion is below {}",
                scored.score, step.abort_below
            );
            abort(d, AbortCause::LowConfidence, &message);
            false
        }
    }
}

/// The promotion gate: a person's promote (or promote --full), or auto-promotion, after
/// `autoPromotionSeconds` if set. Returns true once promoted.
fn awaited_promotion(d: &mut Decision<'_>, promote: &mut bool, current: &str) -> bool {
    let auto = d.bg.auto_promotion_enabled.unwrap_or(true);
    let seconds = d.bg.auto_promotion_seconds.filter(|n| *n > 0);
    if d.status.promote_full || (auto && seconds.is_none()) || std::mem::take(promote) {
        d.remove_pause(BLUE_GREEN_PAUSE);
        d.event(
            false,
            "RolloutPromoted",
            format!("{current} promoted: scaling it to full size before the switch"),
        );
        return true;
    }
    if !d.has_pause(BLUE_GREEN_PAUSE) {
        d.add_pause(BLUE_GREEN_PAUSE);
        d.event(
            false,
            "WaitingForPromotion",
            format!("preview {current} is fully available: waiting for promotion"),
        );
    }
    if auto && let Some(seconds) = seconds {
        let started = d
            .status
            .pause_conditions
            .iter()
            .find(|p| p.reason == BLUE_GREEN_PAUSE)
            .map_or(d.s.now, |p| p.start_time.0);
        let at = add(started, i64::from(seconds));
        if d.s.now >= at {
            d.remove_pause(BLUE_GREEN_PAUSE);
            d.event(
                false,
                "RolloutPromoted",
                format!("{current} promoted automatically after {seconds}s"),
            );
            return true;
        }
        d.requeue_after = earliest(d.requeue_after, until(d.s.now, at));
    }
    false
}

/// Post-promotion passed: the new version becomes stable.
fn complete(d: &mut Decision<'_>, current: &str) {
    d.status.stable_rs = Some(current.to_owned());
    d.status.promote_full = false;
    d.status.pause_conditions.clear();
    d.status.controller_pause = false;
    d.bg_status().scale_up_preview_check_point = false;
    d.event(
        false,
        "RolloutCompleted",
        format!("revision {current} is stable"),
    );
}

/// Sizes every ReplicaSet for the status decided so far.
fn plan_scale(d: &mut Decision<'_>, current: &str) {
    let replicas = d.s.spec.replicas;
    let stable = d
        .status
        .stable_rs
        .clone()
        .unwrap_or_else(|| current.to_owned());
    let releasing = stable != current;
    if !releasing {
        d.set_stage(Stage::Completed);
    }
    // Stable stays at full size throughout a release: active may come back to it at any moment.
    d.scale.insert(stable.clone(), replicas);
    if releasing {
        let n = if d.status.abort {
            aborted_size(d, current)
        } else if d.waits {
            0
        } else if d.stage() >= Stage::ScalingUp {
            replicas
        } else {
            preview_replicas(replicas, d.bg)
        };
        d.scale.insert(current.to_owned(), n);
    }
    // The live revisions carry no scale-down deadline.
    for rs in d.s.replica_sets {
        if (rs.hash == stable || rs.hash == current) && rs.scale_down_at.is_some() {
            d.scale_down_at.insert(rs.hash.clone(), None);
        }
    }
    scale_down_others(d, &stable, current);
}

/// The new ReplicaSet's size after an abort: kept for `abortScaleDownDelaySeconds` (0 keeps it).
fn aborted_size(d: &mut Decision<'_>, current: &str) -> i32 {
    let kept = d.observed(current).replicas;
    let delay =
        d.bg.abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS);
    if delay <= 0 {
        return kept;
    }
    let aborted = d.status.aborted_at.as_ref().map_or(d.s.now, |t| t.0);
    let at = add(aborted, i64::from(delay));
    if d.s.now >= at {
        0
    } else {
        d.requeue_after = earliest(d.requeue_after, until(d.s.now, at));
        kept
    }
}

/// ReplicaSets that are neither stable nor current go to zero, except those that served active
/// traffic: they are kept for `scaleDownDelaySeconds` (at most `scaleDownDelayRevisionLimit` of them,
/// newest first), so that in-flight requests finish and a rollback is instant.
fn scale_down_others(d: &mut Decision<'_>, stable: &str, current: &str) {
    let now = d.s.now;
    let delay = i64::from(
        d.bg.scale_down_delay_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
    );
    let served = [active_hash(d.s.status), d.s.status.stable_rs.as_deref()];
    let mut waiting: Vec<(&ReplicaSetView, Timestamp, bool)> = Vec::new();
    for rs in
        d.s.replica_sets
            .iter()
            .filter(|rs| rs.hash != stable && rs.hash != current)
    {
        match rs.scale_down_at {
            Some(at) if at > now && rs.replicas > 0 => waiting.push((rs, at, false)),
            None if rs.replicas > 0 && delay > 0 && served.contains(&Some(rs.hash.as_str())) => {
                waiting.push((rs, add(now, delay), true));
            }
            _ => {
                d.scale.insert(rs.hash.clone(), 0);
            }
        }
    }
    waiting.sort_by_key(|(rs, _, _)| std::cmp::Reverse(rs.created));
    let limit =
        d.bg.scale_down_delay_revision_limit
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(0));
    for (i, (rs, at, new)) in waiting.into_iter().enumerate() {
        if i >= limit {
            d.scale.insert(rs.hash.clone(), 0);
            continue;
        }
        d.scale.insert(rs.hash.clone(), rs.replicas);
        if new {
            d.scale_down_at.insert(rs.hash.clone(), Some(at));
        }
        d.requeue_after = earliest(d.requeue_after, until(now, at));
    }
}

/// Fills in the counts, selectors, phase, message and conditions.
fn summarize(d: &mut Decision<'_>, current: &str) {
    let s = d.s;
    let replicas = s.spec.replicas;
    fill_counts(s, &mut d.status);
    d.status.step_progress = None;
    let stable = d
        .status
        .stable_rs
        .clone()
        .unwrap_or_else(|| current.to_owned());
    let active = active_hash(&d.status).unwrap_or(current).to_owned();
    // After an abort the preview Service selects the active version: none selects the aborted one.
    let preview = if d.status.abort {
        active.clone()
    } else {
        current.to_owned()
    };
    {
        let bg = d.bg_status();
        bg.active_selector = Some(active.clone());
        bg.preview_selector = Some(preview);
    }

    let active_view = d.observed(&active);
    let current_view = d.observed(current);
    let releasing = stable != current;
    // Only without a release, when active is stable.
    let converged = converged(s, &stable, &d.scale, &d.scale_down_at);
    let paused = s.spec.paused || !d.status.pause_conditions.is_empty() || d.held.is_some();
    let stage = d.stage();
    let (phase, message) = if d.status.abort {
        let message = d
            .status
            .message
            .clone()
            .filter(|m| m.starts_with("release aborted"))
            .unwrap_or_else(|| "release aborted; active is back on stable".to_owned());
        (RolloutPhase::Degraded, message)
    } else if let (true, Some(checking)) = (releasing, d.checking.as_deref()) {
        (
            RolloutPhase::Progressing,
            format!("new revision {current} waits: {checking}"),
        )
    } else if let (true, Some(held)) = (releasing, d.held.as_deref()) {
        let message = if gate::admitted(&d.status, current) {
            format!("release held at stage {stage:?}: {held}")
        } else {
            format!("new revision {current} waits: {held}")
        };
        (RolloutPhase::Paused, message)
    } else if releasing && paused {
        let why = if s.spec.paused {
            "spec.paused".to_owned()
        } else if d.has_pause(pause_reason::PAUSED_BY_USER) {
            "paused by a user".to_owned()
        } else if let Some(confirming) = &d.confirming {
            format!("{}: {confirming}", pause_reason::WAITING_FOR_CONFIRMATION)
        } else if let Some(score) = d
            .status
            .blue_green
            .as_ref()
            .and_then(|b| b.confidence.as_ref())
            .filter(|_| d.has_pause(pause_reason::CONFIDENCE_REVIEW))
        {
            format!(
                "{}: {}; promote to go on, abort to stop",
                pause_reason::CONFIDENCE_REVIEW,
                crate::confidence::breakdown(score)
            )
        } else if d.has_pause(pause_reason::INCONCLUSIVE_ANALYSIS) {
            format!(
                "analysis of {current} was inconclusive: waiting for a person to promote or abort"
            )
        } else {
            format!("waiting for promotion: preview {current} is fully available")
        };
        (RolloutPhase::Paused, why)
    } else if releasing {
        let message = match stage {
            Stage::Preview => format!(
                "preview {current}: {}/{} pods available",
                current_view.available,
                preview_replicas(replicas, d.bg)
            ),
            Stage::PrePromotionAnalysis => {
                format!("pre-promotion analysis of preview {current} running")
            }
            Stage::AwaitingPromotion => format!("preview {current} waits for promotion"),
            Stage::ScalingUp => format!(
                "promoted: scaling {current} to full size before the switch ({}/{replicas} available)",
                current_view.available
            ),
            Stage::PostPromotionAnalysis | Stage::Completed => format!(
                "active switched to {current}; post-promotion analysis running, {stable} kept at full size"
            ),
        };
        (RolloutPhase::Progressing, message)
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
                active_view.available
            ),
        )
    };
    d.status.phase = Some(phase);
    d.status.message = Some(message.clone());

    let available = active_view.available >= replicas;
    conditions::set_release(
        &mut d.status.conditions,
        &conditions::ReleaseState {
            phase,
            paused,
            converged,
            stalled: d.status.abort,
            available: (
                available,
                format!(
                    "{}/{replicas} active pods ({active}) available",
                    active_view.available
                ),
            ),
            message: &message,
            now: s.now,
            generation: s.generation,
        },
    );
}
/// Tracks progress and enforces `progressDeadlineSeconds`, as for a canary
/// ([`crate::canary::progress_deadline`]): time spent paused (including waiting for promotion) or
/// aborted does not count. Returns true if it aborted.
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use sluice_api::common::{AnalysisTemplateRef, RolloutAnalysis};
    use sluice_api::rollout::{RolloutSpec, RolloutStrategy};

    use super::*;
    use crate::release::Actions;

    fn analysis() -> Option<RolloutAnalysis> {
        Some(RolloutAnalysis {
            templates: vec![AnalysisTemplateRef {
                template_name: "t".into(),
                cluster_scope: false,
            }],
            args: vec![],
            dry_run: vec![],
            measurement_retention: vec![],
        })
    }

    fn strategy() -> BlueGreenStrategy {
        BlueGreenStrategy {
            active_service: "active".into(),
            preview_service: Some("preview".into()),
            auto_promotion_enabled: None,
            auto_promotion_seconds: None,
            preview_replica_count: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            pre_promotion_confidence: None,
            scale_down_delay_seconds: None,
            scale_down_delay_revision_limit: None,
            abort_scale_down_delay_seconds: None,
            active_metadata: None,
            preview_metadata: None,
            anti_affinity: None,
        }
    }

    /// A tiny cluster: the plan is applied as the controller would.
    struct World {
        spec: RolloutSpec,
        status: RolloutStatus,
        current: String,
        rss: Vec<ReplicaSetView>,
        now: Timestamp,
        pre: Option<AnalysisOutcome>,
        post: Option<AnalysisOutcome>,
    }

    impl World {
        fn new(replicas: i32, bg: BlueGreenStrategy) -> World {
            let spec = RolloutSpec {
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
                revision_history_limit: 10,
                release_history_limit: 20,
                circuit_breaker: None,
                paused: false,
                progress_deadline_seconds: 600,
                progress_deadline_abort: false,
                restart_at: None,
                rollback_window: None,
                analysis: None,
                strategy: RolloutStrategy {
                    canary: None,
                    blue_green: Some(bg),
                },
            };
            World {
                spec,
                status: RolloutStatus::default(),
                current: "aaaa".into(),
                rss: Vec::new(),
                now: Timestamp::from_second(1_800_000_000).expect("time"),
                pre: None,
                post: None,
            }
        }

        fn step(&mut self, actions: Actions) -> Plan {
            let bg = self.spec.strategy.blue_green.clone().expect("blue-green");
            let snapshot = Snapshot {
                name: "web",
                generation: 1,
                spec: &self.spec,
                status: &self.status,
                current_hash: &self.current,
                replica_sets: &self.rss,
                runs: &[],
                pods: &[],
                actions,
                request: None,
                invalid_spec: None,
                gating: &crate::gate::Gating::default(),
                workload_replicas: None,
                images: &[],
                requester: None,
                request_reason: None,
                circuit: &Default::default(),
                history: &[],
                plan_pin: None,
                hook_answers: &[],
                now: self.now,
            };
            let verdicts = Verdicts {
                step: self.pre.clone(),
                background: self.post.clone(),
                checks: Vec::new(),
            };
            let plan = decide(&snapshot, &verdicts, &bg);
            if plan.create_current {
                self.rss.push(ReplicaSetView {
                    hash: self.current.clone(),
                    replicas: 0,
                    available: 0,
                    scale_down_at: None,
                    created: self.now,
                });
            }
            for rs in &mut self.rss {
                if let Some(n) = plan.scale.get(&rs.hash) {
                    rs.replicas = *n;
                    rs.available = rs.available.min(*n);
                }
                if let Some(at) = plan.scale_down_at.get(&rs.hash) {
                    rs.scale_down_at = *at;
                }
            }
            self.rss.retain(|rs| !plan.delete.contains(&rs.hash));
            self.status = plan.status.clone();
            plan
        }

        fn ready(&mut self) -> Plan {
            for rs in &mut self.rss {
                rs.available = rs.replicas;
            }
            self.step(Actions::default())
        }

        fn tick(&mut self, seconds: i64) -> Plan {
            self.now = add(self.now, seconds);
            self.step(Actions::default())
        }

        fn replicas(&self, hash: &str) -> i32 {
            self.rss
                .iter()
                .find(|rs| rs.hash == hash)
                .map_or(0, |rs| rs.replicas)
        }

        /// The first revision, fully up, then a new template `bbbb`.
        fn released(replicas: i32, bg: BlueGreenStrategy) -> (World, Plan) {
            let mut w = World::new(replicas, bg);
            w.step(Actions::default());
            w.ready();
            w.current = "bbbb".into();
            let plan = w.step(Actions::default());
            (w, plan)
        }
    }

    fn reasons(plan: &Plan) -> Vec<&str> {
        plan.events.iter().map(|e| e.reason).collect()
    }

    const PROMOTE: Actions = Actions {
        promote: true,
        promote_full: false,
        abort: false,
        retry: false,
        pause: false,
        resume: false,
        restart: false,
        reset_breaker: false,
    };

    /// `prePromotionConfidence` scores the ready preview once: a middling score waits for a person,
    /// whose promote both accepts it and promotes; a low one aborts with active untouched.
    #[test]
    fn pre_promotion_confidence_waits_for_a_person_or_aborts_before_the_switch() {
        use sluice_api::rollout::{ConfidenceDecision, ConfidenceStep, ConfidenceWeights};
        let scored = |promote_at, abort_below| BlueGreenStrategy {
            pre_promotion_confidence: Some(ConfidenceStep {
                promote_at,
                abort_below,
                weights: ConfidenceWeights::default(),
            }),
            ..strategy()
        };
        // No analysis, no checks, no traffic, no history: a score well below 100.
        let (mut w, _) = World::released(2, scored(100, 0));
        let plan = w.ready();
        assert!(
            reasons(&plan).contains(&"ConfidenceScored"),
            "{:?}",
            reasons(&plan)
        );
        let score = w
            .status
            .blue_green
            .as_ref()
            .and_then(|b| b.confidence.clone())
            .expect("scored");
        assert_eq!(score.decision, ConfidenceDecision::Review);
        assert_eq!(w.status.phase, Some(RolloutPhase::Paused));
        assert!(
            w.status
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("ConfidenceReview: confidence ")),
            "{:?}",
            w.status.message
        );
        assert_eq!(active_hash(&w.status), Some("aaaa"));
        // Looked at again: not scored twice.
        let plan = w.tick(5);
        assert!(!reasons(&plan).contains(&"ConfidenceScored"));
        w.step(PROMOTE);
        w.ready();
        assert_eq!(
            active_hash(&w.status),
            Some("bbbb"),
            "{:?}",
            w.status.message
        );

        let (mut w, _) = World::released(2, scored(100, 100));
        let plan = w.ready();
        assert!(w.status.abort);
        assert_eq!(plan.aborted_by, Some(AbortCause::LowConfidence));
        assert_eq!(active_hash(&w.status), Some("aaaa"));
    }

    #[test]
    fn first_revision_goes_straight_to_active_at_full_size() {
        let mut w = World::new(3, strategy());
        let plan = w.step(Actions::default());
        assert_eq!(reasons(&plan), ["InitialRevision"]);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.traffic.canary_hash, "aaaa");
        assert_eq!(plan.scale.get("aaaa"), Some(&3));
        assert_eq!(w.status.stable_rs.as_deref(), Some("aaaa"));
        let plan = w.ready();
        assert_eq!(plan.status.phase, Some(RolloutPhase::Healthy));
        assert!(plan.events.is_empty());
    }

    #[test]
    fn manual_promotion_waits_for_a_person_then_switches() {
        let mut bg = strategy();
        bg.auto_promotion_enabled = Some(false);
        let (mut w, plan) = World::released(3, bg);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.traffic.canary_hash, "bbbb");
        assert_eq!(plan.scale.get("bbbb"), Some(&3));
        assert_eq!(plan.scale.get("aaaa"), Some(&3));
        let plan = w.ready();
        assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(
            plan.status.message.as_deref(),
            Some("waiting for promotion: preview bbbb is fully available")
        );
        assert!(
            w.status
                .pause_conditions
                .iter()
                .any(|p| p.reason == BLUE_GREEN_PAUSE)
        );
        // Time alone does not promote.
        let plan = w.tick(3600);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        let plan = w.step(PROMOTE);
        assert_eq!(plan.traffic.stable_hash, "bbbb");
        assert_eq!(w.status.stable_rs.as_deref(), Some("bbbb"));
        assert!(reasons(&plan).contains(&"ActiveSwitched"));
        // The old version is kept for scaleDownDelaySeconds (30), then scaled down.
        assert_eq!(w.replicas("aaaa"), 3);
        assert_eq!(plan.scale_down_at.get("aaaa"), Some(&Some(add(w.now, 30))));
        w.tick(10);
        assert_eq!(w.replicas("aaaa"), 3);
        let plan = w.tick(21);
        assert_eq!(w.replicas("aaaa"), 0);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Healthy));
    }

    #[test]
    fn auto_promotion_after_seconds() {
        let mut bg = strategy();
        bg.auto_promotion_seconds = Some(60);
        bg.preview_replica_count = Some(1);
        let (mut w, plan) = World::released(3, bg);
        assert_eq!(plan.scale.get("bbbb"), Some(&1));
        let plan = w.ready();
        assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));
        let plan = w.tick(30);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        // Promoted: scaled to full size first, and only switched once fully available.
        let plan = w.tick(30);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.scale.get("bbbb"), Some(&3));
        assert!(
            w.status
                .blue_green
                .as_ref()
                .is_some_and(|b| b.scale_up_preview_check_point)
        );
        let plan = w.ready();
        assert_eq!(plan.traffic.stable_hash, "bbbb");
        assert_eq!(w.status.stable_rs.as_deref(), Some("bbbb"));
    }

    #[test]
    fn pre_promotion_failure_leaves_active_and_scales_preview_down_after_the_delay() {
        let mut bg = strategy();
        bg.pre_promotion_analysis = analysis();
        bg.preview_replica_count = Some(1);
        let (mut w, _) = World::released(3, bg.clone());
        w.ready();
        assert!(wants_pre_promotion_analysis(&w.status, &bg));
        w.pre = Some(AnalysisOutcome::Running);
        let plan = w.tick(10);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        w.pre = Some(AnalysisOutcome::Failed("error rate".into()));
        let plan = w.step(Actions::default());
        assert!(w.status.abort);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Degraded));
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.scale.get("aaaa"), Some(&3));
        assert_eq!(w.replicas("bbbb"), 1);
        assert!(reasons(&plan).contains(&"RolloutAborted"));
        let plan = w.tick(29);
        assert_eq!(w.replicas("bbbb"), 1);
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        w.tick(1);
        assert_eq!(w.replicas("bbbb"), 0);
        assert_eq!(w.status.stable_rs.as_deref(), Some("aaaa"));
    }

    #[test]
    fn post_promotion_failure_switches_back_at_once() {
        let mut bg = strategy();
        bg.post_promotion_analysis = analysis();
        let (mut w, _) = World::released(3, bg.clone());
        let plan = w.ready();
        assert_eq!(plan.traffic.stable_hash, "bbbb");
        assert_eq!(w.status.stable_rs.as_deref(), Some("aaaa"));
        assert!(wants_post_promotion_analysis(&w.status, &bg));
        // The old version stays whole while post-promotion analysis runs.
        assert_eq!(plan.scale.get("aaaa"), Some(&3));
        w.post = Some(AnalysisOutcome::Failed("latency".into()));
        let plan = w.step(Actions::default());
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert!(w.status.abort);
        assert!(
            w.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("post-promotion analysis failed: latency"))
        );
        assert_eq!(plan.scale.get("aaaa"), Some(&3));
        // The new version is kept for abortScaleDownDelaySeconds, then scaled down.
        assert_eq!(w.replicas("bbbb"), 3);
        w.tick(31);
        assert_eq!(w.replicas("bbbb"), 0);
        // Retry starts the release again from the preview.
        w.post = None;
        let plan = w.step(Actions {
            retry: true,
            ..Actions::default()
        });
        assert!(!w.status.abort);
        assert_eq!(stage(&w.status), Stage::Preview);
        assert_eq!(plan.scale.get("bbbb"), Some(&3));
    }

    #[test]
    fn a_new_template_supersedes_the_release_in_flight() {
        let mut bg = strategy();
        bg.post_promotion_analysis = analysis();
        let (mut w, _) = World::released(3, bg);
        let plan = w.ready();
        assert_eq!(plan.traffic.stable_hash, "bbbb");
        // bbbb is active (post-promotion analysis running) when cccc arrives: active goes back to
        // stable, bbbb is kept for the scale-down delay since it served traffic.
        w.current = "cccc".into();
        let plan = w.step(Actions::default());
        assert!(reasons(&plan).contains(&"ReleaseStarted"));
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.traffic.canary_hash, "cccc");
        assert_eq!(w.replicas("bbbb"), 3);
        assert!(plan.scale_down_at.get("bbbb").is_some_and(Option::is_some));
        w.tick(31);
        assert_eq!(w.replicas("bbbb"), 0);
        // A preview that never served is dropped at once.
        w.current = "dddd".into();
        let plan = w.step(Actions::default());
        assert_eq!(plan.scale.get("cccc"), Some(&0));
        // Back to the stable template: the fast path.
        w.current = "aaaa".into();
        let plan = w.step(Actions::default());
        assert!(reasons(&plan).contains(&"RolledBackToStable"));
        assert_eq!(plan.traffic.stable_hash, "aaaa");
        assert_eq!(plan.scale.get("dddd"), Some(&0));
    }
}
