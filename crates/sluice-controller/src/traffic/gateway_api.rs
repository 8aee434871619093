//! Gateway API: the weights of an HTTPRoute's backendRefs to the canary and stable Services. Only
//! the weights are written (JSON patches that test the backend's name first), and the route is
//! marked while a release is in flight.

use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch};
use kube::core::GroupVersionKind;
use serde_json::json;
use sluice_api::names::ROUTE_IN_FLIGHT_ANNOTATION;
use sluice_engine::release::Traffic;
use tracing::info;

use super::TrafficRouter;
use crate::cache::{Caches, Reference};
use crate::error::{Error, Writing};
use crate::{Context, writer};

/// Gateway API's HTTPRoute, used untyped (the gateway-api crate is on another kube version).
pub fn http_route_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    ApiResource::from_gvk_with_plural(&gvk, "httproutes")
}

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
    fn references(&self) -> Vec<Reference> {
        vec![Reference::Route(self.route.to_owned())]
    }

    fn check(&self, caches: &Caches, namespace: &str) -> Result<(), String> {
        let route_name = self.route;
        let Some(route) = caches.route(namespace, route_name) else {
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
        let Some(route) = ctx.caches.route(namespace, self.route) else {
            return Ok(());
        };
        let routes: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &http_route_resource());
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
        // The in-flight mark goes in the same patch where it can: a JSON patch can add a key only
        // to an annotations map that exists (the cache keeps the map, emptied of others' keys).
        let in_flight = traffic.canary_hash != traffic.stable_hash;
        let marked = route.annotations().contains_key(ROUTE_IN_FLIGHT_ANNOTATION);
        let mark_path = format!(
            "/metadata/annotations/{}",
            ROUTE_IN_FLIGHT_ANNOTATION
                .replace('~', "~0")
                .replace('/', "~1")
        );
        let mut mark_apart = false;
        match (in_flight, marked, route.metadata.annotations.is_some()) {
            (true, false, true) => {
                ops.push(json!({"op": "add", "path": mark_path, "value": rollout}));
            }
            (true, false, false) => mark_apart = true,
            (false, true, _) => ops.push(json!({"op": "remove", "path": mark_path})),
            _ => {}
        }
        if !ops.is_empty() {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
            routes
                .patch(self.route, &writer(), &Patch::<()>::Json(patch))
                .await
                .writing(|| format!("the backend weights of HTTPRoute {}", self.route))?;
            info!(
                route = self.route,
                canary_weight = weight,
                in_flight,
                "set route weights"
            );
        }
        if mark_apart {
            let patch = json!({"metadata": {"annotations": {ROUTE_IN_FLIGHT_ANNOTATION: rollout}}});
            routes
                .patch(self.route, &writer(), &Patch::Merge(&patch))
                .await
                .writing(|| format!("the annotations of HTTPRoute {}", self.route))?;
        }
        Ok(())
    }
}
