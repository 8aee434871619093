//! Sluice's API as users meet it: `kubectl apply -f crds/`, the samples, defaults, `kubectl explain`,
//! `kubectl get` columns, short names and category, and the scale and status subresources.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams, PostParams};
use sluice_api::analysis::AnalysisTemplate;
use sluice_api::gate::ErrorBudgetGate;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_api::{AnalysisRun, ClusterAnalysisTemplate};
use sluice_e2e::{
    FIELD_MANAGER, TestNamespace, client, eventually, install_crds, kubectl, kubectl_stdout,
    repo_root, yaml_documents,
};

/// The plain client-side apply that users run must work: the Rollout CRD embeds a pod template and
/// must stay under the 256 KiB last-applied-configuration limit.
#[tokio::test]
async fn plain_kubectl_apply_installs_the_crds() -> Result<()> {
    let out = kubectl_stdout(&["apply", "-f", "crds/"])?;
    for plural in [
        "rollouts",
        "analysistemplates",
        "clusteranalysistemplates",
        "analysisruns",
        "errorbudgetgates",
    ] {
        ensure!(
            out.contains(&format!("{plural}.sluice.dev")),
            "no {plural} in: {out}"
        );
    }
    ensure!(
        out.contains(
            "validatingadmissionpolicy.admissionregistration.k8s.io/sluice-immutable-images"
        ) && out.contains(
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/sluice-immutable-images"
        ),
        "no image policy in: {out}"
    );
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let crds: Vec<String> = std::fs::read_dir(sluice_e2e::repo_root().join("crds"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sluice.dev_"))
        .map(|name| format!("crds/{name}"))
        .collect();
    for crd in &crds {
        wait.extend(["-f", crd.as_str()]);
    }
    kubectl_stdout(&wait)?;
    Ok(())
}

#[tokio::test]
async fn every_sample_in_config_is_accepted_and_reads_back() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "samples").await?;
    let config = repo_root().join("config");
    let mut expected = Vec::new();
    for entry in std::fs::read_dir(&config)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in yaml_documents(&std::fs::read_to_string(&path)?)? {
                let kind = doc["kind"]
                    .as_str()
                    .context("document without kind")?
                    .to_owned();
                let name = doc["metadata"]["name"]
                    .as_str()
                    .context("document without name")?
                    .to_owned();
                expected.push((kind, name));
            }
        }
    }
    ensure!(
        expected.len() >= 8,
        "expected the samples in config/, found {expected:?}"
    );
    kubectl_stdout(&["apply", "-n", &ns.name, "-f", "config/"]).context("applying config/")?;

    // Each Sluice object reads back into the Rust types the controller uses.
    for (kind, name) in &expected {
        match kind.as_str() {
            "Rollout" => drop(
                Api::<Rollout>::namespaced(client.clone(), &ns.name)
                    .get(name)
                    .await?,
            ),
            "AnalysisTemplate" => drop(
                Api::<AnalysisTemplate>::namespaced(client.clone(), &ns.name)
                    .get(name)
                    .await?,
            ),
            "ClusterAnalysisTemplate" => drop(
                Api::<ClusterAnalysisTemplate>::all(client.clone())
                    .get(name)
                    .await?,
            ),
            "ErrorBudgetGate" => drop(
                Api::<ErrorBudgetGate>::namespaced(client.clone(), &ns.name)
                    .get(name)
                    .await?,
            ),
            _ => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn defaults_are_filled_in_by_the_api_server() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "defaults").await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let minimal: Rollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "minimal"},
        "spec": {
            "selector": {"matchLabels": {"app": "minimal"}},
            "template": {"metadata": {"labels": {"app": "minimal"}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0.0"}]}},
            "strategy": {"canary": {}}
        }
    }))?;
    // Send only what the user wrote: the typed struct would carry Rust-side defaults.
    let raw = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "minimal"},
        "spec": {"selector": minimal.spec.selector, "template": minimal.spec.template, "strategy": {"canary": {}}}
    });
    rollouts
        .patch(
            "minimal",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&raw),
        )
        .await?;
    let stored = rollouts.get("minimal").await?;
    assert_eq!(stored.spec.replicas, 1);
    assert_eq!(stored.spec.revision_history_limit, 10);
    assert_eq!(stored.spec.progress_deadline_seconds, 600);

    let gates: Api<ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
    let gate = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "slo"},
        "spec": {
            "selector": {"matchLabels": {"app": "minimal"}},
            "objective": 99.5,
            "sli": {"sloth": {"service": "minimal", "slo": "availability"}},
            "prometheus": {"address": "http://prometheus:9090"}
        }
    });
    gates
        .patch(
            "slo",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&gate),
        )
        .await?;
    let gate = gates.get("slo").await?;
    assert_eq!(gate.spec.window, "28d");
    assert_eq!(gate.spec.evaluation_interval, "1m");
    assert_eq!(gate.spec.thresholds.freeze_below, 10.0);
    assert_eq!(gate.spec.thresholds.unfreeze_above, 15.0);
    assert_eq!(gate.spec.burn_rate_alerts.len(), 2);
    assert_eq!(gate.spec.burn_rate_alerts[0].factor, 14.4);
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    // The OpenAPI document is published a moment after the CRD is established.
    let out = eventually(
        "kubectl explain to know Rollout",
        Duration::from_secs(30),
        || async {
            // Qualified: Argo Rollouts' Rollout (installed beside Sluice's in the test cluster) has
            // the same plural.
            let out = kubectl(&[
                "explain",
                "rollouts.spec.strategy.canary.steps",
                "--api-version=sluice.dev/v1alpha1",
            ])?;
            Ok(out
                .status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
        },
    )
    .await?;
    for expected in [
        "setWeight",
        "Percentage of traffic sent to the canary",
        "setMirrorRoute",
        "pause",
    ] {
        ensure!(
            out.contains(expected),
            "`kubectl explain` lacks {expected:?}:\n{out}"
        );
    }
    let gate = kubectl_stdout(&["explain", "errorbudgetgate.spec.thresholds.unfreezeAbove"])?;
    ensure!(
        gate.contains("A frozen gate opens again only above this"),
        "{gate}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_get_has_short_names_category_and_columns() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "columns").await?;
    kubectl_stdout(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "config/rollout-canary.yaml",
        "-f",
        "config/errorbudgetgate.yaml",
    ])?;

    // The controller writes status; here the test does, to see the columns fill in.
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let status = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "checkout"},
        "status": {
            "phase": "Paused", "message": "waiting at step 2/7", "stepProgress": "2/7", "currentStepIndex": 1,
            "replicas": 5, "updatedReplicas": 1, "readyReplicas": 5, "availableReplicas": 5,
            "canary": {"weights": {"canary": {"weight": 5}, "stable": {"weight": 95}}}
        }
    });
    rollouts
        .patch_status(
            "checkout",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&status),
        )
        .await?;
    let stored = rollouts.get("checkout").await?;
    assert_eq!(
        stored.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Paused)
    );

    // `sro`: Sluice's own short name (`ro` is Argo Rollouts' too).
    let table = kubectl_stdout(&["get", "sro", "-n", &ns.name])?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "UP-TO-DATE",
            "AVAILABLE",
            "STEP",
            "WEIGHT",
            "PHASE",
            "MESSAGE",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..8],
        ["checkout", "4", "5", "1", "5", "2/7", "5", "Paused"]
    );

    let wide = kubectl_stdout(&["get", "rollouts.sluice.dev", "-n", &ns.name, "-o", "wide"])?;
    ensure!(wide.contains("waiting at step 2/7"), "{wide}");

    let category = kubectl_stdout(&["get", "sluice", "-n", &ns.name])?;
    ensure!(
        category.contains("rollout.sluice.dev/checkout"),
        "{category}"
    );
    ensure!(
        category.contains("errorbudgetgate.sluice.dev/checkout-slo"),
        "{category}"
    );

    let gates = kubectl_stdout(&["get", "ebg", "-n", &ns.name])?;
    ensure!(
        gates.starts_with("NAME") && gates.contains("BUDGET LEFT") && gates.contains("99.9"),
        "{gates}"
    );
    for short in ["sat", "scat", "sar"] {
        kubectl_stdout(&["get", short, "-n", &ns.name])?;
    }
    // Where Argo Rollouts' CRDs are installed (the test cluster has them), the bare names are
    // Argo's: what the README, the demo and the chart's notes never use.
    let argo_installed = kubectl(&["get", "crd", "rollouts.argoproj.io"])?
        .status
        .success();
    if argo_installed {
        let bare = kubectl_stdout(&["get", "ro", "-n", &ns.name])?;
        ensure!(
            !bare.contains("checkout"),
            "`ro` resolved to Sluice's Rollout: {bare}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn scale_subresource_lets_an_autoscaler_resize_a_rollout() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scale").await?;
    kubectl_stdout(&["apply", "-n", &ns.name, "-f", "config/rollout-canary.yaml"])?;
    kubectl_stdout(&[
        "scale",
        "-n",
        &ns.name,
        "rollouts.sluice.dev/checkout",
        "--replicas=7",
    ])?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(rollouts.get("checkout").await?.spec.replicas, 7);
    let scale = rollouts.get_scale("checkout").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(7));
    Ok(())
}

#[tokio::test]
async fn analysis_run_records_measurements_in_status() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "runs").await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let run: AnalysisRun = serde_json::from_value(serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun", "metadata": {"name": "checkout-7d9f-2"},
        "spec": {"metrics": [{
            "name": "error-rate", "interval": "30s", "count": 3,
            "successCondition": "result[0] < 0.01",
            "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "vector(0)"}}
        }]}
    }))?;
    runs.create(&PostParams::default(), &run).await?;
    let status = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun", "metadata": {"name": "checkout-7d9f-2"},
        "status": {"phase": "Running", "metricResults": [{
            "name": "error-rate", "phase": "Running", "count": 1, "successful": 1,
            "measurements": [{"phase": "Successful", "value": "[0.0042]",
                              "startedAt": "2026-11-22T10:00:00Z", "finishedAt": "2026-11-22T10:00:01Z"}]
        }]}
    });
    runs.patch_status(
        "checkout-7d9f-2",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&status),
    )
    .await?;
    let stored = runs.get("checkout-7d9f-2").await?;
    let results = stored.status.context("status")?.metric_results;
    assert_eq!(
        results[0].measurements[0].value.as_deref(),
        Some("[0.0042]")
    );
    let table = kubectl_stdout(&["get", "analysisruns.sluice.dev", "-n", &ns.name])?;
    ensure!(table.contains("Running"), "{table}");
    Ok(())
}
