//! Gateway API: the weights of an HTTPRoute's backendRefs to the canary and stable Services, and the
//! release's header and mirror routes as rules of their own, named for their managed route, ahead of
//! the user's rules. Only those are written (JSON patches that test what they address first), and
//! the route is marked while a release is in flight.

use kube::api::DynamicObject;
use serde_json::{Value, json};
use sluice_api::rollout::{CanaryStep, RouteMatch, StringMatch};
use sluice_engine::release::{ManagedRouteRule, Traffic};
use tracing::info;

use super::managed::{self, is_managed};
use super::{RouteKind, TrafficRouter, patch_marked, trim_marks};
use crate::Context;
use crate::cache::{Caches, Reference};
use crate::error::Error;

/// A canary's HTTPRoute, the two Services whose weights it sets, and its managed routes.
pub struct GatewayApi<'a> {
    pub route: &'a str,
    pub canary_service: &'a str,
    pub stable_service: &'a str,
    /// The names of `trafficRouting.managedRoutes`, in order.
    pub managed: Vec<&'a str>,
    /// The canary's steps (their header and mirror matches are checked before a release).
    pub steps: &'a [CanaryStep],
}

/// Whether a backendRef names `service` (a Service, the default kind).
fn names_service(backend: &Value, service: &str) -> bool {
    backend["kind"].as_str().is_none_or(|k| k == "Service")
        && backend["name"].as_str() == Some(service)
}

/// (rule, backendRef) index pairs of the user's rules' backendRefs that name `service`.
fn backend_positions(rules: &[Value], managed: &[&str], service: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if is_managed(rule, managed) {
            continue;
        }
        for (j, backend) in rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if names_service(backend, service) {
                out.push((i, j));
            }
        }
    }
    out
}

/// A path match.
fn path_match(path: &StringMatch) -> Value {
    match (&path.exact, &path.prefix, &path.regex) {
        (Some(v), _, _) => json!({"type": "Exact", "value": v}),
        (_, Some(v), _) => json!({"type": "PathPrefix", "value": v}),
        (_, _, v) => json!({"type": "RegularExpression", "value": v}),
    }
}

/// A header match; a prefix becomes a regular expression (the Gateway API has no prefix match).
fn header_match(name: &str, value: &StringMatch) -> Value {
    match (&value.exact, &value.prefix, &value.regex) {
        (Some(v), _, _) => json!({"name": name, "type": "Exact", "value": v}),
        (_, Some(v), _) => json!({"name": name, "type": "RegularExpression",
                                  "value": format!("^{}.*", regex::escape(v))}),
        (_, _, v) => json!({"name": name, "type": "RegularExpression", "value": v}),
    }
}

/// A mirror route's match, or why the Gateway API cannot say it.
fn route_match(name: &str, m: &RouteMatch) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    if let Some(method) = &m.method {
        let Some(exact) = &method.exact else {
            return Err(format!(
                "setMirrorRoute {name:?}: the Gateway API matches a method exactly only; use method.exact"
            ));
        };
        out.insert("method".to_owned(), json!(exact.to_uppercase()));
    }
    if let Some(path) = &m.path {
        out.insert("path".to_owned(), path_match(path));
    }
    if !m.headers.is_empty() {
        let headers: Vec<Value> = m
            .headers
            .iter()
            .map(|(header, value)| header_match(header, value))
            .collect();
        out.insert("headers".to_owned(), Value::Array(headers));
    }
    Ok(Value::Object(out))
}

/// A backendRef to the same Service as `backend`, at `weight`, without its filters.
fn weighted(backend: &Value, weight: i32) -> Value {
    let mut out = backend.clone();
    if let Some(fields) = out.as_object_mut() {
        fields.remove("filters");
        fields.insert("weight".to_owned(), json!(weight));
    }
    out
}

/// The object reference of a backendRef (for a RequestMirror filter).
fn object_ref(backend: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["group", "kind", "name", "namespace", "port"] {
        if !backend[key].is_null() {
            out.insert(key.to_owned(), backend[key].clone());
        }
    }
    Value::Object(out)
}

impl GatewayApi<'_> {
    /// The rules of the managed routes in force, in order: a header route copies the matches of
    /// the user's rules that send to the canary (each with the headers added) and sends to the
    /// canary only; a mirror route sends as the user's rules do (same weights) and copies its
    /// requests to the canary.
    fn managed_rules(&self, rules: &[Value], traffic: &Traffic) -> Result<Vec<Value>, String> {
        let user: Vec<&Value> = rules
            .iter()
            .filter(|r| !is_managed(r, &self.managed))
            .collect();
        let first = |service: &str| {
            user.iter()
                .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten())
                .find(|b| names_service(b, service))
                .cloned()
        };
        let (Some(canary), Some(stable)) = (first(self.canary_service), first(self.stable_service))
        else {
            return Ok(Vec::new());
        };
        let base_matches: Vec<Value> = user
            .iter()
            .filter(|r| {
                r["backendRefs"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|b| names_service(b, self.canary_service)))
            })
            .flat_map(|r| match r["matches"].as_array() {
                Some(matches) if !matches.is_empty() => matches.clone(),
                _ => vec![json!({"path": {"type": "PathPrefix", "value": "/"}})],
            })
            .collect();
        let weight = traffic.canary_weight;
        let mut out = Vec::new();
        for rule in &traffic.managed_routes {
            match rule {
                ManagedRouteRule::Header(header) => {
                    let headers: Vec<Value> = header
                        .matches
                        .iter()
                        .map(|m| header_match(&m.header_name, &m.header_value))
                        .collect();
                    let matches: Vec<Value> = base_matches
                        .iter()
                        .map(|base| {
                            let mut m = base.clone();
                            let mut all = m["headers"].as_array().cloned().unwrap_or_default();
                            all.extend(headers.iter().cloned());
                            m["headers"] = Value::Array(all);
                            m
                        })
                        .collect();
                    out.push(json!({
                        "name": header.name,
                        "matches": matches,
                        "backendRefs": [weighted(&canary, 1)],
                    }));
                }
                ManagedRouteRule::Mirror(mirror) => {
                    let matches = mirror
                        .matches
                        .iter()
                        .map(|m| route_match(&mirror.name, m))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.push(json!({
                        "name": mirror.name,
                        "matches": matches,
                        "filters": [{"type": "RequestMirror", "requestMirror": {
                            "backendRef": object_ref(&canary),
                            "percent": mirror.percentage.unwrap_or(100),
                        }}],
                        "backendRefs": [weighted(&stable, 100 - weight), weighted(&canary, weight)],
                    }));
                }
            }
        }
        Ok(out)
    }
}

impl TrafficRouter for GatewayApi<'_> {
    fn references(&self, _rollout: &str) -> Vec<Reference> {
        vec![Reference::Route(
            RouteKind::HttpRoute,
            self.route.to_owned(),
        )]
    }

    fn check(&self, caches: &Caches, namespace: &str, _rollout: &str) -> Result<(), String> {
        let route_name = self.route;
        let Some(route) = caches.route(RouteKind::HttpRoute, namespace, route_name) else {
            return Err(format!(
                "HTTPRoute {route_name:?} named in spec.strategy.canary.trafficRouting.gatewayAPI.httpRoute does not exist in namespace {namespace}"
            ));
        };
        let rules = route.data["spec"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for service in [self.canary_service, self.stable_service] {
            if backend_positions(&rules, &self.managed, service).is_empty() {
                return Err(format!(
                    "HTTPRoute {route_name:?} has no backendRef for Service {service:?}; add it (weight 0 for the canary) so Sluice can shift traffic"
                ));
            }
        }
        for step in self.steps {
            if let Some(mirror) = &step.set_mirror_route {
                for m in &mirror.matches {
                    route_match(&mirror.name, m)?;
                }
            }
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
        let Some(route) = ctx
            .caches
            .route(RouteKind::HttpRoute, namespace, self.route)
        else {
            return Ok(());
        };
        let rules = route.data["spec"]["rules"].as_array();
        let current = rules.cloned().unwrap_or_default();
        // The check refused matches the Gateway API cannot say; nothing is written then.
        let Ok(wanted) = self.managed_rules(&current, traffic) else {
            return Ok(());
        };
        let layout = managed::layout("/spec/rules", rules, &self.managed, &wanted);
        let mut ops = layout.ops;
        let weight = traffic.canary_weight;
        for (service, w) in [
            (self.canary_service, weight),
            (self.stable_service, 100 - weight),
        ] {
            for (i, j) in backend_positions(&current, &self.managed, service) {
                let Some(at) = layout.moved.get(i).copied().flatten() else {
                    continue;
                };
                if current[i]["backendRefs"][j]["weight"].as_i64() != Some(i64::from(w)) {
                    let path = format!("/spec/rules/{at}/backendRefs/{j}");
                    ops.push(
                        json!({"op": "test", "path": format!("{path}/name"), "value": service}),
                    );
                    ops.push(json!({"op": "add", "path": format!("{path}/weight"), "value": w}));
                }
            }
        }
        let in_flight = traffic.canary_hash != traffic.stable_hash;
        if patch_marked(ctx, RouteKind::HttpRoute, &route, ops, in_flight, rollout).await? {
            info!(
                route = self.route,
                canary_weight = weight,
                managed_routes = wanted.len(),
                in_flight,
                "set route weights"
            );
        }
        Ok(())
    }
}

/// An HTTPRoute as the controller sees it: its rules (their names, matches, filters and
/// backendRefs, at their positions, which the patches address) and Sluice's own annotation; not
/// its parents, hostnames or status.
pub fn trim_route(route: &mut DynamicObject) {
    trim_marks(route);
    route.data = json!({ "spec": { "rules": route.data["spec"]["rules"] } });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::rollout::{HeaderRoutingMatch, SetHeaderRoute, SetMirrorRoute};
    use std::collections::BTreeMap;

    fn exact(v: &str) -> StringMatch {
        StringMatch {
            exact: Some(v.to_owned()),
            prefix: None,
            regex: None,
        }
    }

    fn router() -> GatewayApi<'static> {
        GatewayApi {
            route: "web",
            canary_service: "web-canary",
            stable_service: "web-stable",
            managed: vec!["header", "shadow"],
            steps: &[],
        }
    }

    fn user_rule() -> Value {
        json!({"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
               "backendRefs": [{"name": "web-stable", "port": 80, "weight": 90},
                               {"name": "web-canary", "port": 80, "weight": 10}]})
    }

    #[test]
    fn header_and_mirror_rules_follow_the_users_rule() {
        let traffic = Traffic {
            canary_weight: 10,
            leave_services: false,
            canary_hash: "new".to_owned(),
            stable_hash: "old".to_owned(),
            managed_routes: vec![
                ManagedRouteRule::Header(SetHeaderRoute {
                    name: "header".to_owned(),
                    matches: vec![HeaderRoutingMatch {
                        header_name: "X-Canary".to_owned(),
                        header_value: StringMatch {
                            exact: None,
                            prefix: Some("yes.".to_owned()),
                            regex: None,
                        },
                    }],
                }),
                ManagedRouteRule::Mirror(SetMirrorRoute {
                    name: "shadow".to_owned(),
                    matches: vec![RouteMatch {
                        method: Some(exact("get")),
                        path: Some(exact("/")),
                        headers: BTreeMap::new(),
                    }],
                    percentage: Some(35),
                }),
            ],
        };
        let rules = router()
            .managed_rules(&[user_rule()], &traffic)
            .expect("rules");
        assert_eq!(
            rules,
            vec![
                json!({"name": "header",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                    "headers": [{"name": "X-Canary", "type": "RegularExpression", "value": "^yes\\..*"}]}],
                       "backendRefs": [{"name": "web-canary", "port": 80, "weight": 1}]}),
                json!({"name": "shadow",
                       "matches": [{"method": "GET", "path": {"type": "Exact", "value": "/"}}],
                       "filters": [{"type": "RequestMirror", "requestMirror": {
                           "backendRef": {"name": "web-canary", "port": 80}, "percent": 35}}],
                       "backendRefs": [{"name": "web-stable", "port": 80, "weight": 90},
                                       {"name": "web-canary", "port": 80, "weight": 10}]}),
            ]
        );
    }

    #[test]
    fn a_method_the_gateway_api_cannot_match_is_refused() {
        let m = RouteMatch {
            method: Some(StringMatch {
                exact: None,
                prefix: Some("G".to_owned()),
                regex: None,
            }),
            path: None,
            headers: BTreeMap::new(),
        };
        let err = route_match("shadow", &m).expect_err("refused");
        assert!(err.contains("method.exact"), "{err}");
    }

    #[test]
    fn managed_rules_are_not_the_users_backends() {
        let rules = vec![
            json!({"name": "header", "backendRefs": [{"name": "web-canary", "weight": 1}]}),
            user_rule(),
        ];
        assert_eq!(
            backend_positions(&rules, &["header"], "web-canary"),
            vec![(1, 1)]
        );
    }
}
