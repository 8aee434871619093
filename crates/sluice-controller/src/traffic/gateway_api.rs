//! Gateway API: the weights of an HTTPRoute's backendRefs to the canary and stable Services. Only
//! the weights are written (JSON patches that test the backend's name first), and the route is
//! marked while a release is in flight.

use kube::api::DynamicObject;
use serde_json::json;
use sluice_engine::release::Traffic;
use tracing::info;

use super::{RouteKind, TrafficRouter, patch_marked, trim_marks};
use crate::Context;
use crate::cache::{Caches, Reference};
use crate::error::Error;

/// A canary's HTTPRoute and the two Services whose weights it sets.
pub struct GatewayApi<'a> {
    pub route: &'a str,
    pub canary_service: &'a str,
    pub stable_service: &'a str,
}

/// (rule, backendRef) index pairs of the route's backendRefs that name `service`.
fn backend_positions(route: &DynamicObject, service: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let rules = route.data["spec"]["rules"].as_array();
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        for (j, backend) in rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let kind_ok = backend["kind"].as_str().is_none_or(|k| k == "Service");
            if kind_ok && backend["name"].as_str() == Some(service) {
                out.push((i, j));
            }
        }
    }
    out
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
        for service in [self.canary_service, self.stable_service] {
            if backend_positions(&route, service).is_empty() {
                return Err(format!(
                    "HTTPRoute {route_name:?} has no backendRef for Service {service:?}; add it (weight 0 for the canary) so Sluice can shift traffic"
                ));
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
        let weight = traffic.canary_weight;
        let mut ops = Vec::new();
        for (service, w) in [
            (self.canary_service, weight),
            (self.stable_service, 100 - weight),
        ] {
            for (i, j) in backend_positions(&route, service) {
                let current = route.data["spec"]["rules"][i]["backendRefs"][j]["weight"].as_i64();
                if current != Some(i64::from(w)) {
                    let path = format!("/spec/rules/{i}/backendRefs/{j}");
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
                in_flight,
                "set route weights"
            );
        }
        Ok(())
    }
}

/// An HTTPRoute as the controller sees it: its rules' backendRefs (name, kind, weight, at their
/// positions, which the weight patches address) and Sluice's own annotation.
pub fn trim_route(route: &mut DynamicObject) {
    trim_marks(route);
    let rules: Vec<serde_json::Value> = route.data["spec"]["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|rule| {
                    let refs: Vec<serde_json::Value> = rule["backendRefs"]
                        .as_array()
                        .map(|refs| {
                            refs.iter()
                                .map(|r| {
                                    json!({
                                        "name": r["name"],
                                        "kind": r["kind"],
                                        "weight": r["weight"],
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    json!({ "backendRefs": refs })
                })
                .collect()
        })
        .unwrap_or_default();
    route.data = json!({ "spec": { "rules": rules } });
}
