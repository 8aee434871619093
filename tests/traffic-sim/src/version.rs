//! Versions of a service: Ready pods grouped by `app` label and pod-template hash (Sluice's, else
//! Argo Rollouts'), with the labels a Service's selector is matched against, and how each version
//! behaves, from its pods' `sim.sluice.dev/*` annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;

/// The label that names the service (app) a pod belongs to.
pub const APP_LABEL: &str = "app";
/// Argo Rollouts' pod-template-hash label: the version of a pod one of its Rollouts runs.
pub const ARGO_POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";
/// Fraction of requests, 0 to 1, that a version answers with a 500.
pub const ERROR_RATE_ANNOTATION: &str = "sim.sluice.dev/error-rate";
/// A version's median latency in milliseconds.
pub const LATENCY_MS_ANNOTATION: &str = "sim.sluice.dev/latency-ms";
/// The standard deviation of a version's log-latency: 0 makes every request take the median.
pub const LATENCY_SPREAD_ANNOTATION: &str = "sim.sluice.dev/latency-spread";

/// One version of one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    /// The pods' `app` label.
    pub app: String,
    /// The pods' pod-template hash ([`pod_template_hash`]).
    pub hash: String,
}

impl VersionKey {
    /// The version `hash` of `app`.
    pub fn new(app: &str, hash: &str) -> Self {
        Self {
            app: app.to_owned(),
            hash: hash.to_owned(),
        }
    }
}

/// How a version answers requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Behaviour {
    /// Fraction of requests answered with a 500.
    pub error_rate: f64,
    /// Median latency in milliseconds.
    pub latency_ms: f64,
    /// Standard deviation of the natural log of the latency (a multiplicative spread).
    pub latency_spread: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency_ms: 50.0,
            latency_spread: 0.3,
        }
    }
}

impl Behaviour {
    /// Reads the `sim.sluice.dev/*` annotations; a missing or unreadable value keeps its default.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        let defaults = Self::default();
        let read = |key: &str, default: f64, valid: fn(f64) -> bool| {
            annotations
                .get(key)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && valid(*v))
                .unwrap_or(default)
        };
        Self {
            error_rate: read(ERROR_RATE_ANNOTATION, defaults.error_rate, |v| {
                (0.0..=1.0).contains(&v)
            }),
            latency_ms: read(LATENCY_MS_ANNOTATION, defaults.latency_ms, |v| v >= 0.0),
            latency_spread: read(LATENCY_SPREAD_ANNOTATION, defaults.latency_spread, |v| {
                v >= 0.0
            }),
        }
    }
}

/// Labels, as a pod carries them or a Service selects them.
pub type Labels = BTreeMap<String, String>;

/// A version's Ready pods and behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// Ready, non-terminating pods.
    pub ready_pods: u32,
    /// From the annotations of its first pod by name (a version's pods share one template).
    pub behaviour: Behaviour,
    /// Its Ready pods' labels: each distinct set, with how many of them carry it (summing to
    /// `ready_pods`). Pods of one version may differ beyond `app` and the hash, e.g. while a
    /// controller relabels them one by one.
    pub labels: BTreeMap<Labels, u32>,
}

impl Version {
    /// A version of `ready_pods` pods that all carry `labels`.
    pub fn new(ready_pods: u32, behaviour: Behaviour, labels: Labels) -> Self {
        Self {
            ready_pods,
            behaviour,
            labels: BTreeMap::from([(labels, ready_pods)]),
        }
    }

    /// How many of its Ready pods `selector` matches: those carrying every one of its labels, as a
    /// Service's selector picks its endpoints.
    pub fn matching(&self, selector: &Labels) -> u32 {
        self.labels
            .iter()
            .filter(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|(_, pods)| pods)
            .sum()
    }
}

/// A pod's version: its `sluice.dev/pod-template-hash` label, else Argo Rollouts'
/// `rollouts-pod-template-hash`. A pod carrying both (one Sluice takes over from Argo Rollouts)
/// is Sluice's.
pub fn pod_template_hash(labels: &Labels) -> Option<&str> {
    labels
        .get(POD_TEMPLATE_HASH_LABEL)
        .or_else(|| labels.get(ARGO_POD_TEMPLATE_HASH_LABEL))
        .map(String::as_str)
}

/// Groups the Ready, non-terminating pods that carry both an `app` label and a pod-template hash
/// ([`pod_template_hash`]); each pod counts once.
pub fn versions<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<VersionKey, Version> {
    let mut serving: Vec<(&str, VersionKey, &Labels, &Pod)> = pods
        .into_iter()
        .filter(|pod| is_serving(pod))
        .filter_map(|pod| {
            let labels = pod.metadata.labels.as_ref()?;
            let key = VersionKey::new(labels.get(APP_LABEL)?, pod_template_hash(labels)?);
            Some((
                pod.metadata.name.as_deref().unwrap_or_default(),
                key,
                labels,
                pod,
            ))
        })
        .collect();
    // Sorted by name, so the pod whose annotations count does not depend on watch order.
    serving.sort_by(|a, b| a.0.cmp(b.0));
    let mut versions = BTreeMap::new();
    for (_, key, labels, pod) in serving {
        let version = versions.entry(key).or_insert_with(|| Version {
            ready_pods: 0,
            behaviour: pod
                .metadata
                .annotations
                .as_ref()
                .map(Behaviour::from_annotations)
                .unwrap_or_default(),
            labels: BTreeMap::new(),
        });
        version.ready_pods += 1;
        *version.labels.entry(labels.clone()).or_insert(0) += 1;
    }
    versions
}

fn is_serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, app: &str, hash: &str, ready: bool, annotations: serde_json::Value) -> Pod {
        labelled(
            name,
            json!({"app": app, POD_TEMPLATE_HASH_LABEL: hash}),
            ready,
            annotations,
        )
    }

    fn labelled(
        name: &str,
        labels: serde_json::Value,
        ready: bool,
        annotations: serde_json::Value,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("valid pod")
    }

    fn counts(versions: &BTreeMap<VersionKey, Version>) -> Vec<(&str, &str, u32)> {
        versions
            .iter()
            .map(|(k, v)| (k.app.as_str(), k.hash.as_str(), v.ready_pods))
            .collect()
    }

    #[test]
    fn groups_ready_pods_by_app_and_hash() {
        let mut terminating = pod("web-a-3", "web", "a", true, json!({}));
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let unlabelled: Pod = serde_json::from_value(json!({"metadata": {"name": "x"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("valid pod");
        let pods = [
            pod("web-a-1", "web", "a", true, json!({})),
            pod("web-a-2", "web", "a", true, json!({})),
            terminating,
            pod("web-b-1", "web", "b", false, json!({})),
            pod("api-a-1", "api", "a", true, json!({})),
            unlabelled,
        ];
        let versions = versions(&pods);
        assert_eq!(counts(&versions), [("api", "a", 1), ("web", "a", 2)]);
    }

    #[test]
    fn argo_rollouts_pods_are_a_version_of_their_own_hash() {
        let pods = [
            labelled(
                "web-6f7-1",
                json!({"app": "web", ARGO_POD_TEMPLATE_HASH_LABEL: "6f7"}),
                true,
                json!({}),
            ),
            labelled(
                "web-6f7-2",
                json!({"app": "web", ARGO_POD_TEMPLATE_HASH_LABEL: "6f7"}),
                true,
                json!({}),
            ),
            labelled(
                "web-6f7-3",
                json!({"app": "web", ARGO_POD_TEMPLATE_HASH_LABEL: "6f7"}),
                false,
                json!({}),
            ),
            // A Deployment's pods (`pod-template-hash`) are no version.
            labelled(
                "web-deploy-1",
                json!({"app": "web", "pod-template-hash": "d1"}),
                true,
                json!({}),
            ),
        ];
        let versions = versions(&pods);
        assert_eq!(counts(&versions), [("web", "6f7", 2)]);
        let version = &versions[&VersionKey::new("web", "6f7")];
        let selector = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(version.matching(&selector(&[("app", "web")])), 2);
        assert_eq!(
            version.matching(&selector(&[
                ("app", "web"),
                (ARGO_POD_TEMPLATE_HASH_LABEL, "6f7")
            ])),
            2
        );
        assert_eq!(
            version.matching(&selector(&[
                ("app", "web"),
                (POD_TEMPLATE_HASH_LABEL, "6f7")
            ])),
            0
        );
    }

    #[test]
    fn a_pod_with_both_hashes_counts_once_under_sluices() {
        let both = json!({"app": "web", POD_TEMPLATE_HASH_LABEL: "s1", ARGO_POD_TEMPLATE_HASH_LABEL: "a1"});
        let pods = [
            labelled("web-1", both.clone(), true, json!({})),
            labelled("web-2", both, true, json!({})),
            // Not relabelled yet: still Argo's version.
            labelled(
                "web-3",
                json!({"app": "web", ARGO_POD_TEMPLATE_HASH_LABEL: "a1"}),
                true,
                json!({}),
            ),
        ];
        let versions = versions(&pods);
        assert_eq!(counts(&versions), [("web", "a1", 1), ("web", "s1", 2)]);
        let taken_over = &versions[&VersionKey::new("web", "s1")];
        assert_eq!(taken_over.labels.values().sum::<u32>(), 2);
    }

    #[test]
    fn behaviour_comes_from_the_first_pod_by_name() {
        let pods = [
            pod(
                "web-b-2",
                "web",
                "b",
                true,
                json!({ERROR_RATE_ANNOTATION: "0.5"}),
            ),
            pod(
                "web-b-1",
                "web",
                "b",
                true,
                json!({ERROR_RATE_ANNOTATION: "0.05", LATENCY_MS_ANNOTATION: "120", LATENCY_SPREAD_ANNOTATION: "0"}),
            ),
        ];
        let versions = versions(&pods);
        assert_eq!(
            versions[&VersionKey::new("web", "b")].behaviour,
            Behaviour {
                error_rate: 0.05,
                latency_ms: 120.0,
                latency_spread: 0.0
            }
        );
    }

    #[test]
    fn unreadable_annotations_keep_their_defaults() {
        let annotations = BTreeMap::from([
            (ERROR_RATE_ANNOTATION.to_owned(), "1.5".to_owned()),
            (LATENCY_MS_ANNOTATION.to_owned(), "fast".to_owned()),
            (LATENCY_SPREAD_ANNOTATION.to_owned(), "-1".to_owned()),
        ]);
        assert_eq!(
            Behaviour::from_annotations(&annotations),
            Behaviour::default()
        );
    }
}
