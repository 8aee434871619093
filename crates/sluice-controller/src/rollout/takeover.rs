//! `sluice.dev/takeover-from`: a Rollout taking over a running Argo Rollout with its pods (see
//! `sluice_engine::takeover`). This module reads what the decision needs, straight from the API
//! server (a takeover happens once; the caches hold only Sluice's objects), and writes what it
//! decided: labels, the owner reference, the Services' selectors and `status.takeover`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch};
use kube::core::GroupVersionKind;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_api::names::{ROLLOUT_LABEL, TAKEOVER_ANNOTATION};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutStatus};
use sluice_engine::takeover::{self, ARGO_HASH_LABEL, ArgoRollout, Candidate, Inputs, Step};

use super::Strategy;
use super::apply::{publish, write_replica_set, write_status};
use crate::error::{Error, Writing};
use crate::{Context, cache, writer};

/// How soon a takeover that prepared looks again (Argo's controller and garbage collector act
/// without waking it).
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// The longest a waiting or refused takeover goes without looking again: it waits from one second,
/// doubling, since each look reads the API server (the caches hold no Argo status nor Argo's
/// ReplicaSets); a change to the Argo Rollout (its deletion) or to the Rollout wakes it at once.
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// Argo Rollouts' annotation on the Services it manages.
const ARGO_MANAGED_ANNOTATION: &str = "argo-rollouts.argoproj.io/managed-by-rollouts";

/// Whether the reconcile goes on to the release decision, or ends here with this action.
pub(super) enum Outcome {
    Continue,
    Return(Action),
}

/// The backoff kind of a takeover's waits.
pub(crate) const TAKEOVER: &str = "Takeover";

/// How long a waiting or refused takeover waits before it looks again.
fn waiting(ctx: &Context, namespace: &str, rollout: &Rollout) -> Duration {
    ctx.backoffs
        .failed(TAKEOVER, namespace, &rollout.name_any())
        .min(LONGEST_WAIT)
}

fn argo_rollouts() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// The first place `ours` and `theirs` differ, as `path: ours here, theirs in Argo's`.
fn difference(path: &str, ours: &Value, theirs: &Value) -> Option<String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                let nested = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                difference(
                    &nested,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| difference(&format!("{path}[{i}]"), x, y)),
        _ if ours == theirs => None,
        _ => Some(format!("{path}: {ours} here, {theirs} in Argo's")),
    }
}

fn controller_of(
    owner_refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    owner_refs.iter().find(|o| o.controller == Some(true))
}

/// Runs the takeover step this Rollout is at, if it asks for one (`sluice.dev/takeover-from`).
pub(super) async fn run(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    hash: &str,
    status: &RolloutStatus,
    strategy: Strategy<'_>,
) -> Result<Outcome, Error> {
    let Some(from) = rollout.annotations().get(TAKEOVER_ANNOTATION) else {
        return Ok(Outcome::Continue);
    };
    let recorded = status.takeover.as_ref();
    if recorded.is_some_and(|t| t.phase == takeover::TAKEN_OVER && t.from == *from) {
        // Settled: costs no request.
        return Ok(Outcome::Continue);
    }
    let client = ctx.client.clone();
    let name = rollout.name_any();
    let uid = rollout.uid().unwrap_or_default();
    let argo_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &argo_rollouts());
    // A cluster without Argo Rollouts' CRD answers 404 too: nothing to take over.
    let argo = argo_api.get_opt(from).await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);

    let argo_view = argo.as_ref().map(|argo| {
        let data = &argo.data;
        let generation = argo.metadata.generation.map(|g| g.to_string());
        // Argo Rollouts writes observedGeneration as a string.
        let observed = match &data["status"]["observedGeneration"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        ArgoRollout {
            phase: data["status"]["phase"].as_str(),
            stable_hash: data["status"]["stableRS"].as_str(),
            current_hash: data["status"]["currentPodHash"].as_str(),
            paused: data["spec"]["paused"] == json!(true)
                || data["status"]["pauseConditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty()),
            aborted: data["status"]["abort"] == json!(true),
            observed: generation.is_some() && generation == observed,
        }
    });

    // The ReplicaSet to adopt: Argo's stable one while it exists, else the one recorded.
    let mut candidate_note = None;
    let found: Option<ReplicaSet> = match (&argo, &argo_view) {
        (Some(argo), Some(view)) => match view.stable_hash {
            Some(stable) => {
                let argo_uid = argo.uid().unwrap_or_default();
                let listed = replica_sets
                    .list(&ListParams::default().labels(&format!("{ARGO_HASH_LABEL}={stable}")))
                    .await?
                    .items;
                let owned_by = |rs: &ReplicaSet, owner: &str| {
                    rs.owner_references().iter().any(|o| o.uid == owner)
                };
                let found = listed
                    .iter()
                    .find(|rs| owned_by(rs, &argo_uid) || owned_by(rs, &uid))
                    .cloned();
                if found.is_none() {
                    let seen: Vec<String> = listed
                        .iter()
                        .map(|rs| {
                            let owners: Vec<String> = rs
                                .owner_references()
                                .iter()
                                .map(|o| format!("{} {} {}", o.kind, o.name, o.uid))
                                .collect();
                            format!("{} owned by [{}]", rs.name_any(), owners.join(", "))
                        })
                        .collect();
                    candidate_note = Some(format!(
                        "the Argo Rollout is {argo_uid}; found {}",
                        if seen.is_empty() {
                            "none".to_owned()
                        } else {
                            seen.join("; ")
                        }
                    ));
                }
                found
            }
            None => None,
        },
        _ => match recorded.and_then(|t| t.replica_set.as_deref()) {
            Some(recorded) => replica_sets.get_opt(recorded).await?,
            None => None,
        },
    };
    let pods: Vec<Pod> = match &found {
        Some(rs) => {
            let rs_uid = rs.uid().unwrap_or_default();
            let argo_hash = rs
                .labels()
                .get(ARGO_HASH_LABEL)
                .cloned()
                .unwrap_or_default();
            pods_api
                .list(&ListParams::default().labels(&format!("{ARGO_HASH_LABEL}={argo_hash}")))
                .await?
                .items
                .into_iter()
                .filter(|pod| {
                    controller_of(pod.owner_references()).is_some_and(|o| o.uid == rs_uid)
                })
                .collect()
        }
        None => Vec::new(),
    };
    let ours = serde_json::to_value(rollout.spec.template.clone().unwrap_or_default())?;
    let candidate = found.as_ref().map(|rs| {
        let controller = controller_of(rs.owner_references());
        let argo_uid = argo.as_ref().and_then(|a| a.uid());
        let controlled_by_argo = controller.is_some_and(|o| {
            o.api_version.starts_with("argoproj.io/") && o.kind == "Rollout"
                && argo_uid.as_ref().is_none_or(|u| *u == o.uid)
        });
        let controlled_by_us = controller.is_some_and(|o| o.uid == uid);
        let template_labels = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        let labelled = rs.labels().get(ROLLOUT_LABEL) == Some(&name)
            && rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
            && template_labels.and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL)).map(String::as_str) == Some(hash);
        // The Argo Rollout's own template is what its stable pods run (it is Healthy); both are
        // as written, where a ReplicaSet's template carries the API server's defaults.
        // With the Argo Rollout gone, the ReplicaSet carries the revision it was prepared as: a
        // template edited since is another revision, whose pods these are not.
        let prepared_as = rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str);
        let edited = (argo.is_none() && prepared_as != Some(hash)).then(|| {
            format!(
                "the Rollout's pod template changed since ReplicaSet {} was prepared (revision {}, now {hash})",
                rs.metadata.name.as_deref().unwrap_or_default(),
                prepared_as.unwrap_or("none"),
            )
        });
        let differs = edited.or_else(|| argo.as_ref().and_then(|argo| {
            let theirs = &argo.data["spec"]["template"];
            if theirs.is_null() {
                return Some("Argo Rollout takes its template from a workloadRef, which a takeover does not follow yet".to_owned());
            }
            let theirs: Value = serde_json::from_value::<PodTemplateSpec>(theirs.clone())
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_default();
            difference("spec.template", &ours, &theirs)
        }));
        Candidate {
            name: rs.metadata.name.as_deref().unwrap_or_default(),
            controlled_by_argo,
            controlled_by_us,
            controlled_by_other: controller
                .filter(|_| !controlled_by_argo && !controlled_by_us)
                .map(|o| format!("{} {}", o.kind, o.name)),
            labelled,
            differs,
            unlabelled_pods: pods
                .iter()
                .filter(|pod| pod.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) != Some(hash))
                .filter_map(|pod| pod.metadata.name.as_deref())
                .collect(),
            deleting: rs.metadata.deletion_timestamp.is_some(),
        }
    });
    let service_names: Vec<&String> = [strategy.stable_service(), strategy.canary_service()]
        .into_iter()
        .flatten()
        .collect();
    let services_on_argo: Vec<&str> = service_names
        .iter()
        .filter(|service| {
            cache::get(&ctx.caches.services, namespace, service).is_some_and(|svc| {
                svc.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| s.contains_key(ARGO_HASH_LABEL))
            })
        })
        .map(|s| s.as_str())
        .collect();
    let step = takeover::decide(&Inputs {
        from,
        argo: argo_view,
        candidate,
        candidate_note,
        services_on_argo,
        status: recorded,
    });
    act(ctx, rollout, namespace, hash, status, step).await
}

/// Carries out the step decided, and records it.
async fn act(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    hash: &str,
    status: &RolloutStatus,
    step: Step,
) -> Result<Outcome, Error> {
    let client = ctx.client.clone();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let label_pods = |names: Vec<String>| {
        let pods = pods.clone();
        async move {
            for pod in names {
                let patch = json!({"metadata": {"labels": {POD_TEMPLATE_HASH_LABEL: hash}}});
                pods.patch(&pod, &writer(), &Patch::Merge(&patch))
                    .await
                    .writing(|| format!("the labels of Pod {pod}"))?;
            }
            Ok::<(), Error>(())
        }
    };
    if !matches!(step, Step::Wait(_) | Step::Refused(_)) {
        ctx.backoffs
            .succeeded(TAKEOVER, namespace, &rollout.name_any());
    }
    let (recorded, warning, reason, after) = match step {
        Step::Done => return Ok(Outcome::Continue),
        Step::Refused(why) => (
            sluice_api::rollout::TakeoverStatus {
                from: rollout
                    .annotations()
                    .get(TAKEOVER_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
                replica_set: status.takeover.as_ref().and_then(|t| t.replica_set.clone()),
                phase: takeover::REFUSED.to_owned(),
                message: why,
            },
            true,
            "TakeoverRefused",
            waiting(ctx, namespace, rollout),
        ),
        Step::Prepare {
            label_replica_set,
            label_pods: names,
            status: recorded,
        } => {
            if let Some(rs) = label_replica_set {
                let patch = json!({
                    "metadata": {"labels": {ROLLOUT_LABEL: rollout.name_any(), POD_TEMPLATE_HASH_LABEL: hash}},
                    "spec": {"template": {"metadata": {"labels": {POD_TEMPLATE_HASH_LABEL: hash}}}},
                });
                write_replica_set(
                    ctx,
                    &replica_sets,
                    &rs,
                    &writer(),
                    &Patch::Merge(&patch),
                    "the labels of ",
                )
                .await?;
            }
            label_pods(names).await?;
            (recorded, false, "TakeoverPrepared", LOOK_AGAIN)
        }
        Step::Wait(recorded) => (
            recorded,
            false,
            "TakeoverWaiting",
            waiting(ctx, namespace, rollout),
        ),
        Step::Adopt {
            own_replica_set,
            label_pods: names,
            services,
            status: recorded,
        } => {
            if let Some(rs) = own_replica_set {
                // The garbage collector took Argo's owner reference off: the list is ours to set.
                let owner = crate::owned_by(rollout);
                let patch = json!({"metadata": {"ownerReferences": [owner]}});
                write_replica_set(
                    ctx,
                    &replica_sets,
                    &rs,
                    &writer(),
                    &Patch::Merge(&patch),
                    "the owner of ",
                )
                .await?;
            }
            label_pods(names).await?;
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(client.clone(), namespace);
            for service in services {
                // Sluice's label in place of Argo's, in one write: the pods carry both.
                let patch = json!({
                    "metadata": {"annotations": {ARGO_MANAGED_ANNOTATION: null}},
                    "spec": {"selector": {ARGO_HASH_LABEL: null, POD_TEMPLATE_HASH_LABEL: hash}},
                });
                api.patch(&service, &writer(), &Patch::Merge(&patch))
                    .await
                    .writing(|| format!("the selector of Service {service}"))?;
            }
            (recorded, false, "TakenOver", Duration::from_millis(100))
        }
    };
    if status.takeover.as_ref() != Some(&recorded) {
        publish(ctx, rollout, warning, reason, &recorded.message);
        let mut next = status.clone();
        next.message = Some(recorded.message.clone());
        if recorded.phase == takeover::TAKEN_OVER && recorded.replica_set.is_some() {
            // The adopted revision is stable: the release decision starts from a settled Rollout.
            next.stable_rs = Some(hash.to_owned());
            next.current_pod_hash = Some(hash.to_owned());
        }
        next.takeover = Some(recorded);
        write_status(ctx, rollout, &next, None).await?;
    }
    Ok(Outcome::Return(Action::requeue(after)))
}
