//! Blue-green releases with the real controller: preview, promotion by hand and automatic, pre- and
//! post-promotion analysis, the switch back, and the active Service's endpoints never empty.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase, RolloutStatus};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);

fn prometheus_url() -> Result<String> {
    std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL is not set")
}

fn rollout(image: &str, blue_green: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"blueGreen": blue_green}
        }
    })
}

async fn create_services(client: &Client, ns: &str) -> Result<()> {
    sluice_e2e::create_services(client, ns, &[("web", "web-active"), ("web", "web-preview")])
        .await?;
    Ok(())
}

async fn apply(api: &Api<Rollout>, manifest: &Value) -> Result<()> {
    api.patch(
        "web",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await?;
    Ok(())
}

async fn request(api: &Api<Rollout>, action: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": action}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn wait_status(
    api: &Api<Rollout>,
    what: &str,
    check: impl Fn(&RolloutStatus) -> bool,
) -> Result<RolloutStatus> {
    eventually(what, WAIT, || async {
        let ro = api.get("web").await?;
        let status = ro.status.clone().unwrap_or_default();
        Ok(
            (status.observed_generation == ro.metadata.generation && check(&status))
                .then_some(status),
        )
    })
    .await
}

async fn selector(client: &Client, ns: &str, service: &str) -> Result<Option<String>> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    Ok(services
        .get(service)
        .await?
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned()))
}

async fn replica_sets(client: &Client, ns: &str) -> Result<BTreeMap<String, (i32, i32)>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|rs| {
            (
                rs.labels()
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                (
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    rs.status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0),
                ),
            )
        })
        .collect())
}

/// (pod-template hash, `role` label) of each pod that is not being deleted.
async fn pod_roles(client: &Client, ns: &str) -> Result<Vec<(String, Option<String>)>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.labels()
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                p.labels().get("role").cloned(),
            )
        })
        .collect())
}

/// Samples the active Service every 50 ms and records any moment it selected a ReplicaSet that was
/// not fully available.
fn guard_active(client: &Client, ns: &str) -> Arc<Mutex<Vec<String>>> {
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let (client, ns, log) = (client.clone(), ns.to_owned(), problems.clone());
    tokio::spawn(async move {
        loop {
            if let (Ok(Some(active)), Ok(sets)) = (
                selector(&client, &ns, "web-active").await,
                replica_sets(&client, &ns).await,
            ) {
                let ok = sets.get(&active).is_some_and(|(r, a)| *r > 0 && a >= r);
                if !ok && let Ok(mut log) = log.lock() {
                    log.push(format!("active on {active}: {:?}", sets.get(&active)));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    problems
}

/// Watches the active Service's EndpointSlices and records each moment with no ready endpoint.
fn guard_endpoints(client: &Client, ns: &str) -> Arc<Mutex<Vec<usize>>> {
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let log = seen.clone();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let stream = watcher(
        api,
        watcher::Config::default().labels("kubernetes.io/service-name=web-active"),
    );
    tokio::spawn(async move {
        let mut slices: BTreeMap<String, usize> = BTreeMap::new();
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(Ok(event)) = stream.next().await {
            let ready = |s: &EndpointSlice| {
                s.endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                    .count()
            };
            match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    slices.insert(s.name_any(), ready(&s));
                }
                watcher::Event::Delete(s) => {
                    slices.remove(&s.name_any());
                }
                _ => continue,
            }
            if let Ok(mut log) = log.lock() {
                log.push(slices.values().sum());
            }
        }
    });
    seen
}

#[tokio::test]
async fn blue_green_promotes_automatically_with_active_never_unavailable() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bg-auto").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_services(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let strategy = json!({"activeService": "web-active", "previewService": "web-preview", "scaleDownDelaySeconds": 2});
    apply(
        &api,
        &rollout("registry.example/web:1.0.0", strategy.clone()),
    )
    .await?;
    let first = wait_status(&api, "the first revision to be active", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let blue = first.stable_rs.clone().context("stable")?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(blue.clone())
    );
    let problems = guard_active(&client, &ns.name);
    let endpoints = guard_endpoints(&client, &ns.name);
    eventually(
        "ready endpoints behind the active Service",
        WAIT,
        || async {
            Ok(endpoints
                .lock()
                .ok()
                .and_then(|e| e.last().copied())
                .filter(|n| *n == 3)
                .map(|_| ()))
        },
    )
    .await?;

    apply(&api, &rollout("registry.example/web:2.0.0", strategy)).await?;
    let done = wait_status(&api, "green to be promoted", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() != Some(blue.as_str())
    })
    .await?;
    let green = done.stable_rs.clone().context("stable")?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(green.clone())
    );
    assert_eq!(
        done.blue_green
            .as_ref()
            .and_then(|b| b.active_selector.clone()),
        Some(green.clone())
    );
    eventually("blue to scale down after its delay", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok((sets.get(&blue) == Some(&(0, 0)) && sets.get(&green) == Some(&(3, 3))).then_some(()))
    })
    .await?;
    let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
    ensure!(
        problems.is_empty(),
        "active pointed at an unavailable ReplicaSet: {problems:?}"
    );
    let counts = endpoints.lock().map(|e| e.clone()).unwrap_or_default();
    ensure!(
        !counts.is_empty() && counts.iter().all(|n| *n > 0),
        "the active Service had no ready endpoint at some moment: {counts:?}"
    );
    Ok(())
}

#[tokio::test]
async fn blue_green_waits_for_a_person_then_switches_and_abort_switches_back() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bg-manual").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_services(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let strategy = json!({"activeService": "web-active", "previewService": "web-preview",
                          "autoPromotionEnabled": false, "previewReplicaCount": 1, "abortScaleDownDelaySeconds": 1,
                          "activeMetadata": {"labels": {"role": "active"}}, "previewMetadata": {"labels": {"role": "preview"}}});
    apply(
        &api,
        &rollout("registry.example/web:1.0.0", strategy.clone()),
    )
    .await?;
    let first = wait_status(&api, "blue active", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let blue = first.stable_rs.clone().context("stable")?;
    let endpoints = guard_endpoints(&client, &ns.name);

    apply(
        &api,
        &rollout("registry.example/web:2.0.0", strategy.clone()),
    )
    .await?;
    let paused = wait_status(&api, "green waiting for promotion", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let green = paused.current_pod_hash.clone().context("hash")?;
    assert_eq!(
        selector(&client, &ns.name, "web-preview").await?,
        Some(green.clone())
    );
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(blue.clone())
    );
    let sets = replica_sets(&client, &ns.name).await?;
    assert_eq!(
        sets.get(&green),
        Some(&(1, 1)),
        "preview at previewReplicaCount: {sets:?}"
    );
    eventually("role labels on each version's pods", WAIT, || async {
        let roles = pod_roles(&client, &ns.name).await?;
        let ok = roles.iter().all(|(hash, role)| {
            (hash == &blue && role.as_deref() == Some("active"))
                || (hash == &green && role.as_deref() == Some("preview"))
        });
        Ok((ok && roles.len() == 4).then_some(()))
    })
    .await?;
    let out = sluice_e2e::kubectl_sluice(&ns.name, &["get", "rollout", "web"])?;
    let view = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "Strategy:   BlueGreen",
        "waiting for promotion",
        "[active]",
        "[preview]",
    ] {
        ensure!(
            view.contains(expected),
            "`get rollout` lacks {expected:?}:\n{view}"
        );
    }
    request(&api, "promote").await?;
    wait_status(&api, "green active", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() == Some(green.as_str())
    })
    .await?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(green.clone())
    );
    eventually("green's pods labelled active", WAIT, || async {
        let roles = pod_roles(&client, &ns.name).await?;
        let green_active = roles
            .iter()
            .filter(|(h, _)| h == &green)
            .all(|(_, r)| r.as_deref() == Some("active"));
        let blue_unlabelled = roles
            .iter()
            .filter(|(h, _)| h == &blue)
            .all(|(_, r)| r.is_none());
        Ok((green_active && blue_unlabelled).then_some(()))
    })
    .await?;

    // A third version, aborted while it waits: active stays on green, the preview goes.
    apply(&api, &rollout("registry.example/web:3.0.0", strategy)).await?;
    let waiting = wait_status(&api, "v3 waiting", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let v3 = waiting.current_pod_hash.clone().context("hash")?;
    request(&api, "abort").await?;
    wait_status(&api, "the abort", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(green.clone())
    );
    // No Service selects the aborted version: the preview serves green too.
    eventually("the preview on green after the abort", WAIT, || async {
        Ok(
            (selector(&client, &ns.name, "web-preview").await? == Some(green.clone()))
                .then_some(()),
        )
    })
    .await?;
    eventually("v3 scaled down after its abort delay", WAIT, || async {
        Ok((replica_sets(&client, &ns.name)
            .await?
            .get(&v3)
            .map(|(r, _)| *r)
            == Some(0))
        .then_some(()))
    })
    .await?;
    // Retry brings v3 back up behind the preview; undo puts green's template back (the fast path).
    request(&api, "retry").await?;
    wait_status(&api, "v3 waiting again after the retry", |s| {
        !s.abort
            && s.phase == Some(RolloutPhase::Paused)
            && s.current_pod_hash.as_deref() == Some(v3.as_str())
    })
    .await?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(green.clone())
    );
    let out = sluice_e2e::kubectl_sluice(&ns.name, &["undo", "web"])?;
    ensure!(
        out.status.success(),
        "undo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_status(&api, "the undo back to green", |s| {
        s.phase == Some(RolloutPhase::Healthy)
            && s.current_pod_hash.as_deref() == Some(green.as_str())
    })
    .await?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(green.clone())
    );
    let counts = endpoints.lock().map(|e| e.clone()).unwrap_or_default();
    ensure!(
        counts.iter().all(|n| *n > 0),
        "no ready endpoint at some moment: {counts:?}"
    );
    Ok(())
}

#[tokio::test]
async fn blue_green_auto_promotion_waits_auto_promotion_seconds() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bg-delay").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_services(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let strategy = json!({"activeService": "web-active", "previewService": "web-preview", "autoPromotionSeconds": 4});
    apply(
        &api,
        &rollout("registry.example/web:1.0.0", strategy.clone()),
    )
    .await?;
    let first = wait_status(&api, "blue active", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let blue = first.stable_rs.clone().context("stable")?;
    apply(&api, &rollout("registry.example/web:2.0.0", strategy)).await?;
    let started = std::time::Instant::now();
    wait_status(&api, "green promoted", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() != Some(blue.as_str())
    })
    .await?;
    // Status times have whole seconds, so the wait may end up to a second early.
    ensure!(
        started.elapsed() >= Duration::from_secs(3),
        "promoted after {:?}",
        started.elapsed()
    );
    Ok(())
}

fn analysis_template(name: &str, condition: &str) -> Result<Value> {
    Ok(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": name},
        "spec": {"metrics": [{"name": "up", "count": 1, "successCondition": condition,
            "provider": {"prometheus": {"address": prometheus_url()?, "query": "vector(1)"}}}]}
    }))
}

#[tokio::test]
async fn failing_pre_promotion_analysis_aborts_and_failing_post_promotion_switches_back()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bg-analysis").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    create_services(&client, &ns.name).await?;
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), &ns.name);
    for (name, condition) in [
        ("passes", "result[0] == 1.0"),
        ("fails", "result[0] == 2.0"),
    ] {
        templates
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&analysis_template(name, condition)?),
            )
            .await?;
    }
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let strategy = |pre: &str, post: &str| {
        json!({"activeService": "web-active", "previewService": "web-preview", "abortScaleDownDelaySeconds": 1,
               "prePromotionAnalysis": {"templates": [{"templateName": pre}]},
               "postPromotionAnalysis": {"templates": [{"templateName": post}]}})
    };
    apply(
        &api,
        &rollout("registry.example/web:1.0.0", strategy("passes", "passes")),
    )
    .await?;
    let first = wait_status(&api, "blue active", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let blue = first.stable_rs.clone().context("stable")?;

    // Pre-promotion fails: active never moves.
    let problems = guard_active(&client, &ns.name);
    apply(
        &api,
        &rollout("registry.example/web:2.0.0", strategy("fails", "passes")),
    )
    .await?;
    let aborted = wait_status(&api, "pre-promotion to abort", |s| s.abort).await?;
    ensure!(
        aborted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("pre-promotion")),
        "{:?}",
        aborted.message
    );
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(blue.clone())
    );

    // Post-promotion fails: active goes back to blue, which was never scaled down.
    apply(
        &api,
        &rollout("registry.example/web:3.0.0", strategy("passes", "fails")),
    )
    .await?;
    let back = wait_status(&api, "post-promotion to switch back", |s| {
        s.abort && s.current_pod_hash.as_deref() != aborted.current_pod_hash.as_deref()
    })
    .await?;
    ensure!(
        back.message
            .as_deref()
            .is_some_and(|m| m.contains("post-promotion")),
        "{:?}",
        back.message
    );
    assert_eq!(back.stable_rs.as_deref(), Some(blue.as_str()));
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(blue.clone())
    );
    let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
    ensure!(
        problems.is_empty(),
        "active pointed at an unavailable ReplicaSet: {problems:?}"
    );
    Ok(())
}

#[tokio::test]
async fn three_quick_image_changes_end_on_the_last_and_a_killed_controller_resumes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bg-quick").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
    create_services(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let strategy = json!({"activeService": "web-active", "previewService": "web-preview", "scaleDownDelaySeconds": 1});
    apply(
        &api,
        &rollout("registry.example/web:1.0.0", strategy.clone()),
    )
    .await?;
    wait_status(&api, "blue active", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let problems = guard_active(&client, &ns.name);
    for v in ["2.0.0", "3.0.0", "4.0.0"] {
        apply(
            &api,
            &rollout(&format!("registry.example/web:{v}"), strategy.clone()),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Killed in the middle of it all, and started again.
    controller.kill()?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let done = wait_status(&api, "the last version to be active", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
    })
    .await?;
    let last = done.stable_rs.context("stable")?;
    assert_eq!(
        selector(&client, &ns.name, "web-active").await?,
        Some(last.clone())
    );
    let image = api
        .get("web")
        .await?
        .spec
        .template
        .and_then(|t| t.spec)
        .map(|s| s.containers[0].image.clone());
    assert_eq!(image, Some(Some("registry.example/web:4.0.0".to_owned())));
    let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
    ensure!(
        problems.is_empty(),
        "active pointed at an unavailable ReplicaSet: {problems:?}"
    );
    Ok(())
}
