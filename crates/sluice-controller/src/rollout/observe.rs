//! What a reconcile reads, all from the caches: the ReplicaSets and pods as the engine sees them,
//! what is wrong with the spec, and what a Rollout names (so that a change to it wakes the Rollout).

use std::str::FromStr;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use sluice_api::common::AntiAffinity;
use sluice_api::rollout::{
    BlueGreenStrategy, CanaryStrategy, POD_TEMPLATE_HASH_LABEL, Rollout, RolloutStatus,
};
use sluice_engine::pods::PodView;
use sluice_engine::release::ReplicaSetView;

use sluice_api::names::SCALE_DOWN_AT_ANNOTATION;

use crate::Context;
use crate::cache::{self, Reference};
use crate::rollout_analysis::{self, Templates};
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

/// The objects a Rollout names (its Services, route and templates), by which the cache indexes it:
/// a change to one of them wakes the Rollout.
pub fn references(rollout: &Rollout) -> Vec<Reference> {
    let strategy = &rollout.spec.strategy;
    let mut references: Vec<Reference> = Vec::new();
    let mut template_refs = Vec::new();
    if let Some(canary) = &strategy.canary {
        references.extend(
            [&canary.canary_service, &canary.stable_service]
                .into_iter()
                .flatten()
                .map(|s| Reference::Service(s.clone())),
        );
        references.extend(traffic::router(canary).references(&rollout.name_any()));
        template_refs.extend(rollout_analysis::template_refs(canary));
    }
    if let Some(blue_green) = &strategy.blue_green {
        references.push(Reference::Service(blue_green.active_service.clone()));
        references.extend(blue_green.preview_service.clone().map(Reference::Service));
        template_refs.extend(rollout_analysis::blue_green_template_refs(blue_green));
    }
    if let Some(workload) = &rollout.spec.workload_ref {
        references.push(Reference::Workload(workload.name.clone()));
    }
    if let Some(from) = rollout
        .annotations()
        .get(sluice_api::names::TAKEOVER_ANNOTATION)
    {
        references.push(Reference::TakeoverFrom(from.clone()));
    }
    let check_refs = rollout
        .spec
        .pre_deployment_checks
        .iter()
        .map(|c| c.templates.as_slice());
    for refs in template_refs
        .into_iter()
        .map(|(_, refs)| refs)
        .chain(check_refs)
    {
        references.extend(refs.iter().map(|r| {
            let name = r.template_name.clone();
            if r.cluster_scope {
                Reference::ClusterTemplate(name)
            } else {
                Reference::Template(name)
            }
        }));
    }
    references.sort();
    references.dedup();
    references
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

/// A pod as the engine sees it (`now` stands in for a Ready condition with no transition time).
pub(super) fn pod_view(pod: &Pod, now: Timestamp) -> Option<PodView> {
    let hash = pod.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
    let ready_since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map_or(now, |t| t.0));
    Some(PodView {
        name: pod.name_any(),
        hash,
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        ready_since,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
    })
}

/// The strategy the spec sets, or why there is none (a user error to report, not a failure).
pub(super) fn strategy_of(rollout: &Rollout) -> Result<Strategy<'_>, String> {
    if rollout.spec.template.is_none() {
        return Err("spec sets neither template nor workloadRef".to_owned());
    }
    match (
        &rollout.spec.strategy.canary,
        &rollout.spec.strategy.blue_green,
    ) {
        (Some(canary), _) => Ok(Strategy::Canary(canary)),
        (None, Some(blue_green)) => Ok(Strategy::BlueGreen(blue_green)),
        (None, None) => Err("spec.strategy sets neither canary nor blueGreen".to_owned()),
    }
}

/// What only the controller can check, read from the caches: that the Services, route and templates
/// the strategy names exist (the templates, for the runs the plan may start), or what is missing (a
/// user error to report, not a failure).
pub(super) fn check_objects(
    strategy: Strategy<'_>,
    checks: &[sluice_api::rollout::PreDeploymentCheck],
    ctx: &Context,
    namespace: &str,
    rollout: &str,
) -> Result<Templates, String> {
    let mut templates = Templates::new();
    let caches = &ctx.caches;
    for (i, check) in checks.iter().enumerate() {
        let field = format!("spec.preDeploymentChecks[{i}]");
        let found = rollout_analysis::templates(caches, namespace, &check.templates, &field)?;
        templates.insert(field, found);
    }
    let service_exists = |name: &str| cache::get(&caches.services, namespace, name).is_some();
    let canary = match strategy {
        Strategy::Canary(canary) => canary,
        Strategy::BlueGreen(blue_green) => {
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
                let found = rollout_analysis::templates(caches, namespace, refs, &field)?;
                templates.insert(field, found);
            }
            return Ok(templates);
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
    traffic::router(canary).check(caches, namespace, rollout)?;
    for (field, refs) in rollout_analysis::template_refs(canary) {
        let found = rollout_analysis::templates(caches, namespace, refs, &field)?;
        templates.insert(field, found);
    }
    Ok(templates)
}

/// A release is under way that an invalid spec must not freeze: a revision other than stable has
/// pods (and may have traffic). The engine then aborts it (traffic back on stable through whatever
/// routing still exists) instead of holding everything where it stands; a release that has not
/// started yet is held before it creates anything.
pub(super) fn in_flight(status: &RolloutStatus, views: &[ReplicaSetView]) -> bool {
    let Some(stable) = status.stable_rs.as_deref() else {
        return false;
    };
    views.iter().any(|v| v.hash != stable && v.replicas > 0)
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
    /// The strategy's `antiAffinity`, if any.
    pub(super) fn anti_affinity(&self) -> Option<&AntiAffinity> {
        match self {
            Self::Canary(c) => c.anti_affinity.as_ref(),
            Self::BlueGreen(b) => b.anti_affinity.as_ref(),
        }
    }

    pub(super) fn canary_service(&self) -> Option<&String> {
        match self {
            Self::Canary(c) => c.canary_service.as_ref(),
            Self::BlueGreen(b) => b.preview_service.as_ref(),
        }
    }
}
