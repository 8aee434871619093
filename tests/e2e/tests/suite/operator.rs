//! The operator's own endpoints: `/healthz`, `/readyz` after the first list, and `/metrics` with
//! the phase of each Rollout and its aborts.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);

async fn get(base: &str, path: &str) -> Result<String> {
    sluice_e2e::http_get(base, path).await
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    eventually("/healthz", WAIT, || async {
        Ok(get(&controller.http, "/healthz")
            .await
            .ok()
            .filter(|b| b == "ok"))
    })
    .await?;
    eventually("/readyz after the first list", WAIT, || async {
        Ok(get(&controller.http, "/readyz")
            .await
            .ok()
            .filter(|b| b == "ok"))
    })
    .await?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = |image: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"canary": {"maxSurge": 1, "maxUnavailable": 0, "steps": [{"setWeight": 50}, {"pause": {}}]}}
            }
        })
    };
    let apply = |image: &'static str| {
        let api = api.clone();
        let manifest = manifest(image);
        async move {
            api.patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
        }
    };
    apply("registry.example/web:1.0.0").await?;
    apply_wait(&api, RolloutPhase::Healthy).await?;
    apply("registry.example/web:2.0.0").await?;
    apply_wait(&api, RolloutPhase::Paused).await?;
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": "abort"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    apply_wait(&api, RolloutPhase::Degraded).await?;

    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let ns_name = ns.name.clone();
    let body = eventually("the abort in /metrics", WAIT, || async {
        let body = get(&controller.http, "/metrics").await?;
        let degraded = series(
            "sluice_rollout_phase",
            &format!("namespace=\"{ns_name}\",rollout=\"web\",phase=\"Degraded\""),
        );
        Ok(body
            .lines()
            .any(|l| l.starts_with(&degraded) && l.ends_with(" 1"))
            .then_some(body))
    })
    .await?;
    let aborts = series(
        "sluice_rollout_aborts_total",
        &format!("namespace=\"{}\",rollout=\"web\"", ns.name),
    );
    ensure!(
        body.lines()
            .any(|l| l.starts_with(&aborts) && l.ends_with(" 1")),
        "no abort counted:\n{body}"
    );
    let healthy = series(
        "sluice_rollout_phase",
        &format!(
            "namespace=\"{}\",rollout=\"web\",phase=\"Healthy\"",
            ns.name
        ),
    );
    ensure!(
        body.lines()
            .any(|l| l.starts_with(&healthy) && l.ends_with(" 0")),
        "phases other than the current one are 0:\n{body}"
    );
    ensure!(
        body.contains("sluice_rollout_reconcile_duration_seconds_bucket"),
        "{body}"
    );

    // Deleted, the Rollout leaves /metrics: its series are not reported for ever.
    api.delete("web", &Default::default()).await?;
    let about_web = format!("namespace=\"{}\",rollout=\"web\"", ns.name);
    eventually("the deleted Rollout's series to go", WAIT, || async {
        let body = get(&controller.http, "/metrics").await?;
        Ok((!body.contains(&about_web)).then_some(()))
    })
    .await?;
    Ok(())
}

async fn apply_wait(api: &Api<Rollout>, phase: RolloutPhase) -> Result<()> {
    eventually(&format!("phase {phase:?}"), WAIT, || async {
        let ro = api.get("web").await?;
        let status = ro.status.clone().context("status")?;
        Ok(
            (status.observed_generation == ro.metadata.generation && status.phase == Some(phase))
                .then_some(()),
        )
    })
    .await
}
