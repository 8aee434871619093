//! A service run by Argo Rollouts' own controller (built from its Go module), under simulated
//! traffic: the starting point of a move from Argo Rollouts to Sluice, which must restart no pod
//! and fail no request.
//!
//! Users reach the service through an HTTPRoute to a Service `web` that selects every pod of the
//! app, so the traffic simulator counts a request as failed the moment that Service selects no
//! Ready pod. That is the entry point Argo's basic canary (no traffic router) is built for: it sizes
//! the canary by pods, and re-points `web-stable` only after it has scaled the old stable
//! ReplicaSet to zero (`Scaled down ReplicaSet ... from 1 to 0`, then `Switched selector for
//! service 'web-stable'`, in v1.10.1): a route to `web-stable` loses the requests of that moment
//! (with this test's route pointed there, 4 runs in 10 counted about 20 failed requests, one
//! 100 ms tick at 200 requests a second).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::release::Release;
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use sluice_e2e::{
    ArgoRolloutsController, ControllerProcess, RequestCounts, TestNamespace, TrafficSim, client,
    create_services, eventually, install_crds, kubectl, kubectl_sluice, kubectl_stdout,
};
use std::time::Instant;

use crate::analysis::set_image;

use crate::canary::sluice_e2e_routes;
use crate::routers::{apply_dynamic, istio};

const WAIT: Duration = Duration::from_secs(90);

/// Argo Rollouts' label naming a pod's version (and, in a Service's selector, the version it
/// sends to).
const ARGO_HASH_LABEL: &str = "rollouts-pod-template-hash";

/// Argo Rollouts' Rollouts in `ns`.
fn argo_rollouts(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "rollouts"),
    )
}

/// Argo Rollouts' basic canary (no traffic router): `setWeight` sizes the canary by pods, and Argo
/// points `web-stable` and `web-canary` at the stable and canary pods.
fn argo_rollout(image: &str) -> Value {
    argo_rollout_with_steps(
        image,
        json!([{"setWeight": 20}, {"pause": {"duration": "2s"}}]),
    )
}

/// Argo's Rollout `web` with these canary steps.
fn argo_rollout_with_steps(image: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            },
            "strategy": {"canary": {
                "stableService": "web-stable", "canaryService": "web-canary",
                "steps": steps
            }}
        }
    })
}

/// `value` as a number, whether JSON has it as a number or a string (Argo writes
/// `observedGeneration` as a string).
fn as_i64(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Waits until Argo reports `web` Healthy at its current generation with its stable ReplicaSet the
/// current one, and that one not `previous`; returns its pod-template hash.
async fn wait_argo_healthy(api: &Api<DynamicObject>, previous: Option<&str>) -> Result<String> {
    eventually("Argo Rollouts to report web Healthy", WAIT, || async {
        let rollout = api.get("web").await?;
        let status = &rollout.data["status"];
        let observed = as_i64(&status["observedGeneration"]) == rollout.metadata.generation;
        let current = status["currentPodHash"].as_str().unwrap_or_default();
        let healthy = observed
            && status["phase"] == "Healthy"
            && !current.is_empty()
            && status["stableRS"] == current
            && Some(current) != previous;
        if healthy {
            Ok(Some(current.to_owned()))
        } else {
            bail!(
                "generation {:?}, status {status}",
                rollout.metadata.generation
            )
        }
    })
    .await
}

/// Every distinct `status.currentStepIndex` Argo writes to `web`, in order, from a watch.
fn record_steps(api: &Api<DynamicObject>) -> Arc<Mutex<Vec<i64>>> {
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let log = seen.clone();
    let stream = watcher(
        api.clone(),
        watcher::Config::default().fields("metadata.name=web"),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(rollout)) = stream.next().await {
            let Some(step) = rollout.data["status"]["currentStepIndex"].as_i64() else {
                continue;
            };
            if let Ok(mut seen) = log.lock()
                && seen.last() != Some(&step)
            {
                seen.push(step);
            }
        }
    });
    seen
}

/// Reads the simulator's counts for `web` twice, `window` apart, until what it served in between
/// satisfies `check`.
async fn traffic_until(
    sim: &TrafficSim,
    what: &str,
    window: Duration,
    check: impl Fn(&RequestCounts) -> bool,
) -> Result<RequestCounts> {
    eventually(what, WAIT, || async {
        let before = sim.requests("web").await?;
        tokio::time::sleep(window).await;
        let served = sim.requests("web").await?.since(&before);
        if check(&served) {
            Ok(Some(served))
        } else {
            bail!("over {window:?}: {:?}", served.by_version_and_code)
        }
    })
    .await
}

/// Waits until everything `web` served over `window` was served by revision `hash`.
async fn served_only_by(
    sim: &TrafficSim,
    what: &str,
    window: Duration,
    hash: &str,
) -> Result<RequestCounts> {
    traffic_until(sim, what, window, |served| {
        served.total() > 0 && served.served_by(hash) == served.total()
    })
    .await
}

async fn selector(services: &Api<Service>, name: &str) -> Result<BTreeMap<String, String>> {
    Ok(services
        .get(name)
        .await?
        .spec
        .and_then(|spec| spec.selector)
        .unwrap_or_default())
}

/// A service under Argo Rollouts' controller.
struct UnderArgo {
    argo: ArgoRolloutsController,
    sim: TrafficSim,
    /// The stable revision (Argo's pod-template hash).
    stable: String,
}

/// Starts Argo's controller and the simulator in `ns`, creates the Services `web-stable`,
/// `web-canary` and `web` (all selecting app=web) and Argo's Rollout `web` (registry.example/web:1.0.0),
/// waits for it Healthy, then routes users to `backend` and waits until Argo's pods serve them all,
/// none failing.
async fn serve_under_argo(client: &Client, ns: &str, backend: &str) -> Result<UnderArgo> {
    let client = client.clone();
    // The first run on a machine builds Argo's controller from its Go module: minutes.
    let argo = ArgoRolloutsController::start(ns).await?;
    let sim = TrafficSim::start(ns)?;
    let rollouts = argo_rollouts(&client, ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    create_services(
        &client,
        ns,
        &[("web", "web-stable"), ("web", "web-canary"), ("web", "web")],
    )
    .await?;
    apply_dynamic(&rollouts, &argo_rollout("registry.example/web:1.0.0")).await?;
    let stable = wait_argo_healthy(&rollouts, None)
        .await
        .with_context(|| format!("Argo Rollouts' log: {}", argo.log.display()))?;

    // Argo runs the pods and has taken both Services over: each selects its stable pods.
    let pinned = BTreeMap::from([
        ("app".to_owned(), "web".to_owned()),
        (ARGO_HASH_LABEL.to_owned(), stable.clone()),
    ]);
    for name in ["web-stable", "web-canary"] {
        let selector = selector(&services, name).await?;
        ensure!(
            selector == pinned,
            "{name} selects {selector:?}, not Argo's stable pods"
        );
        let managed_by = services
            .get(name)
            .await?
            .annotations()
            .get("argo-rollouts.argoproj.io/managed-by-rollouts")
            .cloned();
        ensure!(
            managed_by.as_deref() == Some("web"),
            "{name} is not marked as managed by Argo's Rollout web: {managed_by:?}"
        );
    }

    // Users arrive once the service is up, through a route to `backend`. Up as the simulator sees
    // it too: until the route exists it spreads requests over the app's Ready
    // pods, so requests served by Argo's pods say its pod watch has caught up with Argo's (a busy
    // API server may deliver the route before the pods' readiness).
    served_only_by(
        &sim,
        "the simulator to see Argo's pods Ready",
        Duration::from_millis(500),
        &stable,
    )
    .await?;
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
            {"name": backend, "port": 80}]}]}
    });
    apply_dynamic(&sluice_e2e_routes(&client, ns), &route).await?;
    let served = served_only_by(
        &sim,
        "the simulator to serve web from Argo's pods",
        Duration::from_secs(3),
        &stable,
    )
    .await?;
    ensure!(
        served.failed() == 0,
        "requests failed before any release: {:?}",
        served.by_version_and_code
    );

    Ok(UnderArgo { argo, sim, stable })
}

#[tokio::test]
async fn argo_rollouts_runs_a_canary_release_without_a_failed_request() -> Result<()> {
    let client = client().await?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .get("rollouts.argoproj.io")
        .await
        .context(
            "the cluster has no Argo Rollouts CRDs: it predates them; restart it \
             (`cargo xtask cluster down && cargo xtask cluster up`)",
        )?;
    let ns = TestNamespace::create(&client, "takeover").await?;
    let UnderArgo {
        mut argo,
        sim,
        stable,
    } = serve_under_argo(&client, &ns.name, "web").await?;
    let rollouts = argo_rollouts(&client, &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);

    // A release: Argo's canary, to the end.
    let steps = record_steps(&rollouts);
    let started = std::time::Instant::now();
    apply_dynamic(&rollouts, &argo_rollout("registry.example/web:2.0.0")).await?;
    let released = wait_argo_healthy(&rollouts, Some(&stable))
        .await
        .with_context(|| format!("Argo Rollouts' log: {}", argo.log.display()))?;
    eprintln!(
        "Argo Rollouts {} released {stable} -> {released} in {:.1?}",
        argo.version,
        started.elapsed()
    );
    let seen = steps.lock().map(|s| s.clone()).unwrap_or_default();
    let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
    ensure!(
        seen_set.contains(&1) && seen.last() == Some(&2),
        "Argo did not walk the canary's steps (setWeight, pause) to the end: step indexes {seen:?}"
    );
    let selector = selector(&services, "web-stable").await?;
    ensure!(
        selector.get(ARGO_HASH_LABEL) == Some(&released),
        "web-stable selects {selector:?} after the release to {released}"
    );

    // Every request now goes to the new version, and none failed from the first one on (the
    // simulator's counters never reset).
    served_only_by(
        &sim,
        "every request to reach the new version",
        Duration::from_secs(2),
        &released,
    )
    .await?;
    let counts = sim.requests("web").await?;
    ensure!(
        counts.failed() == 0,
        "{} of {} requests failed: {:?}",
        counts.failed(),
        counts.total(),
        counts.by_version_and_code
    );
    ensure!(
        counts.served_by(&stable) > 0 && counts.served_by(&released) > 0,
        "both versions should have served: {:?}",
        counts.by_version_and_code
    );
    ensure!(
        !argo.try_exited()?,
        "Argo Rollouts' controller exited; see {}",
        argo.log.display()
    );
    Ok(())
}

/// The pods of the app `web`: name to (uid, container restarts, being deleted).
async fn pods_of_web(client: &Client, ns: &str) -> Result<BTreeMap<String, (String, i32, bool)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .map(|pod| {
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (
                pod.name_any(),
                (
                    pod.uid().unwrap_or_default(),
                    restarts,
                    pod.metadata.deletion_timestamp.is_some(),
                ),
            )
        })
        .collect())
}

async fn run_plugin(ns: &str, args: &[&str]) -> Result<std::process::Output> {
    let (ns, args): (String, Vec<String>) = (
        ns.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl_sluice(&ns, &args)
    })
    .await?
}

#[tokio::test]
async fn a_healthy_argo_rollout_is_taken_over_with_its_pods_and_no_failed_request_then_released_by_sluice()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .get("rollouts.argoproj.io")
        .await
        .context("the cluster has no Argo Rollouts CRDs: restart it")?;
    let ns = TestNamespace::create(&client, "takeover").await?;
    // Users reach the service through web-stable, the Service whose selector the takeover moves.
    let UnderArgo { argo, sim, stable } = serve_under_argo(&client, &ns.name, "web-stable").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let argo_api = argo_rollouts(&client, &ns.name);
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let at_start = sim.requests("web").await?;

    // Mid-release, a takeover is refused with the reason, and nothing is created.
    let waiting = json!([{"setWeight": 20}, {"pause": {}}]);
    apply_dynamic(
        &argo_api,
        &argo_rollout_with_steps("registry.example/web:1.1.0", waiting),
    )
    .await?;
    eventually("Argo's release to pause at its step", WAIT, || async {
        let status = argo_api.get("web").await?.data["status"].clone();
        Ok(
            (status["currentPodHash"] != json!(stable) && status["phase"] == "Paused")
                .then_some(()),
        )
    })
    .await?;
    let refused = run_plugin(&ns.name, &["migrate", "--takeover", "web"]).await?;
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    ensure!(
        !refused.status.success() && said.contains("finish or abort its release first"),
        "a takeover mid-release was not refused: {said}"
    );
    ensure!(
        rollouts.get_opt("web").await?.is_none(),
        "a refused takeover created a Rollout"
    );
    // Back to the stable template: Argo is Healthy on its stable pods again.
    apply_dynamic(&argo_api, &argo_rollout("registry.example/web:1.0.0")).await?;
    let back = wait_argo_healthy(&argo_api, None).await?;
    ensure!(
        back == stable,
        "Argo settled on {back}, not its stable {stable}"
    );
    eventually("the 1.1.0 pod gone", WAIT, || async {
        let pods = pods_of_web(&client, &ns.name).await?;
        Ok((pods.len() == 3 && pods.values().all(|(_, _, deleting)| !deleting)).then_some(()))
    })
    .await?;

    // The takeover.
    let before = pods_of_web(&client, &ns.name).await?;
    let counts_before = sim.requests("web").await?;
    let started = Instant::now();
    let out = run_plugin(&ns.name, &["migrate", "--takeover", "web"]).await?;
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "the takeover failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(said.contains("took over Argo Rollout web"), "{said}");
    ensure!(
        argo_api.get_opt("web").await?.is_none(),
        "the Argo Rollout is still there"
    );
    let rollout = eventually("the Rollout Healthy on the adopted pods", WAIT, || async {
        let rollout = rollouts.get("web").await?;
        let status = rollout.status.clone().unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)
            && status
                .takeover
                .as_ref()
                .is_some_and(|t| t.phase == "TakenOver"))
        .then_some(rollout))
    })
    .await?;
    let status = rollout.status.clone().unwrap_or_default();
    let hash = status.stable_rs.clone().context("no stable revision")?;
    ensure!(status.current_pod_hash.as_deref() == Some(hash.as_str()));

    // Argo's ReplicaSet is the Rollout's now, under the name Argo gave it.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    let adopted = replica_sets.get(&format!("web-{stable}")).await?;
    ensure!(
        adopted
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == rollout.uid().as_ref()),
        "ReplicaSet web-{stable} is not the Rollout's: {:?}",
        adopted.owner_references()
    );
    ensure!(
        adopted.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&hash),
        "{:?}",
        adopted.labels()
    );
    let all: Vec<String> = replica_sets
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    ensure!(
        all.iter()
            .all(|name| !name.contains(&hash) || name == &format!("web-{stable}")),
        "a ReplicaSet was created for the adopted revision: {all:?}"
    );

    // The same pods, none restarted; the Services select them by Sluice's label only.
    let after = pods_of_web(&client, &ns.name).await?;
    let restarted: Vec<&String> = before
        .iter()
        .filter(|(name, (uid, restarts, _))| {
            after
                .get(*name)
                .is_none_or(|(now, restarts_now, deleting)| {
                    now != uid || restarts_now != restarts || *deleting
                })
        })
        .map(|(name, _)| name)
        .collect();
    ensure!(
        restarted.is_empty() && after.len() == before.len(),
        "pods replaced or restarted: {restarted:?} (before {before:?}, after {after:?})"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    for name in ["web-stable", "web-canary"] {
        let selector = selector(&services, name).await?;
        ensure!(
            selector
                == BTreeMap::from([
                    ("app".to_owned(), "web".to_owned()),
                    (POD_TEMPLATE_HASH_LABEL.to_owned(), hash.clone()),
                ]),
            "{name} selects {selector:?}"
        );
    }
    served_only_by(
        &sim,
        "requests served by the adopted pods",
        Duration::from_secs(2),
        &hash,
    )
    .await?;
    let during = sim.requests("web").await?.since(&counts_before);
    println!(
        "takeover: {} s by kubectl sluice migrate --takeover; {} pods kept, {} restarted; {} requests, {} failed",
        took.as_secs_f64(),
        after.len(),
        restarted.len(),
        during.total(),
        during.failed()
    );
    ensure!(
        during.failed() == 0,
        "requests failed during the takeover: {:?}",
        during.by_version_and_code
    );
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "reason=TakenOver",
        "-o",
        "name",
    ])?;
    ensure!(!events.stdout.is_empty(), "no TakenOver Event");
    drop(argo);

    // The next release is Sluice's, with the steps carried over.
    set_image(&rollouts, "registry.example/web:2.0.0").await?;
    let released = eventually("Sluice's release to complete", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)
            && status.stable_rs.as_ref().is_some_and(|s| *s != hash))
        .then(|| status.stable_rs.unwrap_or_default()))
    })
    .await?;
    let record: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let releases = record.list(&ListParams::default()).await?.items;
    ensure!(
        releases
            .iter()
            .any(|r| r.spec.release.revision == released && r.spec.release.steps.len() == 2),
        "no release record of {released} with its two steps"
    );
    served_only_by(
        &sim,
        "every request to reach Sluice's release",
        Duration::from_secs(2),
        &released,
    )
    .await?;
    let overall = sim.requests("web").await?.since(&at_start);
    println!(
        "takeover, then Sluice's release {hash} -> {released}: {} requests, {} failed",
        overall.total(),
        overall.failed()
    );
    ensure!(
        overall.failed() == 0,
        "requests failed: {:?}",
        overall.by_version_and_code
    );
    Ok(())
}

#[tokio::test]
async fn a_service_an_argo_rollout_runs_is_never_written_and_an_overlapping_selector_is_said()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "beside-argo").await?;
    create_services(&client, &ns.name, &[("web", "shared"), ("web", "own")]).await?;
    // An Argo Rollout (no Argo controller needed: its spec says what it runs).
    let mut legacy = argo_rollout("registry.example/legacy:1.0.0");
    legacy["metadata"]["name"] = json!("legacy");
    legacy["spec"]["strategy"]["canary"]["stableService"] = json!("shared");
    apply_dynamic(&argo_rollouts(&client, &ns.name), &legacy).await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest =
        crate::analysis::rollout(json!({"stableService": "shared", "steps": [{"setWeight": 50}]}));
    crate::analysis::apply(&rollouts, &manifest).await?;
    let refused = eventually("the Rollout refused", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok(status
            .message
            .filter(|m| m.contains("Service/shared is run by Argo Rollout legacy"))
            .map(|_| status.conditions))
    })
    .await?;
    ensure!(
        refused
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "True"),
        "{refused:?}"
    );
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    ensure!(
        replica_sets
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "a ReplicaSet was created for a refused spec"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    ensure!(
        selector(&services, "shared").await?
            == BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        "the Argo Rollout's Service was written"
    );

    // With a Service of its own it runs; the selector it shares with the Argo Rollout is said once.
    manifest["spec"]["strategy"]["canary"]["stableService"] = json!("own");
    crate::analysis::apply(&rollouts, &manifest).await?;
    eventually("the Rollout Healthy", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)).then_some(()))
    })
    .await?;
    let events = eventually("a SelectorOverlapsArgoRollout Event", WAIT, || async {
        let out = kubectl(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=SelectorOverlapsArgoRollout",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((!text.is_empty()).then_some(text))
    })
    .await?;
    ensure!(events.contains("Argo Rollout legacy"), "{events}");
    ensure!(
        selector(&services, "shared").await?
            == BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        "the Argo Rollout's Service was written"
    );
    Ok(())
}

#[tokio::test]
async fn a_takeover_is_given_back_to_argo_rollouts_with_the_same_pods_and_no_failed_request()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "give-back").await?;
    let UnderArgo { argo, sim, stable } = serve_under_argo(&client, &ns.name, "web-stable").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    let out = run_plugin(&ns.name, &["migrate", "--takeover", "web"]).await?;
    ensure!(
        out.status.success(),
        "the takeover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    eventually("the Rollout Healthy after the takeover", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)).then_some(()))
    })
    .await?;
    let before = pods_of_web(&client, &ns.name).await?;
    let counts_before = sim.requests("web").await?;

    // Back to Argo Rollouts, as the README's steps say: the Sluice Rollout goes with its
    // ReplicaSets orphaned, Sluice's label leaves the pod template and the Services' selectors
    // (which then select the app's pods, all of this one revision), and Argo's Rollout is applied
    // again: it adopts its ReplicaSet and points the Services at it by its own label.
    let ns_name = ns.name.as_str();
    kubectl_stdout(&[
        "delete",
        "rollouts.sluice.dev",
        "web",
        "-n",
        ns_name,
        "--cascade=orphan",
    ])?;
    drop(controller);
    let label = "/spec/template/metadata/labels/sluice.dev~1pod-template-hash";
    kubectl_stdout(&[
        "patch",
        "replicaset",
        &format!("web-{stable}"),
        "-n",
        ns_name,
        "--type=json",
        &format!(r#"-p=[{{"op":"remove","path":"{label}"}}]"#),
    ])?;
    for service in ["web-stable", "web-canary"] {
        kubectl_stdout(&[
            "patch",
            "service",
            service,
            "-n",
            ns_name,
            "--type=json",
            r#"-p=[{"op":"remove","path":"/spec/selector/sluice.dev~1pod-template-hash"}]"#,
        ])?;
    }
    let argo_api = argo_rollouts(&client, &ns.name);
    apply_dynamic(&argo_api, &argo_rollout("registry.example/web:1.0.0")).await?;
    let back = wait_argo_healthy(&argo_api, None)
        .await
        .with_context(|| format!("Argo Rollouts' log: {}", argo.log.display()))?;
    ensure!(back == stable, "Argo settled on {back}, not {stable}");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    eventually("Argo to point web-stable at its pods", WAIT, || async {
        let selector = selector(&services, "web-stable").await?;
        Ok((selector.get(ARGO_HASH_LABEL) == Some(&stable)).then_some(()))
    })
    .await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    let names: Vec<String> = replica_sets
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    ensure!(names == [format!("web-{stable}")], "ReplicaSets: {names:?}");
    let after = pods_of_web(&client, &ns.name).await?;
    ensure!(
        after == before,
        "pods changed giving back: before {before:?}, after {after:?}"
    );
    let during = sim.requests("web").await?.since(&counts_before);
    println!(
        "give-back to Argo Rollouts: {} pods kept; {} requests, {} failed",
        after.len(),
        during.total(),
        during.failed()
    );
    ensure!(
        during.failed() == 0,
        "requests failed giving back: {:?}",
        during.by_version_and_code
    );
    // And Argo releases as before.
    apply_dynamic(&argo_api, &argo_rollout("registry.example/web:2.0.0")).await?;
    wait_argo_healthy(&argo_api, Some(&stable)).await?;
    Ok(())
}

/// The (stable, canary) weights of the VirtualService `web`'s route `primary`.
fn weights(vs: &DynamicObject) -> Option<(i64, i64)> {
    let route = vs.data["spec"]["http"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == "primary")?;
    let weight = |host: &str| {
        route["route"]
            .as_array()?
            .iter()
            .find(|d| d["destination"]["host"] == host)?["weight"]
            .as_i64()
    };
    Some((
        weight("web-stable").unwrap_or(0),
        weight("web-canary").unwrap_or(0),
    ))
}

#[tokio::test]
async fn a_takeover_keeps_the_route_weights_argo_set_and_sluice_moves_them_from_the_next_release()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "takeover-istio").await?;
    let argo = ArgoRolloutsController::start(&ns.name).await?;
    create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let services_api = istio(&client, &ns.name, "VirtualService", "virtualservices");
    let route = |host: &str, weight: i64| json!({"destination": {"host": host}, "weight": weight});
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web"},
        "spec": {"hosts": ["web.example"], "http": [
            {"name": "primary", "route": [route("web-stable", 100), route("web-canary", 0)]}]}
    });
    apply_dynamic(&services_api, &vs).await?;
    // Every version of the route's weights, from a watch, from here on.
    let seen: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let log = seen.clone();
    let stream = watcher(services_api.clone(), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(vs)) = stream.next().await {
            if let (Some(w), Ok(mut seen)) = (weights(&vs), log.lock())
                && seen.last() != Some(&w)
            {
                seen.push(w);
            }
        }
    });
    let with_istio = |image: &str| {
        let mut rollout = argo_rollout(image);
        rollout["spec"]["strategy"]["canary"]["trafficRouting"] =
            json!({"istio": {"virtualService": {"name": "web", "routes": ["primary"]}}});
        rollout
    };
    let argo_api = argo_rollouts(&client, &ns.name);
    apply_dynamic(&argo_api, &with_istio("registry.example/web:1.0.0")).await?;
    let stable = wait_argo_healthy(&argo_api, None)
        .await
        .with_context(|| format!("Argo Rollouts' log: {}", argo.log.display()))?;
    // A release under Argo: Argo moves the weights (20 to the canary), then back.
    apply_dynamic(&argo_api, &with_istio("registry.example/web:1.1.0")).await?;
    let argo_stable = wait_argo_healthy(&argo_api, Some(&stable))
        .await
        .with_context(|| format!("Argo Rollouts' log: {}", argo.log.display()))?;
    // Argo reports Healthy a moment before it gives the route back to stable.
    let under_argo = eventually("Argo to give the route back to stable", WAIT, || async {
        let under_argo = seen.lock().map(|s| s.clone()).unwrap_or_default();
        Ok((under_argo.last() == Some(&(100, 0))).then_some(under_argo))
    })
    .await?;
    ensure!(
        under_argo.contains(&(80, 20)),
        "Argo did not move the route's weights: {under_argo:?}"
    );

    let _controller = ControllerProcess::start(&ns.name)?;
    let before = pods_of_web(&client, &ns.name).await?;
    let taken = seen.lock().map(|s| s.len()).unwrap_or_default();
    let out = run_plugin(&ns.name, &["migrate", "--takeover", "web"]).await?;
    ensure!(
        out.status.success(),
        "the takeover failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let hash = eventually("the Rollout Healthy on the adopted pods", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy))
            .then_some(status.stable_rs)
            .flatten())
    })
    .await?;
    let after = pods_of_web(&client, &ns.name)
        .await?
        .into_iter()
        .filter(|(_, (_, _, deleting))| !deleting)
        .collect::<BTreeMap<_, _>>();
    ensure!(
        before
            .iter()
            .all(|(name, (uid, _, _))| after.get(name).is_some_and(|(now, _, _)| now == uid)),
        "pods replaced by the takeover of {argo_stable}: before {before:?}, after {after:?}"
    );
    let through_takeover: Vec<(i64, i64)> = seen
        .lock()
        .map(|s| s[taken.saturating_sub(1)..].to_vec())
        .unwrap_or_default();
    ensure!(
        through_takeover.iter().all(|w| *w == (100, 0)),
        "the weights moved during the takeover: {through_takeover:?}"
    );

    // Sluice's release moves them now: 20 to the canary at the first step, all back at the end.
    let from = seen.lock().map(|s| s.len()).unwrap_or_default();
    set_image(&rollouts, "registry.example/web:2.0.0").await?;
    eventually("Sluice's release to complete", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)
            && status.stable_rs.as_ref().is_some_and(|s| *s != hash))
        .then_some(()))
    })
    .await?;
    let under_sluice: Vec<(i64, i64)> = seen
        .lock()
        .map(|s| s[from.saturating_sub(1)..].to_vec())
        .unwrap_or_default();
    println!(
        "route weights under Argo {under_argo:?}, through the takeover {through_takeover:?}, under Sluice {under_sluice:?}"
    );
    ensure!(
        under_sluice.contains(&(80, 20)) && under_sluice.last() == Some(&(100, 0)),
        "Sluice did not move the route's weights: {under_sluice:?}"
    );
    Ok(())
}

/// The Rollout's takeover status: its phase and message.
async fn takeover_of(rollouts: &Api<Rollout>) -> Result<Option<(String, String)>> {
    Ok(rollouts
        .get_opt("web")
        .await?
        .and_then(|r| r.status)
        .and_then(|s| s.takeover)
        .map(|t| (t.phase, t.message)))
}

/// A pod template edited between the takeover's preparation and the adoption is refused at
/// adoption: the orphaned ReplicaSet keeps serving with the same pods, and setting the template
/// back completes the takeover. Before, the ReplicaSet was adopted as the edited revision, its pods
/// counted as the new version and the release's steps skipped.
#[tokio::test]
async fn a_template_edited_during_a_takeover_is_refused_at_adoption_and_the_pods_kept() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .get("rollouts.argoproj.io")
        .await
        .context("the cluster has no Argo Rollouts CRDs: restart it")?;
    let ns = TestNamespace::create(&client, "takeover-edit").await?;
    let UnderArgo { argo: _argo, .. } = serve_under_argo(&client, &ns.name, "web-stable").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let argo_api = argo_rollouts(&client, &ns.name);
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let sluice = |image: &str| {
        let mut manifest = argo_rollout(image);
        manifest["apiVersion"] = json!("sluice.dev/v1alpha1");
        // As Argo's stored template has it (the plugin copies that one).
        manifest["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        manifest["metadata"]["annotations"] =
            json!({sluice_api::names::TAKEOVER_ANNOTATION: "web"});
        manifest
    };
    let apply = |manifest: Value| {
        let rollouts = rollouts.clone();
        async move {
            rollouts
                .patch(
                    "web",
                    &kube::api::PatchParams::apply(sluice_e2e::FIELD_MANAGER).force(),
                    &kube::api::Patch::Apply(&manifest),
                )
                .await
                .map(drop)
        }
    };

    apply(sluice("registry.example/web:1.0.0")).await?;
    let prepared = eventually("the takeover prepared", WAIT, || async {
        Ok(takeover_of(&rollouts)
            .await?
            .filter(|(phase, _)| phase == "WaitingForArgoRolloutRemoval"))
    })
    .await;
    if let Err(error) = prepared {
        let status = rollouts.get("web").await?.status;
        bail!("{error:#}; the Rollout's status: {status:?}");
    }
    let before = pods_of_web(&client, &ns.name).await?;

    // Edited, then the Argo Rollout deleted with its ReplicaSets orphaned.
    apply(sluice("registry.example/web:1.1.0")).await?;
    argo_api
        .delete("web", &kube::api::DeleteParams::orphan())
        .await?;
    let (_, said) = eventually("the adoption refused", WAIT, || async {
        Ok(takeover_of(&rollouts)
            .await?
            .filter(|(phase, said)| phase == "Refused" && said.contains("not adopted")))
    })
    .await?;
    ensure!(said.contains("template changed"), "{said}");
    // Looked at again a few times: still refused, the same pods serving, none of Sluice's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let phase = takeover_of(&rollouts).await?.map(|(p, _)| p);
    ensure!(phase.as_deref() == Some("Refused"), "{phase:?}");
    let after = pods_of_web(&client, &ns.name).await?;
    ensure!(
        after.keys().eq(before.keys()),
        "the pods changed: {before:?} → {after:?}"
    );

    // Set back: adopted, pods and all.
    apply(sluice("registry.example/web:1.0.0")).await?;
    eventually("the takeover completed", WAIT, || async {
        Ok(takeover_of(&rollouts)
            .await?
            .filter(|(phase, _)| phase == "TakenOver"))
    })
    .await?;
    let adopted = pods_of_web(&client, &ns.name).await?;
    ensure!(
        adopted.keys().eq(before.keys()),
        "the pods changed at adoption: {before:?} → {adopted:?}"
    );
    Ok(())
}

/// A takeover waiting on the Argo Rollout (here one no Argo controller has observed) looks again
/// from one second, doubling to thirty, since each look reads the API server; the Argo Rollout's
/// deletion wakes it at once. Before, it read the Argo Rollout every second for as long as it
/// waited.
#[tokio::test]
async fn a_waiting_takeover_backs_off_and_is_woken_by_the_argo_rollouts_deletion() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "takeover-wait").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    controller.wait_ready().await?;
    let argo = argo_rollouts(&client, &ns.name);
    crate::analysis::apply(&argo, &argo_rollout("registry.example/web:1.0.0")).await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({"steps": [{"setWeight": 20}]}));
    manifest["metadata"]["annotations"] = json!({"sluice.dev/takeover-from": "web"});
    crate::analysis::apply(&rollouts, &manifest).await?;
    eventually("the takeover waiting for Argo", WAIT, || async {
        Ok(takeover_of(&rollouts)
            .await?
            .filter(|(phase, _)| phase == "WaitingForArgoRollout"))
    })
    .await?;

    let before = crate::requests::Counts::read(&controller).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let sent = crate::requests::Counts::read(&controller)
        .await?
        .since(&before);
    let looks = sent
        .get(&("get".to_owned(), "rollouts".to_owned()))
        .copied()
        .unwrap_or(0);
    println!("a takeover waiting 20 s: {looks} reads of the Argo Rollout ({sent:?})");
    ensure!(looks <= 6, "{looks} reads of the Argo Rollout in 20 s");

    // Its deletion wakes the takeover, whose next look would be 8 s or more away by now.
    let deleted = Instant::now();
    argo.delete("web", &Default::default()).await?;
    eventually("the takeover past waiting", WAIT, || async {
        Ok(takeover_of(&rollouts)
            .await?
            .filter(|(phase, _)| phase != "WaitingForArgoRollout"))
    })
    .await?;
    let took = deleted.elapsed();
    println!("the takeover looked again {took:?} after the Argo Rollout was deleted");
    ensure!(
        took < Duration::from_secs(5),
        "the deletion did not wake the takeover: {took:?}"
    );
    Ok(())
}
