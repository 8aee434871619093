//! What a reconcile reads, all from the caches: the ReplicaSets as the engine sees them, what is
//! wrong with the spec, and which Rollouts a change to a Service or template wakes.

use std::str::FromStr;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_api::rollout::{BlueGreenStrategy, CanaryStrategy, POD_TEMPLATE_HASH_LABEL, Rollout};
use sluice_engine::release::ReplicaSetView;
use sluice_engine::replicas;

use sluice_api::names::SCALE_DOWN_AT_ANNOTATION;

use crate::Context;
use crate::cache;
use crate::rollout_analysis;
use crate::traffic::{self, TrafficRouter};

/// What of a Rollout wakes its reconcile: its spec (generation), labels, annotations (people's
/// requests) and deletion. Its status does not: the controller is its only writer, and a plan stands
/// on its own, so the controller's own status write never needs to wake it again.
pub fn wakes(rollout: &Rollout) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &rollout.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &meta.uid,
        meta.generation,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The Rollouts in the namespace of a Service that name it (canary, stable, active or preview).
pub fn referencing_service(
    rollouts: &Store<Rollout>,
    service: &Service,
) -> Vec<ObjectRef<Rollout>> {
    let name = service.name_any();
    referencing(rollouts, &service.namespace(), |rollout| {
        let strategy = &rollout.spec.strategy;
        strategy.canary.as_ref().is_some_and(|c| {
            c.canary_service.as_deref() == Some(name.as_str())
                || c.stable_service.as_deref() == Some(name.as_str())
        }) || strategy.blue_green.as_ref().is_some_and(|b| {
            b.active_service == name || b.preview_service.as_deref() == Some(name.as_str())
        })
    })
}

/// The Rollouts that name an analysis template (`cluster`: a ClusterAnalysisTemplate, named from any
/// namespace).
pub fn referencing_template(
    rollouts: &Store<Rollout>,
    namespace: &Option<String>,
    name: &str,
    cluster: bool,
) -> Vec<ObjectRef<Rollout>> {
    let names_it = |refs: &[sluice_api::common::AnalysisTemplateRef]| {
        refs.iter()
            .any(|r| r.template_name == name && r.cluster_scope == cluster)
    };
    let matches = |rollout: &Rollout| {
        let strategy = &rollout.spec.strategy;
        strategy.canary.as_ref().is_some_and(|c| {
            rollout_analysis::template_refs(c)
                .iter()
                .any(|(_, refs)| names_it(refs))
        }) || strategy.blue_green.as_ref().is_some_and(|b| {
            rollout_analysis::blue_green_template_refs(b)
                .iter()
                .any(|(_, refs)| names_it(refs))
        })
    };
    if cluster {
        rollouts
            .state()
            .iter()
            .filter(|r| matches(r))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    } else {
        referencing(rollouts, namespace, matches)
    }
}

/// The Rollouts in `namespace` for which `matches` holds.
pub(crate) fn referencing(
    rollouts: &Store<Rollout>,
    namespace: &Option<String>,
    matches: impl Fn(&Rollout) -> bool,
) -> Vec<ObjectRef<Rollout>> {
    rollouts
        .state()
        .iter()
        .filter(|r| r.namespace() == *namespace && matches(r))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

pub(super) fn view(rs: &ReplicaSet) -> Option<ReplicaSetView> {
    let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
    Some(ReplicaSetView {
        hash,
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
        scale_down_at: rs
            .annotations()
            .get(SCALE_DOWN_AT_ANNOTATION)
            .and_then(|t| Timestamp::from_str(t).ok()),
        created: rs
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    })
}

/// What only the controller can check, read from the caches: the strategy, or what is wrong with
/// the spec (a user error to report, not a failure).
pub(super) fn check_spec<'a>(
    rollout: &'a Rollout,
    ctx: &Context,
    namespace: &str,
) -> Result<Strategy<'a>, String> {
    if rollout.spec.template.is_none() {
        return Err(
            "spec.workloadRef is not supported by this version of Sluice; set spec.template"
                .to_owned(),
        );
    }
    let caches = &ctx.caches;
    let service_exists = |name: &str| cache::get(&caches.services, namespace, name).is_some();
    let canary = match (
        &rollout.spec.strategy.canary,
        &rollout.spec.strategy.blue_green,
    ) {
        (Some(canary), _) => canary,
        (None, Some(blue_green)) => {
            for (field, service) in [
                ("activeService", Some(&blue_green.active_service)),
                ("previewService", blue_green.preview_service.as_ref()),
            ] {
                if let Some(service) = service
                    && !service_exists(service)
                {
                    return Err(format!(
                        "Service {service:?} named in spec.strategy.blueGreen.{field} does not exist in namespace {namespace}"
                    ));
                }
            }
            for (field, refs) in rollout_analysis::blue_green_template_refs(blue_green) {
                rollout_analysis::templates(caches, namespace, refs, &field)?;
            }
            return Ok(Strategy::BlueGreen(blue_green));
        }
        (None, None) => {
            return Err("spec.strategy sets neither canary nor blueGreen".to_owned());
        }
    };
    for (field, service) in [
        ("canaryService", &canary.canary_service),
        ("stableService", &canary.stable_service),
    ] {
        if let Some(service) = service
            && !service_exists(service)
        {
            return Err(format!(
                "Service {service:?} named in spec.strategy.canary.{field} does not exist in namespace {namespace}"
            ));
        }
    }
    traffic::router(canary).check(caches, namespace)?;
    for (field, refs) in rollout_analysis::template_refs(canary) {
        rollout_analysis::templates(caches, namespace, refs, &field)?;
    }
    Ok(Strategy::Canary(canary))
}

/// A Rollout's release strategy, with what the executor needs from either kind.
#[derive(Clone, Copy)]
pub(crate) enum Strategy<'a> {
    Canary(&'a CanaryStrategy),
    BlueGreen(&'a BlueGreenStrategy),
}

impl<'a> Strategy<'a> {
    /// The strategy as the engine takes it.
    pub(super) fn engine(self) -> sluice_engine::Strategy<'a> {
        match self {
            Self::Canary(c) => sluice_engine::Strategy::Canary(c),
            Self::BlueGreen(b) => sluice_engine::Strategy::BlueGreen(b),
        }
    }

    /// The Service that selects the stable (canary) or active (blue-green) version.
    pub(super) fn stable_service(&self) -> Option<&String> {
        match self {
            Self::Canary(c) => c.stable_service.as_ref(),
            Self::BlueGreen(b) => Some(&b.active_service),
        }
    }

    /// The Service that selects the canary (canary) or preview (blue-green) version.
    pub(super) fn canary_service(&self) -> Option<&String> {
        match self {
            Self::Canary(c) => c.canary_service.as_ref(),
            Self::BlueGreen(b) => b.preview_service.as_ref(),
        }
    }

    /// Pods that may be missing during a restart.
    pub(super) fn max_unavailable(&self, replicas: i32) -> i32 {
        let (surge, unavailable) = match self {
            Self::Canary(c) => (c.max_surge.as_ref(), c.max_unavailable.as_ref()),
            Self::BlueGreen(_) => (None, None),
        };
        replicas::surge_and_unavailable(replicas, surge, unavailable).1
    }
}
