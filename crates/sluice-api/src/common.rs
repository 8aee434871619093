//! Types shared by several Sluice resources.

use std::collections::BTreeMap;

use kube::KubeSchema;
use kube::core::Rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration made of whole units, as Argo Rollouts writes them: `30s`, `5m`, `1h30m` (at most nine
/// digits a unit, so that every accepted duration can be read).
pub(crate) fn duration_rule() -> Rule {
    Rule::new("self.matches('^([0-9]{1,9}(ms|s|m|h))+$')")
        .message("must be a duration such as 30s, 5m or 1h30m (units ms, s, m, h)")
}

/// A duration written as Prometheus writes them, days and weeks included: `5m`, `1h`, `28d`, `4w`.
pub(crate) fn prometheus_duration_rule() -> Rule {
    Rule::new("self.matches('^([0-9]{1,9}(ms|s|m|h|d|w))+$')").message(
        "must be a Prometheus duration such as 5m, 1h, 28d or 4w (units ms, s, m, h, d, w)",
    )
}

/// A whole number of seconds, or a duration string such as `30s` or `5m`.
pub(crate) fn seconds_or_duration_rule() -> Rule {
    Rule::new("type(self) == int ? self >= 0 : string(self).matches('^([0-9]{1,9}(ms|s|m|h))+$')")
        .message("must be a number of seconds (0 or more) or a duration such as 30s, 5m or 1h30m")
}

/// Schema of a short integer-or-string field (a duration or a percentage). The length bound keeps the
/// CEL rules on it within the API server's cost budget.
pub(crate) fn short_int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": 32,
    })
}

/// Any JSON object, stored as written.
pub(crate) fn any_json_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A non-negative count of pods, or a percentage such as `25%`.
pub(crate) fn int_or_percent_rule() -> Rule {
    Rule::new("type(self) == int ? self >= 0 : string(self).matches('^[0-9]+%$')")
        .message("must be a non-negative number of pods or a percentage such as 25%")
}

/// Labels and annotations that Sluice adds to the pods of one role (stable, canary, active, preview).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    /// Labels added to the pods of this role while they hold it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods of this role while they hold it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A key in a Secret in the same namespace as the object that refers to it. Sluice reads only a
/// Secret labelled `sluice.dev/analysis-secret: "true"`, so that its own right to read Secrets
/// never extends a tenant's; a missing Secret and an unlabelled one are the same error. A value
/// read from it is sent only where its annotation `sluice.dev/destinations` allows (hosts, host
/// patterns, address ranges, comma-separated).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A field of the owning object, e.g. `metadata.labels['app']`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    /// Path of the field, in the syntax of the downward API: `metadata.name`, `metadata.namespace`,
    /// `metadata.uid`, `metadata.labels['KEY']` or `metadata.annotations['KEY']` (nothing else is
    /// read, so nothing else is accepted).
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(
        pattern = r"^metadata\.(name|namespace|uid|(labels|annotations)\['[^']+'\])$"
    ))]
    pub field_path: String,
}

/// An HTTP header sent with every query. Not `Host`: the address says where a query goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.key.lowerAscii() != 'host'").message("a Host header is not allowed: the address says where the request goes").field_path(".key"))]
pub struct HttpHeader {
    /// Header name, e.g. `X-Scope-OrgID`.
    #[schemars(length(min = 1, max = 256))]
    pub key: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Where to find a Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics) and how to authenticate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.address.startsWith('http://') || self.address.startsWith('https://')").message("address must be an http:// or https:// URL").field_path(".address"))]
pub struct PrometheusConnection {
    /// Base URL of the query API, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 1, max = 2048))]
    pub address: String,
    /// Seconds to wait for one query before the measurement counts as an error. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 600").message("timeout must be between 1 and 600 seconds"))]
    pub timeout: Option<i64>,
    /// Credentials sent with each query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<PrometheusAuthentication>,
    /// Extra HTTP headers sent with each query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HttpHeader>,
    /// Skip verification of the server's TLS certificate. Only for test set-ups.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// A CA bundle (PEM) to verify the server's TLS certificate, instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Credentials for a Prometheus query API: exactly one of `basic` or `bearer`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.basic), has(self.bearer)].exists_one(x, x)").message("set exactly one of authentication.basic or authentication.bearer"))]
pub struct PrometheusAuthentication {
    /// HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuthentication>,
    /// A bearer token, sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuthentication>,
}

/// HTTP basic authentication with the username and password read from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthentication {
    /// The Secret key holding the username.
    pub username_secret_ref: SecretKeyRef,
    /// The Secret key holding the password.
    pub password_secret_ref: SecretKeyRef,
}

/// A bearer token read from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuthentication {
    /// The Secret key holding the token.
    pub token_secret_ref: SecretKeyRef,
}

/// A reference to an AnalysisTemplate or ClusterAnalysisTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// Name of the template.
    #[schemars(length(min = 1, max = 253))]
    pub template_name: String,
    /// Look the name up among ClusterAnalysisTemplates instead of the namespace's AnalysisTemplates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

/// A value passed from a Rollout to an analysis template's argument.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.value), has(self.valueFrom)].exists_one(x, x)").message("set exactly one of value or valueFrom"))]
pub struct AnalysisRunArgument {
    /// Name of the template argument this value fills.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// A value taken from the Rollout at the time the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ArgumentValueFrom>,
}

/// Where a Rollout takes an argument's value from: exactly one of `podTemplateHashValue` or `fieldRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.podTemplateHashValue), has(self.fieldRef)].exists_one(x, x)").message("set exactly one of podTemplateHashValue or fieldRef"))]
pub struct ArgumentValueFrom {
    /// The pod-template hash of the `Stable` or the `Latest` (canary) ReplicaSet, to select one version's series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash_value: Option<PodTemplateHashValue>,
    /// A field of the Rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

/// Which ReplicaSet's pod-template hash an argument takes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodTemplateHashValue {
    /// The hash of the stable ReplicaSet.
    Stable,
    /// The hash of the newest ReplicaSet (the canary or preview).
    Latest,
}

/// The analysis a Rollout runs at a step or around a promotion.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// The templates whose metrics make up the run; their metrics are merged.
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
}

/// Keep the new version's pods off the nodes that run the stable (active) version's pods, as Argo
/// Rollouts' `antiAffinity`: exactly one of `requiredDuringSchedulingIgnoredDuringExecution` or
/// `preferredDuringSchedulingIgnoredDuringExecution`. Sluice adds a pod anti-affinity term (the
/// stable pods' `sluice.dev/pod-template-hash`, topology `kubernetes.io/hostname`) to the new
/// ReplicaSet's pod template when it creates it; the Rollout's template and its hash are unchanged.
/// Once the old version's pods are gone the term matches nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.requiredDuringSchedulingIgnoredDuringExecution), has(self.preferredDuringSchedulingIgnoredDuringExecution)].exists_one(x, x)").message("set exactly one of requiredDuringSchedulingIgnoredDuringExecution or preferredDuringSchedulingIgnoredDuringExecution"))]
pub struct AntiAffinity {
    /// Never on a node with a stable pod: the new pods stay Pending when no other node fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<RequiredAntiAffinity>,
    /// Rather not on a node with a stable pod, with this weight among the scheduler's preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_during_scheduling_ignored_during_execution: Option<PreferredAntiAffinity>,
}

/// A required anti-affinity: it has no settings (`{}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RequiredAntiAffinity {}

/// A preferred anti-affinity's weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferredAntiAffinity {
    /// 1 to 100.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("weight must be between 1 and 100"))]
    pub weight: i32,
}
