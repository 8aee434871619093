//! Traffic routers: how a release's traffic split is put in force. One module per router, each
//! implementing [`TrafficRouter`]; [`router`] picks it from the spec with an exhaustive match, so a
//! new router is one module here plus one field in the API's `trafficRouting`, and a case left out
//! does not compile.
//!
//! The Services that select the stable and canary (active and preview) versions are not a router's
//! business: every strategy has them, and the executor points them at the plan's hashes.

pub mod gateway_api;
pub mod replicas;

use sluice_api::rollout::CanaryStrategy;
use sluice_engine::release::Traffic;

use crate::Context;
use crate::cache::{Caches, Reference};
use crate::error::Error;

/// What the rest of the controller asks of a traffic router.
pub trait TrafficRouter {
    /// The objects the router reads (in the Rollout's namespace): a change to one wakes the Rollout.
    fn references(&self) -> Vec<Reference>;

    /// What only the controller can check about the router's configuration (its objects exist and
    /// name the Rollout's Services), read from the caches: the problem, said for the user.
    fn check(&self, caches: &Caches, namespace: &str) -> Result<(), String>;

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
    /// No router: the split follows the pod counts.
    Replicas(replicas::Replicas),
}

/// The router of a canary strategy.
pub fn router(canary: &CanaryStrategy) -> Router<'_> {
    let services = (
        canary.canary_service.as_deref(),
        canary.stable_service.as_deref(),
    );
    match (&canary.traffic_routing, services) {
        (Some(routing), (Some(canary_service), Some(stable_service))) => {
            let sluice_api::rollout::TrafficRouting { gateway_api } = routing;
            Router::GatewayApi(gateway_api::GatewayApi {
                route: &gateway_api.http_route,
                canary_service,
                stable_service,
            })
        }
        // The schema requires both Services with a router; without one there is nothing to route.
        _ => Router::Replicas(replicas::Replicas),
    }
}

impl TrafficRouter for Router<'_> {
    fn references(&self) -> Vec<Reference> {
        match self {
            Self::GatewayApi(r) => r.references(),
            Self::Replicas(r) => r.references(),
        }
    }

    fn check(&self, caches: &Caches, namespace: &str) -> Result<(), String> {
        match self {
            Self::GatewayApi(r) => r.check(caches, namespace),
            Self::Replicas(r) => r.check(caches, namespace),
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
            Self::Replicas(r) => r.set_weight(ctx, namespace, rollout, traffic).await,
        }
    }
}
