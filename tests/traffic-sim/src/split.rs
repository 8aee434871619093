//! How each app's requests split between its versions: by an HTTPRoute's backend weights when a
//! route sends to the app's Services, else by Ready pod count, as a Service alone would.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use serde_json::Value;
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;

use crate::version::{APP_LABEL, Version, VersionKey};

/// The pods a Service sends to, as far as the simulator cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The `app` in its selector.
    pub app: String,
    /// The pod-template hash in its selector, if it pins one version.
    pub hash: Option<String>,
}

impl ServiceTarget {
    /// Reads a Service's selector; `None` when it selects no `app`.
    pub fn of(service: &Service) -> Option<Self> {
        let selector = service.spec.as_ref()?.selector.as_ref()?;
        Some(Self {
            app: selector.get(APP_LABEL)?.clone(),
            hash: selector.get(POD_TEMPLATE_HASH_LABEL).cloned(),
        })
    }
}

/// One backendRef of an HTTPRoute: a Service in the route's namespace and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The Service's name.
    pub service: String,
    /// The backendRef's weight (Gateway API's default is 1).
    pub weight: u64,
}

/// Whether a backendRef (or a mirror's backendRef) is a Service in the route's namespace: the
/// simulator sees one namespace's Services only.
fn local_service(backend: &Value, route_namespace: Option<&str>) -> Option<String> {
    let group = backend["group"].as_str().unwrap_or("");
    let kind = backend["kind"].as_str().unwrap_or("Service");
    let namespace = backend["namespace"].as_str();
    (group.is_empty() && kind == "Service" && (namespace.is_none() || namespace == route_namespace))
        .then(|| backend["name"].as_str().map(str::to_owned))
        .flatten()
}

/// Whether a plain request (`GET /`, without headers or query parameters) meets one of a rule's
/// matches; a rule without matches takes every request.
fn takes_plain_requests(rule: &Value) -> bool {
    let Some(matches) = rule["matches"].as_array().filter(|m| !m.is_empty()) else {
        return true;
    };
    matches.iter().any(|m| {
        let path_ok = m["path"].is_null()
            || matches!(
                (
                    m["path"]["type"].as_str().unwrap_or("PathPrefix"),
                    m["path"]["value"].as_str().unwrap_or("/")
                ),
                ("PathPrefix" | "Exact", "/")
            );
        let method_ok = m["method"].as_str().is_none_or(|method| method == "GET");
        let headers_ok = m["headers"].as_array().is_none_or(Vec::is_empty);
        let query_ok = m["queryParams"].as_array().is_none_or(Vec::is_empty);
        path_ok && method_ok && headers_ok && query_ok
    })
}

/// The rule of an HTTPRoute that the simulated (plain) requests take: the first, in order, whose
/// matches they meet. Header routes are not taken (no simulated request carries a header);
/// Sluice puts its managed rules first, so a mirror rule is.
fn plain_rule(route: &DynamicObject) -> Option<&Value> {
    route.data["spec"]["rules"]
        .as_array()?
        .iter()
        .find(|rule| takes_plain_requests(rule))
}

/// The Service backends of the rule an HTTPRoute's simulated requests take. References to other
/// kinds or to other namespaces are left out.
pub fn route_backends(route: &DynamicObject) -> Vec<Backend> {
    let route_namespace = route.metadata.namespace.as_deref();
    plain_rule(route)
        .and_then(|rule| rule["backendRefs"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|backend| {
            Some(Backend {
                service: local_service(backend, route_namespace)?,
                weight: backend["weight"].as_u64().unwrap_or(1),
            })
        })
        .collect()
}

/// A RequestMirror filter of the rule simulated requests take: a copy of `percent` of them goes to
/// a Service, its answers discarded.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// The Service's name.
    pub service: String,
    /// Percentage of requests copied (`percent`, or `fraction`; 100 when neither is set).
    pub percent: f64,
}

/// The mirrors of the rule an HTTPRoute's simulated requests take.
pub fn route_mirrors(route: &DynamicObject) -> Vec<Mirror> {
    let route_namespace = route.metadata.namespace.as_deref();
    plain_rule(route)
        .and_then(|rule| rule["filters"].as_array())
        .into_iter()
        .flatten()
        .filter(|filter| filter["type"] == "RequestMirror")
        .filter_map(|filter| {
            let mirror = &filter["requestMirror"];
            let fraction = &mirror["fraction"];
            let percent = mirror["percent"].as_f64().or_else(|| {
                let numerator = fraction["numerator"].as_f64()?;
                Some(100.0 * numerator / fraction["denominator"].as_f64().unwrap_or(100.0))
            });
            Some(Mirror {
                service: local_service(&mirror["backendRef"], route_namespace)?,
                percent: percent.unwrap_or(100.0).clamp(0.0, 100.0),
            })
        })
        .collect()
}

/// Each version's share of mirrored copies, as a fraction of its app's requests: a mirror's
/// percentage spread over the Ready pods its Service selects.
pub fn mirror_shares(
    versions: &BTreeMap<VersionKey, Version>,
    services: &BTreeMap<String, ServiceTarget>,
    mirrors: &[Mirror],
) -> BTreeMap<VersionKey, f64> {
    let mut shares = BTreeMap::new();
    for mirror in mirrors {
        let Some(target) = services.get(&mirror.service) else {
            continue;
        };
        let behind: Vec<(&VersionKey, u32)> = versions
            .iter()
            .filter(|(k, v)| {
                k.app == target.app
                    && v.ready_pods > 0
                    && target.hash.as_ref().is_none_or(|h| *h == k.hash)
            })
            .map(|(k, v)| (k, v.ready_pods))
            .collect();
        for (key, share) in by_pod_count(&behind) {
            *shares.entry(key.clone()).or_insert(0.0) += mirror.percent / 100.0 * share;
        }
    }
    shares
}

/// Each version's share of its app's requests; the shares of an app sum to 1, or to 0 when its
/// route sends nothing anywhere.
///
/// An app that a route's backends (`backends`, Services resolved through `services`) send to is
/// split by their weights: a Service whose selector pins a hash hands its share to that version, one
/// without spreads it by Ready pod count. A backend with no Ready pods behind it gets nothing; the
/// others share its weight. Any other app is split by Ready pod count. Versions without Ready pods
/// get no traffic.
pub fn traffic_shares(
    versions: &BTreeMap<VersionKey, Version>,
    services: &BTreeMap<String, ServiceTarget>,
    backends: &[Backend],
) -> BTreeMap<VersionKey, f64> {
    let apps: BTreeSet<&str> = versions
        .iter()
        .filter(|(_, v)| v.ready_pods > 0)
        .map(|(k, _)| k.app.as_str())
        .collect();
    let mut shares = BTreeMap::new();
    for app in apps {
        let ready: Vec<(&VersionKey, u32)> = versions
            .iter()
            .filter(|(k, v)| k.app == app && v.ready_pods > 0)
            .map(|(k, v)| (k, v.ready_pods))
            .collect();
        let routed: Vec<(u64, &ServiceTarget)> = backends
            .iter()
            .filter_map(|b| Some((b.weight, services.get(&b.service)?)))
            .filter(|(_, target)| target.app == app)
            .collect();
        if routed.is_empty() {
            for (key, share) in by_pod_count(&ready) {
                shares.insert(key.clone(), share);
            }
            continue;
        }
        let reachable: Vec<(u64, Vec<(&VersionKey, f64)>)> = routed
            .into_iter()
            .map(|(weight, target)| {
                let behind: Vec<(&VersionKey, u32)> = ready
                    .iter()
                    .filter(|(k, _)| target.hash.as_ref().is_none_or(|h| *h == k.hash))
                    .copied()
                    .collect();
                (weight, by_pod_count(&behind))
            })
            .filter(|(weight, behind)| *weight > 0 && !behind.is_empty())
            .collect();
        let total_weight: u64 = reachable.iter().map(|(w, _)| w).sum();
        for (key, _) in &ready {
            shares.insert((*key).clone(), 0.0);
        }
        for (weight, behind) in reachable {
            for (key, share) in behind {
                if let Some(total) = shares.get_mut(key) {
                    *total += weight as f64 / total_weight as f64 * share;
                }
            }
        }
    }
    shares
}

/// Shares in proportion to Ready pods.
fn by_pod_count<'a>(versions: &[(&'a VersionKey, u32)]) -> Vec<(&'a VersionKey, f64)> {
    let total: u32 = versions.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Vec::new();
    }
    versions
        .iter()
        .map(|(k, n)| (*k, f64::from(*n) / f64::from(total)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Behaviour;
    use serde_json::json;

    fn versions(specs: &[(&str, &str, u32)]) -> BTreeMap<VersionKey, Version> {
        specs
            .iter()
            .map(|(app, hash, ready_pods)| {
                (
                    VersionKey::new(app, hash),
                    Version {
                        ready_pods: *ready_pods,
                        behaviour: Behaviour::default(),
                    },
                )
            })
            .collect()
    }

    fn services(specs: &[(&str, &str, Option<&str>)]) -> BTreeMap<String, ServiceTarget> {
        specs
            .iter()
            .map(|(name, app, hash)| {
                (
                    (*name).to_owned(),
                    ServiceTarget {
                        app: (*app).to_owned(),
                        hash: hash.map(str::to_owned),
                    },
                )
            })
            .collect()
    }

    fn backends(specs: &[(&str, u64)]) -> Vec<Backend> {
        specs
            .iter()
            .map(|(service, weight)| Backend {
                service: (*service).to_owned(),
                weight: *weight,
            })
            .collect()
    }

    fn share(shares: &BTreeMap<VersionKey, f64>, app: &str, hash: &str) -> f64 {
        shares
            .get(&VersionKey::new(app, hash))
            .copied()
            .unwrap_or(-1.0)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "{actual} is not {expected}"
        );
    }

    #[test]
    fn without_a_route_each_app_splits_by_ready_pods() {
        let shares = traffic_shares(
            &versions(&[
                ("web", "a", 3),
                ("web", "b", 1),
                ("api", "x", 2),
                ("web", "c", 0),
            ]),
            &BTreeMap::new(),
            &[],
        );
        assert_close(share(&shares, "web", "a"), 0.75);
        assert_close(share(&shares, "web", "b"), 0.25);
        assert_close(share(&shares, "api", "x"), 1.0);
        assert!(!shares.contains_key(&VersionKey::new("web", "c")));
    }

    #[test]
    fn a_route_splits_by_weight_to_the_pinned_versions() {
        let shares = traffic_shares(
            &versions(&[("web", "a", 4), ("web", "b", 1)]),
            &services(&[
                ("web-stable", "web", Some("a")),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 80), ("web-canary", 20)]),
        );
        assert_close(share(&shares, "web", "a"), 0.8);
        assert_close(share(&shares, "web", "b"), 0.2);
    }

    #[test]
    fn a_service_without_a_hash_spreads_its_share_by_pod_count() {
        let shares = traffic_shares(
            &versions(&[("web", "a", 3), ("web", "b", 1)]),
            &services(&[
                ("web-stable", "web", None),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 50), ("web-canary", 50)]),
        );
        assert_close(share(&shares, "web", "a"), 0.5 * 0.75);
        assert_close(share(&shares, "web", "b"), 0.5 * 0.25 + 0.5);
    }

    #[test]
    fn a_backend_without_ready_pods_leaves_its_weight_to_the_others() {
        let shares = traffic_shares(
            &versions(&[("web", "a", 2), ("web", "b", 0)]),
            &services(&[
                ("web-stable", "web", Some("a")),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 50), ("web-canary", 50)]),
        );
        assert_close(share(&shares, "web", "a"), 1.0);
        assert!(!shares.contains_key(&VersionKey::new("web", "b")));
    }

    #[test]
    fn a_version_no_backend_reaches_gets_nothing() {
        let shares = traffic_shares(
            &versions(&[("web", "a", 2), ("web", "b", 2)]),
            &services(&[
                ("web-stable", "web", Some("a")),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 100), ("web-canary", 0)]),
        );
        assert_close(share(&shares, "web", "a"), 1.0);
        assert_close(share(&shares, "web", "b"), 0.0);
    }

    #[test]
    fn a_route_of_another_app_does_not_change_this_ones_split() {
        let shares = traffic_shares(
            &versions(&[("web", "a", 1), ("web", "b", 1), ("api", "x", 1)]),
            &services(&[("api", "api", Some("x"))]),
            &backends(&[("api", 1), ("missing", 5)]),
        );
        assert_close(share(&shares, "web", "a"), 0.5);
        assert_close(share(&shares, "api", "x"), 1.0);
    }

    #[test]
    fn route_backends_reads_the_rule_plain_requests_take_with_gateway_defaults()
    -> anyhow::Result<()> {
        let route: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"rules": [
                {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"name": "admin", "port": 80}]},
                {"backendRefs": [{"name": "web-stable", "port": 80, "weight": 90},
                                 {"name": "web-canary", "port": 80, "weight": 10, "namespace": "ns"},
                                 {"name": "plain", "port": 80},
                                 {"name": "elsewhere", "namespace": "other"},
                                 {"name": "bucket", "group": "example.com", "kind": "Bucket"}]},
                {"backendRefs": [{"name": "never", "port": 80}]}
            ]}
        }))?;
        assert_eq!(
            route_backends(&route),
            backends(&[("web-stable", 90), ("web-canary", 10), ("plain", 1)])
        );
        assert!(route_mirrors(&route).is_empty());
        Ok(())
    }

    #[test]
    fn a_mirror_copies_requests_to_its_service_without_changing_the_split() -> anyhow::Result<()> {
        let route: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"rules": [
                {"name": "shadow", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "filters": [{"type": "RequestMirror", "requestMirror": {
                     "backendRef": {"name": "web-canary", "port": 80}, "percent": 40}}],
                 "backendRefs": [{"name": "web-stable", "port": 80, "weight": 100},
                                 {"name": "web-canary", "port": 80, "weight": 0}]},
                {"backendRefs": [{"name": "web-stable", "port": 80, "weight": 100}]}
            ]}
        }))?;
        let mirrors = route_mirrors(&route);
        assert_eq!(
            mirrors,
            vec![Mirror {
                service: "web-canary".to_owned(),
                percent: 40.0
            }]
        );
        let versions = versions(&[("web", "a", 4), ("web", "b", 2)]);
        let services = services(&[
            ("web-stable", "web", Some("a")),
            ("web-canary", "web", Some("b")),
        ]);
        let shares = traffic_shares(&versions, &services, &route_backends(&route));
        assert_close(share(&shares, "web", "a"), 1.0);
        assert_close(share(&shares, "web", "b"), 0.0);
        let mirrored = mirror_shares(&versions, &services, &mirrors);
        assert_close(share(&mirrored, "web", "b"), 0.4);
        assert!(!mirrored.contains_key(&VersionKey::new("web", "a")));
        Ok(())
    }

    #[test]
    fn service_target_reads_the_selector() -> anyhow::Result<()> {
        let pinned: Service = serde_json::from_value(json!({"metadata": {"name": "s"},
            "spec": {"selector": {"app": "web", POD_TEMPLATE_HASH_LABEL: "abc"}}}))?;
        let headless: Service =
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {}}))?;
        assert_eq!(
            ServiceTarget::of(&pinned),
            Some(ServiceTarget {
                app: "web".to_owned(),
                hash: Some("abc".to_owned())
            })
        );
        assert_eq!(ServiceTarget::of(&headless), None);
        Ok(())
    }
}
