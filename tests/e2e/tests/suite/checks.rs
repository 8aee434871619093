//! Pre-deployment checks: analyses (here web metrics against a server the test starts) that run
//! before a release's first pod. A critical failure aborts the release with no pod ever started,
//! naming the check; an advisory failure warns and the release goes on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::release::AbortCause;
use sluice_api::rollout::{ChecksPhase, POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use sluice_e2e::http::{Answer, TestServer};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds};

use crate::analysis::{apply, set_image, wait_status};

/// The most pods each revision's ReplicaSet was ever asked for, by pod-template hash.
pub(crate) fn record_sizes(client: &Client, ns: &str) -> Arc<Mutex<BTreeMap<String, i32>>> {
    let sizes: Arc<Mutex<BTreeMap<String, i32>>> = Arc::default();
    let log = sizes.clone();
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) = event {
                let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
                let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                if let (Some(hash), Ok(mut sizes)) = (hash, log.lock()) {
                    let most = sizes.entry(hash).or_insert(0);
                    *most = (*most).max(replicas);
                }
            }
        }
    });
    sizes
}

/// The most pods the ReplicaSet of revision `hash` was ever asked for, as `record_sizes` saw.
pub(crate) fn most_pods(sizes: &Arc<Mutex<BTreeMap<String, i32>>>, hash: &str) -> i32 {
    sizes
        .lock()
        .map(|s| s.get(hash).copied().unwrap_or(0))
        .unwrap_or(-1)
}

pub(crate) fn check_template(name: &str, address: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {"metrics": [{
            "name": name, "count": 1,
            "successCondition": "result.passed == true",
            "provider": {"web": {"url": format!("{address}/{name}"), "jsonPath": "{$}", "timeoutSeconds": 5}}
        }]}
    })
}

#[tokio::test]
async fn critical_checks_stop_a_release_before_any_pod_and_advisory_ones_warn() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "checks").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    server.answer("/tests", Answer::json(200, json!({"passed": true})));
    server.answer(
        "/scan",
        Answer::json(200, json!({"passed": false, "cves": 2})),
    );
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), &ns.name);
    for name in ["tests", "scan"] {
        apply(&templates, &check_template(name, &server.address)).await?;
    }
    let sizes = record_sizes(&client, &ns.name);

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}, {"pause": {}}]
    }));
    manifest["spec"]["preDeploymentChecks"] = json!([
        {"name": "tests", "templates": [{"templateName": "tests"}]},
        {"name": "scan", "severity": "Advisory", "templates": [{"templateName": "scan"}]}
    ]);
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision healthy, unchecked", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    ensure!(
        first.pre_deployment_checks.is_none(),
        "the first revision was checked: {:?}",
        first.pre_deployment_checks
    );

    // The advisory scan fails, the critical tests pass: the release goes on, with a warning.
    set_image(&api, "registry.example/web:2.0.0").await?;
    let status = wait_status(&api, "the release past its checks, paused at 50%", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep")
    })
    .await?;
    let checks = status.pre_deployment_checks.context("checks recorded")?;
    ensure!(checks.phase == ChecksPhase::Passed, "{checks:?}");
    let warning = status
        .conditions
        .iter()
        .find(|c| c.type_ == "AdvisoryCheckFailed")
        .context("no AdvisoryCheckFailed condition")?;
    ensure!(
        warning.status == "True"
            && warning
                .message
                .starts_with("advisory pre-deployment check scan failed"),
        "{warning:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    ensure!(
        reasons.iter().any(|r| r == "AdvisoryCheckFailed"),
        "{reasons:?}"
    );
    let checked = status.current_pod_hash.clone().context("hash")?;
    crate::canary::request(&api, "web", "promote-full").await?;
    wait_status(&api, "2.0.0 stable", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() == Some(checked.as_str())
    })
    .await?;

    // The critical tests fail: aborted before any pod of the new revision, naming the check.
    server.answer(
        "/tests",
        Answer::json(200, json!({"passed": false, "failures": 3})),
    );
    set_image(&api, "registry.example/web:3.0.0").await?;
    let aborted = wait_status(&api, "the release aborted by its checks", |s| s.abort).await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("critical pre-deployment check tests failed")
            && message.contains("no pod was started"),
        "{message}"
    );
    let release = aborted.release.clone().context("release record")?;
    ensure!(
        release.aborted_by == Some(AbortCause::PreDeploymentCheck),
        "{release:?}"
    );
    let revision = aborted.current_pod_hash.clone().context("hash")?;
    let most = most_pods(&sizes, &revision);
    ensure!(most == 0, "the checked revision was given {most} pods");
    ensure!(
        aborted.phase == Some(RolloutPhase::Degraded)
            && aborted.stable_rs.as_deref() == Some(checked.as_str()),
        "{aborted:?}"
    );
    // Both checks ran for each release (the first revision was not checked).
    ensure!(
        server.received_on("/tests").len() == 2,
        "{:?}",
        server.received_on("/tests")
    );
    // Fixed, and retried: the checks run again (the failed verdict is not reused) and pass.
    server.answer("/tests", Answer::json(200, json!({"passed": true})));
    crate::canary::request(&api, "web", "retry").await?;
    wait_status(&api, "the retried release past its checks", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep")
    })
    .await?;
    ensure!(
        server.received_on("/tests").len() == 3,
        "{:?}",
        server.received_on("/tests")
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_critical_check_stops_a_blue_green_release_before_the_preview() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "checks-bg").await?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-active"), ("web", "web-preview")],
    )
    .await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    server.answer("/tests", Answer::json(200, json!({"passed": false})));
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), &ns.name);
    apply(&templates, &check_template("tests", &server.address)).await?;
    let sizes = record_sizes(&client, &ns.name);
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({}));
    manifest["spec"]["strategy"] = json!({"blueGreen": {
        "activeService": "web-active", "previewService": "web-preview"
    }});
    manifest["spec"]["preDeploymentChecks"] =
        json!([{"name": "tests", "templates": [{"templateName": "tests"}]}]);
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let aborted = wait_status(&api, "the release aborted by its checks", |s| s.abort).await?;
    ensure!(
        aborted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("critical pre-deployment check tests failed")),
        "{:?}",
        aborted.message
    );
    let revision = aborted.current_pod_hash.clone().context("hash")?;
    let most = most_pods(&sizes, &revision);
    ensure!(most == 0, "the preview was given {most} pods");
    ensure!(aborted.stable_rs == first.stable_rs, "{aborted:?}");
    Ok(())
}
