//! The release record: what happened to each release of a Rollout, kept after it ends.
//!
//! The release in flight (and, once it ends, the last one) is tracked in the Rollout's
//! `status.release`, written in the same status write as the transitions it records, so a crash
//! loses nothing. Each release is mirrored into a `Release` object of its own, owned by the Rollout,
//! with the verdicts and measurements of its analysis; the last `spec.releaseHistoryLimit` of them
//! are kept. Status stays small (one release) and the history survives the release, the controller
//! and the runs, which are deleted sooner.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most entries a release's timeline keeps: the first [`TIMELINE_HEAD`] and the newest after them.
pub const TIMELINE_LIMIT: usize = 48;
/// Entries at the start of a timeline that are never dropped (how the release started).
pub const TIMELINE_HEAD: usize = 8;
/// Most steps a release records.
pub const STEPS_LIMIT: usize = 64;

/// What happened to one release of a Rollout: written by the controller, kept after the release
/// ends (the last `releaseHistoryLimit` per Rollout), deleted with the Rollout.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Release",
    namespaced,
    category = "sluice",
    doc = "What happened to one release of a Rollout: its revision and images, steps, analysis verdicts with the measurements that decided them, people's actions and how it ended. Written by the controller; the last releaseHistoryLimit per Rollout are kept.",
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".spec.rollout",
        description = "The Rollout released"
    ),
    printcolumn(
        name = "Number",
        type_ = "integer",
        json_path = ".spec.number",
        description = "The release's number among the Rollout's releases"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".spec.revision",
        description = "The pod-template hash released"
    ),
    printcolumn(
        name = "Outcome",
        type_ = "string",
        json_path = ".spec.outcome",
        description = "Completed, Aborted or Superseded; empty while in flight"
    ),
    printcolumn(
        name = "Started",
        type_ = "date",
        json_path = ".spec.startedAt",
        description = "When the release started"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".spec.reason",
        priority = 1,
        description = "Why it ended as it did"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSpec {
    /// The Rollout released.
    pub rollout: String,
    /// The release, as the Rollout's status tracked it.
    #[serde(flatten)]
    pub release: ReleaseProgress,
    /// Each analysis run of the release, with its verdict and the measurements that decided it
    /// (kept here after the runs themselves are deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<RunRecord>,
}

/// One release of a Rollout: a revision from its start to its end, with what happened on the way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseProgress {
    /// The release's number among the Rollout's releases, from 1; a retry after an abort is a new
    /// release of the same revision.
    pub number: i64,
    /// The pod-template hash released.
    pub revision: String,
    /// The images of the revision's containers and init containers, `name=image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// When it started.
    pub started_at: Time,
    /// When the gates and the circuit breaker let it start (it may have waited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// The step plan it runs (`strategy.canary.adaptive`), and why that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanChoice>,
    /// It goes back to a revision that was stable before (an undo, a revert): no gate or breaker
    /// holds it, and the breaker counts it neither way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// When it ended, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// How it ended: `Completed`, `Aborted` or `Superseded`; absent while in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReleaseOutcome>,
    /// What aborted it (`Aborted` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<AbortCause>,
    /// Why it ended as it did, in words (for an abort, the failing analysis and its measurement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// After an abort: when stable served everything again (no traffic on the aborted revision,
    /// stable fully available). The time to restore is this minus `endedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<Time>,
    /// The steps it went through (canary), with the time at each and the highest weight reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// What happened, in order: every transition the controller announced (the first entries and
    /// the newest are kept when there are many; see `timelineDropped`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    /// Entries left out of the middle of `timeline` to keep it bounded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeline_dropped: i32,
    /// The confidence scores of its `confidence` steps, each with its factors and decision (at
    /// most one per step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confidence: Vec<crate::rollout::ConfidenceScore>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The step plan a release runs, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanChoice {
    /// `Cautious`, `Standard` (the Rollout's own steps) or `Fast`.
    pub profile: PlanProfile,
    /// Why, naming the releases it was chosen from (or the pin).
    pub reason: String,
}

/// A step plan derived from the Rollout's steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PlanProfile {
    /// A midway weight before each raise (so a smaller first weight), timed pauses twice as long.
    Cautious,
    /// The Rollout's steps.
    Standard,
    /// Only the first and last weights (with the timed pauses after the others dropped), timed
    /// pauses half as long; analysis and pauses until promoted kept.
    Fast,
}

/// How a release ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReleaseOutcome {
    /// The revision became stable.
    Completed,
    /// Traffic went back to stable (see `abortedBy`).
    Aborted,
    /// A newer template (or the stable one again) replaced it before it ended.
    Superseded,
}

/// What aborted a release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AbortCause {
    /// An analysis run failed (step, background, pre- or post-promotion).
    Analysis,
    /// A person asked for it (`kubectl sluice abort`).
    User,
    /// The release made no progress for `progressDeadlineSeconds` (`progressDeadlineAbort`).
    ProgressDeadline,
    /// The spec went invalid while the release was in flight (a Service, route or template gone).
    InvalidSpec,
    /// An ErrorBudgetGate froze with `inFlightReleases: Abort`.
    ErrorBudget,
    /// A critical pre-deployment check failed, before any pod.
    PreDeploymentCheck,
    /// A confidence step scored the release below `abortBelow`.
    LowConfidence,
    /// A `pre-rollout` webhook failed, or a `rollback` webhook asked for the abort.
    Webhook,
}

/// One step of a canary release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// The step's index in the Rollout's steps, from 0.
    pub index: i32,
    /// When the release reached it.
    pub started_at: Time,
    /// When the release left it (the next step, or the release's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// The highest canary weight in force during the step, in percent.
    pub weight: i32,
}

/// One transition of a release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When it happened.
    pub at: Time,
    /// The Event's reason, e.g. `RolloutStepCompleted`, `RolloutAborted`.
    pub reason: String,
    /// The Event's message.
    pub message: String,
    /// Who asked for it, for what a person's request did (the identity the request carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An analysis run of a release, as it ended (or stands).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The AnalysisRun's name.
    pub name: String,
    /// Its phase: Running, Successful, Failed, Error or Inconclusive.
    pub phase: String,
    /// Its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each metric's verdict and its last measurement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricRecord>,
}

/// A metric's verdict and the measurement that decided it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricRecord {
    /// The metric's name.
    pub name: String,
    /// Its phase.
    pub phase: String,
    /// The value of its last measurement, as measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The message of its last measurement (why it failed or errored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Measurements taken.
    pub measurements: i32,
    /// Measurements that failed.
    pub failed: i32,
    /// Measurements that were inconclusive.
    pub inconclusive: i32,
    /// Measurements that could not be taken.
    pub errors: i32,
}
