//! Traffic routers: how a release's traffic split is put in force. One module per router, each
//! implementing [`TrafficRouter`]; [`router`] picks it from the spec with an exhaustive match, so a
//! new router is one module here plus one field in the API's `trafficRouting`, and a case left out
//! does not compile.
//!
//! The Services that select the stable and canary (active and preview) versions are not a router's
//! business: every strategy has them, and the executor points them at the plan's hashes.

pub mod gateway_api;
pub mod istio;
pub mod managed;
pub mod nginx;
pub mod replicas;

use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use sluice_api::names::ROUTE_IN_FLIGHT_ANNOTATION;
use sluice_api::rollout::CanaryStrategy;
use sluice_engine::release::Traffic;

use crate::cache::{Caches, Reference};
use crate::error::{Error, Writing};
use crate::{Context, writer};

/// The routing objects routers read and write, untyped (their crates are on other kube versions,
/// or the API may not be installed): each is watched only where its API exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// Gateway API `HTTPRoute`.
    HttpRoute,
    /// Istio `VirtualService`.
    VirtualService,
    /// Istio `DestinationRule`.
    DestinationRule,
    /// `networking.k8s.io/v1` `Ingress` (NGINX's stable and canary Ingresses).
    Ingress,
}

impl RouteKind {
    pub const ALL: [Self; 4] = [
        Self::HttpRoute,
        Self::VirtualService,
        Self::DestinationRule,
        Self::Ingress,
    ];

    /// The kind's API resource.
    pub fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            Self::HttpRoute => ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            Self::VirtualService => (
                "networking.istio.io",
                "v1",
                "VirtualService",
                "virtualservices",
            ),
            Self::DestinationRule => (
                "networking.istio.io",
                "v1",
                "DestinationRule",
                "destinationrules",
            ),
            Self::Ingress => ("networking.k8s.io", "v1", "Ingress", "ingresses"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// What the controller keeps of an object of this kind (see each router's trim).
    pub fn trim(self) -> fn(&mut DynamicObject) {
        match self {
            Self::HttpRoute => gateway_api::trim_route,
            Self::VirtualService => istio::trim_virtual_service,
            Self::DestinationRule => istio::trim_destination_rule,
            Self::Ingress => nginx::trim_ingress,
        }
    }
}

/// What the rest of the controller asks of a traffic router.
pub trait TrafficRouter {
    /// The objects the router reads (in the Rollout's namespace): a change to one wakes the Rollout.
    fn references(&self, rollout: &str) -> Vec<Reference>;

    /// What only the controller can check about the router's configuration (its objects exist and
    /// name the Rollout's Services), read from the caches: the problem, said for the user.
    fn check(&self, caches: &Caches, namespace: &str, rollout: &str) -> Result<(), String>;

    /// Puts the plan's split in force, writing only what differs from what the cache holds.
    async fn set_weight(
        &self,
        ctx: &Context,
        namespace: &str,
        rollout: &str,
        traffic: &Traffic,
    ) -> Result<(), Error>;
}

/// The router a canary names.
pub enum Router<'a> {
    /// Gateway API HTTPRoute backendRef weights.
    GatewayApi(gateway_api::GatewayApi<'a>),
    /// Istio VirtualService destination weights (and DestinationRule subsets).
    Istio(istio::Istio<'a>),
    /// NGINX canary Ingresses.
    Nginx(nginx::Nginx<'a>),
    /// No router: the split follows the pod counts.
    Replicas(replicas::Replicas),
}

/// The router of a canary strategy.
pub fn router(canary: &CanaryStrategy) -> Router<'_> {
    let services = (
        canary.canary_service.as_deref(),
        canary.stable_service.as_deref(),
    );
    let Some(routing) = &canary.traffic_routing else {
        return Router::Replicas(replicas::Replicas);
    };
    let sluice_api::rollout::TrafficRouting {
        gateway_api,
        istio,
        nginx,
        managed_routes,
    } = routing;
    let managed: Vec<&str> = managed_routes.iter().map(|r| r.name.as_str()).collect();
    // The schema requires exactly one router, and both Services except for Istio's subsets.
    match (gateway_api, istio, nginx, services) {
        (Some(gateway_api), _, _, (Some(canary_service), Some(stable_service))) => {
            Router::GatewayApi(gateway_api::GatewayApi {
                route: &gateway_api.http_route,
                canary_service,
                stable_service,
                managed,
                steps: &canary.steps,
            })
        }
        (_, Some(istio), _, (canary_service, stable_service)) => Router::Istio(istio::Istio {
            spec: istio,
            canary_service,
            stable_service,
            managed,
        }),
        (_, _, Some(nginx), (Some(canary_service), Some(stable_service))) => {
            Router::Nginx(nginx::Nginx {
                spec: nginx,
                canary_service,
                stable_service,
            })
        }
        _ => Router::Replicas(replicas::Replicas),
    }
}

impl TrafficRouter for Router<'_> {
    fn references(&self, rollout: &str) -> Vec<Reference> {
        match self {
            Self::GatewayApi(r) => r.references(rollout),
            Self::Istio(r) => r.references(rollout),
            Self::Nginx(r) => r.references(rollout),
            Self::Replicas(r) => r.references(rollout),
        }
    }

    fn check(&self, caches: &Caches, namespace: &str, rollout: &str) -> Result<(), String> {
        match self {
            Self::GatewayApi(r) => r.check(caches, namespace, rollout),
            Self::Istio(r) => r.check(caches, namespace, rollout),
            Self::Nginx(r) => r.check(caches, namespace, rollout),
            Self::Replicas(r) => r.check(caches, namespace, rollout),
        }
    }

    async fn set_weight(
        &self,
        ctx: &Context,
        namespace: &str,
        rollout: &str,
        traffic: &Traffic,
    ) -> Result<(), Error> {
        match self {
            Self::GatewayApi(r) => r.set_weight(ctx, namespace, rollout, traffic).await,
            Self::Istio(r) => r.set_weight(ctx, namespace, rollout, traffic).await,
            Self::Nginx(r) => r.set_weight(ctx, namespace, rollout, traffic).await,
            Self::Replicas(r) => r.set_weight(ctx, namespace, rollout, traffic).await,
        }
    }
}

/// Writes `ops` (JSON patch operations, each guarded by `test` operations on what it addresses) to a
/// routing object, with Sluice's in-flight mark added while a release is in flight and taken off
/// after. Nothing is written when nothing differs.
pub(crate) async fn patch_marked(
    ctx: &Context,
    kind: RouteKind,
    object: &DynamicObject,
    mut ops: Vec<Value>,
    in_flight: bool,
    rollout: &str,
) -> Result<bool, Error> {
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &kind.resource());
    // The in-flight mark goes in the same patch where it can: a JSON patch can add a key only to an
    // annotations map that exists (the caches keep the map, emptied of others' keys).
    let marked = object
        .annotations()
        .contains_key(ROUTE_IN_FLIGHT_ANNOTATION);
    let mark_path = format!(
        "/metadata/annotations/{}",
        pointer_escape(ROUTE_IN_FLIGHT_ANNOTATION)
    );
    let mut mark_apart = false;
    match (in_flight, marked, object.metadata.annotations.is_some()) {
        (true, false, true) => ops.push(json!({"op": "add", "path": mark_path, "value": rollout})),
        (true, false, false) => mark_apart = true,
        (false, true, _) => ops.push(json!({"op": "remove", "path": mark_path})),
        _ => {}
    }
    let what = format!("{} {name}", kind.resource().kind);
    let wrote = !ops.is_empty() || mark_apart;
    if !ops.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
        api.patch(&name, &writer(), &Patch::<()>::Json(patch))
            .await
            .writing(|| format!("the traffic weights of {what}"))?;
    }
    if mark_apart {
        let patch = json!({"metadata": {"annotations": {ROUTE_IN_FLIGHT_ANNOTATION: rollout}}});
        api.patch(&name, &writer(), &Patch::Merge(&patch))
            .await
            .writing(|| format!("the annotations of {what}"))?;
    }
    Ok(wrote)
}

/// A JSON pointer segment for `key` (RFC 6901).
pub(crate) fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Keeps only Sluice's own in-flight mark of a routing object's annotations, and drops its labels.
pub(crate) fn trim_marks(object: &mut DynamicObject) {
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == ROUTE_IN_FLIGHT_ANNOTATION);
    }
    object.metadata.labels = None;
}
