//! The Deployment a Rollout takes its pod template from (`spec.workloadRef`).
//!
//! Deployments are watched by metadata only (every Deployment in the cluster would otherwise be held
//! whole); the pod template and size of one a Rollout names are read with a GET when its generation
//! moves (a change to its spec) and kept, so a settled Rollout's reconcile still makes no request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use kube::api::{Api, Patch};
use serde_json::json;
use sluice_api::rollout::Rollout;

use crate::Context;
use crate::cache;
use crate::error::{Error, Writing};

/// What a Rollout reads of the Deployment it names.
#[derive(Clone, Debug)]
struct Workload {
    uid: String,
    /// The Deployment's `metadata.generation` when it was read.
    generation: i64,
    template: PodTemplateSpec,
    replicas: i32,
}

/// The Deployments Rollouts name, as last read, by (namespace, name).
#[derive(Default)]
pub struct Templates {
    read: Mutex<HashMap<(String, String), Arc<Workload>>>,
}

impl Templates {
    fn get(&self, key: &(String, String)) -> Option<Arc<Workload>> {
        self.read.lock().ok()?.get(key).cloned()
    }

    fn put(&self, key: (String, String), workload: Workload) {
        if let Ok(mut read) = self.read.lock() {
            read.insert(key, Arc::new(workload));
        }
    }

    /// Forgets a Deployment (deleted, or just resized by this controller: read it again).
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut read) = self.read.lock() {
            read.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }
}

/// A Rollout as the release sees it: with `spec.workloadRef`, the Deployment's pod template in
/// `spec.template` and the Deployment's replicas.
pub struct Resolved<'a> {
    pub rollout: Cow<'a, Rollout>,
    pub workload_replicas: Option<i32>,
}

/// The Rollout with its pod template, or why it has none (a user error to report, not a failure).
pub async fn resolve<'a>(
    ctx: &Context,
    rollout: &'a Rollout,
    namespace: &str,
) -> Result<Result<Resolved<'a>, String>, Error> {
    let Some(reference) = rollout.spec.workload_ref.as_ref() else {
        return Ok(Ok(Resolved {
            rollout: Cow::Borrowed(rollout),
            workload_replicas: None,
        }));
    };
    let name = &reference.name;
    let missing =
        || format!("spec.workloadRef names Deployment {name}, which does not exist in {namespace}");
    let Some(seen) = cache::get(&ctx.caches.deployments, namespace, name) else {
        return Ok(Err(missing()));
    };
    let key = (namespace.to_owned(), name.clone());
    let uid = seen.uid().unwrap_or_default();
    let generation = seen.metadata.generation.unwrap_or(0);
    let workload = match ctx.caches.workloads.get(&key) {
        Some(known) if known.uid == uid && known.generation >= generation => known,
        _ => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            let Some(deployment) = api.get_opt(name).await? else {
                return Ok(Err(missing()));
            };
            let spec = deployment.spec.clone().unwrap_or_default();
            let workload = Workload {
                uid: deployment.uid().unwrap_or_default(),
                generation: deployment.metadata.generation.unwrap_or(0),
                template: spec.template,
                replicas: spec.replicas.unwrap_or(1),
            };
            ctx.caches.workloads.put(key.clone(), workload);
            ctx.caches
                .workloads
                .get(&key)
                .ok_or_else(|| Error::Unobserved(format!("Deployment {name}, read a moment ago")))?
        }
    };
    let labels = workload
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if let Some((key, value)) = rollout
        .spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .find(|(k, v)| labels.get(*k) != Some(*v))
    {
        return Ok(Err(format!(
            "spec.selector does not select the pods of Deployment {name}: its pod template has no \
             label {key}={value}"
        )));
    }
    let mut resolved = rollout.clone();
    resolved.spec.template = Some(workload.template.clone());
    Ok(Ok(Resolved {
        rollout: Cow::Owned(resolved),
        workload_replicas: Some(workload.replicas),
    }))
}

/// Sets the replicas of the Deployment `rollout` names, through its scale subresource (all this
/// controller may change of a Deployment), and forgets what it read of it.
pub async fn scale(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    replicas: i32,
) -> Result<(), Error> {
    let Some(reference) = rollout.spec.workload_ref.as_ref() else {
        return Ok(());
    };
    let name = &reference.name;
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch_scale(name, &crate::writer(), &Patch::Merge(&patch))
        .await
        .writing(|| format!("the replicas of Deployment {name}"))?;
    ctx.caches.workloads.forget(namespace, name);
    tracing::info!(deployment = name.as_str(), replicas, "scaled the workload");
    Ok(())
}
