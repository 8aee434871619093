//! Istio (as Argo Rollouts): the weights of the canary and stable destinations of a
//! VirtualService's HTTP, TLS and TCP routes, and, for subset-level routing, the pod-template-hash
//! label of a DestinationRule's canary and stable subsets. Only those are written, by JSON patches
//! that test what they address first; the VirtualService is marked while a release is in flight.
//!
//! Unlike Argo Rollouts, a managed route with a destination that is neither the canary nor the
//! stable is refused (InvalidSpec) rather than having that destination deleted: the weights Sluice
//! writes must add up to 100 between the two.

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use sluice_api::rollout::{IstioRouting, IstioVirtualService, POD_TEMPLATE_HASH_LABEL, RouteMatch};
use sluice_engine::release::{ManagedRouteRule, Traffic};
use tracing::info;

use super::managed::{self, is_managed};
use super::{RouteKind, TrafficRouter, patch_marked, pointer_escape, trim_marks};
use crate::Context;
use crate::cache::{Caches, Reference};
use crate::error::Error;

/// A canary's Istio routing: the VirtualServices, the DestinationRule if any, and the Services
/// (absent with subset-level routing).
pub struct Istio<'a> {
    pub spec: &'a IstioRouting,
    pub canary_service: Option<&'a str>,
    pub stable_service: Option<&'a str>,
    /// The names of `trafficRouting.managedRoutes`, in order.
    pub managed: Vec<&'a str>,
}

/// The three kinds of route a VirtualService has, by their field under `spec`.
const ROUTE_TYPES: [&str; 3] = ["http", "tls", "tcp"];

/// Which version a route destination sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Canary,
    Stable,
}

/// One destination Sluice sets: where it is, what it says now, and its role.
#[derive(Debug, PartialEq, Eq)]
struct Destination {
    route_type: &'static str,
    route: usize,
    index: usize,
    host: String,
    weight: Option<i64>,
    role: Role,
}

/// A host's short name: Istio and Argo Rollouts let `web-canary` and
/// `web-canary.ns.svc.cluster.local` name the same Service.
fn short_host(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

impl Istio<'_> {
    fn virtual_services(&self) -> Vec<&IstioVirtualService> {
        self.spec
            .virtual_service
            .iter()
            .chain(self.spec.virtual_services.iter().flatten())
            .collect()
    }

    /// The role of a route destination, or why it has none.
    fn role(&self, destination: &Value, subset_host: Option<&str>) -> Option<Role> {
        let host = short_host(
            destination["destination"]["host"]
                .as_str()
                .unwrap_or_default(),
        );
        match (&self.spec.destination_rule, subset_host) {
            (Some(rule), Some(subset_host)) => {
                let subset = destination["destination"]["subset"].as_str()?;
                if host != short_host(subset_host) {
                    None
                } else if subset == rule.canary_subset_name {
                    Some(Role::Canary)
                } else if subset == rule.stable_subset_name {
                    Some(Role::Stable)
                } else {
                    None
                }
            }
            _ if Some(host) == self.canary_service => Some(Role::Canary),
            _ if Some(host) == self.stable_service => Some(Role::Stable),
            _ => None,
        }
    }

    /// The destinations of the routes `spec` names in `vs`, each with its role; or the problem.
    fn destinations(
        &self,
        spec: &IstioVirtualService,
        vs: &DynamicObject,
        subset_host: Option<&str>,
    ) -> Result<Vec<Destination>, String> {
        let name = &spec.name;
        let routes = |route_type: &str| -> Vec<Value> {
            vs.data["spec"][route_type]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let mut chosen: Vec<(&'static str, usize, String)> = Vec::new();
        let http = routes("http");
        let users: Vec<usize> = (0..http.len())
            .filter(|i| !is_managed(&http[*i], &self.managed))
            .collect();
        if spec.routes.is_empty() && spec.tls_routes.is_empty() && spec.tcp_routes.is_empty() {
            let [only] = users[..] else {
                return Err(format!(
                    "VirtualService {name:?} has {} HTTP routes: name the ones Sluice sets in trafficRouting.istio's routes",
                    users.len()
                ));
            };
            chosen.push(("http", only, "its only HTTP route".to_owned()));
        }
        for route in &spec.routes {
            if self.managed.contains(&route.as_str()) {
                return Err(format!(
                    "{route:?} is both a route Sluice sets the weights of (virtualService routes) and a managed route"
                ));
            }
            let Some(i) = http.iter().position(|r| r["name"].as_str() == Some(route)) else {
                return Err(format!(
                    "VirtualService {name:?} has no HTTP route named {route:?}"
                ));
            };
            chosen.push(("http", i, format!("HTTP route {route:?}")));
        }
        let matches_of = |route: &Value| route["match"].as_array().cloned().unwrap_or_default();
        let tls = routes("tls");
        for wanted in &spec.tls_routes {
            let found = tls.iter().position(|route| {
                let matches = matches_of(route);
                let port_ok = wanted
                    .port
                    .is_none_or(|p| matches.iter().any(|m| m["port"].as_i64() == Some(p)));
                let hosts_ok = wanted.sni_hosts.iter().all(|h| {
                    matches.iter().any(|m| {
                        m["sniHosts"]
                            .as_array()
                            .is_some_and(|hosts| hosts.iter().any(|x| x.as_str() == Some(h)))
                    })
                });
                port_ok && hosts_ok
            });
            let Some(i) = found else {
                return Err(format!(
                    "VirtualService {name:?} has no TLS route matching port {:?} and SNI hosts {:?}",
                    wanted.port, wanted.sni_hosts
                ));
            };
            chosen.push(("tls", i, format!("TLS route {i}")));
        }
        let tcp = routes("tcp");
        for wanted in &spec.tcp_routes {
            let found = tcp.iter().position(|route| {
                matches_of(route)
                    .iter()
                    .any(|m| m["port"].as_i64() == Some(wanted.port))
            });
            let Some(i) = found else {
                return Err(format!(
                    "VirtualService {name:?} has no TCP route matching port {}",
                    wanted.port
                ));
            };
            chosen.push(("tcp", i, format!("TCP route {i}")));
        }

        let mut out = Vec::new();
        for (route_type, i, label) in chosen {
            let destinations = vs.data["spec"][route_type][i]["route"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut roles = Vec::new();
            for (j, destination) in destinations.iter().enumerate() {
                let host = destination["destination"]["host"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let Some(role) = self.role(destination, subset_host) else {
                    return Err(format!(
                        "VirtualService {name:?} {label} sends traffic to {host:?}{}, which is neither the canary nor the stable; Sluice sets weights that add up to 100 between those two only",
                        destination["destination"]["subset"]
                            .as_str()
                            .map(|s| format!(" subset {s:?}"))
                            .unwrap_or_default()
                    ));
                };
                roles.push(role);
                out.push(Destination {
                    route_type,
                    route: i,
                    index: j,
                    host,
                    weight: destination["weight"].as_i64(),
                    role,
                });
            }
            for (role, what) in [(Role::Canary, "canary"), (Role::Stable, "stable")] {
                let count = roles.iter().filter(|r| **r == role).count();
                if count != 1 {
                    return Err(format!(
                        "VirtualService {name:?} {label} has {count} destinations for the {what}; it needs exactly one (weight 0 for the canary) so Sluice can shift traffic"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The HTTP routes of the managed routes in force, in order (as Argo Rollouts writes them): a
    /// header route sends requests with its headers to the canary destination of the first HTTP
    /// route Sluice sets; a mirror route sends its requests as that route does (same weights) and
    /// mirrors them to the canary destination. None where Sluice sets no HTTP route.
    fn managed_routes(
        &self,
        vs: &DynamicObject,
        destinations: &[Destination],
        traffic: &Traffic,
    ) -> Vec<Value> {
        let Some(first) = destinations.iter().find(|d| d.route_type == "http") else {
            return Vec::new();
        };
        let route = &vs.data["spec"]["http"][first.route]["route"];
        let of = |role: Role| {
            destinations
                .iter()
                .find(|d| d.route_type == "http" && d.route == first.route && d.role == role)
                .map(|d| route[d.index]["destination"].clone())
        };
        let (Some(canary), Some(stable)) = (of(Role::Canary), of(Role::Stable)) else {
            return Vec::new();
        };
        let weight = traffic.canary_weight;
        traffic
            .managed_routes
            .iter()
            .map(|rule| match rule {
                ManagedRouteRule::Header(header) => {
                    let headers: serde_json::Map<String, Value> = header
                        .matches
                        .iter()
                        .map(|m| (m.header_name.clone(), json!(m.header_value)))
                        .collect();
                    json!({
                        "name": header.name,
                        "match": [{"headers": headers}],
                        "route": [{"destination": canary, "weight": 100}],
                    })
                }
                ManagedRouteRule::Mirror(mirror) => json!({
                    "name": mirror.name,
                    "match": mirror.matches.iter().map(http_match).collect::<Vec<_>>(),
                    "route": [{"destination": stable, "weight": 100 - weight},
                              {"destination": canary, "weight": weight}],
                    "mirror": canary,
                    "mirrorPercentage": {"value": mirror.percentage.unwrap_or(100)},
                }),
            })
            .collect()
    }

    /// The host of the DestinationRule, and the rule, when routing is by subsets.
    fn destination_rule(
        &self,
        caches: &Caches,
        namespace: &str,
    ) -> Result<Option<(String, std::sync::Arc<DynamicObject>)>, String> {
        let Some(spec) = &self.spec.destination_rule else {
            return Ok(None);
        };
        let name = &spec.name;
        let Some(rule) = caches.route(RouteKind::DestinationRule, namespace, name) else {
            return Err(format!(
                "DestinationRule {name:?} named in spec.strategy.canary.trafficRouting.istio.destinationRule does not exist in namespace {namespace}"
            ));
        };
        for subset in [&spec.canary_subset_name, &spec.stable_subset_name] {
            if subset_position(&rule, subset).is_none() {
                return Err(format!(
                    "DestinationRule {name:?} has no subset named {subset:?}"
                ));
            }
        }
        let host = rule.data["spec"]["host"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Some((host, rule)))
    }
}

/// A mirror route's match as an Istio HTTP match (the same string matches; `path` is `uri`).
fn http_match(m: &RouteMatch) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(method) = &m.method {
        out.insert("method".to_owned(), json!(method));
    }
    if let Some(path) = &m.path {
        out.insert("uri".to_owned(), json!(path));
    }
    if !m.headers.is_empty() {
        out.insert("headers".to_owned(), json!(m.headers));
    }
    Value::Object(out)
}

fn subset_position(rule: &DynamicObject, subset: &str) -> Option<usize> {
    rule.data["spec"]["subsets"]
        .as_array()?
        .iter()
        .position(|s| s["name"].as_str() == Some(subset))
}

impl TrafficRouter for Istio<'_> {
    fn references(&self, _rollout: &str) -> Vec<Reference> {
        let mut references: Vec<Reference> = self
            .virtual_services()
            .into_iter()
            .map(|vs| Reference::Route(RouteKind::VirtualService, vs.name.clone()))
            .collect();
        references.extend(
            self.spec
                .destination_rule
                .as_ref()
                .map(|rule| Reference::Route(RouteKind::DestinationRule, rule.name.clone())),
        );
        references
    }

    fn check(&self, caches: &Caches, namespace: &str, _rollout: &str) -> Result<(), String> {
        let rule = self.destination_rule(caches, namespace)?;
        let subset_host = rule.as_ref().map(|(host, _)| host.as_str());
        for spec in self.virtual_services() {
            let name = &spec.name;
            let Some(vs) = caches.route(RouteKind::VirtualService, namespace, name) else {
                return Err(format!(
                    "VirtualService {name:?} named in spec.strategy.canary.trafficRouting.istio does not exist in namespace {namespace}"
                ));
            };
            self.destinations(spec, &vs, subset_host)?;
        }
        Ok(())
    }

    async fn set_weight(
        &self,
        ctx: &Context,
        namespace: &str,
        rollout: &str,
        traffic: &Traffic,
    ) -> Result<(), Error> {
        let in_flight = traffic.canary_hash != traffic.stable_hash;
        // Subsets first, so that the weights never send traffic to a subset that selects nothing new.
        let rule = self.destination_rule(&ctx.caches, namespace).ok().flatten();
        if let (Some(spec), Some((_, rule))) = (&self.spec.destination_rule, &rule) {
            let mut ops = Vec::new();
            for (subset, hash) in [
                (&spec.canary_subset_name, &traffic.canary_hash),
                (&spec.stable_subset_name, &traffic.stable_hash),
            ] {
                let Some(i) = subset_position(rule, subset) else {
                    continue;
                };
                let labels = &rule.data["spec"]["subsets"][i]["labels"];
                if hash.is_empty() || labels[POD_TEMPLATE_HASH_LABEL].as_str() == Some(hash) {
                    continue;
                }
                let path = format!("/spec/subsets/{i}");
                ops.push(json!({"op": "test", "path": format!("{path}/name"), "value": subset}));
                if labels.is_object() {
                    let label = pointer_escape(POD_TEMPLATE_HASH_LABEL);
                    ops.push(json!({"op": "add", "path": format!("{path}/labels/{label}"), "value": hash}));
                } else {
                    ops.push(json!({"op": "add", "path": format!("{path}/labels"), "value": {POD_TEMPLATE_HASH_LABEL: hash}}));
                }
            }
            if patch_marked(
                ctx,
                RouteKind::DestinationRule,
                rule,
                ops,
                in_flight,
                rollout,
            )
            .await?
            {
                info!(
                    destination_rule = spec.name,
                    "set subset pod-template hashes"
                );
            }
        }
        let subset_host = rule.as_ref().map(|(host, _)| host.as_str());
        let weight = i64::from(traffic.canary_weight);
        for spec in self.virtual_services() {
            let Some(vs) = ctx
                .caches
                .route(RouteKind::VirtualService, namespace, &spec.name)
            else {
                continue;
            };
            // The check refused a VirtualService Sluice cannot set; nothing is written to it.
            let Ok(destinations) = self.destinations(spec, &vs, subset_host) else {
                continue;
            };
            let wanted = self.managed_routes(&vs, &destinations, traffic);
            let http = vs.data["spec"]["http"].as_array();
            let layout = managed::layout("/spec/http", http, &self.managed, &wanted);
            let mut ops = layout.ops;
            for d in destinations {
                let want = match d.role {
                    Role::Canary => weight,
                    Role::Stable => 100 - weight,
                };
                let route = if d.route_type == "http" {
                    let Some(at) = layout.moved.get(d.route).copied().flatten() else {
                        continue;
                    };
                    at
                } else {
                    d.route
                };
                if d.weight != Some(want) {
                    let path = format!("/spec/{}/{}/route/{}", d.route_type, route, d.index);
                    ops.push(json!({"op": "test", "path": format!("{path}/destination/host"), "value": d.host}));
                    ops.push(json!({"op": "add", "path": format!("{path}/weight"), "value": want}));
                }
            }
            if patch_marked(ctx, RouteKind::VirtualService, &vs, ops, in_flight, rollout).await? {
                info!(
                    virtual_service = vs.name_any(),
                    canary_weight = weight,
                    in_flight,
                    "set route weights"
                );
            }
        }
        Ok(())
    }
}

/// A route's destinations as the controller sees them: where each sends and its weight, at their
/// positions.
fn trim_destinations(route: &Value) -> Value {
    let destinations: Vec<Value> = route["route"]
        .as_array()
        .map(|destinations| {
            destinations
                .iter()
                .map(|d| json!({"destination": d["destination"], "weight": d["weight"]}))
                .collect()
        })
        .unwrap_or_default();
    Value::Array(destinations)
}

/// A VirtualService as the controller sees it: each route (at its position) with what finds it
/// (an HTTP route's name and matches; a TLS or TCP route's ports and SNI hosts), its destinations
/// and (HTTP) its mirror.
pub fn trim_virtual_service(vs: &mut DynamicObject) {
    trim_marks(vs);
    let mut spec = serde_json::Map::new();
    for route_type in ROUTE_TYPES {
        let Some(routes) = vs.data["spec"][route_type].as_array() else {
            continue;
        };
        let trimmed: Vec<Value> = routes
            .iter()
            .map(|route| {
                let matches: Vec<Value> = route["match"]
                    .as_array()
                    .map(|matches| {
                        matches
                            .iter()
                            .map(|m| json!({"port": m["port"], "sniHosts": m["sniHosts"]}))
                            .collect()
                    })
                    .unwrap_or_default();
                if route_type == "http" {
                    // Whole: a managed route is compared with what it should be.
                    return json!({
                        "name": route["name"], "match": route["match"], "route": route["route"],
                        "mirror": route["mirror"], "mirrorPercentage": route["mirrorPercentage"],
                    });
                }
                json!({"route": trim_destinations(route), "match": matches})
            })
            .collect();
        spec.insert(route_type.to_owned(), Value::Array(trimmed));
    }
    vs.data = json!({ "spec": spec });
}

/// A DestinationRule as the controller sees it: its host and each subset's name and labels.
pub fn trim_destination_rule(rule: &mut DynamicObject) {
    trim_marks(rule);
    let subsets: Vec<Value> = rule.data["spec"]["subsets"]
        .as_array()
        .map(|subsets| {
            subsets
                .iter()
                .map(|s| json!({"name": s["name"], "labels": s["labels"]}))
                .collect()
        })
        .unwrap_or_default();
    rule.data = json!({"spec": {"host": rule.data["spec"]["host"], "subsets": subsets}});
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::rollout::{IstioDestinationRule, IstioTcpRoute, IstioTlsRoute};

    fn vs(spec: Value) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "ns"}, "spec": spec
        }))
        .expect("object");
        trim_virtual_service(&mut object);
        object
    }

    fn named(name: &str) -> IstioVirtualService {
        IstioVirtualService {
            name: name.to_owned(),
            routes: Vec::new(),
            tls_routes: Vec::new(),
            tcp_routes: Vec::new(),
        }
    }

    fn by_hosts(spec: &IstioRouting) -> Istio<'_> {
        Istio {
            spec,
            canary_service: Some("web-canary"),
            stable_service: Some("web-stable"),
            managed: vec!["header", "shadow"],
        }
    }

    fn routing(vs: IstioVirtualService) -> IstioRouting {
        IstioRouting {
            virtual_service: Some(vs),
            virtual_services: None,
            destination_rule: None,
        }
    }

    fn dest(host: &str, weight: i64) -> Value {
        json!({"destination": {"host": host, "port": {"number": 80}}, "weight": weight})
    }

    #[test]
    fn the_only_http_route_is_set_when_none_is_named() {
        let spec = routing(named("web"));
        let router = by_hosts(&spec);
        let object = vs(
            json!({"http": [{"route": [dest("web-stable.ns.svc.cluster.local", 100), dest("web-canary", 0)]}]}),
        );
        let found = router
            .destinations(&named("web"), &object, None)
            .expect("destinations");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].role, Role::Stable);
        assert_eq!(found[0].host, "web-stable.ns.svc.cluster.local");
        assert_eq!(found[1].role, Role::Canary);
    }

    #[test]
    fn two_http_routes_need_names_and_unknown_names_are_refused() {
        let spec = routing(named("web"));
        let router = by_hosts(&spec);
        let two = vs(json!({"http": [
            {"name": "primary", "route": [dest("web-stable", 100), dest("web-canary", 0)]},
            {"name": "other", "route": [dest("elsewhere", 100)]}]}));
        let err = router
            .destinations(&named("web"), &two, None)
            .expect_err("refused");
        assert!(err.contains("2 HTTP routes"), "{err}");
        let mut primary = named("web");
        primary.routes = vec!["primary".to_owned()];
        assert_eq!(
            router
                .destinations(&primary, &two, None)
                .expect("named")
                .len(),
            2
        );
        primary.routes = vec!["missing".to_owned()];
        let err = router
            .destinations(&primary, &two, None)
            .expect_err("refused");
        assert!(err.contains("no HTTP route named \"missing\""), "{err}");
        primary.routes = vec!["other".to_owned()];
        let err = router
            .destinations(&primary, &two, None)
            .expect_err("refused");
        assert!(err.contains("neither the canary nor the stable"), "{err}");
    }

    #[test]
    fn tls_and_tcp_routes_are_found_by_port_and_sni_hosts() {
        let spec = routing(named("web"));
        let router = by_hosts(&spec);
        let object = vs(json!({
            "tls": [
                {"match": [{"port": 443, "sniHosts": ["a.example"]}], "route": [dest("other", 100)]},
                {"match": [{"port": 443, "sniHosts": ["b.example"]}], "route": [dest("web-stable", 100), dest("web-canary", 0)]}],
            "tcp": [{"match": [{"port": 5432}], "route": [dest("web-stable", 100), dest("web-canary", 0)]}]}));
        let mut wanted = named("web");
        wanted.tls_routes = vec![IstioTlsRoute {
            port: Some(443),
            sni_hosts: vec!["b.example".to_owned()],
        }];
        wanted.tcp_routes = vec![IstioTcpRoute { port: 5432 }];
        let found = router
            .destinations(&wanted, &object, None)
            .expect("destinations");
        let places: Vec<_> = found.iter().map(|d| (d.route_type, d.route)).collect();
        assert_eq!(places, vec![("tls", 1), ("tls", 1), ("tcp", 0), ("tcp", 0)]);
        wanted.tcp_routes = vec![IstioTcpRoute { port: 1 }];
        assert!(router.destinations(&wanted, &object, None).is_err());
    }

    #[test]
    fn subsets_are_matched_on_the_destination_rules_host() {
        let mut spec = routing(named("web"));
        spec.destination_rule = Some(IstioDestinationRule {
            name: "web".to_owned(),
            canary_subset_name: "canary".to_owned(),
            stable_subset_name: "stable".to_owned(),
        });
        let router = Istio {
            spec: &spec,
            canary_service: None,
            stable_service: None,
            managed: Vec::new(),
        };
        let object = vs(json!({"http": [{"route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
            {"destination": {"host": "web.ns.svc.cluster.local", "subset": "canary"}, "weight": 0}]}]}));
        let found = router
            .destinations(&named("web"), &object, Some("web"))
            .expect("destinations");
        assert_eq!(
            found.iter().map(|d| d.role).collect::<Vec<_>>(),
            vec![Role::Stable, Role::Canary]
        );
        let err = router
            .destinations(&named("web"), &object, Some("api"))
            .expect_err("refused");
        assert!(err.contains("neither"), "{err}");
    }

    #[test]
    fn managed_routes_go_ahead_of_the_users_route_as_argo_rollouts_writes_them() {
        use sluice_api::rollout::{
            HeaderRoutingMatch, SetHeaderRoute, SetMirrorRoute, StringMatch,
        };
        let spec = routing(named("web"));
        let router = by_hosts(&spec);
        let object = vs(json!({"http": [
            {"name": "shadow", "route": [dest("stale", 100)]},
            {"name": "primary", "route": [dest("web-stable", 70), dest("web-canary", 30)]}]}));
        let found = router
            .destinations(&named("web"), &object, None)
            .expect("the one user route");
        assert_eq!(found[0].route, 1);
        let exact = |v: &str| StringMatch {
            exact: Some(v.to_owned()),
            prefix: None,
            regex: None,
        };
        let traffic = Traffic {
            canary_weight: 30,
            leave_services: false,
            canary_hash: "new".to_owned(),
            stable_hash: "old".to_owned(),
            managed_routes: vec![
                ManagedRouteRule::Header(SetHeaderRoute {
                    name: "header".to_owned(),
                    matches: vec![HeaderRoutingMatch {
                        header_name: "x-canary".to_owned(),
                        header_value: exact("yes"),
                    }],
                }),
                ManagedRouteRule::Mirror(SetMirrorRoute {
                    name: "shadow".to_owned(),
                    matches: vec![RouteMatch {
                        method: Some(exact("GET")),
                        path: None,
                        headers: Default::default(),
                    }],
                    percentage: None,
                }),
            ],
        };
        let canary = json!({"host": "web-canary", "port": {"number": 80}});
        let stable = json!({"host": "web-stable", "port": {"number": 80}});
        assert_eq!(
            router.managed_routes(&object, &found, &traffic),
            vec![
                json!({"name": "header", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                       "route": [{"destination": canary, "weight": 100}]}),
                json!({"name": "shadow", "match": [{"method": {"exact": "GET"}}],
                       "route": [{"destination": stable, "weight": 70}, {"destination": canary, "weight": 30}],
                       "mirror": canary, "mirrorPercentage": {"value": 100}}),
            ]
        );
    }

    #[test]
    fn a_route_needs_exactly_one_canary_and_one_stable() {
        let spec = routing(named("web"));
        let router = by_hosts(&spec);
        let object = vs(json!({"http": [{"route": [dest("web-stable", 100)]}]}));
        let err = router
            .destinations(&named("web"), &object, None)
            .expect_err("refused");
        assert!(err.contains("0 destinations for the canary"), "{err}");
    }
}
