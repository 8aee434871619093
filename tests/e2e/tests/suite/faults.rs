//! Faults a release must survive and make visible: a write the API server refuses becomes a
//! condition and an Event on the Rollout (shown by `kubectl get`), while stable keeps serving, and the
//! release carries on once the cause is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, ResourceQuota};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{apply, healthy_on, rollout, wait_status};

const WAIT: Duration = Duration::from_secs(60);

/// Each ReplicaSet of the namespace with its wanted replicas.
async fn replica_sets(client: &Client, ns: &str) -> Result<BTreeMap<String, i32>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|rs| {
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            (rs.name_any(), replicas)
        })
        .collect())
}

#[tokio::test]
async fn a_refused_write_is_a_condition_and_an_event_and_stable_keeps_serving() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "refused").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!({"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]});
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", steps.clone()),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().unwrap_or_default();

    // A quota of one ReplicaSet: the next revision's ReplicaSet is refused by the API server.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    quotas
        .patch(
            "one-replicaset",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "one-replicaset"},
                "spec": {"hard": {"count/replicasets.apps": "1"}}
            })),
        )
        .await?;
    eventually("the quota to count the ReplicaSet", WAIT, || async {
        let quota = quotas.get("one-replicaset").await?;
        let used = quota
            .status
            .and_then(|s| s.used)
            .and_then(|u| u.get("count/replicasets.apps").map(|q| q.0.clone()));
        Ok((used.as_deref() == Some("1")).then_some(()))
    })
    .await?;

    apply(
        &api,
        &rollout("web", 2, "registry.example/web:2.0.0", steps),
    )
    .await?;
    let refused = wait_status(&api, "web", "the refusal to be reported", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ReconcileError" && c.status == "True")
    })
    .await?;
    let condition = refused
        .conditions
        .iter()
        .find(|c| c.type_ == "ReconcileError")
        .cloned()
        .context("no ReconcileError condition")?;
    println!(
        "refused: phase {:?}, condition {} {}: {}",
        refused.phase, condition.status, condition.reason, condition.message
    );
    ensure!(condition.reason == "WriteRefused", "reason: {condition:?}");
    ensure!(
        condition.message.contains("ReplicaSet web-")
            && condition.message.contains("exceeded quota"),
        "the condition names neither the object nor the API server's words: {condition:?}"
    );
    ensure!(
        refused.phase == Some(RolloutPhase::Degraded)
            && refused
                .message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota")),
        "kubectl get would not show it: phase {:?}, message {:?}",
        refused.phase,
        refused.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = eventually("a ReconcileError Event", WAIT, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ReconcileError")))
    })
    .await?;
    ensure!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exceeded quota")),
        "the Event does not say why: {event:?}"
    );
    let sets = replica_sets(&client, &ns.name).await?;
    ensure!(
        sets.get(&format!("web-{stable}")) == Some(&2) && sets.len() == 1,
        "stable does not keep serving at full size alone: {sets:?}"
    );

    // The cause gone, the retried reconcile carries the release through and the condition goes.
    quotas
        .delete("one-replicaset", &DeleteParams::default())
        .await?;
    let done = wait_status(
        &api,
        "web",
        "the release to finish after the quota went",
        |s| {
            s.phase == Some(RolloutPhase::Healthy)
                && s.stable_rs.as_deref() != Some(stable.as_str())
        },
    )
    .await?;
    ensure!(
        done.conditions.iter().all(|c| c.type_ != "ReconcileError"),
        "the condition stayed after a reconcile succeeded: {:?}",
        done.conditions
    );
    Ok(())
}
