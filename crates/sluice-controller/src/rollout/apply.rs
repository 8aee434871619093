//! The plan put in force: ReplicaSets created and scaled, Services pointed, the router's weights
//! set, role metadata on pods, restarts' evictions, and the status and Events written last.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutStatus};
use sluice_engine::release::{Plan, ReplicaSetView};
use sluice_engine::restart::{self, PodView};
use tracing::{info, warn};

use sluice_api::names::{ROLLOUT_LABEL, SCALE_DOWN_AT_ANNOTATION, TEMPLATE_ANNOTATION};

use super::Strategy;
use crate::cache;
use crate::error::Error;
use crate::traffic::{self, TrafficRouter};
use crate::{Context, FIELD_MANAGER, writer};

/// How often to look at pods while a restart replaces them (pods are not watched).
const RESTART_POLL: Duration = Duration::from_secs(1);

/// Replaces pods created before the restart in force (the later of `spec.restartAt` and the last
/// `kubectl sluice restart`), evicting a few at a time. Returns when to look again, while a restart
/// is under way or due.
pub(super) async fn restart(
    rollout: &Rollout,
    ctx: &Context,
    namespace: &str,
    strategy: Strategy<'_>,
    views: &[ReplicaSetView],
    plan: &mut Plan,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let requested = [
        rollout.spec.restart_at.as_ref(),
        plan.status.restart_requested_at.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.0)
    .max();
    let Some(target) = requested else {
        return Ok(None);
    };
    let done_up_to = plan.status.restarted_at.as_ref().map(|t| t.0);
    // One already completed is not repeated; one in the future waits for its time.
    if done_up_to.is_some_and(|done| done >= target) {
        return Ok(None);
    }
    if target > now {
        let wait = Duration::try_from(target.duration_since(now)).unwrap_or(RESTART_POLL);
        return Ok(Some(wait));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let hashes: Vec<&str> = views.iter().map(|v| v.hash.as_str()).collect();
    let selector = pod_selector(rollout);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let min_ready = rollout.spec.min_ready_seconds.unwrap_or(0);
    let seen: Vec<PodView> = listed
        .iter()
        .filter(|p| {
            p.labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .is_some_and(|h| hashes.contains(&h.as_str()))
        })
        .map(|p| PodView {
            name: p.name_any(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            available: pod_available(p, min_ready, now),
            terminating: p.metadata.deletion_timestamp.is_some(),
        })
        .collect();
    let wanted: i32 = plan.scale.values().sum();
    let max_unavailable = strategy.max_unavailable(rollout.spec.replicas);
    let restart = restart::plan(target, &seen, wanted, max_unavailable);
    for name in &restart.evict {
        match pods.evict(name, &EvictParams::default()).await {
            Ok(_) => info!(pod = name.as_str(), "evicted for the restart"),
            // A PodDisruptionBudget may refuse for now (429); the next look tries again.
            Err(err) => warn!(pod = name.as_str(), %err, "eviction refused for now"),
        }
    }
    // Done when the pods say so and the ReplicaSets agree (their status lags the pods a little).
    let replica_sets_available: i32 = views.iter().map(|v| v.available).sum();
    if restart.done && replica_sets_available >= wanted {
        plan.status.restarted_at = Some(Time(target));
        plan.events.push(sluice_engine::events::Event {
            warning: false,
            reason: "RolloutRestarted",
            message: format!("every pod was created after {target}"),
        });
        return Ok(None);
    }
    Ok(Some(RESTART_POLL))
}

/// The label selector of the Rollout's pods, as a list query takes it.
fn pod_selector(rollout: &Rollout) -> String {
    rollout
        .spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ready for at least `min_ready_seconds`, as the ReplicaSet controller counts availability.
fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .is_some_and(|c| {
            let since = c.last_transition_time.as_ref().map_or(now, |t| t.0);
            since
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                    min_ready_seconds,
                )))
                .is_ok_and(|ready_at| ready_at <= now)
        })
}

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
        write_status(ctx, rollout, &next).await?;
        publish(ctx, rollout, event.warning, event.reason, &event.message);
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Writes the Rollout's status (server-side apply under the controller's field manager) and
/// remembers the resourceVersion it got, so that no reconcile decides on an older cached copy.
async fn write_status(ctx: &Context, rollout: &Rollout, next: &RolloutStatus) -> Result<(), Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let patch = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "status": next});
    let written = Api::<Rollout>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.written.wrote(
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

/// Applies a plan in the order that keeps traffic on pods that exist: scale up, then Services and
/// route weights, then scale down.
pub(super) async fn execute(
    rollout: &Rollout,
    ctx: &Context,
    namespace: &str,
    strategy: Strategy<'_>,
    hash: &str,
    views: &[ReplicaSetView],
    plan: &Plan,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let observed: BTreeMap<&str, &ReplicaSetView> =
        views.iter().map(|v| (v.hash.as_str(), v)).collect();
    let name_of = |h: &str| format!("{}-{h}", rollout.name_any());

    if plan.create_current {
        let replicas = plan.scale.get(hash).copied().unwrap_or(0);
        let rs = build_replica_set(rollout, hash, replicas)?;
        replica_sets
            .patch(
                &name_of(hash),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&rs),
            )
            .await?;
        info!(hash, replicas, "created ReplicaSet");
    }
    let scale = |h: &str, n: i32| {
        let replica_sets = replica_sets.clone();
        let name = name_of(h);
        async move {
            let patch = json!({"spec": {"replicas": n}});
            replica_sets
                .patch(&name, &writer(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    };
    for (h, n) in &plan.scale {
        if let Some(current) = observed.get(h.as_str())
            && *n > current.replicas
        {
            scale(h, *n).await?;
        }
    }
    for (h, at) in &plan.scale_down_at {
        if observed.contains_key(h.as_str()) {
            let value = at.map(|t| t.to_string());
            let patch = json!({"metadata": {"annotations": {SCALE_DOWN_AT_ANNOTATION: value}}});
            replica_sets
                .patch(&name_of(h), &writer(), &Patch::Merge(&patch))
                .await?;
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for (service, target) in [
        (strategy.stable_service(), &plan.traffic.stable_hash),
        (strategy.canary_service(), &plan.traffic.canary_hash),
    ] {
        let Some(service) = service else { continue };
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
                    .await?;
            }
        }
    }
    if let Strategy::Canary(canary) = strategy {
        traffic::router(canary)
            .set_weight(ctx, namespace, &rollout.name_any(), &plan.traffic)
            .await?;
    }

    for (h, n) in &plan.scale {
        if let Some(current) = observed.get(h.as_str())
            && *n < current.replicas
        {
            scale(h, *n).await?;
        }
    }
    for h in &plan.delete {
        info!(
            hash = h.as_str(),
            "deleting a ReplicaSet beyond revisionHistoryLimit"
        );
        replica_sets
            .delete(&name_of(h), &DeleteParams::background())
            .await?;
    }
    label_roles(rollout, &client, namespace, strategy, plan).await?;
    Ok(())
}

/// Puts each role's metadata (`stableMetadata`/`canaryMetadata`, `activeMetadata`/`previewMetadata`)
/// on the pods that hold the role, and takes it off pods that no longer do.
async fn label_roles(
    rollout: &Rollout,
    client: &kube::Client,
    namespace: &str,
    strategy: Strategy<'_>,
    plan: &Plan,
) -> Result<(), Error> {
    let (first, second) = match strategy {
        Strategy::Canary(c) => (c.stable_metadata.as_ref(), c.canary_metadata.as_ref()),
        Strategy::BlueGreen(b) => (b.active_metadata.as_ref(), b.preview_metadata.as_ref()),
    };
    if first.is_none() && second.is_none() {
        return Ok(());
    }
    // The first role wins where both name the same version (no release in flight).
    let mut roles = vec![(plan.traffic.stable_hash.as_str(), first)];
    if plan.traffic.canary_hash != plan.traffic.stable_hash {
        roles.push((plan.traffic.canary_hash.as_str(), second));
    }
    let role_labels: Vec<&String> = [first, second]
        .into_iter()
        .flatten()
        .flat_map(|m| m.labels.keys())
        .collect();
    let role_annotations: Vec<&String> = [first, second]
        .into_iter()
        .flatten()
        .flat_map(|m| m.annotations.keys())
        .collect();
    let selector = pod_selector(rollout);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let Some(hash) = pod.labels().get(POD_TEMPLATE_HASH_LABEL) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let wanted = roles.iter().find(|(h, _)| h == hash).and_then(|(_, m)| *m);
        let mut labels = serde_json::Map::new();
        let mut annotations = serde_json::Map::new();
        for key in &role_labels {
            let want = wanted.and_then(|m| m.labels.get(*key));
            if pod.labels().get(*key) != want {
                labels.insert((*key).clone(), json!(want));
            }
        }
        for key in &role_annotations {
            let want = wanted.and_then(|m| m.annotations.get(*key));
            if pod.annotations().get(*key) != want {
                annotations.insert((*key).clone(), json!(want));
            }
        }
        if labels.is_empty() && annotations.is_empty() {
            continue;
        }
        let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
        pods.patch(&pod.name_any(), &writer(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// The ReplicaSet of one revision: the Rollout's template with the hash label, owned by the Rollout.
fn build_replica_set(
    rollout: &Rollout,
    hash: &str,
    replicas: i32,
) -> Result<serde_json::Value, Error> {
    let mut template = serde_json::to_value(rollout.spec.template.clone().unwrap_or_default())?;
    template["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
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
    let owner = rollout.controller_owner_ref(&());
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

/// Writes what the plan records, last: the status (only if it changed), the phase and abort metrics,
/// and the Events.
pub(super) async fn record(
    ctx: &Context,
    rollout: &Rollout,
    status: &RolloutStatus,
    plan: &Plan,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    if plan.status != *status {
        write_status(ctx, rollout, &plan.status).await?;
    }
    if let Some(phase) = plan.status.phase {
        ctx.metrics.set_phase(&namespace, &name, phase);
    }
    if plan.status.abort && !status.abort {
        ctx.metrics
            .aborts
            .get_or_create(&crate::metrics::RolloutLabels {
                namespace: namespace.clone(),
                rollout: name.clone(),
            })
            .inc();
    }
    for event in &plan.events {
        info!(reason = event.reason, note = %event.message, "transition");
        publish(ctx, rollout, event.warning, event.reason, &event.message);
    }
    Ok(())
}
