//! The plan put in force: ReplicaSets created and scaled up, Services pointed, the router's weights
//! set, role metadata on pods and a restart's evictions; then (`reconcile_rollout`) the status,
//! runs, scale-downs and deletions (`remove_surplus`), and Events last (`announce`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_api::common::AntiAffinity;
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutStatus};
use sluice_engine::release::{Plan, ReplicaSetView};
use tracing::{info, warn};

use sluice_api::names::{ROLLOUT_LABEL, SCALE_DOWN_AT_ANNOTATION, TEMPLATE_ANNOTATION};

use super::Strategy;
use crate::cache;
use crate::error::{Error, Writing};
use crate::traffic::{self, TrafficRouter};
use crate::written::Kind;
use crate::{Context, FIELD_MANAGER, writer};

/// Records an InvalidSpec condition and event, and changes nothing else: stable keeps serving.
pub(super) async fn invalid_spec(
    rollout: &Rollout,
    ctx: &Context,
    status: &RolloutStatus,
    problem: &str,
    now: Timestamp,
) -> Result<Action, Error> {
    let generation = rollout.metadata.generation.unwrap_or(0);
    let (next, event) = sluice_engine::hold_invalid_spec(status, problem, generation, now);
    if let Some(event) = event {
        warn!(problem, "invalid spec");
        write_status(
            ctx,
            rollout,
            &next,
            rollout.metadata.resource_version.as_deref(),
        )
        .await?;
        publish(ctx, rollout, event.warning, event.reason, &event.message);
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Reports a failed reconcile on the Rollout (`ReconcileError` condition, phase Degraded with the
/// problem as its message, an Event when the problem is new); the reconcile is retried with backoff.
/// If even this write fails (the API server is out of reach), the log is all that is left.
pub(super) async fn report_failure(rollout: &Rollout, ctx: &Context, error: &Error) {
    let status = rollout.status.clone().unwrap_or_default();
    let generation = rollout.metadata.generation.unwrap_or(0);
    let (next, event) = sluice_engine::hold_reconcile_error(
        &status,
        error.reason(),
        &error.to_string(),
        generation,
        Timestamp::now(),
    );
    let based_on = rollout.metadata.resource_version.as_deref();
    if next != status
        && let Err(err) = write_status(ctx, rollout, &next, based_on).await
    {
        warn!(%err, "could not report the failure on the Rollout");
        return;
    }
    if let Some(event) = event {
        publish(ctx, rollout, event.warning, event.reason, &event.message);
    }
}

/// Writes the Rollout's status (server-side apply under the controller's field manager) on the
/// condition that the Rollout is still at `based_on`, the resourceVersion it was decided on (409
/// otherwise: an older view never overwrites a newer status), and remembers the resourceVersion it
/// got, so that no reconcile decides on an older cached copy.
pub(super) async fn write_status(
    ctx: &Context,
    rollout: &Rollout,
    next: &RolloutStatus,
    based_on: Option<&str>,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let mut patch = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "status": next});
    if let Some(version) = based_on {
        patch["metadata"] = json!({"resourceVersion": version});
    }
    let written = Api::<Rollout>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .writing(|| format!("the status of Rollout {name}"))?;
    ctx.written.wrote(
        Kind::Rollout,
        &namespace,
        &name,
        written.metadata.resource_version.as_deref(),
    );
    Ok(())
}

pub(super) fn publish(
    ctx: &Context,
    rollout: &Rollout,
    warning: bool,
    reason: &str,
    message: &str,
) {
    ctx.publish(&rollout.object_ref(&()), warning, reason, reason, message);
}

/// Applies what a plan adds, in the order that keeps traffic on pods that exist: create and scale
/// up, then Services and route weights, then pod metadata and evictions. The status, runs and
/// `remove_surplus` follow (see `reconcile_rollout`).
pub(super) async fn execute(
    rollout: &Rollout,
    ctx: &Context,
    namespace: &str,
    strategy: Strategy<'_>,
    hash: &str,
    observed: Observed<'_>,
    plan: &Plan,
) -> Result<(), Error> {
    let Observed { views, names } = observed;
    let client = ctx.client.clone();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let observed: BTreeMap<&str, &ReplicaSetView> =
        views.iter().map(|v| (v.hash.as_str(), v)).collect();
    let name_of = |h: &str| replica_set_name(rollout, names, h);

    if plan.create_current {
        let replicas = plan.scale.get(hash).copied().unwrap_or(0);
        let avoid = plan.avoid.as_deref().zip(strategy.anti_affinity());
        let rs = build_replica_set(rollout, hash, replicas, avoid)?;
        let name = name_of(hash);
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        write_replica_set(ctx, &replica_sets, &name, &apply, &Patch::Apply(&rs), "").await?;
        info!(hash, replicas, "created ReplicaSet");
    }
    for (h, n) in &plan.scale {
        if let Some(current) = observed.get(h.as_str())
            && *n > current.replicas
        {
            let patch = json!({"spec": {"replicas": n}});
            let size = &Patch::Merge(&patch);
            write_replica_set(
                ctx,
                &replica_sets,
                &name_of(h),
                &writer(),
                size,
                "the size of ",
            )
            .await?;
        }
    }
    for (h, at) in &plan.scale_down_at {
        if observed.contains_key(h.as_str()) {
            let value = at.map(|t| t.to_string());
            let patch = json!({"metadata": {"annotations": {SCALE_DOWN_AT_ANNOTATION: value}}});
            let mark = &Patch::Merge(&patch);
            let what = "the scale-down time of ";
            write_replica_set(ctx, &replica_sets, &name_of(h), &writer(), mark, what).await?;
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for (service, target) in [
        (strategy.stable_service(), &plan.traffic.stable_hash),
        (strategy.canary_service(), &plan.traffic.canary_hash),
    ] {
        let Some(service) = service else { continue };
        if plan.traffic.leave_services {
            // A Deployment being taken over still serves through it.
            continue;
        }
        // Point a Service only at a ReplicaSet that exists, so it never selects nothing by mistake.
        if !observed.contains_key(target.as_str()) && target != hash {
            continue;
        }
        if let Some(svc) = cache::get(&ctx.caches.services, namespace, service) {
            let current = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL));
            if current != Some(target) {
                let patch = json!({"spec": {"selector": {POD_TEMPLATE_HASH_LABEL: target}}});
                services
                    .patch(service, &writer(), &Patch::Merge(&patch))
                    .await
                    .writing(|| format!("the selector of Service {service}"))?;
            }
        }
    }
    if let Strategy::Canary(canary) = strategy {
        traffic::router(canary)
            .set_weight(ctx, namespace, &rollout.name_any(), &plan.traffic)
            .await?;
    }
    apply_to_pods(&client, namespace, plan).await
}

/// Takes away what the plan no longer needs, once the status records the plan: scales ReplicaSets
/// down, then deletes those beyond `revisionHistoryLimit`. A crash before the status write so
/// leaves every ReplicaSet the old status counts on (its stable above all) whole.
pub(super) async fn remove_surplus(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    observed: Observed<'_>,
    plan: &Plan,
) -> Result<(), Error> {
    let Observed { views, names } = observed;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), namespace);
    for (h, n) in &plan.scale {
        if let Some(current) = views.iter().find(|v| v.hash == *h)
            && *n < current.replicas
        {
            let name = replica_set_name(rollout, names, h);
            let patch = json!({"spec": {"replicas": n}});
            let size = &Patch::Merge(&patch);
            write_replica_set(ctx, &replica_sets, &name, &writer(), size, "the size of ").await?;
        }
    }
    for h in &plan.delete {
        let name = replica_set_name(rollout, names, h);
        info!(
            hash = h.as_str(),
            "deleting a ReplicaSet beyond revisionHistoryLimit"
        );
        replica_sets
            .delete(&name, &DeleteParams::background())
            .await
            .writing(|| format!("(deleting) ReplicaSet {name}"))?;
        ctx.written.forget(Kind::ReplicaSet, namespace, &name);
    }
    Ok(())
}

/// The Rollout's ReplicaSets as observed: the engine's view of each, and each one's name by
/// revision.
#[derive(Clone, Copy)]
pub(super) struct Observed<'a> {
    pub views: &'a [ReplicaSetView],
    pub names: &'a BTreeMap<String, String>,
}

/// The name of revision `hash`'s ReplicaSet: the one observed (an adopted one keeps the name Argo
/// Rollouts gave it), else the name Sluice gives, `<rollout>-<hash>`.
fn replica_set_name(rollout: &Rollout, names: &BTreeMap<String, String>, hash: &str) -> String {
    names
        .get(hash)
        .cloned()
        .unwrap_or_else(|| format!("{}-{hash}", rollout.name_any()))
}

/// Writes to one ReplicaSet (`what` names the part written, for an error) and remembers the
/// resourceVersion it got, so that no reconcile decides on an older cached copy of it.
pub(super) async fn write_replica_set<P: serde::Serialize + std::fmt::Debug>(
    ctx: &Context,
    api: &Api<ReplicaSet>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
    what: &str,
) -> Result<(), Error> {
    let written = api
        .patch(name, params, patch)
        .await
        .writing(|| format!("{what}ReplicaSet {name}"))?;
    let namespace = written.namespace().unwrap_or_default();
    ctx.written.wrote(
        Kind::ReplicaSet,
        &namespace,
        name,
        written.metadata.resource_version.as_deref(),
    );
    Ok(())
}

/// Puts the plan's role metadata on pods (and takes it off), then evicts the pods a restart
/// replaces now.
async fn apply_to_pods(client: &kube::Client, namespace: &str, plan: &Plan) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for change in &plan.pod_metadata {
        let patch =
            json!({"metadata": {"labels": change.labels, "annotations": change.annotations}});
        match pods
            .patch(&change.pod, &writer(), &Patch::Merge(&patch))
            .await
        {
            // Gone since the cache saw it: its replacement is labelled when it appears.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            other => {
                other.writing(|| format!("the role metadata of Pod {}", change.pod))?;
            }
        }
    }
    for name in &plan.evict {
        match pods.evict(name, &EvictParams::default()).await {
            Ok(_) => info!(pod = name.as_str(), "evicted for the restart"),
            // A PodDisruptionBudget may refuse for now (429); the next look tries again.
            Err(err) => warn!(pod = name.as_str(), %err, "eviction refused for now"),
        }
    }
    Ok(())
}

/// The ReplicaSet of one revision: the Rollout's template with the hash label, owned by the Rollout;
/// with `avoid`, its pods keep off the nodes of that revision's pods (`antiAffinity`).
fn build_replica_set(
    rollout: &Rollout,
    hash: &str,
    replicas: i32,
    avoid: Option<(&str, &AntiAffinity)>,
) -> Result<serde_json::Value, Error> {
    let mut template = serde_json::to_value(rollout.spec.template.clone().unwrap_or_default())?;
    template["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    if let Some((other, anti)) = avoid {
        add_anti_affinity(&mut template, other, anti);
    }
    let selector: &LabelSelector = &rollout.spec.selector;
    let mut selector = serde_json::to_value(selector)?;
    selector["matchLabels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    let mut labels = rollout
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    labels.insert(ROLLOUT_LABEL.to_owned(), rollout.name_any());
    let owner = crate::owned_by(rollout);
    let original = serde_json::to_string(&rollout.spec.template)?;
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", rollout.name_any()),
            "labels": labels,
            "annotations": {TEMPLATE_ANNOTATION: original},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": rollout.spec.min_ready_seconds.unwrap_or(0),
            "selector": selector,
            "template": template,
        }
    }))
}

/// Adds to a pod template the anti-affinity term that keeps its pods off the nodes of `other`'s
/// pods, after any terms the template has.
fn add_anti_affinity(template: &mut serde_json::Value, other: &str, anti: &AntiAffinity) {
    let term = json!({
        "labelSelector": {"matchExpressions": [
            {"key": POD_TEMPLATE_HASH_LABEL, "operator": "In", "values": [other]}]},
        "topologyKey": "kubernetes.io/hostname",
    });
    let (field, entry) = match &anti.preferred_during_scheduling_ignored_during_execution {
        Some(preferred) => (
            "preferredDuringSchedulingIgnoredDuringExecution",
            json!({"weight": preferred.weight, "podAffinityTerm": term}),
        ),
        None => ("requiredDuringSchedulingIgnoredDuringExecution", term),
    };
    let terms = &mut template["spec"]["affinity"]["podAntiAffinity"][field];
    match terms.as_array_mut() {
        Some(list) => list.push(entry),
        None => *terms = json!([entry]),
    }
}

/// Reports what the plan did, last: the phase and abort metrics, and the Events.
pub(super) fn announce(ctx: &Context, rollout: &Rollout, status: &RolloutStatus, plan: &Plan) {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    if let Some(phase) = plan.status.phase {
        ctx.metrics.set_phase(&namespace, &name, phase);
    }
    ctx.metrics.set_progress(&namespace, &name, &plan.status);
    if plan.status.abort && !status.abort {
        ctx.metrics
            .aborts
            .get_or_create(&crate::metrics::RolloutLabels {
                namespace: namespace.clone(),
                rollout: name.clone(),
            })
            .inc();
    }
    ctx.metrics.record_circuit(
        &namespace,
        &name,
        plan.status.circuit_breaker.as_ref(),
        &plan.events,
    );
    for event in &plan.events {
        info!(reason = event.reason, note = %event.message, "transition");
        publish(ctx, rollout, event.warning, event.reason, &event.message);
    }
}
