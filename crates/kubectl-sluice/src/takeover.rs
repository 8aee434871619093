//! `kubectl sluice migrate --takeover NAME`: moves a running, Healthy Argo Rollout to Sluice with
//! its pods. The Argo Rollout is converted as `migrate` converts a manifest, and created as a Sluice
//! Rollout marked `sluice.dev/takeover-from`; the controller labels the stable ReplicaSet and its
//! pods for Sluice while Argo's controller still runs it; then the Argo Rollout is deleted with its
//! ReplicaSets orphaned, and the Sluice Rollout adopts them and points the Services at them.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::names::TAKEOVER_ANNOTATION;
use sluice_api::rollout::Rollout;
use sluice_engine::takeover::{REFUSED, TAKEN_OVER, WAITING_FOR_REMOVAL};

use crate::FIELD_MANAGER;

/// How long each stage may take before the command gives up (saying where it stopped).
const STAGE: Duration = Duration::from_secs(120);

fn argo_rollouts() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// Why a takeover of this Argo Rollout must wait, if it must: it adopts a settled service only.
pub fn unsettled(argo: &Value) -> Option<String> {
    let status = &argo["status"];
    let phase = status["phase"].as_str().unwrap_or("not yet reconciled");
    let stable = status["stableRS"].as_str();
    let current = status["currentPodHash"].as_str();
    let paused = argo["spec"]["paused"] == json!(true)
        || status["pauseConditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty());
    if status["abort"] == json!(true) {
        return Some(
            "its release was aborted: retry or undo it under Argo Rollouts first".to_owned(),
        );
    }
    if phase != "Healthy" || paused || stable.is_none() || stable != current {
        return Some(format!(
            "it is {}{} (stable {}, current {}): finish or abort its release first",
            phase,
            if paused { ", paused" } else { "" },
            stable.unwrap_or("none"),
            current.unwrap_or("none")
        ));
    }
    None
}

/// The Argo Rollout as a Sluice Rollout manifest marked for the takeover, or what cannot be carried.
pub fn manifest(argo: &Value) -> Result<std::result::Result<Value, Vec<String>>> {
    let name = argo["metadata"]["name"]
        .as_str()
        .context("an Argo Rollout without a name")?;
    let annotations: serde_json::Map<String, Value> = argo["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| {
            !key.starts_with("rollout.argoproj.io/")
                && !key.starts_with("argo-rollouts.argoproj.io/")
                && key.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let doc = json!({
        "apiVersion": argo["apiVersion"],
        "kind": "Rollout",
        "metadata": {"name": name, "labels": argo["metadata"]["labels"], "annotations": annotations},
        "spec": argo["spec"],
    });
    let mut dropped = Vec::new();
    let Some(mut converted) =
        crate::migrate::convert(doc, &crate::migrate::schemas()?, &mut dropped)
    else {
        bail!("Argo Rollout {name} could not be converted");
    };
    if !dropped.is_empty() {
        return Ok(Err(dropped
            .iter()
            .map(|d| format!("{}: not carried: {}", d.path, d.why))
            .collect()));
    }
    if converted["metadata"]["labels"].is_null()
        && let Some(metadata) = converted["metadata"].as_object_mut()
    {
        metadata.remove("labels");
    }
    converted["metadata"]["annotations"][TAKEOVER_ANNOTATION] = json!(name);
    Ok(Ok(converted))
}

/// Waits until the Sluice Rollout's takeover reaches `phase`; a refusal ends the wait with its reason.
async fn wait_for(rollouts: &Api<Rollout>, name: &str, phase: &str) -> Result<Rollout> {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        let rollout = rollouts.get(name).await?;
        if let Some(takeover) = rollout.status.as_ref().and_then(|s| s.takeover.as_ref()) {
            if takeover.message != said {
                println!("  {}", takeover.message);
                said = takeover.message.clone();
            }
            if takeover.phase == REFUSED {
                bail!("the controller refused the takeover: {}", takeover.message);
            }
            if takeover.phase == phase {
                return Ok(rollout);
            }
        }
        if started.elapsed() > STAGE {
            bail!(
                "Rollout {name} did not reach {phase} in {}s (is sluice-controller running?)",
                STAGE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl sluice migrate --takeover NAME`.
pub async fn run(client: Client, namespace: &str, name: &str) -> Result<ExitCode> {
    let argo_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &argo_rollouts());
    let argo = argo_api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Argo Rollout {name}"))?
        .with_context(|| format!("there is no Argo Rollout {name} in namespace {namespace}"))?;
    let argo = serde_json::to_value(&argo)?;
    if let Some(why) = unsettled(&argo) {
        eprintln!("error: Argo Rollout {name} cannot be taken over now: {why}");
        return Ok(ExitCode::from(1));
    }
    let manifest = match manifest(&argo)? {
        Ok(manifest) => manifest,
        Err(dropped) => {
            eprintln!(
                "error: Argo Rollout {name} has what Sluice cannot carry, so a takeover would change how it is released:"
            );
            for line in dropped {
                eprintln!("  {line}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = rollouts.get_opt(name).await?
        && existing
            .annotations()
            .get(TAKEOVER_ANNOTATION)
            .map(String::as_str)
            != Some(name)
    {
        bail!("a Sluice Rollout {name} already exists and is not taking over Argo Rollout {name}");
    }
    println!("rollouts.sluice.dev/{name}: taking over Argo Rollout {name}");
    rollouts
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&manifest),
        )
        .await
        .with_context(|| format!("creating Sluice Rollout {name}"))?;
    wait_for(&rollouts, name, WAITING_FOR_REMOVAL).await?;
    // Looked at again just before it goes: a release started since (a new template, a pause) is
    // not taken over half-way. The delete names this very object at this very version, so a
    // change after this read, or another object of the name, refuses it.
    let now = argo_api
        .get(name)
        .await
        .with_context(|| format!("reading Argo Rollout {name} again"))?;
    let preconditions = kube::api::Preconditions {
        uid: now.metadata.uid.clone(),
        resource_version: now.metadata.resource_version.clone(),
    };
    if let Some(why) = unsettled(&serde_json::to_value(&now)?) {
        eprintln!(
            "error: Argo Rollout {name} changed while it was being taken over and is kept: {why}"
        );
        return Ok(ExitCode::from(1));
    }
    // Orphaned: the ReplicaSets and their pods stay; only the Argo Rollout goes.
    let delete = DeleteParams {
        preconditions: Some(preconditions),
        ..DeleteParams::orphan()
    };
    argo_api.delete(name, &delete).await.with_context(|| {
        format!(
            "deleting Argo Rollout {name} (its ReplicaSets orphaned; refused if it changed since \
             it was checked: run the takeover again)"
        )
    })?;
    println!("  Argo Rollout {name} deleted; its ReplicaSets and pods are kept");
    let rollout = wait_for(&rollouts, name, TAKEN_OVER).await?;
    let adopted = rollout
        .status
        .as_ref()
        .and_then(|s| s.takeover.as_ref())
        .and_then(|t| t.replica_set.clone())
        .unwrap_or_default();
    println!(
        "rollouts.sluice.dev/{name}: took over Argo Rollout {name} (ReplicaSet {adopted}, no pod replaced)"
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argo(status: Value) -> Value {
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "uid": "u1", "resourceVersion": "9",
                         "annotations": {"rollout.argoproj.io/revision": "2", "team": "a"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "web:1"}]}},
                     "strategy": {"canary": {"stableService": "web-stable", "canaryService": "web-canary",
                                             "steps": [{"setWeight": 20}]}}},
            "status": status,
        })
    }

    #[test]
    fn only_a_settled_argo_rollout_is_taken_over() {
        let healthy = argo(json!({"phase": "Healthy", "stableRS": "abc", "currentPodHash": "abc"}));
        assert_eq!(unsettled(&healthy), None);
        let moving = argo(
            json!({"phase": "Paused", "stableRS": "abc", "currentPodHash": "def",
                                  "pauseConditions": [{"reason": "CanaryPauseStep"}]}),
        );
        let why = unsettled(&moving).unwrap_or_default();
        assert!(why.contains("finish or abort"), "{why}");
        let aborted = argo(
            json!({"phase": "Degraded", "abort": true, "stableRS": "abc", "currentPodHash": "def"}),
        );
        assert!(unsettled(&aborted).is_some_and(|why| why.contains("aborted")));
    }

    #[test]
    fn the_manifest_is_argos_converted_and_marked_without_its_status_or_identity() -> Result<()> {
        let healthy = argo(json!({"phase": "Healthy", "stableRS": "abc", "currentPodHash": "abc"}));
        let Ok(manifest) = manifest(&healthy)? else {
            bail!("refused");
        };
        assert_eq!(manifest["apiVersion"], "sluice.dev/v1alpha1");
        assert_eq!(
            manifest["metadata"]["annotations"],
            json!({"team": "a", TAKEOVER_ANNOTATION: "web"})
        );
        assert!(manifest["metadata"].get("uid").is_none() && manifest.get("status").is_none());
        assert_eq!(manifest["spec"]["template"], healthy["spec"]["template"]);
        Ok(())
    }
}
