//! The `Rollout`: a pod template released by a canary or blue-green strategy.
//!
//! Field names and meanings follow Argo Rollouts (`argoproj.io/v1alpha1`) wherever the feature is the
//! same, so that migrating is a change of `apiVersion`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    AnalysisRunArgument, AnalysisTemplateRef, AntiAffinity, PodMetadata, RolloutAnalysis,
    duration_rule, int_or_percent_rule, seconds_or_duration_rule, short_int_or_string,
};

/// Label that Sluice puts on the ReplicaSets and pods it owns, holding the hash of the pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "sluice.dev/pod-template-hash";

/// A workload released progressively: Sluice owns its ReplicaSets and moves each new pod template
/// through a canary or blue-green release.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "ro",
    shortname = "sro",
    category = "sluice",
    doc = "A workload released progressively: Sluice owns its ReplicaSets and moves each new pod template through a canary or blue-green release, judged by analysis and held by error-budget gates.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Number of pods wanted"
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Number of pods of all versions"
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Pods of the newest pod template"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Pods ready for minReadySeconds"
    ),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.stepProgress",
        description = "Canary step reached, as index/total"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canary.weights.canary.weight",
        description = "Share of traffic on the canary, in percent"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Healthy, Progressing, Paused or Degraded"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "Why the release is where it is (e.g. which gate holds it and when it resumes)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.template), has(self.workloadRef)].exists_one(x, x)").message("set exactly one of spec.template or spec.workloadRef"))]
#[x_kube(validation = Rule::new("!has(self.template) || !has(self.template.spec) || self.template.spec.containers.all(c, has(c.image) && c.image != '') && (!has(self.template.spec.initContainers) || self.template.spec.initContainers.all(c, has(c.image) && c.image != ''))").message("every container in spec.template.spec.containers and initContainers needs an image (a ReplicaSet without one is refused)").field_path(".template.spec.containers"))]
#[x_kube(validation = Rule::new("!has(self.selector.matchLabels) || !has(self.template) || has(self.template.metadata) && has(self.template.metadata.labels) && self.selector.matchLabels.all(k, k in self.template.metadata.labels && self.template.metadata.labels[k] == self.selector.matchLabels[k])").message("spec.selector.matchLabels must all appear, with the same values, in spec.template.metadata.labels").field_path(".selector"))]
#[x_kube(validation = Rule::new("!has(self.minReadySeconds) || self.progressDeadlineSeconds > self.minReadySeconds").message("spec.progressDeadlineSeconds must be greater than spec.minReadySeconds").field_path(".progressDeadlineSeconds"))]
pub struct RolloutSpec {
    /// Number of pods wanted at full release. Defaults to 1. A HorizontalPodAutoscaler may set it
    /// through the scale subresource.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub replicas: i32,
    /// Label selector for the Rollout's pods. It must match the template's labels and must not
    /// change once set.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.selector is immutable; delete and recreate the Rollout to change it"))]
    #[x_kube(validation = Rule::new("has(self.matchLabels) && size(self.matchLabels) > 0 || has(self.matchExpressions) && size(self.matchExpressions) > 0").message("spec.selector must select on at least one label"))]
    pub selector: LabelSelector,
    /// The pods to run. A change here starts a new release. Set exactly one of `template` or
    /// `workloadRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// Take the pod template from a Deployment in the same namespace instead of `template` (as Argo
    /// Rollouts): a change to the Deployment's pod template starts a new release. The Rollout runs
    /// pods of its own and never manages the Deployment's; `scaleDown` says what becomes of them.
    /// While the Deployment's pods still serve, the Rollout's Services are left selecting them and
    /// are pointed at the Rollout's pods once its first revision is fully available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
    /// Seconds a new pod must be ready, without any container crashing, to count as available. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub min_ready_seconds: Option<i32>,
    /// Require a digest (`name@sha256:...`) on every image, not only a version tag; the label
    /// `sluice.dev/require-image-digest: "true"` on the namespace does the same for all its Rollouts.
    /// Mutable references (the tag `latest`, or no tag) are always refused: at `kubectl apply` by
    /// the chart's ValidatingAdmissionPolicy, and by the controller (`InvalidSpec`, nothing
    /// released) where the policy is not installed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_image_digest: bool,
    /// Number of old ReplicaSets (scaled to zero) kept for `undo`. Defaults to 10.
    #[serde(default = "default_revision_history_limit")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub revision_history_limit: i32,
    /// Hold new releases after consecutive failed ones: after `failures` aborted releases in a row
    /// the breaker opens and new releases wait (`ReleaseHeld`, reason `CircuitOpen`); after
    /// `cooldown` it is half-open and lets exactly one release through, whose success closes it and
    /// whose failure opens it again for twice as long (up to `maxCooldown`). A rollback to a revision
    /// that was stable is never held. `kubectl sluice breaker reset` closes it, with a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// How many Release records (one per release: its steps, analysis verdicts, actions and
    /// outcome) to keep for this Rollout, the newest. Defaults to 20.
    #[serde(default = "default_release_history_limit")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("must be between 1 and 100"))]
    pub release_history_limit: i32,
    /// How many finished AnalysisRuns of earlier revisions to keep (as Argo Rollouts); older ones
    /// are deleted. The runs of the revision being released are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRunHistory>,
    /// Pauses the release where it stands. The controller never changes this field; GitOps users
    /// pause with `kubectl sluice pause`, which records the pause in status instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Seconds a release may go without progress (pods becoming available, a step completing) before
    /// it is marked Degraded with reason ProgressDeadlineExceeded. Defaults to 600. Time spent paused
    /// does not count.
    #[serde(default = "default_progress_deadline_seconds")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be 1 or more"))]
    pub progress_deadline_seconds: i32,
    /// Abort the release, returning all traffic to stable, when the progress deadline is exceeded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_deadline_abort: bool,
    /// Restart all pods, a few at a time, if they were created before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<Time>,
    /// Not supported yet, and refused at apply rather than ignored (in Argo Rollouts: rolling back
    /// to one of the last N revisions skips steps and analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("false").message("rollbackWindow is not supported yet: remove it (a rollback runs the steps and analysis like any release)"))]
    pub rollback_window: Option<RollbackWindow>,
    /// Checks run before a release's first pod (blue-green: before the preview comes up), after
    /// the error-budget gates let it start: each an analysis (web, Job or Prometheus metrics), so a
    /// test suite in a Job, a security scan behind an HTTP endpoint or "dependency healthy" in
    /// Prometheus all fit. A `Critical` check that fails (or is inconclusive) aborts the release
    /// before any user traffic, naming the check; an `Advisory` one that fails lets it go on with a
    /// warning (condition `AdvisoryCheckFailed` and an Event). Run again on a retry; not run for
    /// the first revision, which has nothing to protect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(o, o.name == c.name))").message("spec.preDeploymentChecks: each check needs a name of its own"))]
    pub pre_deployment_checks: Vec<PreDeploymentCheck>,
    /// HTTP calls at a release's moments, as Flagger's webhooks: `confirm-rollout` and
    /// `confirm-promotion` hold the release until they answer 2xx (asked again every 10 seconds),
    /// `pre-rollout` must answer 2xx before the new version's first pod or the release is aborted,
    /// `post-rollout` is told how the release ended, and `rollback` is asked every 10 seconds while
    /// the release is in flight, aborting it when it answers 2xx. Each call is a POST of a JSON
    /// document: `name` and `namespace` of the Rollout, `phase`, `checksum` (the revision's
    /// pod-template hash), `type`, `webhook` (its name) and `metadata`. Calls are made outside the
    /// reconcile and their answers recorded in `status.webhooks`, so a restart neither repeats a
    /// finished call nor forgets its answer. The URL must pass the controller's address policy, as
    /// a metric provider's. Not called for the first revision or a rollback to stable, which are not
    /// released step by step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(o, o.name == w.name))").message("spec.webhooks: each webhook needs a name of its own"))]
    pub webhooks: Vec<Webhook>,
    /// Sinks of the namespace's ConfigMap `sluice-notifications` this Rollout's transitions are sent
    /// to, besides those every Rollout sends (a sink's own `on`). Each transition is sent once: what
    /// was sent is recorded on the Release record, so a restart never sends it again; a sink that
    /// cannot be reached never delays the release (its failure is an Event on the Rollout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(n, self.exists_one(o, o.sink == n.sink))").message("spec.notifications: subscribe to each sink once"))]
    pub notifications: Vec<NotificationSubscription>,
    /// How a new pod template is released: exactly one of `canary` or `blueGreen`.
    pub strategy: RolloutStrategy,
}

/// A check a release must pass before its first pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreDeploymentCheck {
    /// The check's name, used in messages, Events and the AnalysisRun's name.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// `Critical` (the default): a failure stops the release before any pod. `Advisory`: a failure
    /// is reported and the release goes on.
    #[serde(default)]
    pub severity: CheckSeverity,
    /// The templates whose metrics make up the check; their metrics are merged.
    #[schemars(length(min = 1, max = 16))]
    pub templates: Vec<crate::common::AnalysisTemplateRef>,
    /// Values for the templates' arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<crate::common::AnalysisRunArgument>,
}

/// What a failed pre-deployment check does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CheckSeverity {
    /// Stops the release before any pod.
    #[default]
    Critical,
    /// Warns; the release goes on.
    Advisory,
}

/// The pre-deployment checks of the revision being released.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreDeploymentChecksStatus {
    /// The pod-template hash they check.
    pub revision: String,
    /// Running, Passed (advisory failures included) or Failed (a critical check failed).
    pub phase: ChecksPhase,
    /// Each check, in the order of `spec.preDeploymentChecks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
}

/// Where a revision's pre-deployment checks stand.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ChecksPhase {
    Running,
    Passed,
    Failed,
}

/// One pre-deployment check of a revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// The check's name.
    pub name: String,
    /// Its severity.
    pub severity: CheckSeverity,
    /// Its AnalysisRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_run: Option<RolloutAnalysisRunStatus>,
}

/// A Rollout's subscription to a notification sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSubscription {
    /// The sink: a key of the ConfigMap `sluice-notifications` in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub sink: String,
    /// The transitions sent: `started`, `step`, `paused` (waiting for a person), `promoted`,
    /// `aborted`, `held` (by an error-budget gate or the circuit breaker) and `completed`. All of
    /// them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub on: Vec<crate::notification::Trigger>,
}

/// An HTTP call at one of a release's moments (Flagger's webhook).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retries) || self.type == 'pre-rollout' || self.type == 'post-rollout'").message("retries applies to pre-rollout and post-rollout webhooks only: confirm-rollout, confirm-promotion and rollback webhooks are asked again every 10 seconds until they answer 2xx").field_path(".retries"))]
pub struct Webhook {
    /// The webhook's name, used in messages, Events and `status.webhooks`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// When it is called and what its answer does: `confirm-rollout` (before the new version's first
    /// pod; the release waits until it answers 2xx), `pre-rollout` (then, once; a failure after its
    /// retries aborts the release before any pod), `confirm-promotion` (before the new version
    /// becomes stable: the canary's last step, or blue-green's switch of the active Service; the
    /// release waits until it answers 2xx), `post-rollout` (once the release completed or was
    /// aborted; a failure is reported and changes nothing) and `rollback` (while the release is in
    /// flight; a 2xx answer aborts it).
    #[serde(rename = "type")]
    pub type_: WebhookType,
    /// Where the JSON document is POSTed: an `http` or `https` URL the controller's address policy
    /// allows (`--allow-provider-address`). Redirects are not followed.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("must be an http:// or https:// URL"))]
    pub url: String,
    /// How long one call may take, such as `15s`. Defaults to `10s`; at most `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = crate::common::duration_rule())]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,9}(ms|s|m|h))+$') || duration(self) <= duration('5m')").message("must be at most 5m"))]
    pub timeout: Option<String>,
    /// `pre-rollout` and `post-rollout` only: calls made again (after 1, 2, 4 ... seconds) when
    /// one fails to get a 2xx answer. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message("must be between 0 and 10"))]
    pub retries: Option<i32>,
    /// Sent as the document's `metadata`, as written (do not put secrets here: the Rollout is
    /// readable by whoever can read it).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// When a webhook is called.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Before the new version's first pod; the release waits for a 2xx answer.
    ConfirmRollout,
    /// Before the new version's first pod, once; a failure aborts the release.
    PreRollout,
    /// Before the new version becomes stable; the release waits for a 2xx answer.
    ConfirmPromotion,
    /// Once the release completed or was aborted; a failure is reported.
    PostRollout,
    /// While the release is in flight; a 2xx answer aborts it.
    Rollback,
}

impl WebhookType {
    /// The name as written in the spec (`confirm-rollout`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfirmRollout => "confirm-rollout",
            Self::PreRollout => "pre-rollout",
            Self::ConfirmPromotion => "confirm-promotion",
            Self::PostRollout => "post-rollout",
            Self::Rollback => "rollback",
        }
    }

    /// Asked again until it answers 2xx (rather than called once, with retries).
    pub fn polled(self) -> bool {
        matches!(
            self,
            Self::ConfirmRollout | Self::ConfirmPromotion | Self::Rollback
        )
    }
}

/// The webhooks' answers for the revision being released.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksStatus {
    /// The pod-template hash they were called for.
    pub revision: String,
    /// Counts the releases of this Rollout that called webhooks, retries included: an answer to a
    /// call made for an earlier one never counts for this one.
    pub attempt: i32,
    /// Each webhook called (or to be called before the first pod), with where it stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<WebhookStatus>,
}

/// Where one webhook stands for a revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The webhook's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_: WebhookType,
    /// `Waiting` (no 2xx answer yet), `Passed` (answered 2xx; for `rollback`, asked for the abort),
    /// `Failed` (a `pre-rollout` or `post-rollout` call that failed after its retries) or `Skipped`
    /// (added while the release was already under way: too late to call before the first pod).
    pub phase: WebhookPhase,
    /// The last answer, or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a webhook stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WebhookPhase {
    Waiting,
    Passed,
    Failed,
    Skipped,
}

fn default_replicas() -> i32 {
    1
}
fn default_revision_history_limit() -> i32 {
    10
}
/// A Rollout's circuit breaker (a Sluice addition; Argo Rollouts has none).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failed (aborted) releases that open the breaker. Defaults to 3. Completed
    /// releases reset the count; superseded ones and rollbacks do not count.
    #[serde(default = "default_breaker_failures")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("must be between 1 and 20"))]
    pub failures: i32,
    /// How long the breaker stays open before it lets one release through, e.g. `1h` (the
    /// default). Doubles after each failed release let through, up to `maxCooldown`.
    #[serde(default = "default_breaker_cooldown")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_rule())]
    pub cooldown: String,
    /// The longest cooldown, e.g. `24h` (the default).
    #[serde(default = "default_breaker_max_cooldown")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_rule())]
    pub max_cooldown: String,
    /// Share the breaker with the Rollouts of this namespace that match (a service made of several
    /// Rollouts): their failures count together and half-open lets one release of them all through.
    /// The Rollout itself should match; each sharing Rollout should set the same selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

fn default_breaker_failures() -> i32 {
    3
}
fn default_breaker_cooldown() -> String {
    "1h".to_owned()
}
fn default_breaker_max_cooldown() -> String {
    "24h".to_owned()
}

fn default_release_history_limit() -> i32 {
    20
}
fn default_progress_deadline_seconds() -> i32 {
    600
}

/// A workload whose pod template a Rollout releases.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'Deployment' && self.apiVersion == 'apps/v1'").message("workloadRef must name an apps/v1 Deployment"))]
pub struct WorkloadRef {
    /// API version of the workload: `apps/v1`.
    #[schemars(length(min = 1, max = 64))]
    pub api_version: String,
    /// Kind of the workload: `Deployment`.
    #[schemars(length(min = 1, max = 64))]
    pub kind: String,
    /// Name of the Deployment, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// What becomes of the Deployment's own pods once the Rollout serves: `never` (left as they
    /// are, the default), `onsuccess` (the Deployment is scaled to zero once the Rollout's pods are
    /// all available) or `progressively` (scaled down as the Rollout's pods become available, and
    /// back up if they fail before the Rollout is fully available). The Deployment's replicas before
    /// are kept in `status.workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<WorkloadScaleDown>,
}

/// When Sluice scales down the Deployment a Rollout takes its template from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WorkloadScaleDown {
    /// Leave the Deployment as it is.
    #[default]
    #[serde(rename = "never")]
    Never,
    /// Scale it to zero once the Rollout's pods are all available.
    #[serde(rename = "onsuccess")]
    OnSuccess,
    /// Scale it down as the Rollout's pods become available.
    #[serde(rename = "progressively")]
    Progressively,
}

/// How many finished AnalysisRuns of earlier revisions a Rollout keeps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunHistory {
    /// Successful runs kept. Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub successful_run_history_limit: Option<i32>,
    /// Failed, Error and Inconclusive runs kept. Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub unsuccessful_run_history_limit: Option<i32>,
}

/// How many recent revisions a rollback may go to without steps or analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackWindow {
    /// Number of recent revisions within the window.
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub revisions: i32,
}

/// The release strategy: exactly one of `canary` or `blueGreen`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.canary), has(self.blueGreen)].exists_one(x, x)").message("set exactly one of spec.strategy.canary or spec.strategy.blueGreen"))]
pub struct RolloutStrategy {
    /// Shift traffic to the new version in weighted steps, with pauses and analysis between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    /// Run the new version beside the old behind a preview Service, then switch all traffic at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
}

/// A canary release: the new version takes a growing share of traffic step by step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.canaryService) || !has(self.stableService) || self.canaryService != self.stableService").message("canaryService and stableService must be different Services").field_path(".canaryService"))]
#[x_kube(validation = Rule::new("!has(self.trafficRouting) || has(self.canaryService) && has(self.stableService) || has(self.trafficRouting.istio) && has(self.trafficRouting.istio.destinationRule) && !has(self.canaryService) && !has(self.stableService)").message("trafficRouting needs both canaryService and stableService (Istio with a destinationRule: neither, or both)").field_path(".trafficRouting"))]
#[x_kube(validation = Rule::new("!(has(self.maxSurge) && has(self.maxUnavailable) && (self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))").message("maxSurge and maxUnavailable must not both be zero").field_path(".maxSurge"))]
#[x_kube(validation = Rule::new("!has(self.analysis) || !has(self.analysis.startingStep) || self.analysis.startingStep < (has(self.steps) ? size(self.steps) : 0)").message("analysis.startingStep must be the index of one of the steps").field_path(".analysis.startingStep"))]
#[x_kube(validation = Rule::new("!has(self.steps) || !self.steps.exists(s, has(s.setCanaryScale)) || has(self.trafficRouting)").message("setCanaryScale steps need trafficRouting: without a router, the canary's size is what sets its traffic share").field_path(".steps"))]
#[x_kube(validation = Rule::new("!has(self.dynamicStableScale) || !self.dynamicStableScale || has(self.trafficRouting)").message("dynamicStableScale needs trafficRouting").field_path(".dynamicStableScale"))]
#[x_kube(validation = Rule::new("!has(self.minPodsPerReplicaSet) || has(self.trafficRouting)").message("minPodsPerReplicaSet needs trafficRouting: without a router the canary's pods are its weight").field_path(".minPodsPerReplicaSet"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.all(s, !has(s.setMirrorRoute) && !has(s.setHeaderRoute) || has(self.trafficRouting) && has(self.trafficRouting.managedRoutes) && self.trafficRouting.managedRoutes.exists(r, has(s.setMirrorRoute) && r.name == s.setMirrorRoute.name || has(s.setHeaderRoute) && r.name == s.setHeaderRoute.name))").message("each setHeaderRoute and setMirrorRoute step names a route in trafficRouting.managedRoutes").field_path(".steps"))]
pub struct CanaryStrategy {
    /// Service whose selector Sluice pins to the canary's pods (by pod-template hash) during a release;
    /// after an abort it selects stable's pods, so that no Service selects the aborted version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub canary_service: Option<String>,
    /// Service whose selector Sluice pins to the stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub stable_service: Option<String>,
    /// Without traffic routing (where the share of canary pods is the share of traffic), pods that may
    /// exist above `replicas` while ReplicaSets are resized, and during a restart: a count or a
    /// percentage. Defaults to 25%. With a router, stable keeps its full size and the canary is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "short_int_or_string")]
    #[x_kube(validation = int_or_percent_rule())]
    pub max_surge: Option<IntOrString>,
    /// Without traffic routing, pods that may be unavailable while ReplicaSets are resized; also how
    /// many a restart replaces at once (at least one): a count or a percentage. Defaults to 25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "short_int_or_string")]
    #[x_kube(validation = int_or_percent_rule())]
    pub max_unavailable: Option<IntOrString>,
    /// With traffic routing, seconds to keep the old stable ReplicaSet after traffic has left it. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Most old ReplicaSets kept running during their scale-down delay (the newest); older ones go
    /// to zero at once. Without it, every one keeps its pods for its delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_revision_limit: Option<i32>,
    /// With traffic routing, seconds to keep the canary's pods after an abort, once traffic is back on
    /// stable. Defaults to 30; 0 keeps them. Without a router the canary goes to zero at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// With traffic routing, scale stable down as traffic moves to the canary (to its share of
    /// `replicas`, at least `minPodsPerReplicaSet`, once the traffic has left), instead of keeping
    /// it at full size. Fewer pods during a release, at a price: after an abort, traffic moves back
    /// to stable only as its pods become available again, and the canary keeps the pods that serve
    /// the rest (then scales down, or waits `abortScaleDownDelaySeconds` if set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic_stable_scale: bool,
    /// With traffic routing, the fewest pods the canary has while it receives traffic, however
    /// small its weight (so that one pod's failure does not take all of the canary's share down).
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("minPodsPerReplicaSet must be 1 or more"))]
    pub min_pods_per_replica_set: Option<i32>,
    /// The release plan, run in order. With no steps the new version goes straight to 100%.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub steps: Vec<CanaryStep>,
    /// Analysis that runs in the background from a given step until the release completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// How weight becomes traffic. Without it, weight is approximated by the share of canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// Labels and annotations added to canary pods while they are the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_metadata: Option<PodMetadata>,
    /// Labels and annotations added to stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_metadata: Option<PodMetadata>,
    /// Keep the canary's pods off the nodes that run stable's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<AntiAffinity>,
    /// Choose each release's step plan from the Rollout's recent releases (a Sluice addition): a
    /// cautious plan after a recent abort, a fast one after a run of completed releases, `steps`
    /// otherwise. The plans are derived from `steps` (see the README); the annotation
    /// `sluice.dev/plan: cautious|standard|fast` (`kubectl sluice plan pin`) pins one for the next
    /// releases. The plan chosen, and why, is in `status.release.plan` and the release record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptivePlans>,
}

/// How a Rollout's step plan adapts to its recent releases.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdaptivePlans {
    /// How many of the newest ended releases an abort among makes the next plan cautious (rollbacks
    /// and superseded releases are not counted). Defaults to 5.
    #[serde(default = "default_adaptive_lookback")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("must be between 1 and 20"))]
    pub lookback: i32,
    /// How many releases in a row must have completed for the fast plan. Defaults to 10; at most
    /// 20 (the records looked at are the Rollout's kept ones: `releaseHistoryLimit`).
    #[serde(default = "default_adaptive_fast_after")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("must be between 1 and 20"))]
    pub fast_after: i32,
}

fn default_adaptive_lookback() -> i32 {
    5
}
fn default_adaptive_fast_after() -> i32 {
    10
}

/// One step of a canary release: exactly one of `setWeight`, `pause`, `setCanaryScale`, `analysis`,
/// `setHeaderRoute`, `setMirrorRoute` or `confidence`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.setWeight), has(self.pause), has(self.setCanaryScale), has(self.analysis), has(self.setHeaderRoute), has(self.setMirrorRoute), has(self.confidence)].exists_one(x, x)").message("a step sets exactly one of setWeight, pause, setCanaryScale, analysis, setHeaderRoute, setMirrorRoute or confidence"))]
pub struct CanaryStep {
    /// Percentage of traffic sent to the canary, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("setWeight must be between 0 and 100"))]
    pub set_weight: Option<i32>,
    /// Wait: for `duration`, or, without one, until someone promotes the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Size the canary independently of its traffic weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
    /// Run an analysis and wait for its verdict before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
    /// Send requests that carry a header to the canary, whatever its weight: a route named in
    /// `trafficRouting.managedRoutes`, added for the rest of the release. Without `match` it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<SetHeaderRoute>,
    /// Shadow traffic: a copy of matching requests goes to the canary, its answers discarded (users
    /// are answered by the version the weights choose). A route named in
    /// `trafficRouting.managedRoutes`, added for the rest of the release. Without `match` it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror_route: Option<SetMirrorRoute>,
    /// Score the release 0 to 100 from weighted factors (analysis so far, pre-deployment checks,
    /// traffic exposed so far, the Rollout's recent releases, the size of the change, declared test
    /// coverage) and act on it: at or above `promoteAt` the release goes on by itself, below
    /// `abortBelow` it is aborted, in between it pauses for a person (`ConfidenceReview`, the
    /// breakdown in the message; `kubectl sluice promote` goes on). Scored once when the step is
    /// reached; recorded in `status.canary.confidence`, the release record and an Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<ConfidenceStep>,
}

/// A confidence score and what it decides (a Sluice addition).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.abortBelow <= self.promoteAt").message("confidence.abortBelow must not be above confidence.promoteAt"))]
pub struct ConfidenceStep {
    /// At or above this score the release goes on by itself. Defaults to 80.
    #[serde(default = "default_promote_at")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("promoteAt must be between 0 and 100"))]
    pub promote_at: i32,
    /// Below this score the release is aborted. Defaults to 60.
    #[serde(default = "default_abort_below")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("abortBelow must be between 0 and 100"))]
    pub abort_below: i32,
    /// How much each factor counts (relative weights, each 0 to 100; at least one above 0).
    #[serde(default)]
    pub weights: ConfidenceWeights,
}

fn default_promote_at() -> i32 {
    80
}
fn default_abort_below() -> i32 {
    60
}

/// The relative weights of a confidence score's factors. Each factor is valued 0 to 100:
/// - `analysis`: the share of this revision's finished analysis runs that succeeded (an
///   inconclusive one counts half); 0 while none has finished.
/// - `checks`: the share of its pre-deployment checks that passed; 50 without checks.
/// - `blastRadius`: the traffic the new version has served so far without failing, 100 from 50%
///   on (0 for a blue-green preview, which serves none before promotion).
/// - `history`: the share of the Rollout's newest 10 ended releases that completed (rollbacks and
///   superseded ones not counted); 50 without history; halved while the circuit breaker is
///   half-open, 0 while it is open.
/// - `changeSize`: 100 when at most one container's image changed since stable, 25 less for each
///   more; 50 when stable's images are not on record.
/// - `testCoverage`: the percentage in the pod template's annotation `sluice.dev/test-coverage`
///   (set by the build pipeline); 0 when absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.analysis + self.checks + self.blastRadius + self.history + self.changeSize + self.testCoverage > 0").message("at least one confidence weight must be above 0"))]
pub struct ConfidenceWeights {
    /// Defaults to 35.
    #[serde(default = "weight_analysis")]
    #[x_kube(validation = weight_rule())]
    pub analysis: i32,
    /// Defaults to 15.
    #[serde(default = "weight_checks")]
    #[x_kube(validation = weight_rule())]
    pub checks: i32,
    /// Defaults to 10.
    #[serde(default = "weight_blast_radius")]
    #[x_kube(validation = weight_rule())]
    pub blast_radius: i32,
    /// Defaults to 20.
    #[serde(default = "weight_history")]
    #[x_kube(validation = weight_rule())]
    pub history: i32,
    /// Defaults to 10.
    #[serde(default = "weight_change_size")]
    #[x_kube(validation = weight_rule())]
    pub change_size: i32,
    /// Defaults to 10.
    #[serde(default = "weight_test_coverage")]
    #[x_kube(validation = weight_rule())]
    pub test_coverage: i32,
}

fn weight_rule() -> kube::core::Rule {
    kube::core::Rule::new("self >= 0 && self <= 100")
        .message("a confidence weight must be between 0 and 100")
}
fn weight_analysis() -> i32 {
    35
}
fn weight_checks() -> i32 {
    15
}
fn weight_blast_radius() -> i32 {
    10
}
fn weight_history() -> i32 {
    20
}
fn weight_change_size() -> i32 {
    10
}
fn weight_test_coverage() -> i32 {
    10
}

impl Default for ConfidenceWeights {
    fn default() -> Self {
        Self {
            analysis: weight_analysis(),
            checks: weight_checks(),
            blast_radius: weight_blast_radius(),
            history: weight_history(),
            change_size: weight_change_size(),
            test_coverage: weight_test_coverage(),
        }
    }
}

/// Annotation on a pod template: the test coverage (percent, 0 to 100) the build pipeline declares
/// for it, a factor of the confidence score.
pub const TEST_COVERAGE_ANNOTATION: &str = "sluice.dev/test-coverage";

/// A confidence score as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfidenceScore {
    /// The step it was scored at (index from 0; 0 for blue-green's pre-promotion score).
    pub step: i32,
    /// The revision scored.
    pub revision: String,
    /// 0 to 100.
    pub score: i32,
    /// What it decided: Promote, Review or Abort.
    pub decision: ConfidenceDecision,
    /// Each factor: its value (0 to 100), its weight, and why it has that value.
    pub factors: Vec<ConfidenceFactor>,
    /// When it was scored.
    pub scored_at: Time,
}

/// What a confidence score decides.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConfidenceDecision {
    /// At or above `promoteAt`: the release goes on.
    Promote,
    /// Between: a person decides.
    Review,
    /// Below `abortBelow`.
    Abort,
}

/// One factor of a confidence score.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfidenceFactor {
    /// analysis, checks, blastRadius, history, changeSize or testCoverage.
    pub name: String,
    /// 0 to 100.
    pub value: i32,
    /// Its relative weight.
    pub weight: i32,
    /// Why it has that value.
    pub note: String,
}

/// A pause in a canary release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait: seconds, or a duration such as `30s` or `5m`. Without it, wait until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "short_int_or_string")]
    #[x_kube(validation = seconds_or_duration_rule())]
    pub duration: Option<IntOrString>,
}

/// The canary's size, apart from its traffic weight: exactly one of `weight`, `replicas` or `matchTrafficWeight`.
/// It stays in force for later steps until one sets `matchTrafficWeight`. While the canary has
/// traffic it keeps at least one pod, whatever this says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.weight), has(self.replicas), has(self.matchTrafficWeight) && self.matchTrafficWeight].exists_one(x, x)").message("setCanaryScale sets exactly one of weight, replicas or matchTrafficWeight: true"))]
pub struct SetCanaryScale {
    /// Canary pods as a percentage of `spec.replicas`, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("weight must be between 0 and 100"))]
    pub weight: Option<i32>,
    /// An exact number of canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas must be 0 or more"))]
    pub replicas: Option<i32>,
    /// Size the canary to its traffic weight again (the default behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

/// A header route: requests matching every header condition go to the canary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    /// The managed route (in `trafficRouting.managedRoutes`) this step sets or removes.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The headers a request must carry (all of them). Absent or empty removes the route.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<HeaderRoutingMatch>,
}

/// A header a request must carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoutingMatch {
    /// The header's name.
    #[schemars(length(min = 1, max = 256))]
    pub header_name: String,
    /// What its value must be.
    pub header_value: StringMatch,
}

/// How a value is matched: exactly one of `exact`, `prefix` or `regex`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].exists_one(x, x)").message("set exactly one of exact, prefix or regex"))]
pub struct StringMatch {
    /// The whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    /// The value's beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// A regular expression (RE2) the whole value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

/// A mirror route: a copy of matching requests goes to the canary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetMirrorRoute {
    /// The managed route (in `trafficRouting.managedRoutes`) this step sets or removes.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Which requests are copied: those meeting any one entry. Absent or empty removes the route.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Percentage of matching requests copied to the canary, 0 to 100. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("percentage must be between 0 and 100"))]
    pub percentage: Option<i32>,
}

/// Requests a mirror route copies: all the conditions set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.method) || has(self.path) || has(self.headers) && size(self.headers) > 0").message("a match sets at least one of method, path or headers"))]
pub struct RouteMatch {
    /// The request's method (with the Gateway API: `exact` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Headers the request carries, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: std::collections::BTreeMap<String, StringMatch>,
}

/// A route Sluice may add to the router's object during a release (by a `setHeaderRoute` or
/// `setMirrorRoute` step), ahead of the user's routes, in this order. Every managed route is
/// removed when the release completes or is aborted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRoute {
    /// The route's name: the rule's (Gateway API) or the HTTP route's (Istio) `name`, which the
    /// user's own rules must not use.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// Analysis run in the background during a canary release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    /// The templates whose metrics make up the run.
    #[schemars(length(min = 1, max = 16))]
    pub templates: Vec<AnalysisTemplateRef>,
    /// Values for the templates' arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<AnalysisRunArgument>,
    /// Metrics measured and recorded but never allowed to fail the run (`*` for all), added to the
    /// templates' own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dry_run: Vec<crate::analysis::DryRun>,
    /// How many measurements to keep per metric (`*` for all); before the templates' own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub measurement_retention: Vec<crate::analysis::MeasurementRetention>,
    /// Index of the step at which the analysis starts. Defaults to 0, the start of the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("startingStep must be 0 or more"))]
    pub starting_step: Option<i32>,
}

/// Where Sluice sets traffic weights: exactly one of `gatewayAPI`, `istio` or `nginx`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.gatewayAPI), has(self.istio), has(self.nginx)].exists_one(x, x)").message("set exactly one of trafficRouting.gatewayAPI, trafficRouting.istio or trafficRouting.nginx"))]
#[x_kube(validation = Rule::new("!has(self.managedRoutes) || size(self.managedRoutes) == 0 || !has(self.nginx)").message("managedRoutes need trafficRouting.gatewayAPI or trafficRouting.istio: NGINX routes by its own canary annotations (additionalIngressAnnotations)").field_path(".managedRoutes"))]
pub struct TrafficRouting {
    /// A Gateway API HTTPRoute whose `backendRefs` name the stable and canary Services.
    #[serde(
        rename = "gatewayAPI",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
    /// Istio VirtualServices whose route destinations are the stable and canary Services (or the
    /// stable and canary subsets of a DestinationRule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    /// NGINX Ingress: Sluice creates and owns a canary Ingress beside the stable one, weighted by
    /// NGINX's canary annotations, for the length of each release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxRouting>,
    /// The routes `setHeaderRoute` and `setMirrorRoute` steps may add (Gateway API and Istio), in
    /// precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(x, x.name == r.name))").message("managedRoutes names must be unique"))]
    pub managed_routes: Vec<ManagedRoute>,
}

/// Traffic split through a Gateway API HTTPRoute. Sluice patches only the weights of the two
/// backendRefs that name the stable and canary Services, and marks the route while a release is in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// Name of the HTTPRoute, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub http_route: String,
}

/// Traffic split through Istio (as Argo Rollouts): Sluice patches only the weights of the route
/// destinations that are the canary and the stable version, and, with a `destinationRule`, the
/// `sluice.dev/pod-template-hash` label of its canary and stable subsets. Every route it manages
/// must send traffic to those two destinations and no other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.virtualService), has(self.virtualServices)].exists_one(x, x)").message("set exactly one of istio.virtualService or istio.virtualServices"))]
pub struct IstioRouting {
    /// The VirtualService whose routes carry the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<IstioVirtualService>,
    /// Several VirtualServices, all set to the same split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub virtual_services: Option<Vec<IstioVirtualService>>,
    /// Split between two subsets of one host (subset-level routing) instead of two Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<IstioDestinationRule>,
}

/// A VirtualService and which of its routes Sluice sets. With none of `routes`, `tlsRoutes` and
/// `tcpRoutes`, the VirtualService must have exactly one HTTP route, and that one is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioVirtualService {
    /// Name of the VirtualService, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('.')").message("a VirtualService in another namespace (name.namespace) is not supported: Sluice writes only in the Rollout's namespace"))]
    pub name: String,
    /// Names of the HTTP routes (`spec.http[].name`) to set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub routes: Vec<String>,
    /// TLS routes to set, each found by its port and SNI hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tls_routes: Vec<IstioTlsRoute>,
    /// TCP routes to set, each found by its port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tcp_routes: Vec<IstioTcpRoute>,
}

/// A TLS route of a VirtualService: the first whose matches have this port and all these SNI hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.port) || has(self.sniHosts) && size(self.sniHosts) > 0").message("a TLS route is found by its port, its sniHosts or both: set one"))]
pub struct IstioTlsRoute {
    /// Port the route matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: Option<i64>,
    /// SNI hosts the route matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub sni_hosts: Vec<String>,
}

/// A TCP route of a VirtualService: the first whose matches have this port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTcpRoute {
    /// Port the route matches.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i64,
}

/// The DestinationRule of subset-level routing: Sluice points its canary and stable subsets at the
/// versions' pods by adding the `sluice.dev/pod-template-hash` label to each subset's labels.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.canarySubsetName != self.stableSubsetName").message("canarySubsetName and stableSubsetName must differ").field_path(".canarySubsetName"))]
pub struct IstioDestinationRule {
    /// Name of the DestinationRule, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('.')").message("a DestinationRule in another namespace (name.namespace) is not supported: Sluice writes only in the Rollout's namespace"))]
    pub name: String,
    /// The subset that selects the canary's pods.
    #[schemars(length(min = 1, max = 253))]
    pub canary_subset_name: String,
    /// The subset that selects the stable pods.
    #[schemars(length(min = 1, max = 253))]
    pub stable_subset_name: String,
}

/// Traffic split through NGINX Ingress (as Argo Rollouts): while a release is in flight Sluice
/// keeps a canary Ingress, `<rollout>-<stableIngress>-canary`, owned by the Rollout: the stable
/// Ingress's rules that send to `stableService`, sent to `canaryService` instead, with the
/// `canary: "true"` and `canary-weight` annotations. It is deleted when the release ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.stableIngress), has(self.stableIngresses)].exists_one(x, x)").message("set exactly one of nginx.stableIngress or nginx.stableIngresses"))]
#[x_kube(validation = Rule::new("!has(self.additionalIngressAnnotations) || self.additionalIngressAnnotations.all(k, k in ['canary-by-header', 'canary-by-header-value', 'canary-by-header-pattern', 'canary-by-cookie', 'canary-weight-total'])").message("additionalIngressAnnotations may name only canary-by-header, canary-by-header-value, canary-by-header-pattern, canary-by-cookie and canary-weight-total").field_path(".additionalIngressAnnotations"))]
#[x_kube(validation = Rule::new("!has(self.canaryIngressAnnotations) || self.canaryIngressAnnotations.all(k, !k.contains('snippet') && !k.startsWith('nginx.ingress.kubernetes.io/') && !(has(self.annotationPrefix) && k.startsWith(self.annotationPrefix + '/')))").message("canaryIngressAnnotations may not carry NGINX's own annotations (its canary ones go in additionalIngressAnnotations) nor snippets: the operator writes the canary Ingress with its own rights").field_path(".canaryIngressAnnotations"))]
pub struct NginxRouting {
    /// The Ingress that serves stable, in the Rollout's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub stable_ingress: Option<String>,
    /// Several Ingresses that serve stable, each given its own canary Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub stable_ingresses: Option<Vec<String>>,
    /// Prefix of the canary annotations. Defaults to `nginx.ingress.kubernetes.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub annotation_prefix: Option<String>,
    /// More canary annotations, named without the prefix: `canary-by-header`,
    /// `canary-by-header-value`, `canary-by-header-pattern`, `canary-by-cookie` or
    /// `canary-weight-total` (for example `canary-by-header: X-Canary`); no other.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    pub additional_ingress_annotations: std::collections::BTreeMap<String, String>,
    /// Annotations put on the canary Ingress as they are (full names), for other controllers
    /// (monitoring, policy): not NGINX's own nor any snippet, which the operator, writing the
    /// Ingress with its own rights, would otherwise carry for a tenant.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub canary_ingress_annotations: std::collections::BTreeMap<String, String>,
}

/// A blue-green release: the new version comes up beside the old and takes all traffic in one switch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.previewService) || self.previewService != self.activeService").message("previewService must differ from activeService").field_path(".previewService"))]
#[x_kube(validation = Rule::new("!has(self.autoPromotionSeconds) || !has(self.autoPromotionEnabled) || self.autoPromotionEnabled").message("autoPromotionSeconds has no effect when autoPromotionEnabled is false").field_path(".autoPromotionSeconds"))]
pub struct BlueGreenStrategy {
    /// Service that receives production traffic; Sluice points its selector at the active version.
    #[schemars(length(min = 1, max = 63))]
    pub active_service: String,
    /// Service pointed at the new version before promotion, for checks and tests; after an abort it
    /// selects the active version's pods, so that no Service selects the aborted version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub preview_service: Option<String>,
    /// Promote as soon as the new version is available (and pre-promotion analysis passed). Defaults to true;
    /// false waits for `kubectl sluice promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// Promote automatically this many seconds after the new version became available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub auto_promotion_seconds: Option<i32>,
    /// Pods of the new version before promotion; it is scaled to `replicas` at promotion. Defaults to `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub preview_replica_count: Option<i32>,
    /// Analysis that must pass before the switch; its failure aborts and leaves active untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    /// Analysis after the switch; its failure switches active back to the old version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    /// Score the release's confidence (0 to 100, the same factors as a canary's `confidence` step;
    /// the preview has served no user traffic, so `blastRadius` is 0) once the preview is fully
    /// available and pre-promotion analysis passed, before promotion: at or above `promoteAt` it
    /// goes on to promotion, below `abortBelow` it is aborted (active untouched), in between it
    /// pauses for a person (`ConfidenceReview`, the breakdown in the message), whose promote goes
    /// on. Recorded in `status.blueGreen.confidence`, the release record and an Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_confidence: Option<ConfidenceStep>,
    /// Seconds to keep the old version's pods after the switch, for instant rollback. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Most old ReplicaSets kept running during their scale-down delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_revision_limit: Option<i32>,
    /// Seconds to keep the new version's pods after an abort. Defaults to 30; 0 keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Labels and annotations added to the active pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_metadata: Option<PodMetadata>,
    /// Labels and annotations added to the preview pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_metadata: Option<PodMetadata>,
    /// Keep the new version's pods off the nodes that run the active version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<AntiAffinity>,
}

/// Where a release stands, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Healthy, Progressing, Paused or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// A sentence on why the release is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Progressing, Available, Paused, InvalidSpec, Completed, ReleaseHeld, ReconcileError, and the
    /// kstatus conditions Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Hash of the newest pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pod_hash: Option<String>,
    /// Hash of the pod template that is stable (fully released).
    #[serde(rename = "stableRS", default, skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    /// Index of the canary step in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// Hash of the step list, so that changing only the steps does not restart a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_hash: Option<String>,
    /// The step reached out of the total, e.g. `2/5`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_progress: Option<String>,
    /// Pods of all versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods of the newest pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Available pods of the newest pod template; a change here counts as progress for the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ready_replicas: Option<i32>,
    /// Pods that are available (ready for `minReadySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pods that have been ready for minReadySeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The pod selector as a string, for the scale subresource (HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Why the release is paused, one entry per reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    /// The controller paused the release (a step pause or an inconclusive analysis).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub controller_pause: bool,
    /// The release was aborted: traffic is back on stable. Set by `kubectl sluice abort` or by failed analysis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    /// When the release was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<Time>,
    /// Skip the remaining steps and analysis and release fully. Set by `kubectl sluice promote --full`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_full: bool,
    /// When the release in flight last made progress (a step completed, pods became available, a
    /// pause ended); the progress deadline counts from here. Absent while no release is in flight,
    /// and while the release is paused or aborted (the deadline does not run then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// When `kubectl sluice restart` last asked for every pod to be replaced. The restart in force is
    /// the later of this and `spec.restartAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_requested_at: Option<Time>,
    /// The last request (`sluice.dev/action`) acted on, as it was claimed (`abort#<id>`): recorded
    /// with what it did, so that a request is acted on exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_request: Option<String>,
    /// The last restart that completed: every pod is newer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
    /// The release in flight, or the last one: its steps, transitions and outcome, as recorded in
    /// its `Release` object (`kubectl sluice history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<crate::release::ReleaseProgress>,
    /// The circuit breaker (`spec.circuitBreaker`): its state and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerStatus>,
    /// The Argo Rollout this Rollout takes over with its pods (`sluice.dev/takeover-from`): how far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<TakeoverStatus>,
    /// The Deployment `spec.workloadRef` names, as the Rollout took it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadStatus>,
    /// The pre-deployment checks of the revision being released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deployment_checks: Option<PreDeploymentChecksStatus>,
    /// The webhooks (`spec.webhooks`) of the revision being released: their answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksStatus>,
    /// Canary progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Blue-green progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
    /// What the ErrorBudgetGates selecting this Rollout decided: the revision they let start, the
    /// gates holding the release now, and the bypasses used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_budget: Option<ErrorBudgetReleaseStatus>,
}

/// A circuit breaker's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerStatus {
    /// `Closed` (releases go), `Open` (new releases wait) or `HalfOpen` (one release goes through).
    pub state: CircuitState,
    /// The failed releases that count now, oldest first (`<rollout>-<number>: why`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// When it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<Time>,
    /// When it turns half-open (while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_at: Option<Time>,
    /// The release let through while half-open (`<rollout>-<number>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<String>,
    /// The last reset (`kubectl sluice breaker reset`): when, by whom and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<BreakerReset>,
}

/// A circuit breaker's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CircuitState {
    /// Releases go.
    #[default]
    Closed,
    /// New releases wait (rollbacks go).
    Open,
    /// One release goes through; its outcome closes or reopens the breaker.
    HalfOpen,
}

/// A reset of a circuit breaker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerReset {
    /// When.
    pub at: Time,
    /// Who asked (the identity the request carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why.
    pub reason: String,
}

/// How far a Rollout has taken over an Argo Rollout (`sluice.dev/takeover-from`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TakeoverStatus {
    /// The Argo Rollout's name.
    pub from: String,
    /// Its stable ReplicaSet, adopted with its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<String>,
    /// `WaitingForArgoRollout` (its controller has yet to act on its latest spec),
    /// `WaitingForArgoRolloutRemoval` (labelled; the Argo Rollout is to be deleted with its
    /// ReplicaSets orphaned), `WaitingForReplicaSetOrphaned`, `TakenOver`, or `Refused` (the
    /// message says why; nothing was touched).
    pub phase: String,
    /// What happened or what is awaited, in words.
    pub message: String,
}

/// How far a Rollout has taken over the Deployment it takes its template from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The Deployment's name.
    pub name: String,
    /// The Deployment's replicas when the Rollout first saw it: what `progressively` scales it back
    /// up to if the Rollout's pods fail before the takeover completes.
    pub replicas_before: i32,
    /// The Rollout's pods have all been available once: its Services select them, and the
    /// Deployment's pods (if `scaleDown` asks) are down for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub taken_over: bool,
}

/// The ErrorBudgetGates' say on a Rollout's releases.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBudgetReleaseStatus {
    /// The revision (pod-template hash) whose release the gates let start. A release that started is
    /// held only at a step boundary (or aborted, if a gate's `inFlightReleases` says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_revision: Option<String>,
    /// Revisions (pod-template hashes) that were stable, newest last (at most 10): going back to one
    /// (an undo, a revert) is a rollback, which no gate holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released_revisions: Vec<String>,
    /// The gates holding the release now, by name; empty while none does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
    /// Revisions that went through a holding gate, by the `sluice.dev/bypass-error-budget` annotation
    /// or the `sluice.dev/critical` mark, newest last (at most 10): the audit trail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypasses: Vec<ErrorBudgetBypass>,
}

/// One revision let through holding ErrorBudgetGates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBudgetBypass {
    /// The revision (pod-template hash) let through.
    pub revision: String,
    /// The reason given in `sluice.dev/bypass-error-budget`, or `critical fix` for a revision whose
    /// pod template carries `sluice.dev/critical: "true"`.
    pub reason: String,
    /// The revision was marked critical (rather than bypassed by the annotation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// What the holding gates said when it went through.
    pub message: String,
    /// When.
    pub time: Time,
}

/// The summary state of a Rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// The newest version is fully released and available.
    Healthy,
    /// A release is under way.
    Progressing,
    /// A release waits for a person, a pause duration, or a gate.
    Paused,
    /// A release was aborted or missed its progress deadline; stable serves.
    Degraded,
}

/// One reason a release is paused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    /// CanaryPauseStep, BlueGreenPause, InconclusiveAnalysis or PausedByUser.
    pub reason: String,
    /// When the pause began.
    pub start_time: Time,
}

/// Canary progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The AnalysisRun of the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    /// The background AnalysisRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_background_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    /// The traffic weights in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<TrafficWeights>,
    /// The release's confidence score at its latest `confidence` step, with its factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<ConfidenceScore>,
}

/// Summary of an AnalysisRun, as the Rollout sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysisRunStatus {
    /// Name of the AnalysisRun.
    pub name: String,
    /// Its phase.
    pub status: String,
    /// Its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Traffic weights of the canary and stable versions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficWeights {
    /// The canary's weight.
    pub canary: TrafficWeight,
    /// The stable version's weight.
    pub stable: TrafficWeight,
}

/// One version's share of traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficWeight {
    /// Percentage of traffic, 0 to 100.
    pub weight: i32,
    /// Pod-template hash of the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash: Option<String>,
    /// Service that carries this version's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// Blue-green progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// Pod-template hash the active Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_selector: Option<String>,
    /// Pod-template hash the preview Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_selector: Option<String>,
    /// The preview was scaled up to full size ahead of the switch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_up_preview_check_point: bool,
    /// The pre-promotion AnalysisRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    /// The post-promotion AnalysisRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    /// The pre-promotion confidence score of the revision being released (`prePromotionConfidence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<ConfidenceScore>,
}
