//! Analysis: templates of metrics, and the runs that measure them during a release.
//!
//! Semantics follow Argo Rollouts: each metric takes `count` measurements every `interval`; each
//! measurement is Successful, Failed, Inconclusive or Error; the metric fails once its failures exceed
//! `failureLimit`, and the run takes the worst phase of its metrics.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    FieldRef, PrometheusConnection, SecretKeyRef, duration_rule, prometheus_duration_rule,
};

/// Metrics, judged by conditions, that a Rollout measures during a release. Namespaced; see
/// ClusterAnalysisTemplate for one shared by all namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    status = "AnalysisTemplateStatus",
    shortname = "at",
    shortname = "sat",
    category = "sluice",
    doc = "Metrics, judged by conditions, that a Rollout measures during a release.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))").message("metric names must be unique").field_path(".metrics"))]
#[x_kube(validation = Rule::new("!has(self.args) || self.args.all(a, self.args.exists_one(b, b.name == a.name))").message("argument names must be unique").field_path(".args"))]
#[x_kube(validation = Rule::new("!has(self.dryRun) || self.dryRun.all(d, d.metricName == '*' || self.metrics.exists(m, m.name == d.metricName))").message("each dryRun.metricName must name one of the metrics, or be *").field_path(".dryRun"))]
#[x_kube(validation = Rule::new("!has(self.measurementRetention) || self.measurementRetention.all(d, d.metricName == '*' || self.metrics.exists(m, m.name == d.metricName))").message("each measurementRetention.metricName must name one of the metrics, or be *").field_path(".measurementRetention"))]
pub struct AnalysisTemplateSpec {
    /// Arguments the metrics use as `{{args.NAME}}`; a Rollout supplies values for those without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<Argument>,
    /// The metrics to measure.
    #[schemars(length(min = 1, max = 32))]
    pub metrics: Vec<Metric>,
    /// Metrics measured and recorded but never allowed to fail the run (`*` for all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dry_run: Vec<DryRun>,
    /// How many measurements to keep per metric (`*` for all metrics); the default keeps the last 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub measurement_retention: Vec<MeasurementRetention>,
}

/// What the controller found when it checked a template (conditions that compile, arguments that resolve).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`: whether every metric names a provider and its conditions parse and can give true or
    /// false; False names the metric, the condition and the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An argument of an analysis template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.value) && has(self.valueFrom))").message("set at most one of value or valueFrom"))]
pub struct Argument {
    /// Name, used in queries as `{{args.NAME}}`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_.-]*$')").message("must start with a letter or _ and contain only letters, digits, _, . and -"))]
    pub name: String,
    /// A default value; a Rollout's argument overrides it. Without a value the Rollout must supply one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Take the value from a Secret (read at each measurement) or a field of the Rollout (read when the
    /// run is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// Where an argument's value comes from: exactly one of `secretKeyRef` or `fieldRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.secretKeyRef), has(self.fieldRef)].exists_one(x, x)").message("set exactly one of secretKeyRef or fieldRef"))]
pub struct ValueFrom {
    /// A key of a Secret in the run's namespace (labelled `sluice.dev/analysis-secret: "true"`). The
    /// value is never written into the AnalysisRun, its Events or the controller's log: the query
    /// as sent is recorded with `***` in its place, and a failed query that carried it is recorded
    /// without the server's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A field of the Rollout that starts the run (`metadata.name`, `metadata.labels['KEY']`, ...),
    /// read when the run is created; a standalone run has no Rollout and cannot use one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

/// Marks a metric as dry-run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// Name of the metric, or `*` for all of them.
    #[schemars(length(min = 1, max = 63))]
    pub metric_name: String,
}

/// How many measurements of a metric a run keeps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementRetention {
    /// Name of the metric, or `*` for all of them.
    #[schemars(length(min = 1, max = 63))]
    pub metric_name: String,
    /// Number of most recent measurements kept, 1 to 1000.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("limit must be between 1 and 1000"))]
    pub limit: i32,
}

/// One metric: a query taken `count` times, each result judged by the conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.provider.baseline) || has(self.provider.job) || has(self.successCondition) || has(self.failureCondition)").message("a prometheus or web metric needs a successCondition or a failureCondition").field_path(".successCondition"))]
#[x_kube(validation = Rule::new("!has(self.provider.job) || !has(self.successCondition) && !has(self.failureCondition)").message("a job metric is judged by its Job: Successful when it completes, Failed when it fails; remove successCondition and failureCondition").field_path(".successCondition"))]
#[x_kube(validation = Rule::new("!has(self.count) || self.count <= 1 || has(self.interval)").message("interval is required when count is more than 1").field_path(".interval"))]
pub struct Metric {
    /// Name of the metric, unique within the template.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$')").message("must be lower-case letters, digits, -, _ or ., starting and ending with a letter or digit"))]
    pub name: String,
    /// Time between measurements, e.g. `1m`; at least `1s`. Without it the metric is measured once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_rule())]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,9}(ms|s|m|h))+$') || duration(self) >= duration('1s')").message("must be at least 1s: a shorter interval would query without pause"))]
    pub interval: Option<String>,
    /// Wait this long before the first measurement, e.g. `2m`, so the new version has served traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_rule())]
    pub initial_delay: Option<String>,
    /// Number of measurements. Without it a metric with an `interval` is measured until the run is
    /// stopped (background analysis), one without is measured once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("count must be 1 or more"))]
    pub count: Option<i32>,
    /// Expression over `result` (a list of numbers for an instant vector, a number for a scalar) that a
    /// good measurement satisfies, e.g. `result[0] < 0.01`. Read as CEL, or as Argo Rollouts' expression
    /// language (`all(result, {# < 0.5})`, `asFloat`, `default`, ...) when CEL cannot evaluate it. A
    /// condition that parses in neither, or gives true or false for no answer, makes the template
    /// invalid (its `Valid` condition) and holds releases that use it. Alone, a measurement that does
    /// not satisfy it is Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub success_condition: Option<String>,
    /// Expression over `result` that a bad measurement satisfies, e.g. `result[0] >= 0.05`, read as
    /// `successCondition` is. Alone, a measurement that does not satisfy it is Successful; with both,
    /// one that satisfies neither is Inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated; one more fails the metric. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("failureLimit must be 0 or more"))]
    pub failure_limit: Option<i32>,
    /// Inconclusive measurements tolerated; one more makes the metric Inconclusive. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("inconclusiveLimit must be 0 or more"))]
    pub inconclusive_limit: Option<i32>,
    /// Consecutive errors (unreachable server, bad query) tolerated; one more makes the metric Error. Defaults to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("consecutiveErrorLimit must be 0 or more"))]
    pub consecutive_error_limit: Option<i32>,
    /// Consecutive successful measurements after which the metric is Successful without waiting for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("consecutiveSuccessLimit must be 1 or more"))]
    pub consecutive_success_limit: Option<i32>,
    /// What a Failed (or Error) metric does to the release: `Abort` (the default) returns traffic to
    /// stable; `Pause` holds the release for a person to decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<MetricFailurePolicy>,
    /// Where measurements come from: exactly one provider.
    pub provider: MetricProvider,
}

/// What a Failed metric does to the release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MetricFailurePolicy {
    /// Abort the release: traffic goes back to stable at once.
    Abort,
    /// Pause the release for a person to promote or abort.
    Pause,
}

/// The source of a metric's measurements: exactly one of `prometheus`, `web` or `baseline`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.prometheus), has(self.baseline), has(self.web), has(self.job)].exists_one(x, x)").message("a metric sets exactly one provider: prometheus, web, job or baseline"))]
pub struct MetricProvider {
    /// A PromQL query; its result is judged by the metric's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// Sluice's statistical judge: the canary's series compared with the stable version's over the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineJudge>,
    /// An HTTP request whose JSON answer, picked by `jsonPath`, the metric's conditions judge (as
    /// Argo Rollouts' `web` metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// A Kubernetes Job started for each measurement (as Argo Rollouts' `job` metric): Successful
    /// when it completes, Failed when it fails, Error when it cannot be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobMetric>,
}

/// A Job run for each measurement, owned by the AnalysisRun and removed with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobMetric {
    /// Labels and annotations for the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JobMetricMetadata>,
    /// The Job's spec. `{{args.NAME}}` in any of its strings is replaced by the argument's value (an
    /// argument read from a Secret is refused: mount the Secret in the pod instead).
    pub spec: k8s_openapi::api::batch::v1::JobSpec,
}

/// Labels and annotations of a job metric's Job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobMetricMetadata {
    /// Labels added to the Job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An HTTP request to a service that reports a health or quality figure as JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.body) || has(self.method) && self.method != 'GET'").message("a body needs method POST or PUT").field_path(".body"))]
#[x_kube(validation = Rule::new("!has(self.jsonBody) || has(self.method) && self.method != 'GET'").message("a jsonBody needs method POST or PUT").field_path(".jsonBody"))]
#[x_kube(validation = Rule::new("!has(self.body) || !has(self.jsonBody)").message("set body or jsonBody, not both").field_path(".jsonBody"))]
pub struct WebMetric {
    /// The URL, `http` or `https`; `{{args.NAME}}` is replaced by the argument's value. Its host must
    /// pass the controller's address policy (`--allow-provider-address`); redirects are not followed.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    pub url: String,
    /// `GET` (the default), `POST` or `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WebMethod>,
    /// Request headers; a value may use `{{args.NAME}}` (an argument read from a Secret is redacted
    /// from what the run records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<WebHeader>,
    /// The request body for `POST` or `PUT`, sent as written after `{{args.NAME}}` is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// A JSON object sent as the body of a `POST` or `PUT` (with `Content-Type: application/json`
    /// unless a header says otherwise); `{{args.NAME}}` is replaced inside its string values only,
    /// so no argument can change its shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::any_json_object")]
    pub json_body: Option<serde_json::Value>,
    /// Seconds the request may take. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 300").message("timeoutSeconds must be between 1 and 300"))]
    pub timeout_seconds: Option<i64>,
    /// What the conditions see as `result`: a JSONPath into the answer, as Kubernetes writes it
    /// (`{$.data.errorRate}`) or plain (`$.data.errorRate`). One match is that value (a number,
    /// string, boolean, list or object), several are a list; none is an Error. Defaults to the whole
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub json_path: Option<String>,
    /// Skip TLS verification of an `https` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

/// The HTTP method of a web metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WebMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
}

/// A request header of a web metric. Not `Host`: the URL says where the request goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.key.lowerAscii() != 'host'").message("a Host header is not allowed: the url says where the request goes").field_path(".key"))]
pub struct WebHeader {
    /// The header's name.
    #[schemars(length(min = 1, max = 256))]
    pub key: String,
    /// The header's value; `{{args.NAME}}` is replaced by the argument's value.
    #[schemars(length(max = 8192))]
    pub value: String,
}

/// A PromQL query against a Prometheus-compatible API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// Where to send the query.
    #[serde(flatten)]
    pub connection: PrometheusConnection,
    /// The PromQL query; `{{args.NAME}}` is replaced by the argument's value, escaped for where it
    /// stands: inside a quoted string as PromQL reads strings (write `job="{{args.job}}"`), outside
    /// any string only if it is a number, a duration or a name (anything else is an Error naming
    /// the placeholder), so that no value can change the query's shape.
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
}

/// A canary-versus-baseline comparison: each metric is queried once for the canary's pods and once
/// for the stable pods (selected by pod-template hash), compared statistically, and the weighted share
/// of passing metrics gives a score from 0 to 100.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.marginalScore) || !has(self.passScore) || self.marginalScore <= self.passScore").message("marginalScore must not be above passScore").field_path(".marginalScore"))]
#[x_kube(validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))").message("judged metric names must be unique").field_path(".metrics"))]
pub struct BaselineJudge {
    /// Where to send the queries.
    pub prometheus: PrometheusConnection,
    /// The window each query covers, substituted for `{{window}}`. Defaults to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = prometheus_duration_rule())]
    pub window: Option<String>,
    /// Fewest requests (or samples) each version needs in the window before any verdict; below it the
    /// measurement is Inconclusive. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("minSampleSize must be 1 or more"))]
    pub min_sample_size: Option<i64>,
    /// Confidence level of the statistical tests, between 0.5 and 1 (exclusive). Defaults to 0.98.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.5 && self < 1.0").message("confidenceLevel must be between 0.5 and 1, exclusive"))]
    pub confidence_level: Option<f64>,
    /// A score at or above this passes. Defaults to 95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("passScore must be between 0 and 100"))]
    pub pass_score: Option<f64>,
    /// A score at or above this, but below passScore, is Inconclusive (a person decides); below it fails. Defaults to 75.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("marginalScore must be between 0 and 100"))]
    pub marginal_score: Option<f64>,
    /// What a first release, with no stable version to compare against, gets. Defaults to `Inconclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_baseline: Option<MissingBaselinePolicy>,
    /// The metrics compared.
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<JudgedMetric>,
}

/// What the baseline judge answers when there is no stable version to compare against.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MissingBaselinePolicy {
    /// The measurement is Inconclusive: the release pauses for a person.
    Inconclusive,
    /// The measurement is Successful: a first release is not held back.
    Successful,
}

/// One metric compared between canary and baseline: exactly one of `errorRatio` or `latency`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.errorRatio), has(self.latency)].exists_one(x, x)").message("a judged metric sets exactly one of errorRatio or latency"))]
pub struct JudgedMetric {
    /// Name of the judged metric, unique within the judge.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// A ratio of bad to all events (e.g. 5xx responses), compared with a two-proportion test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<ErrorRatioQueries>,
    /// A latency histogram, compared with a Mann-Whitney U test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyHistogramQuery>,
    /// Which change counts against the canary. Defaults to `Increase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<ChangeDirection>,
    /// Relative change tolerated even when significant, e.g. 0.2 for 20%. Defaults to 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("tolerance must be 0 or more"))]
    pub tolerance: Option<f64>,
    /// Weight of this metric in the score. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("weight must be between 1 and 100"))]
    pub weight: Option<i32>,
    /// A failure of this metric fails the whole judgement, whatever the score.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
}

/// Queries counting bad and all events of one version over `{{window}}`; `{{hash}}` selects the version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRatioQueries {
    /// Count of bad events, e.g. `sum(increase(http_requests_total{code=~"5..",pod_template_hash="{{hash}}"}[{{window}}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub error_query: String,
    /// Count of all events, e.g. `sum(increase(http_requests_total{pod_template_hash="{{hash}}"}[{{window}}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub total_query: String,
}

/// A query for one version's latency histogram over `{{window}}`, by bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyHistogramQuery {
    /// Bucket counts by `le`, e.g. `sum by (le) (increase(http_request_duration_seconds_bucket{pod_template_hash="{{hash}}"}[{{window}}]))`.
    #[schemars(length(min = 1, max = 8192))]
    pub bucket_query: String,
}

/// Which change in a judged metric counts against the canary.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ChangeDirection {
    /// Higher is worse (errors, latency).
    Increase,
    /// Lower is worse (throughput, success rate).
    Decrease,
    /// Any significant change is bad.
    Either,
}

/// A set of metrics measured during one step or phase of a release. Created by the controller from
/// templates and arguments, owned by the Rollout. A run no Rollout owns is measured only when
/// labelled `sluice.dev/standalone: "true"`; otherwise it ends in Error at once, saying so.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AnalysisRun",
    namespaced,
    status = "AnalysisRunStatus",
    shortname = "ar",
    shortname = "sar",
    category = "sluice",
    doc = "A set of metrics measured during one step or phase of a release, with every measurement recorded.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Successful, Failed, Error or Inconclusive"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "Why the run is in this phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))").message("metric names must be unique").field_path(".metrics"))]
pub struct AnalysisRunSpec {
    /// The metrics to measure, copied from the templates.
    #[schemars(length(min = 1, max = 64))]
    pub metrics: Vec<Metric>,
    /// Argument values; values from Secrets are resolved at measurement time and never stored here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<Argument>,
    /// Metrics that are measured but cannot fail the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub dry_run: Vec<DryRun>,
    /// Measurements kept per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub measurement_retention: Vec<MeasurementRetention>,
    /// Stop measuring; set by the controller when the release completes or aborts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminate: bool,
}

/// The phase of a measurement, a metric or a run.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum AnalysisPhase {
    /// Not started yet.
    Pending,
    /// Measuring.
    Running,
    /// Passed.
    Successful,
    /// Neither condition decided; a person should look.
    Inconclusive,
    /// The measurement could not be taken (unreachable server, bad query).
    Error,
    /// Failed its conditions.
    Failed,
}

/// Results of an AnalysisRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// The worst phase of the run's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AnalysisPhase>,
    /// Why the run is in this phase, naming the deciding metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the first measurement was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// One entry per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_results: Vec<MetricResult>,
    /// Counts of metrics by phase, dry-run metrics excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_summary: Option<RunSummary>,
    /// Counts of dry-run metrics by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_summary: Option<RunSummary>,
    /// Conditions of the run (e.g. InvalidSpec when an argument is missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Counts of metrics by phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// All metrics.
    pub count: i32,
    /// Successful metrics.
    pub successful: i32,
    /// Failed metrics.
    pub failed: i32,
    /// Inconclusive metrics.
    pub inconclusive: i32,
    /// Metrics in Error.
    pub error: i32,
}

/// The measurements of one metric and their tally.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// Name of the metric.
    pub name: String,
    /// The metric's phase.
    pub phase: AnalysisPhase,
    /// The most recent measurements, oldest first (bounded by measurementRetention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Why the metric is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Measurements taken.
    #[serde(default)]
    pub count: i32,
    /// Successful measurements.
    #[serde(default)]
    pub successful: i32,
    /// Failed measurements.
    #[serde(default)]
    pub failed: i32,
    /// Inconclusive measurements.
    #[serde(default)]
    pub inconclusive: i32,
    /// Measurements in Error.
    #[serde(default)]
    pub error: i32,
    /// Errors in a row, up to the latest measurement.
    #[serde(default)]
    pub consecutive_error: i32,
    /// Successes in a row, up to the latest measurement.
    #[serde(default)]
    pub consecutive_success: i32,
    /// The metric is dry-run: it cannot fail the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// One measurement of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: AnalysisPhase,
    /// The value measured, as text (e.g. `[0.0042]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When the query was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the answer was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why the measurement has this phase (the condition that decided, or the server's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Provider details, e.g. the query sent and the judge's per-metric scores.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// An AnalysisTemplate shared by all namespaces; Rollouts refer to it with `clusterScope: true`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    status = "AnalysisTemplateStatus",
    shortname = "cat",
    shortname = "scat",
    category = "sluice",
    doc = "Metrics, judged by conditions, that Rollouts in any namespace measure during a release.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ClusterAnalysisTemplateSpec {
    /// The template; the same fields as an AnalysisTemplate's spec.
    #[serde(flatten)]
    pub template: AnalysisTemplateSpec,
}
