//! Webhooks (`spec.webhooks`, as Flagger's) against a server the test starts: confirm-rollout holds
//! a release with no pod until it answers 2xx, pre-rollout is called once, confirm-promotion holds
//! the canary at its last step, post-rollout is told how the release ended, and a rollback webhook
//! that answers 2xx aborts a release. A controller restart midway neither calls a finished webhook
//! again nor forgets an answer.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::Api;
use serde_json::{Value, json};
use sluice_api::release::AbortCause;
use sluice_api::rollout::{Rollout, RolloutPhase, WebhookPhase};
use sluice_e2e::http::{Answer, TestServer};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds};

use crate::analysis::{apply, set_image, wait_status};
use crate::checks::{most_pods, record_sizes};

fn documents(server: &TestServer, path: &str) -> Vec<Value> {
    server
        .received_on(path)
        .iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect()
}

#[tokio::test]
async fn webhooks_hold_confirm_and_abort_a_canary_release_and_survive_a_restart() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "webhooks").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    let refused = || Answer::json(403, json!({"approved": false}));
    server.answer("/approve", refused());
    server.answer("/smoke", Answer::json(200, json!({})));
    server.answer("/sign-off", refused());
    server.answer("/tell", Answer::json(200, json!({})));
    // `/stop` answers 404 (no rollback asked) until the test says otherwise.
    let sizes = record_sizes(&client, &ns.name);

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}]
    }));
    let hook = |name: &str, type_: &str| {
        json!({"name": name, "type": type_, "url": format!("{}/{name}", server.address),
               "timeout": "5s", "metadata": {"team": "payments"}})
    };
    manifest["spec"]["webhooks"] = json!([
        hook("approve", "confirm-rollout"),
        hook("smoke", "pre-rollout"),
        hook("sign-off", "confirm-promotion"),
        hook("tell", "post-rollout"),
        hook("stop", "rollback"),
    ]);
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    ensure!(
        server.received().is_empty(),
        "the first revision called {:?}",
        server.received()
    );

    // confirm-rollout refuses: the release waits, paused, with no pod of the new version.
    set_image(&api, "registry.example/web:2.0.0").await?;
    let waiting = wait_status(&api, "the release waiting for confirm-rollout", |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("confirm-rollout webhook approve: answered 403 Forbidden"))
    })
    .await?;
    ensure!(waiting.phase == Some(RolloutPhase::Paused), "{waiting:?}");
    let revision = waiting.current_pod_hash.clone().context("hash")?;
    let sent = documents(&server, "/approve");
    let document = sent.first().context("no confirm-rollout call")?;
    ensure!(
        document["name"] == "web"
            && document["namespace"] == ns.name.as_str()
            && document["phase"] == "Waiting"
            && document["checksum"] == revision.as_str()
            && document["type"] == "confirm-rollout"
            && document["webhook"] == "approve"
            && document["metadata"]["team"] == "payments"
            && document["images"] == json!(["registry.example/web:2.0.0"]),
        "{document}"
    );
    ensure!(
        server.received_on("/smoke").is_empty(),
        "pre-rollout before the confirmation"
    );

    // Confirmed: pre-rollout is called once, the canary runs its step, and confirm-promotion holds
    // it at the last step.
    server.answer("/approve", Answer::json(200, json!({"approved": true})));
    let held = wait_status(&api, "the canary held before promotion", |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("confirm-promotion webhook sign-off: answered 403"))
    })
    .await?;
    ensure!(
        held.stable_rs == first.stable_rs,
        "promoted while refused: {held:?}"
    );
    ensure!(most_pods(&sizes, &revision) > 0, "the canary never ran");
    let recorded = held.webhooks.clone().context("status.webhooks")?;
    let phase_of = |name: &str| {
        recorded
            .hooks
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.phase)
    };
    ensure!(
        phase_of("approve") == Some(WebhookPhase::Passed)
            && phase_of("smoke") == Some(WebhookPhase::Passed)
            && phase_of("sign-off") == Some(WebhookPhase::Waiting),
        "{recorded:?}"
    );

    // A restart while it waits: nothing finished is called again, the wait goes on.
    controller.kill()?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let before = server.received_on("/sign-off").len();
    sluice_e2e::eventually(
        "confirm-promotion asked again after the restart",
        Duration::from_secs(30),
        || async { Ok((server.received_on("/sign-off").len() > before).then_some(())) },
    )
    .await?;
    server.answer("/sign-off", Answer::json(200, json!({})));
    let done = wait_status(&api, "2.0.0 stable once confirmed", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() == Some(revision.as_str())
    })
    .await?;
    sluice_e2e::eventually(
        "post-rollout told of the success",
        Duration::from_secs(30),
        || async {
            Ok(documents(&server, "/tell")
                .iter()
                .any(|d| d["phase"] == "Succeeded" && d["checksum"] == revision.as_str())
                .then_some(()))
        },
    )
    .await?;
    ensure!(
        server.received_on("/smoke").len() == 1,
        "pre-rollout called {} times",
        server.received_on("/smoke").len()
    );
    ensure!(
        server.received_on("/approve").len() >= 2,
        "confirm-rollout asked once: {:?}",
        server.received_on("/approve")
    );
    ensure!(done.message.is_some());

    // A rollback webhook that answers 2xx aborts the next release (held before its promotion
    // meanwhile); post-rollout hears it failed.
    server.answer("/sign-off", refused());
    set_image(&api, "registry.example/web:3.0.0").await?;
    let started = wait_status(&api, "3.0.0 waiting for its promotion", |s| {
        s.current_pod_hash.as_deref() != Some(revision.as_str())
            && s.message
                .as_deref()
                .is_some_and(|m| m.contains("confirm-promotion webhook sign-off"))
    })
    .await?;
    let third = started.current_pod_hash.clone().context("hash")?;
    server.answer("/stop", Answer::json(200, json!({"rollback": true})));
    let aborted = wait_status(&api, "3.0.0 aborted by the rollback webhook", |s| s.abort).await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("rollback webhook stop asked for it"),
        "{message}"
    );
    ensure!(
        aborted.release.as_ref().and_then(|r| r.aborted_by) == Some(AbortCause::Webhook),
        "{:?}",
        aborted.release
    );
    ensure!(
        aborted.stable_rs.as_deref() == Some(revision.as_str()),
        "{aborted:?}"
    );
    sluice_e2e::eventually(
        "post-rollout told of the abort",
        Duration::from_secs(30),
        || async {
            Ok(documents(&server, "/tell")
                .iter()
                .any(|d| d["phase"] == "Failed" && d["checksum"] == third.as_str())
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_pre_rollout_webhook_stops_a_blue_green_release_before_the_preview() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "webhooks-bg").await?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-active"), ("web", "web-preview")],
    )
    .await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    server.answer(
        "/smoke",
        Answer::json(500, json!({"error": "smoke test failed: 3 of 40"})),
    );
    let sizes = record_sizes(&client, &ns.name);
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({}));
    manifest["spec"]["strategy"] = json!({"blueGreen": {
        "activeService": "web-active", "previewService": "web-preview"
    }});
    manifest["spec"]["webhooks"] = json!([{
        "name": "smoke", "type": "pre-rollout", "retries": 1,
        "url": format!("{}/smoke", server.address)
    }]);
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let aborted = wait_status(&api, "the release aborted by pre-rollout", |s| s.abort).await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("pre-rollout webhook smoke failed: answered 500 Internal Server Error")
            && message.contains("smoke test failed: 3 of 40")
            && message.contains("no pod was started"),
        "{message}"
    );
    let revision = aborted.current_pod_hash.clone().context("hash")?;
    ensure!(
        most_pods(&sizes, &revision) == 0,
        "the preview was given pods"
    );
    ensure!(aborted.stable_rs == first.stable_rs, "{aborted:?}");
    ensure!(
        server.received_on("/smoke").len() == 2,
        "one call and one retry: {:?}",
        server.received_on("/smoke")
    );
    Ok(())
}
