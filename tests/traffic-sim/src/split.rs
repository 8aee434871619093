//! How each app's requests split between its versions: by an HTTPRoute's backend weights when a
//! route sends to the app's Services, else by Ready pod count, as a Service selecting every pod of
//! the app would. A Service reaches the Ready pods its whole selector matches; the share of requests
//! a route sends to a Service that matches none fails (a gateway answers 503 for a backend without
//! endpoints).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::version::{APP_LABEL, Labels, Version, VersionKey};

/// The pods a Service sends to, as far as the simulator cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The `app` in its selector: whose requests it carries.
    pub app: String,
    /// Its whole selector (`app` included): it reaches the Ready pods that carry every label of it.
    pub selector: Labels,
}

impl ServiceTarget {
    /// Reads a Service's selector; `None` when it selects no `app`.
    pub fn of(service: &Service) -> Option<Self> {
        let selector = service.spec.as_ref()?.selector.as_ref()?;
        Some(Self {
            app: selector.get(APP_LABEL)?.clone(),
            selector: selector.clone(),
        })
    }

    /// The versions of its app it reaches, each with the number of its Ready pods it selects.
    fn reaches<'a>(
        &self,
        versions: &'a BTreeMap<VersionKey, Version>,
    ) -> Vec<(&'a VersionKey, u32)> {
        versions
            .iter()
            .filter(|(key, _)| key.app == self.app)
            .map(|(key, version)| (key, version.matching(&self.selector)))
            .filter(|(_, pods)| *pods > 0)
            .collect()
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
/// percentage spread over the Ready pods its Service selects (none, when it selects none: mirrored
/// answers are discarded, so no one sees those fail).
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
        for (key, share) in by_pod_count(&target.reaches(versions)) {
            *shares.entry(key.clone()).or_insert(0.0) += mirror.percent / 100.0 * share;
        }
    }
    shares
}

/// Where each app's requests go: shares of its versions, and the share that fails.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficSplit {
    /// Each version's share of its app's requests.
    pub shares: BTreeMap<VersionKey, f64>,
    /// Per app whose requests a route sends through Services: the share sent to Services that
    /// select no Ready pod (0 when every one reaches some), which fails with a 503.
    pub unserved: BTreeMap<String, f64>,
    /// The Services a route sends requests to (at a weight above 0) that select no Ready pod.
    pub empty_services: BTreeSet<String>,
}

/// Each version's share of its app's requests; the shares of an app sum to 1, or to 0 when its
/// route sends nothing anywhere. See [`split_traffic`].
pub fn traffic_shares(
    versions: &BTreeMap<VersionKey, Version>,
    services: &BTreeMap<String, ServiceTarget>,
    backends: &[Backend],
) -> BTreeMap<VersionKey, f64> {
    split_traffic(versions, services, backends).shares
}

/// How each app's requests split; an app's version shares and its unserved share sum to 1, or to
/// 0 when its route sends nothing anywhere (every weight 0).
///
/// An app that a route's backends (`backends`, Services resolved through `services`) send to is
/// split by their weights, each backend's share spread over the Ready pods its Service's selector
/// matches, by pod count; the share of a backend that matches no Ready pod is unserved. Any other
/// app is split by Ready pod count. Versions without Ready pods get no traffic.
pub fn split_traffic(
    versions: &BTreeMap<VersionKey, Version>,
    services: &BTreeMap<String, ServiceTarget>,
    backends: &[Backend],
) -> TrafficSplit {
    let routed: Vec<(u64, &ServiceTarget)> = backends
        .iter()
        .filter_map(|b| Some((b.weight, services.get(&b.service)?)))
        .collect();
    let mut split = TrafficSplit::default();
    for backend in backends.iter().filter(|b| b.weight > 0) {
        if let Some(target) = services.get(&backend.service)
            && target.reaches(versions).is_empty()
        {
            split.empty_services.insert(backend.service.clone());
        }
    }
    // Apps with Ready pods, and apps a route sends to even if none of their pods is Ready.
    let apps: BTreeSet<&str> = versions
        .iter()
        .filter(|(_, v)| v.ready_pods > 0)
        .map(|(k, _)| k.app.as_str())
        .chain(routed.iter().map(|(_, target)| target.app.as_str()))
        .collect();
    for app in apps {
        let ready: Vec<(&VersionKey, u32)> = versions
            .iter()
            .filter(|(k, v)| k.app == app && v.ready_pods > 0)
            .map(|(k, v)| (k, v.ready_pods))
            .collect();
        let app_routes: Vec<(u64, &ServiceTarget)> = routed
            .iter()
            .filter(|(weight, target)| target.app == app && *weight > 0)
            .copied()
            .collect();
        if !routed.iter().any(|(_, target)| target.app == app) {
            for (key, share) in by_pod_count(&ready) {
                split.shares.insert(key.clone(), share);
            }
            continue;
        }
        for (key, _) in &ready {
            split.shares.insert((*key).clone(), 0.0);
        }
        let unserved = split.unserved.entry(app.to_owned()).or_insert(0.0);
        let total_weight: u64 = app_routes.iter().map(|(w, _)| w).sum();
        for (weight, target) in app_routes {
            let share = weight as f64 / total_weight as f64;
            let behind = by_pod_count(&target.reaches(versions));
            if behind.is_empty() {
                *unserved += share;
            }
            for (key, pods_share) in behind {
                if let Some(total) = split.shares.get_mut(key) {
                    *total += share * pods_share;
                }
            }
        }
    }
    split
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
    use crate::version::{ARGO_POD_TEMPLATE_HASH_LABEL, Behaviour};
    use serde_json::json;
    use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Versions whose pods carry `app` and Sluice's hash label, as Sluice labels them.
    fn versions(specs: &[(&str, &str, u32)]) -> BTreeMap<VersionKey, Version> {
        specs
            .iter()
            .map(|(app, hash, ready_pods)| {
                (
                    VersionKey::new(app, hash),
                    Version::new(
                        *ready_pods,
                        Behaviour::default(),
                        labels(&[("app", app), (POD_TEMPLATE_HASH_LABEL, hash)]),
                    ),
                )
            })
            .collect()
    }

    /// Services selecting `app`, and one version by Sluice's hash label if given.
    fn services(specs: &[(&str, &str, Option<&str>)]) -> BTreeMap<String, ServiceTarget> {
        specs
            .iter()
            .map(|(name, app, hash)| {
                let mut selector = labels(&[("app", app)]);
                if let Some(hash) = hash {
                    selector.insert(POD_TEMPLATE_HASH_LABEL.to_owned(), (*hash).to_owned());
                }
                (
                    (*name).to_owned(),
                    ServiceTarget {
                        app: (*app).to_owned(),
                        selector,
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
    fn a_backend_without_ready_pods_fails_its_share() {
        let split = split_traffic(
            &versions(&[("web", "a", 2), ("web", "b", 0)]),
            &services(&[
                ("web-stable", "web", Some("a")),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 50), ("web-canary", 50)]),
        );
        assert_close(share(&split.shares, "web", "a"), 0.5);
        assert!(!split.shares.contains_key(&VersionKey::new("web", "b")));
        assert_eq!(split.unserved, BTreeMap::from([("web".to_owned(), 0.5)]));
        assert_eq!(
            split.empty_services,
            BTreeSet::from(["web-canary".to_owned()])
        );
    }

    #[test]
    fn a_service_selecting_nothing_fails_every_request_sent_to_it() {
        // Its selector names a version no pod runs; the app's pods are elsewhere.
        let split = split_traffic(
            &versions(&[("web", "a", 3)]),
            &services(&[("web-stable", "web", Some("gone"))]),
            &backends(&[("web-stable", 100)]),
        );
        assert_close(share(&split.shares, "web", "a"), 0.0);
        assert_eq!(split.unserved, BTreeMap::from([("web".to_owned(), 1.0)]));
        // And with no Ready pod of the app at all.
        let split = split_traffic(
            &BTreeMap::new(),
            &services(&[("web-stable", "web", None)]),
            &backends(&[("web-stable", 100)]),
        );
        assert!(split.shares.is_empty());
        assert_eq!(split.unserved, BTreeMap::from([("web".to_owned(), 1.0)]));
    }

    #[test]
    fn routed_apps_whose_services_all_reach_pods_fail_nothing() {
        let split = split_traffic(
            &versions(&[("web", "a", 4), ("web", "b", 1), ("api", "x", 1)]),
            &services(&[
                ("web-stable", "web", Some("a")),
                ("web-canary", "web", Some("b")),
            ]),
            &backends(&[("web-stable", 80), ("web-canary", 20)]),
        );
        assert_eq!(split.unserved, BTreeMap::from([("web".to_owned(), 0.0)]));
        assert_close(share(&split.shares, "api", "x"), 1.0);
    }

    #[test]
    fn a_selector_matches_on_every_key() {
        // A takeover: two of Argo's pods (hash a1) carry Sluice's hash s1 too, the third not yet.
        let both = labels(&[
            ("app", "web"),
            (POD_TEMPLATE_HASH_LABEL, "s1"),
            (ARGO_POD_TEMPLATE_HASH_LABEL, "a1"),
        ]);
        let argo_only = labels(&[("app", "web"), (ARGO_POD_TEMPLATE_HASH_LABEL, "a1")]);
        let versions = BTreeMap::from([
            (
                VersionKey::new("web", "s1"),
                Version::new(2, Behaviour::default(), both.clone()),
            ),
            (
                VersionKey::new("web", "a1"),
                Version::new(1, Behaviour::default(), argo_only),
            ),
        ]);
        let target = |selector: Labels| ServiceTarget {
            app: "web".to_owned(),
            selector,
        };
        let services = BTreeMap::from([
            ("both".to_owned(), target(both.clone())),
            (
                "argo".to_owned(),
                target(labels(&[
                    ("app", "web"),
                    (ARGO_POD_TEMPLATE_HASH_LABEL, "a1"),
                ])),
            ),
            (
                "other".to_owned(),
                target(labels(&[
                    ("app", "web"),
                    (POD_TEMPLATE_HASH_LABEL, "s1"),
                    (ARGO_POD_TEMPLATE_HASH_LABEL, "zz"),
                ])),
            ),
        ]);
        // Both keys: only the two relabelled pods.
        let split = split_traffic(&versions, &services, &backends(&[("both", 1)]));
        assert_close(share(&split.shares, "web", "s1"), 1.0);
        assert_close(share(&split.shares, "web", "a1"), 0.0);
        assert_eq!(split.unserved["web"], 0.0);
        // Argo's key alone: all three, each pod an equal share, counted under its version.
        let split = split_traffic(&versions, &services, &backends(&[("argo", 1)]));
        assert_close(share(&split.shares, "web", "s1"), 2.0 / 3.0);
        assert_close(share(&split.shares, "web", "a1"), 1.0 / 3.0);
        // A selector one key of which no pod carries: nothing, so its requests fail.
        let split = split_traffic(&versions, &services, &backends(&[("other", 1)]));
        assert_eq!(split.unserved["web"], 1.0);
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
                selector: labels(&[("app", "web"), (POD_TEMPLATE_HASH_LABEL, "abc")])
            })
        );
        assert_eq!(ServiceTarget::of(&headless), None);
        Ok(())
    }
}
