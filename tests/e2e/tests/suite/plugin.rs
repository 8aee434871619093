//! `kubectl sluice`: requests, status exit codes, undo and the release view, against the real controller.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

fn sluice(namespace: &str, args: &[&str]) -> Result<Output> {
    sluice_e2e::kubectl_sluice(namespace, args)
}

fn ok(out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "kubectl sluice failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn phase_is(api: &Api<Rollout>, what: &str, want: RolloutPhase) -> Result<Rollout> {
    eventually(what, Duration::from_secs(60), || async {
        let ro = api.get("web").await?;
        let status = ro.status.clone().unwrap_or_default();
        let current = status.observed_generation == ro.metadata.generation;
        Ok((current && status.phase == Some(want)).then_some(ro))
    })
    .await
}

#[tokio::test]
async fn kubectl_sluice_drives_a_release() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "plugin").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
            "strategy": {"canary": {"maxSurge": 1, "maxUnavailable": 0, "steps": [{"setWeight": 50}, {"pause": {}}]}}
        }
    });
    api.patch(
        "web",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&manifest),
    )
    .await?;
    let out = sluice(&ns.name, &["status", "web", "--timeout", "60"])?;
    ensure!(
        out.status.code() == Some(0),
        "status of a healthy rollout: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let first = api
        .get("web")
        .await?
        .status
        .unwrap_or_default()
        .stable_rs
        .context("stable")?;

    let image = |tag: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": format!("registry.example/web:{tag}")}]}}}});
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&image("2.0.0")),
    )
    .await?;
    phase_is(&api, "a pause at 50%", RolloutPhase::Paused).await?;
    let expected = [
        "⏸ Paused",
        "✔ 1. setWeight: 50",
        "▶ 2. pause: until promoted",
        "[canary] 1/1 available",
        "[stable] 1/1 available",
        "registry.example/web:2.0.0",
    ];
    // The old ReplicaSet's status may still count the pod it is removing for a moment.
    let mut last = String::new();
    let shown = eventually(
        "`get rollout` to show the pause",
        Duration::from_secs(30),
        || {
            let view = sluice(&ns.name, &["get", "rollout", "web"]).and_then(ok);
            if let Ok(view) = &view {
                last.clone_from(view);
            }
            async move {
                let view = view?;
                Ok(expected.iter().all(|e| view.contains(e)).then_some(()))
            }
        },
    )
    .await;
    ensure!(
        shown.is_ok(),
        "`get rollout` lacks one of {expected:?}:\n{last}"
    );

    // pause / resume are recorded as a reason of their own.
    ok(sluice(&ns.name, &["pause", "web"])?)?;
    eventually(
        "a PausedByUser condition",
        Duration::from_secs(30),
        || async {
            let s = api.get("web").await?.status.unwrap_or_default();
            Ok(s.pause_conditions
                .iter()
                .any(|p| p.reason == "PausedByUser")
                .then_some(()))
        },
    )
    .await?;
    ok(sluice(&ns.name, &["resume", "web"])?)?;
    ok(sluice(&ns.name, &["promote", "web"])?)?;
    let out = sluice(&ns.name, &["status", "web", "--timeout", "60"])?;
    ensure!(
        out.status.code() == Some(0),
        "status after promote: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let second = api
        .get("web")
        .await?
        .status
        .unwrap_or_default()
        .stable_rs
        .context("stable")?;
    ensure!(second != first, "the release did not complete");

    // Undo puts the previous template back as a new release; promote --full skips its steps.
    ok(sluice(&ns.name, &["undo", "web"])?)?;
    phase_is(&api, "the undo release to pause", RolloutPhase::Paused).await?;
    ok(sluice(&ns.name, &["promote", "web", "--full"])?)?;
    let back = phase_is(&api, "the undo to complete", RolloutPhase::Healthy).await?;
    assert_eq!(
        back.status.unwrap_or_default().stable_rs.as_deref(),
        Some(first.as_str())
    );

    // An aborted release makes `status` exit 1.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&image("3.0.0")),
    )
    .await?;
    phase_is(&api, "a pause at 50%", RolloutPhase::Paused).await?;
    ok(sluice(&ns.name, &["abort", "web"])?)?;
    let out = sluice(&ns.name, &["status", "web", "--timeout", "60"])?;
    ensure!(
        out.status.code() == Some(1),
        "status of an aborted rollout: {:?}",
        out.status
    );
    ok(sluice(&ns.name, &["retry", "rollout", "web"])?)?;
    phase_is(&api, "the retried release to pause", RolloutPhase::Paused).await?;

    // A short timeout while paused exits 2.
    let out = sluice(&ns.name, &["status", "web", "--timeout", "1"])?;
    ensure!(
        out.status.code() == Some(2),
        "status timeout: {:?}",
        out.status
    );
    Ok(())
}

/// Pods of the Rollout that serve: Ready and not being deleted.
fn serving(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

#[tokio::test]
async fn kubectl_sluice_restart_replaces_every_pod_within_max_unavailable() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "restart-pods").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
            "strategy": {"canary": {"maxSurge": 0, "maxUnavailable": 1, "steps": [{"setWeight": 50}]}}
        }
    });
    api.patch(
        "web",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&manifest),
    )
    .await?;
    phase_is(&api, "the first revision", RolloutPhase::Healthy).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let app = ListParams::default().labels("app=web");
    let before: Vec<String> = eventually("4 serving pods", Duration::from_secs(60), || async {
        let list = pods.list(&app).await?.items;
        Ok((serving(&list) == 4 && list.len() == 4)
            .then(|| list.iter().map(ResourceExt::name_any).collect()))
    })
    .await?;

    ok(sluice(&ns.name, &["restart", "web"])?)?;
    // Watch capacity while the pods are replaced: never more than maxUnavailable (1) missing.
    let mut fewest = usize::MAX;
    let started = std::time::Instant::now();
    let restarted = loop {
        let list = pods.list(&app).await?.items;
        fewest = fewest.min(serving(&list));
        let rollout = api.get("web").await?;
        let status = rollout.status.unwrap_or_default();
        let names: Vec<String> = list.iter().map(ResourceExt::name_any).collect();
        if status.restarted_at.is_some() {
            break (status, names);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "restart did not finish: {names:?}, {:?}",
            status.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, after) = restarted;
    ensure!(fewest >= 3, "capacity fell to {fewest} serving pods of 4");
    ensure!(
        after.iter().all(|name| !before.contains(name)),
        "pods survived the restart: before {before:?}, after {after:?}"
    );
    ensure!(
        status.restart_requested_at.is_some(),
        "the request is not recorded"
    );
    phase_is(&api, "healthy after the restart", RolloutPhase::Healthy).await?;
    let annotations = api
        .get("web")
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    ensure!(
        !annotations.contains_key("sluice.dev/action"),
        "the request was not cleared"
    );
    let events = sluice_e2e::kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "reason=RolloutRestarted",
        "-o",
        "name",
    ])?;
    ensure!(!events.stdout.is_empty(), "no RolloutRestarted event");
    Ok(())
}
