//! Canary releases driven by the real controller on the real control plane.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase, RolloutStatus};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn rollout(name: &str, replicas: i32, image: &str, canary: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"canary": canary}
        }
    })
}

pub(crate) async fn apply(api: &Api<Rollout>, manifest: &Value) -> Result<()> {
    let name = manifest["metadata"]["name"].as_str().context("name")?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await?;
    Ok(())
}

pub(crate) async fn set_image(api: &Api<Rollout>, name: &str, image: &str) -> Result<()> {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub(crate) async fn request(api: &Api<Rollout>, name: &str, action: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": action}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the Rollout's status satisfies `check`, and returns it.
pub(crate) async fn wait_status(
    api: &Api<Rollout>,
    name: &str,
    what: &str,
    check: impl Fn(&RolloutStatus) -> bool,
) -> Result<RolloutStatus> {
    eventually(what, WAIT, || async {
        let status = api.get(name).await?.status.unwrap_or_default();
        Ok(check(&status).then_some(status))
    })
    .await
}

pub(crate) fn healthy_on(status: &RolloutStatus, hash: Option<&str>) -> bool {
    status.phase == Some(RolloutPhase::Healthy)
        && (hash.is_none() || status.stable_rs.as_deref() == hash)
}

async fn replica_sets(client: &Client, ns: &str) -> Result<Vec<(String, i32, i32)>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|rs| {
            let hash = rs
                .labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default();
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let available = rs
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            (hash, replicas, available)
        })
        .collect())
}

pub(crate) async fn route_weights(client: &Client, ns: &str) -> Result<(i64, i64)> {
    let routes = sluice_e2e_routes(client, ns);
    let route = routes.get("web").await?;
    let refs = route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let weight = |name: &str| {
        refs.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["weight"].as_i64())
            .unwrap_or(-1)
    };
    Ok((weight("web-stable"), weight("web-canary")))
}

pub(crate) fn sluice_e2e_routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    )
}

/// Watches the route and records each distinct (stable, canary) weight pair it takes, in order.
fn record_route_weights(client: &Client, ns: &str) -> Arc<Mutex<Vec<(i64, i64)>>> {
    let seen: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let log = seen.clone();
    let stream = watcher(sluice_e2e_routes(client, ns), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(route)) = stream.next().await {
            let refs = route.data["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let weight = |name: &str| {
                refs.iter()
                    .find(|r| r["name"] == name)
                    .and_then(|r| r["weight"].as_i64())
                    .unwrap_or(-1)
            };
            let pair = (weight("web-stable"), weight("web-canary"));
            if let Ok(mut seen) = log.lock()
                && seen.last() != Some(&pair)
            {
                seen.push(pair);
            }
        }
    });
    seen
}

pub(crate) async fn create_routing(client: &Client, ns: &str) -> Result<()> {
    sluice_e2e::create_services(client, ns, &[("web", "web-stable"), ("web", "web-canary")])
        .await?;
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
            {"name": "web-stable", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]}
    });
    sluice_e2e_routes(client, ns)
        .patch(
            "web",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&route),
        )
        .await?;
    Ok(())
}

pub(crate) fn routed_canary(steps: Value) -> Value {
    json!({
        "canaryService": "web-canary", "stableService": "web-stable",
        "trafficRouting": {"gatewayAPI": {"httpRoute": "web"}},
        "scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2,
        "steps": steps
    })
}

#[tokio::test]
async fn canary_walks_its_steps_with_route_weights_to_a_full_release() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "canary").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps =
        json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "2s"}}]);
    apply(
        &api,
        &rollout("web", 5, "registry.example/web:1.0.0", routed_canary(steps)),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    assert_eq!(route_weights(&client, &ns.name).await?, (100, 0));
    // Every weight the route takes during the release, in order, from a watch.
    let seen = record_route_weights(&client, &ns.name);

    set_image(&api, "web", "registry.example/web:1.1.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 20%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary = paused.current_pod_hash.clone().context("current hash")?;
    assert_ne!(canary, stable);
    assert_eq!(paused.current_step_index, Some(1));
    assert_eq!(route_weights(&client, &ns.name).await?, (80, 20));
    // With a router, stable stays at full size; the canary has its share of pods (20% of 5).
    let sets = replica_sets(&client, &ns.name).await?;
    assert!(sets.contains(&(stable.clone(), 5, 5)), "{sets:?}");
    assert!(
        sets.iter().any(|(h, r, _)| *h == canary && *r == 1),
        "{sets:?}"
    );

    request(&api, "web", "promote").await?;
    let done = wait_status(&api, "web", "the release to complete", |s| {
        healthy_on(s, Some(&canary))
    })
    .await?;
    assert_eq!(done.current_step_index, Some(4));
    assert_eq!(route_weights(&client, &ns.name).await?, (100, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let weights = seen.lock().map(|w| w.clone()).unwrap_or_default();
    assert_eq!(
        weights,
        vec![(100, 0), (80, 20), (40, 60), (100, 0)],
        "the route's weights through the release"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let selector = |svc: Service| {
        svc.spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned())
    };
    assert_eq!(
        selector(services.get("web-stable").await?).as_deref(),
        Some(canary.as_str())
    );
    // The old stable goes after its 2 s scale-down delay.
    eventually("the old stable to scale down", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(sets
            .iter()
            .any(|(h, r, _)| *h == stable && *r == 0)
            .then_some(()))
    })
    .await?;
    let route = sluice_e2e_routes(&client, &ns.name).get("web").await?;
    ensure!(
        !route
            .annotations()
            .contains_key("sluice.dev/release-in-flight"),
        "route still marked in flight"
    );
    Ok(())
}

#[tokio::test]
async fn abort_puts_all_traffic_and_full_capacity_back_on_stable_and_retry_starts_again()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "abort").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    // No router: weight is the share of canary pods, and each Service selects one version.
    let canary = json!({"maxSurge": 1, "maxUnavailable": 0,
        "canaryService": "web-canary", "stableService": "web-stable",
        "steps": [{"setWeight": 50}, {"pause": {}}]});
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;

    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary_hash = paused.current_pod_hash.clone().context("hash")?;
    // Stable's status may still count the pods it is letting go of for a moment.
    eventually("two pods of each version", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(
            (sets.contains(&(stable.clone(), 2, 2)) && sets.contains(&(canary_hash.clone(), 2, 2)))
                .then_some(()),
        )
    })
    .await?;

    request(&api, "web", "abort").await?;
    let aborted = wait_status(&api, "web", "the abort", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await?;
    ensure!(
        aborted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("aborted by a user")),
        "{:?}",
        aborted.message
    );
    eventually(
        "stable back at 4 available pods and the canary gone",
        WAIT,
        || async {
            let sets = replica_sets(&client, &ns.name).await?;
            Ok((sets.contains(&(stable.clone(), 4, 4))
                && sets.iter().any(|(h, r, _)| *h == canary_hash && *r == 0))
            .then_some(()))
        },
    )
    .await?;
    let status = api.get("web").await?.status.unwrap_or_default();
    let weights = status.canary.and_then(|c| c.weights).context("weights")?;
    assert_eq!((weights.stable.weight, weights.canary.weight), (100, 0));
    // No Service selects the aborted version: the canary Service serves stable too.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    eventually("both Services on stable", WAIT, || async {
        let mut selected = Vec::new();
        for name in ["web-stable", "web-canary"] {
            let svc = services.get(name).await?;
            selected.push(
                svc.spec
                    .and_then(|s| s.selector)
                    .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned()),
            );
        }
        Ok(selected
            .iter()
            .all(|h| h.as_deref() == Some(stable.as_str()))
            .then_some(()))
    })
    .await?;

    request(&api, "web", "retry").await?;
    let again = wait_status(
        &api,
        "web",
        "the retried release to pause at 50% again",
        |s| !s.abort && s.phase == Some(RolloutPhase::Paused),
    )
    .await?;
    assert_eq!(again.current_step_index, Some(1));
    Ok(())
}

#[tokio::test]
async fn a_missing_service_is_an_invalid_spec_and_leaves_the_cluster_alone() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"canaryService": "web-canary", "stableService": "web-stable", "steps": [{"setWeight": 10}]});
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let status = wait_status(&api, "web", "an InvalidSpec condition", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "True")
    })
    .await?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .context("condition")?;
    ensure!(
        condition.message.contains("\"web-stable\"")
            || condition.message.contains("\"web-canary\""),
        "{}",
        condition.message
    );
    ensure!(
        condition.message.contains("does not exist"),
        "{}",
        condition.message
    );
    assert_eq!(status.phase, Some(RolloutPhase::Degraded));
    assert!(
        replica_sets(&client, &ns.name).await?.is_empty(),
        "a ReplicaSet was created for an invalid spec"
    );
    eventually("a Warning event", WAIT, || async {
        let out = sluice_e2e::kubectl(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=InvalidSpec",
            "-o",
            "name",
        ])?;
        Ok((!out.stdout.is_empty()).then_some(()))
    })
    .await?;

    // The Services appear: the controller watches them, so the Rollout recovers at once rather than
    // at its next periodic look (30 s).
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let healthy = eventually(
        "the Rollout to recover once its Services exist",
        Duration::from_secs(15),
        || async {
            let status = api.get("web").await?.status.unwrap_or_default();
            Ok(healthy_on(&status, None).then_some(status))
        },
    )
    .await?;
    let stable = healthy.stable_rs.clone().context("stable")?;
    ensure!(
        healthy
            .conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "False"),
        "InvalidSpec not cleared: {:?}",
        healthy.conditions
    );

    // A new release naming a Service that does not exist is refused, and stable is left as it is.
    let broken = rollout(
        "web",
        2,
        "registry.example/web:2.0.0",
        json!({"canaryService": "web-missing", "stableService": "web-stable", "steps": [{"setWeight": 10}]}),
    );
    apply(&api, &broken).await?;
    let refused = wait_status(&api, "web", "InvalidSpec for web-missing", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "InvalidSpec" && c.status == "True" && c.message.contains("web-missing")
        })
    })
    .await?;
    assert_eq!(refused.stable_rs.as_deref(), Some(stable.as_str()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sets = replica_sets(&client, &ns.name).await?;
    assert_eq!(
        sets,
        vec![(stable.clone(), 2, 2)],
        "stable was touched or a canary was created"
    );
    Ok(())
}

#[tokio::test]
async fn a_controller_killed_mid_release_resumes_at_the_same_step() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 75}]);
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", routed_canary(steps)),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    set_image(&api, "web", "registry.example/web:1.1.0").await?;
    wait_status(&api, "web", "the pause at 25%", |s| {
        s.phase == Some(RolloutPhase::Paused) && s.current_step_index == Some(1)
    })
    .await?;
    request(&api, "web", "promote").await?;
    let before = wait_status(&api, "web", "the pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused) && s.current_step_index == Some(3)
    })
    .await?;

    controller.kill()?;
    let _controller = ControllerProcess::start(&ns.name)?;
    // Give the new controller time to reconcile, then check nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get("web").await?.status.unwrap_or_default();
    assert_eq!(
        after.current_step_index, before.current_step_index,
        "a restart repeated or skipped a step"
    );
    assert_eq!(
        after.pause_conditions, before.pause_conditions,
        "a restart reset the pause"
    );
    assert_eq!(route_weights(&client, &ns.name).await?, (50, 50));
    let sets = replica_sets(&client, &ns.name).await?;
    assert!(
        sets.contains(&(stable.clone(), 4, 4)),
        "stable lost pods across the restart: {sets:?}"
    );

    request(&api, "web", "promote").await?;
    wait_status(
        &api,
        "web",
        "the release to complete after the restart",
        |s| healthy_on(s, before.current_pod_hash.as_deref()),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn pods_that_never_become_ready_hit_the_progress_deadline_and_abort() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "deadline").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary =
        json!({"maxSurge": 1, "maxUnavailable": 0, "steps": [{"setWeight": 50}, {"pause": {}}]});
    let mut manifest = rollout("web", 2, "registry.example/web:1.0.0", canary);
    manifest["spec"]["progressDeadlineSeconds"] = json!(5);
    manifest["spec"]["progressDeadlineAbort"] = json!(true);
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;

    // The new version's pods run but never become ready (a crash loop).
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {sluice_testbed::binaries::NEVER_READY_ANNOTATION: "true"}},
                                             "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.1.0-broken"}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let aborted = wait_status(
        &api,
        "web",
        "the progress deadline to abort the release",
        |s| s.abort,
    )
    .await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("progress deadline exceeded") && message.contains("0/1 pods"),
        "{message}"
    );
    assert_eq!(aborted.phase, Some(RolloutPhase::Degraded));
    eventually(
        "stable at full strength and the canary gone",
        WAIT,
        || async {
            let sets = replica_sets(&client, &ns.name).await?;
            let canary_gone = sets
                .iter()
                .filter(|(h, _, _)| *h != stable)
                .all(|(_, r, _)| *r == 0);
            Ok((sets.contains(&(stable.clone(), 2, 2)) && canary_gone).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_new_template_mid_release_supersedes_the_canary() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "supersede").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 30}, {"pause": {}}]);
    apply(
        &api,
        &rollout("web", 3, "registry.example/web:1.0.0", routed_canary(steps)),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    set_image(&api, "web", "registry.example/web:1.1.0").await?;
    let one = wait_status(&api, "web", "the first canary to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let first_canary = one.current_pod_hash.clone().context("hash")?;

    set_image(&api, "web", "registry.example/web:1.2.0").await?;
    let two = wait_status(&api, "web", "the second canary to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
            && s.current_pod_hash.as_deref() != Some(first_canary.as_str())
    })
    .await?;
    let second_canary = two.current_pod_hash.clone().context("hash")?;
    assert_eq!(
        two.stable_rs.as_deref(),
        Some(stable.as_str()),
        "stable changed"
    );
    assert_eq!(two.current_step_index, Some(1));
    assert_eq!(route_weights(&client, &ns.name).await?, (70, 30));
    eventually("the superseded canary to scale to zero", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        let old_gone = sets.iter().any(|(h, r, _)| *h == first_canary && *r == 0);
        let new_up = sets.iter().any(|(h, _, a)| *h == second_canary && *a >= 1);
        Ok((old_gone && new_up && sets.contains(&(stable.clone(), 3, 3))).then_some(()))
    })
    .await?;

    // Going back to the stable template is the fast path: no steps, traffic all on stable.
    set_image(&api, "web", "registry.example/web:1.0.0").await?;
    let back = wait_status(&api, "web", "the fast path back to stable", |s| {
        healthy_on(s, Some(&stable))
    })
    .await?;
    assert_eq!(back.current_pod_hash.as_deref(), Some(stable.as_str()));
    assert_eq!(route_weights(&client, &ns.name).await?, (100, 0));
    Ok(())
}

#[tokio::test]
async fn scaling_through_the_scale_subresource_resizes_stable_and_the_canary_share() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "hpa").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 20}, {"pause": {}}]);
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", routed_canary(steps)),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;

    // What a HorizontalPodAutoscaler does: write spec.replicas through the scale subresource.
    let scale = |replicas: i32| {
        let api = api.clone();
        async move {
            api.patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
            )
            .await
        }
    };
    scale(5).await?;
    eventually("stable at 5 available pods", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(sets.contains(&(stable.clone(), 5, 5)).then_some(()))
    })
    .await?;
    let observed = eventually("the scale subresource to report 5", WAIT, || async {
        let scale = api.get_scale("web").await?;
        let status = scale.status.unwrap_or_default();
        Ok((status.replicas == 5).then_some(status))
    })
    .await?;
    assert_eq!(observed.selector.as_deref(), Some("app=web"));

    // Mid-release the canary keeps its share of the new size, and stable stays whole.
    set_image(&api, "web", "registry.example/web:1.1.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 20%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary = paused.current_pod_hash.clone().context("hash")?;
    scale(10).await?;
    eventually("stable at 10 and the canary at 2 (20%)", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(
            (sets.contains(&(stable.clone(), 10, 10)) && sets.contains(&(canary.clone(), 2, 2)))
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(route_weights(&client, &ns.name).await?, (80, 20));
    Ok(())
}

#[tokio::test]
async fn min_pods_per_replica_set_sizes_a_small_canary() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "min-pods").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut canary = routed_canary(json!([{"setWeight": 5}, {"pause": {}}]));
    canary["minPodsPerReplicaSet"] = json!(3);
    apply(
        &api,
        &rollout("web", 10, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 5%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary_hash = paused.current_pod_hash.clone().context("hash")?;
    // 5% of 10 is one pod; the canary keeps three while it has traffic, and stable all ten.
    let sets = replica_sets(&client, &ns.name).await?;
    assert!(sets.contains(&(canary_hash.clone(), 3, 3)), "{sets:?}");
    assert!(sets.contains(&(stable.clone(), 10, 10)), "{sets:?}");
    assert_eq!(route_weights(&client, &ns.name).await?, (95, 5));
    Ok(())
}

#[tokio::test]
async fn scale_down_delay_revision_limit_keeps_only_the_newest_old_replica_set() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "revision-limit").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    // No steps: each release goes straight to 100%; old stables wait 60 s before scaling down.
    let mut canary = routed_canary(json!([]));
    canary["scaleDownDelaySeconds"] = json!(60);
    canary["scaleDownDelayRevisionLimit"] = json!(1);
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let mut hashes = Vec::new();
    for image in ["1.0.0", "2.0.0", "3.0.0"] {
        if !hashes.is_empty() {
            set_image(&api, "web", &format!("registry.example/web:{image}")).await?;
        }
        let previous = hashes.last().cloned();
        let status = wait_status(&api, "web", "the release to complete", |s| {
            healthy_on(s, None) && s.stable_rs.is_some() && s.stable_rs != previous
        })
        .await?;
        hashes.push(status.stable_rs.context("stable")?);
    }
    // v2 waits out its delay with its pods; v1, beyond the limit, has none.
    eventually("only the newest old ReplicaSet kept", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        let replicas = |hash: &str| sets.iter().find(|(h, _, _)| h == hash).map(|(_, r, _)| *r);
        Ok((replicas(&hashes[0]) == Some(0)
            && replicas(&hashes[1]) == Some(2)
            && replicas(&hashes[2]) == Some(2))
        .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn anti_affinity_keeps_the_canary_off_stable_nodes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "anti-affinity").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"maxSurge": 1, "maxUnavailable": 0,
        "antiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": {"weight": 40}},
        "steps": [{"setWeight": 50}, {"pause": {}}]});
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary_hash = paused.current_pod_hash.clone().context("hash")?;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    let affinity = |rs: ReplicaSet| {
        serde_json::to_value(
            rs.spec
                .and_then(|s| s.template)
                .and_then(|t| t.spec)
                .and_then(|s| s.affinity),
        )
    };
    let new = affinity(sets.get(&format!("web-{canary_hash}")).await?)?;
    assert_eq!(
        new,
        json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 40,
            "podAffinityTerm": {
                "labelSelector": {"matchExpressions": [{
                    "key": POD_TEMPLATE_HASH_LABEL, "operator": "In", "values": [stable]}]},
                "topologyKey": "kubernetes.io/hostname"}}]}}),
        "the canary's pods prefer nodes without stable pods"
    );
    // The first revision had nothing to avoid; the Rollout's own template is unchanged.
    let old = affinity(sets.get(&format!("web-{stable}")).await?)?;
    assert_eq!(old, Value::Null);
    let template = api.get("web").await?.spec.template.context("template")?;
    ensure!(
        template.spec.and_then(|s| s.affinity).is_none(),
        "the Rollout's template was changed"
    );
    Ok(())
}

#[tokio::test]
async fn dynamic_stable_scale_shrinks_stable_as_traffic_moves_and_restores_it_on_abort()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "dynamic-stable").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut canary =
        routed_canary(json!([{"setWeight": 50}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]));
    canary["dynamicStableScale"] = json!(true);
    canary
        .as_object_mut()
        .context("canary")?
        .remove("abortScaleDownDelaySeconds");
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary_hash = paused.current_pod_hash.clone().context("hash")?;
    // Half the traffic has left stable: it keeps half the pods.
    eventually("stable at 2 of 4 pods, the canary at 2", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(
            (sets.contains(&(stable.clone(), 2, 2)) && sets.contains(&(canary_hash.clone(), 2, 2)))
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(route_weights(&client, &ns.name).await?, (50, 50));
    request(&api, "web", "promote").await?;
    eventually("stable at 1 pod for 25% of traffic", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok((sets.contains(&(stable.clone(), 1, 1))
            && route_weights(&client, &ns.name).await? == (25, 75))
            .then_some(()))
    })
    .await?;

    // Abort: stable grows back to full size and takes the traffic back as its pods come up; the
    // canary then goes.
    request(&api, "web", "abort").await?;
    eventually("all traffic and every pod back on stable", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok((sets.contains(&(stable.clone(), 4, 4))
            && sets.iter().any(|(h, r, _)| *h == canary_hash && *r == 0)
            && route_weights(&client, &ns.name).await? == (100, 0))
            .then_some(()))
    })
    .await?;
    Ok(())
}
