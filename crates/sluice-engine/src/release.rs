//! The release core both strategies share: what a decision sees ([`Snapshot`]), what it asks for
//! ([`Plan`]), people's requests ([`Actions`]), and the progress deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_api::names::RolloutAction;
use sluice_api::release::{AbortCause, ReleaseProgress};
use sluice_api::rollout::{
    RolloutPhase, RolloutSpec, RolloutStatus, SetHeaderRoute, SetMirrorRoute,
};

use crate::breaker::CircuitInputs;
use crate::conditions::{self, ConditionStatus};
use crate::events::Event;
use crate::gate::Gating;
use crate::pods::{PodMetadataPatch, PodView};
use crate::replicas::Observed;
use crate::runs::{RunPlan, RunView};

/// Default seconds an old stable ReplicaSet is kept after traffic left it (with a traffic router).
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
/// Default seconds the canary's pods are kept after an abort (with a traffic router).
pub const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;

/// Pause reasons recorded in `status.pauseConditions`.
pub mod pause_reason {
    /// A `pause` step.
    pub const CANARY_PAUSE_STEP: &str = "CanaryPauseStep";
    /// A person paused the release.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// Step analysis was inconclusive: a person decides.
    pub const INCONCLUSIVE_ANALYSIS: &str = "InconclusiveAnalysis";
    /// A confidence step scored between `abortBelow` and `promoteAt`: a person decides.
    pub const CONFIDENCE_REVIEW: &str = "ConfidenceReview";
    /// A `confirm-rollout` or `confirm-promotion` webhook has not answered 2xx yet.
    pub const WAITING_FOR_CONFIRMATION: &str = "WaitingForConfirmation";
}

/// A ReplicaSet the Rollout owns, as the controller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSetView {
    /// Its pod-template hash.
    pub hash: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// When it is due to be scaled to zero, if a delay is running.
    pub scale_down_at: Option<Timestamp>,
    /// When it was created; the oldest idle ReplicaSets beyond `revisionHistoryLimit` are deleted.
    pub created: Timestamp,
}

/// What people asked for since the last reconcile (kubectl sluice promote, abort, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Complete the current step (a pause, an analysis) and go on.
    pub promote: bool,
    /// Skip all remaining steps and analysis.
    pub promote_full: bool,
    /// Send all traffic back to stable.
    pub abort: bool,
    /// Start an aborted release again from its first step.
    pub retry: bool,
    /// Pause where the release stands.
    pub pause: bool,
    /// Undo `pause`.
    pub resume: bool,
    /// Replace every pod, a few at a time.
    pub restart: bool,
    /// Close the circuit breaker.
    pub reset_breaker: bool,
}

impl From<Option<RolloutAction>> for Actions {
    fn from(action: Option<RolloutAction>) -> Self {
        let mut actions = Self::default();
        match action {
            Some(RolloutAction::Promote) => actions.promote = true,
            Some(RolloutAction::PromoteFull) => actions.promote_full = true,
            Some(RolloutAction::Abort) => actions.abort = true,
            Some(RolloutAction::Retry) => actions.retry = true,
            Some(RolloutAction::Pause) => actions.pause = true,
            Some(RolloutAction::Resume) => actions.resume = true,
            Some(RolloutAction::Restart) => actions.restart = true,
            Some(RolloutAction::ResetBreaker) => actions.reset_breaker = true,
            None => {}
        }
        actions
    }
}

/// The verdict of the current step's analysis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnalysisOutcome {
    /// Still measuring.
    Running,
    /// Passed.
    Successful,
    /// Neither passed nor failed: pause for a person.
    Inconclusive(String),
    /// Failed or errored: abort.
    Failed(String),
}

/// Everything a decision depends on.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// `metadata.name` of the Rollout (its runs are named after it).
    pub name: &'a str,
    /// `metadata.generation` of the Rollout.
    pub generation: i64,
    pub spec: &'a RolloutSpec,
    /// The status as persisted by the last reconcile.
    pub status: &'a RolloutStatus,
    /// Hash of `spec.template`.
    pub current_hash: &'a str,
    /// The ReplicaSets the Rollout owns.
    pub replica_sets: &'a [ReplicaSetView],
    /// The AnalysisRuns the Rollout owns.
    pub runs: &'a [RunView],
    /// The pods of the ReplicaSets the Rollout owns.
    pub pods: &'a [PodView],
    pub actions: Actions,
    /// The id of the request `actions` come from, recorded in `status.handledRequest` by this plan.
    pub request: Option<&'a str>,
    /// What the controller found wrong with the spec (a Service, route or template missing) while a
    /// release is in flight: the release is aborted, and the Rollout says why.
    pub invalid_spec: Option<&'a str>,
    /// The ErrorBudgetGates selecting the Rollout, and the revision's bypass and critical mark.
    pub gating: &'a Gating,
    /// The replicas of the Deployment `spec.workloadRef` names, as observed (`None` without one).
    pub workload_replicas: Option<i32>,
    /// The images of the current revision's containers and init containers, `name=image`.
    pub images: &'a [String],
    /// Who made the request `actions` come from, as the request says.
    pub requester: Option<&'a str>,
    /// Why, as the request says (a breaker reset's reason).
    pub request_reason: Option<&'a str>,
    /// The releases of the Rollouts sharing the circuit breaker (`spec.circuitBreaker`).
    pub circuit: &'a CircuitInputs,
    /// The Rollout's own ended releases, in any order (adaptive plans).
    pub history: &'a [crate::breaker::EndedRelease],
    /// The plan the Rollout's `sluice.dev/plan` annotation pins, as written.
    pub plan_pin: Option<&'a str>,
    /// The latest answers of the webhook calls the controller made for this Rollout (`spec.webhooks`).
    pub hook_answers: &'a [HookAnswer],
    pub now: Timestamp,
}

/// The latest answer to a webhook call, as the controller's caller got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookAnswer {
    /// The webhook's name.
    pub name: String,
    /// The revision the call was made for.
    pub revision: String,
    /// The `phase` the call carried (a `post-rollout` call says how the release ended).
    pub phase: String,
    /// The attempt of the release it was called for (`status.webhooks.attempt`).
    pub attempt: i32,
    /// It answered 2xx.
    pub ok: bool,
    /// The answer (`answered 403 Forbidden: ...`) or why there was none.
    pub message: String,
}

/// A webhook call a plan wants made. The controller makes it outside the reconcile (unless it is
/// being made already) and hands in its answer; a call no plan wants any more is given up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HookCall {
    /// The webhook's name in `spec.webhooks`.
    pub name: String,
    /// The revision it is called for (the document's `checksum`).
    pub revision: String,
    /// The document's `phase`.
    pub phase: &'static str,
    /// The attempt of the release it is called for: a retry's calls are new calls.
    pub attempt: i32,
}

/// Traffic split to put in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Percentage of traffic for the canary (the rest goes to stable).
    pub canary_weight: i32,
    /// The hash the canary Service selects.
    pub canary_hash: String,
    /// The hash the stable Service selects.
    pub stable_hash: String,
    /// The header and mirror routes in force, in `managedRoutes` order (none outside a release).
    pub managed_routes: Vec<ManagedRouteRule>,
    /// Leave the Services' selectors as they are: a Deployment being taken over still serves
    /// through them (`workloadRef`).
    pub leave_services: bool,
}

/// A route a release puts ahead of the user's, as the steps so far set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedRouteRule {
    /// Requests with these headers go to the canary.
    Header(SetHeaderRoute),
    /// A copy of matching requests goes to the canary.
    Mirror(SetMirrorRoute),
}

impl ManagedRouteRule {
    /// The managed route's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Header(h) => &h.name,
            Self::Mirror(m) => &m.name,
        }
    }
}

/// The verdicts of a release's analysis, as a strategy's state machine reads them: the run of the
/// step at the persisted `currentStepIndex` (blue-green: pre-promotion) and the background run
/// (blue-green: post-promotion); `None` where none was started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub step: Option<AnalysisOutcome>,
    pub background: Option<AnalysisOutcome>,
    /// Each pre-deployment check's run, by its index (`None`: not seen yet).
    pub checks: Vec<Option<AnalysisOutcome>>,
}

/// What to change. The executor applies it in this order so that traffic never points at pods that
/// are not there and a crash between two writes loses nothing: create and scale up ReplicaSets; then
/// Services and route weights; then the status; then runs, scale-downs and deletions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write.
    pub status: RolloutStatus,
    /// Create the ReplicaSet of the current template (with 0 replicas before scaling) if it is missing.
    pub create_current: bool,
    /// The revision whose pods the created ReplicaSet's pods avoid (`antiAffinity`): stable's
    /// (blue-green: active's), when the strategy asks and the new revision is another.
    pub avoid: Option<String>,
    /// `spec.replicas` for each ReplicaSet, by hash.
    pub scale: BTreeMap<String, i32>,
    /// Scale-down deadlines to record (or clear, with `None`), by hash.
    pub scale_down_at: BTreeMap<String, Option<Timestamp>>,
    /// ReplicaSets to delete, by hash: idle ones beyond `revisionHistoryLimit`.
    pub delete: Vec<String>,
    /// Selectors and weights.
    pub traffic: Traffic,
    /// AnalysisRuns to start, stop and delete.
    pub runs: RunPlan,
    /// Pods to evict now (a restart replacing them).
    pub evict: Vec<String>,
    /// Role metadata to put on or take off pods.
    pub pod_metadata: Vec<PodMetadataPatch>,
    /// Scale the Deployment `spec.workloadRef` names to this many replicas (`scaleDown`).
    pub workload_replicas: Option<i32>,
    /// What aborted the release in this decision, if it was aborted.
    pub aborted_by: Option<AbortCause>,
    /// The release that ended in this decision and is no longer `status.release` (superseded by a
    /// new one): its record is written before the status that forgets it.
    pub ended_release: Option<ReleaseProgress>,
    /// Events to record.
    pub events: Vec<Event>,
    /// Reconcile again after this long, even if nothing changes (a pause or a delay runs out).
    pub requeue_after: Option<Duration>,
    /// The webhook calls wanted now.
    pub webhooks: Vec<HookCall>,
}

pub(crate) fn add(at: Timestamp, seconds: i64) -> Timestamp {
    at.checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(if seconds < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
}

pub(crate) fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

pub(crate) fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// What the progress deadline asks of a decision, canary or blue-green.
pub(crate) struct Deadline {
    /// Look again when the deadline falls.
    pub requeue_after: Option<Duration>,
    /// The `ProgressDeadlineExceeded` Event, the first time it is missed.
    pub event: Option<Event>,
    /// Abort the release with this reason (`progressDeadlineAbort`).
    pub abort: Option<String>,
}

/// The progress-deadline check both strategies share: records `lastProgressTime` when the release
/// (stable, current) moves (a new revision or step, the new revision's pods, a resize of its own
/// ReplicaSets planned in `scale`, the end of a pause) and clears it while no release is in flight
/// or it is paused or aborted; past the deadline, marks the release
/// Degraded with `Progressing`/`Reconciling` False and `Stalled` True, or asks for an abort.
pub(crate) fn progress_deadline(
    s: &Snapshot<'_>,
    status: &mut RolloutStatus,
    scale: &BTreeMap<String, i32>,
    paused: bool,
    (stable, current): (&str, &str),
) -> Deadline {
    let mut outcome = Deadline {
        requeue_after: None,
        event: None,
        abort: None,
    };
    let previous = s.status;
    let now = s.now;
    let releasing = stable != current;
    let progressed = previous.current_pod_hash != status.current_pod_hash
        || previous.current_step_index != status.current_step_index
        // Only the new revision's pods count: old ReplicaSets winding down are not progress.
        || previous.updated_replicas != status.updated_replicas
        || previous.updated_ready_replicas != status.updated_ready_replicas
        || previous.stable_rs != status.stable_rs
        || previous.last_progress_time.is_none()
        // Resizing the release's own ReplicaSets is progress too (e.g. the canary shrinking to a
        // lower weight while stable grows back); an old revision winding down is not.
        || [stable, current]
            .iter()
            .any(|h| scale.get(*h).is_some_and(|n| *n != observed(s, h).replicas));
    // The deadline runs only while a release is free to move. Otherwise there is no progress time
    // at all (rather than one refreshed on every reconcile, which would rewrite a settled status
    // forever); the first reconcile that lets the release move again starts the clock afresh.
    if !releasing || paused || status.abort {
        status.last_progress_time = None;
        return outcome;
    }
    if progressed {
        status.last_progress_time = Some(Time(now));
        outcome.requeue_after = Some(Duration::from_secs(
            u64::try_from(s.spec.progress_deadline_seconds).unwrap_or(0),
        ));
        return outcome;
    }
    let since = status.last_progress_time.as_ref().map_or(now, |t| t.0);
    let deadline = add(since, i64::from(s.spec.progress_deadline_seconds));
    if now < deadline {
        outcome.requeue_after = Some(until(now, deadline));
        return outcome;
    }
    let new = observed(s, current);
    let message = format!(
        "no progress for {}s: {}/{} pods of {current} available",
        s.spec.progress_deadline_seconds, new.available, new.replicas
    );
    if s.spec.progress_deadline_abort {
        outcome.abort = Some(format!("progress deadline exceeded ({message})"));
        return outcome;
    }
    let already = conditions::get(&previous.conditions, "Progressing")
        .is_some_and(|c| c.reason == "ProgressDeadlineExceeded");
    if !already {
        outcome.event = Some(Event {
            warning: true,
            reason: "ProgressDeadlineExceeded",
            message: message.clone(),
        });
    }
    status.phase = Some(RolloutPhase::Degraded);
    status.message = Some(format!("progress deadline exceeded: {message}"));
    for (type_, condition) in [
        ("Progressing", ConditionStatus::False),
        ("Reconciling", ConditionStatus::False),
        ("Stalled", ConditionStatus::True),
    ] {
        conditions::set(
            &mut status.conditions,
            type_,
            condition,
            "ProgressDeadlineExceeded",
            &message,
            now,
            s.generation,
        );
    }
    outcome
}

/// The counts of the ReplicaSet of `hash` as observed (zero if there is none).
pub(crate) fn observed(s: &Snapshot<'_>, hash: &str) -> Observed {
    s.replica_sets
        .iter()
        .find(|rs| rs.hash == hash)
        .map(|rs| Observed {
            replicas: rs.replicas,
            available: rs.available,
        })
        .unwrap_or_default()
}

/// Idle ReplicaSets (scaled to zero by this plan, no delay running) beyond `revisionHistoryLimit`,
/// oldest first; never one of `live`. Shared with the blue-green state machine.
pub(crate) fn history_to_delete(
    s: &Snapshot<'_>,
    scale: &BTreeMap<String, i32>,
    live: &[&str],
) -> Vec<String> {
    let mut idle: Vec<&ReplicaSetView> = s
        .replica_sets
        .iter()
        .filter(|rs| !live.contains(&rs.hash.as_str()))
        .filter(|rs| rs.replicas == 0 && scale.get(&rs.hash).is_none_or(|n| *n == 0))
        .filter(|rs| rs.scale_down_at.is_none_or(|at| at <= s.now))
        .collect();
    idle.sort_by_key(|rs| std::cmp::Reverse(rs.created));
    let keep = usize::try_from(s.spec.revision_history_limit).unwrap_or(0);
    idle.into_iter()
        .skip(keep)
        .map(|rs| rs.hash.clone())
        .collect()
}

/// Fills in what both strategies report alike: the generation, the pod counts and the selector.
pub(crate) fn fill_counts(s: &Snapshot<'_>, status: &mut RolloutStatus) {
    let sum = |f: fn(&ReplicaSetView) -> i32| s.replica_sets.iter().map(f).sum::<i32>();
    let current = observed(s, s.current_hash);
    status.observed_generation = Some(s.generation);
    status.replicas = Some(sum(|rs| rs.replicas));
    status.available_replicas = Some(sum(|rs| rs.available));
    status.ready_replicas = Some(sum(|rs| rs.available));
    status.updated_replicas = Some(current.replicas);
    status.updated_ready_replicas = Some(current.available);
    status.selector = selector_string(s.spec);
}

/// No release is under way and nothing is left to do: `stable` is the current revision and fully
/// available, and every other ReplicaSet goes to zero in this plan or waits out its delay.
pub(crate) fn converged(
    s: &Snapshot<'_>,
    stable: &str,
    scale: &BTreeMap<String, i32>,
    scale_down_at: &BTreeMap<String, Option<Timestamp>>,
) -> bool {
    stable == s.current_hash
        && observed(s, stable).available >= s.spec.replicas
        && s.replica_sets.iter().all(|rs| {
            // Judged on this plan: old ReplicaSets going to zero, or waiting out their delay.
            rs.hash == stable
                || scale.get(&rs.hash).is_some_and(|n| *n == 0)
                || rs.scale_down_at.is_some()
                || scale_down_at.get(&rs.hash).is_some_and(Option::is_some)
        })
}

/// The pod selector as a string, for the scale subresource (an autoscaler lists pods with it): the
/// label-selector syntax Kubernetes writes, `app=web,tier in (a,b),!legacy`.
pub(crate) fn selector_string(spec: &RolloutSpec) -> Option<String> {
    let selector = &spec.selector;
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let key = &expression.key;
        let values = || expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{key} in ({})", values()),
            "NotIn" => format!("{key} notin ({})", values()),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            // The API server refuses other operators in a selector.
            other => format!("{key} {other} ({})", values()),
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(selector: serde_json::Value) -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "selector": selector,
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
            "strategy": {"canary": {}}
        }))
        .expect("spec")
    }

    #[test]
    fn the_scale_selector_carries_labels_and_expressions() {
        assert_eq!(
            selector_string(&spec(serde_json::json!({"matchLabels": {"app": "web"}}))).as_deref(),
            Some("app=web")
        );
        let expressions = spec(serde_json::json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "zone", "operator": "NotIn", "values": ["x"]},
            {"key": "app", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ]}));
        assert_eq!(
            selector_string(&expressions).as_deref(),
            Some("tier in (a,b),zone notin (x),app,!legacy"),
            "a selector of expressions alone still reaches the autoscaler"
        );
    }
}
