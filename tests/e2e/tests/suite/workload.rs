//! `workloadRef`: a Rollout that takes its pod template from a Deployment, takes its traffic over
//! without a moment of lower capacity, scales it down as `scaleDown` asks, and releases each new
//! template the Deployment is given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{
    apply, create_routing, healthy_on, request, route_weights, routed_canary, wait_status,
};
use crate::requests::{Counts, touch_and_count};

const WAIT: Duration = Duration::from_secs(60);

async fn create_deployment(client: &Client, ns: &str, name: &str, replicas: i32) -> Result<()> {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}}
        }
    });
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&deployment),
    )
    .await?;
    Ok(())
}

async fn deployment_replicas(client: &Client, ns: &str, name: &str) -> Result<(i32, i32)> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok((
        deployment.spec.and_then(|s| s.replicas).unwrap_or(1),
        deployment
            .status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    ))
}

fn taking_over(name: &str, scale_down: &str, replicas: i32, canary: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                            "scaleDown": scale_down},
            "strategy": {"canary": canary}
        }
    })
}

/// Counts, on every pod event, the pods labelled `app=<app>` that are Ready and not on their way
/// out (the Deployment's and the Rollout's alike), and records the fewest seen.
fn record_fewest_serving(client: &Client, ns: &str, app: &str) -> Arc<Mutex<Option<usize>>> {
    let fewest: Arc<Mutex<Option<usize>>> = Arc::default();
    let log = fewest.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let stream = watcher(
        pods,
        watcher::Config::default().labels(&format!("app={app}")),
    );
    tokio::spawn(async move {
        let mut serving: BTreeMap<String, bool> = BTreeMap::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            let ready = |pod: &Pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            let settled = match event {
                watcher::Event::Apply(pod) => {
                    serving.insert(pod.name_any(), ready(&pod));
                    true
                }
                // A (re-)list is counted once whole.
                watcher::Event::InitApply(pod) => {
                    serving.insert(pod.name_any(), ready(&pod));
                    false
                }
                watcher::Event::Delete(pod) => {
                    serving.remove(&pod.name_any());
                    true
                }
                watcher::Event::Init => {
                    serving.clear();
                    false
                }
                watcher::Event::InitDone => true,
            };
            if settled && let Ok(mut fewest) = log.lock() {
                let now = serving.values().filter(|r| **r).count();
                *fewest = Some(fewest.map_or(now, |f| f.min(now)));
            }
        }
    });
    fewest
}

async fn reasons(client: &Client, ns: &str) -> Result<Vec<String>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

#[tokio::test]
async fn a_rollout_takes_over_a_deployment_progressively_and_releases_its_new_templates()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "workload").await?;
    create_routing(&client, &ns.name).await?;
    create_deployment(&client, &ns.name, "web", 4).await?;
    eventually("the Deployment's 4 pods to be ready", WAIT, || async {
        let (_, ready) = deployment_replicas(&client, &ns.name, "web").await?;
        Ok((ready == 4).then_some(()))
    })
    .await?;
    let fewest = record_fewest_serving(&client, &ns.name, "web");
    eventually("the pod watch to count the 4", WAIT, || async {
        Ok((fewest.lock().ok().and_then(|f| *f) == Some(4)).then_some(()))
    })
    .await?;

    let controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 25}, {"pause": {}}]);
    apply(
        &api,
        &taking_over("web", "progressively", 4, routed_canary(steps)),
    )
    .await?;
    let taken = wait_status(
        &api,
        "web",
        "the Rollout to take the Deployment over",
        |s| healthy_on(s, None) && s.workload.as_ref().is_some_and(|w| w.taken_over),
    )
    .await?;
    let stable = taken.stable_rs.clone().context("stable")?;
    let workload = taken.workload.clone().context("status.workload")?;
    assert_eq!(
        (workload.name.as_str(), workload.replicas_before),
        ("web", 4)
    );
    eventually("the Deployment to be scaled to zero", WAIT, || async {
        let (replicas, ready) = deployment_replicas(&client, &ns.name, "web").await?;
        Ok((replicas == 0 && ready == 0).then_some(()))
    })
    .await?;
    let during = fewest.lock().ok().and_then(|f| *f);
    assert_eq!(
        during,
        Some(4),
        "ready pods (the Deployment's and the Rollout's) never fewer than 4 during the takeover"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let selected = services
        .get("web-stable")
        .await?
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned());
    assert_eq!(selected.as_deref(), Some(stable.as_str()));
    let seen = reasons(&client, &ns.name).await?;
    for reason in ["WorkloadTakenOver", "WorkloadScaled"] {
        assert!(seen.iter().any(|r| r == reason), "{reason} in {seen:?}");
    }

    // A new image in the Deployment's template is a canary release of the Rollout.
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.example/web:1.1.0"}]}}}});
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let paused = wait_status(
        &api,
        "web",
        "the new template's canary to pause at 25%",
        |s| s.phase == Some(RolloutPhase::Paused),
    )
    .await?;
    let canary = paused.current_pod_hash.clone().context("current hash")?;
    assert_ne!(canary, stable);
    assert_eq!(route_weights(&client, &ns.name).await?, (75, 25));
    assert_eq!(deployment_replicas(&client, &ns.name, "web").await?.0, 0);
    request(&api, "web", "promote").await?;
    wait_status(&api, "web", "the new template to be released", |s| {
        healthy_on(s, Some(&canary))
    })
    .await?;
    assert_eq!(
        deployment_replicas(&client, &ns.name, "web").await?.0,
        0,
        "the Deployment stays down after the takeover"
    );

    // Settled (the old revision down after its delay): the Deployment's template is read once per
    // change of its spec, not per reconcile.
    eventually("the old revision to scale down", WAIT, || async {
        let sets = crate::faults::replica_sets(&client, &ns.name).await?;
        Ok((sets.get(&format!("web-{stable}")) == Some(&0)).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Counts::read(&controller).await?;
    let mut settled = Counts::read(&controller).await?;
    for i in 0..3 {
        settled = touch_and_count(&controller, &api, "web", i, &settled).await?;
    }
    let sent = settled.since(&before);
    assert!(
        sent.is_empty(),
        "a settled Rollout's reconciles sent {sent:?}"
    );
    Ok(())
}

#[tokio::test]
async fn onsuccess_waits_for_the_rollout_and_a_missing_deployment_is_an_invalid_spec() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "workload-onsuccess").await?;
    sluice_e2e::create_services(&client, &ns.name, &[("api", "api")]).await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"stableService": "api", "steps": [{"setWeight": 50}]});
    apply(&api, &taking_over("api", "onsuccess", 2, canary)).await?;
    let invalid = wait_status(&api, "api", "an InvalidSpec naming the Deployment", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "True")
    })
    .await?;
    let message = invalid.message.unwrap_or_default();
    assert!(
        message.contains("spec.workloadRef names Deployment api, which does not exist"),
        "{message}"
    );

    let replicas_seen: Arc<Mutex<Vec<i32>>> = Arc::default();
    let log = replicas_seen.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let stream = watcher(deployments, watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event else {
                continue;
            };
            let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            if let Ok(mut seen) = log.lock()
                && seen.last() != Some(&replicas)
            {
                seen.push(replicas);
            }
        }
    });
    // The Deployment appears: its creation wakes the Rollout, which takes it over.
    create_deployment(&client, &ns.name, "api", 2).await?;
    wait_status(&api, "api", "the Rollout to serve at full size", |s| {
        healthy_on(s, None) && s.workload.as_ref().is_some_and(|w| w.taken_over)
    })
    .await?;
    eventually("the Deployment to be scaled to zero", WAIT, || async {
        Ok((deployment_replicas(&client, &ns.name, "api").await?.0 == 0).then_some(()))
    })
    .await?;
    let seen = replicas_seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        [2, 0],
        "onsuccess leaves the Deployment whole until the Rollout serves, then scales it to zero"
    );
    let status = api.get("api").await?.status.unwrap_or_default();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "False"),
        "{:?}",
        status.conditions
    );
    Ok(())
}
