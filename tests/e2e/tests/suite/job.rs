//! The job metric provider on the real control plane: each measurement is a Job the run owns, run by
//! kube-controller-manager's Job controller on kwok's nodes (which complete a Job's pods, or fail
//! those annotated `kwok.sluice.dev/fail`). A completing Job lets the release go on; a failing one
//! aborts it; a Job the API server refuses is an Error.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{ControllerProcess, TestNamespace, client, eventually, install_crds};

use crate::analysis::{apply, rollout, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(90);

/// A template whose one metric runs a smoke-test Job; `fail` marks its pod to fail.
fn template(fail: bool) -> Value {
    let annotations = if fail {
        json!({"kwok.sluice.dev/fail": "true"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "smoke"},
        "spec": {
            "args": [{"name": "target"}],
            "metrics": [{
                "name": "smoke",
                "provider": {"job": {
                    "metadata": {"labels": {"purpose": "smoke-test"}},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": {"annotations": annotations},
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "smoke", "image": "registry.example/smoke:1",
                                                "args": ["--target", "{{args.target}}"]}]
                            }
                        }
                    }
                }}
            }]
        }
    })
}

/// One step of traffic, then the smoke-test analysis.
fn canary() -> Value {
    json!({"maxSurge": 1, "maxUnavailable": 0, "steps": [
        {"setWeight": 50},
        {"analysis": {"templates": [{"templateName": "smoke"}],
                      "args": [{"name": "target", "value": "http://web-canary"}]}}
    ]})
}

#[tokio::test]
async fn a_job_metric_passes_on_a_completed_job_and_aborts_on_a_failed_one() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "job-metric").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let templates = Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name);
    apply(&templates, &template(false)).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, &rollout(canary())).await?;
    let first = wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let stable = first.stable_rs.context("stable")?;

    set_image(&api, "registry.example/web:2.0.0").await?;
    let done = wait_status(&api, "the release to complete on a completed Job", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let run = runs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .context("a run")?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(AnalysisPhase::Successful));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs
        .list(&ListParams::default().labels("purpose=smoke-test"))
        .await?
        .items
        .into_iter()
        .next()
        .context("the Job")?;
    ensure!(
        job.owner_references()
            .iter()
            .any(|o| o.kind == "AnalysisRun" && o.name == run.name_any()),
        "the Job is owned by the run: {:?}",
        job.owner_references()
    );
    let container = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("container")?;
    ensure!(
        container.args.as_deref()
            == Some(&["--target".to_owned(), "http://web-canary".to_owned()][..]),
        "the argument is filled in: {:?}",
        container.args
    );
    let measured = &status.metric_results[0];
    ensure!(
        (measured.count, measured.successful) == (1, 1),
        "one measurement, successful: {measured:?}"
    );

    // A Job whose pod fails: the release aborts back to stable, naming the Job.
    apply(&templates, &template(true)).await?;
    let released = done.stable_rs.context("stable")?;
    set_image(&api, "registry.example/web:3.0.0").await?;
    let aborted = wait_status(&api, "the failed Job to abort the release", |s| s.abort).await?;
    ensure!(
        aborted.stable_rs.as_deref() == Some(released.as_str()),
        "stable moved"
    );
    let message = aborted.message.unwrap_or_default();
    ensure!(
        message.contains("smoke") && message.contains("failed"),
        "{message}"
    );

    // A Job the API server refuses (restartPolicy Always) is an Error at once.
    let mut refused = template(false);
    refused["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]["restartPolicy"] =
        json!("Always");
    refused["spec"]["metrics"][0]["consecutiveErrorLimit"] = json!(0);
    apply(
        &runs,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "by-hand", "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"args": [{"name": "target", "value": "x"}],
                     "metrics": refused["spec"]["metrics"].clone()}
        }),
    )
    .await?;
    let errored = eventually("the refused Job to be an Error", WAIT, || async {
        let status = runs.get("by-hand").await?.status.unwrap_or_default();
        Ok((status.phase == Some(AnalysisPhase::Error)).then_some(status))
    })
    .await?;
    let said = errored.message.unwrap_or_default();
    ensure!(said.contains("could not be created"), "{said}");

    // A value read from a Secret would be written into the Job: refused before any Job.
    apply(
        &Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name),
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "smoke-token", "labels": {"sluice.dev/analysis-secret": "true"}},
                "stringData": {"token": "job-secret-value"}}),
    )
    .await?;
    apply(
        &runs,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "with-secret", "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"args": [{"name": "target", "valueFrom": {"secretKeyRef": {"name": "smoke-token", "key": "token"}}}],
                     "metrics": template(false)["spec"]["metrics"].clone()}
        }),
    )
    .await?;
    let kept_out = eventually(
        "the run with a Secret argument to be an Error",
        WAIT,
        || async {
            let status = runs.get("with-secret").await?.status.unwrap_or_default();
            Ok((status.phase == Some(AnalysisPhase::Error)).then_some(status))
        },
    )
    .await?;
    let why = kept_out.message.clone().unwrap_or_default();
    ensure!(
        why.contains("cannot take a value read from a Secret"),
        "{why}"
    );
    let named: Vec<String> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(
        !named.iter().any(|n| n.starts_with("with-secret")),
        "a Job was created with the Secret's value: {named:?}"
    );
    println!("job metric: completed → promoted; failed → {message}; refused → {said}");
    Ok(())
}
