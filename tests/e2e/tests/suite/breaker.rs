//! The circuit breaker on the real control plane, shared by two Rollouts of one service: three
//! failed releases open it and the next release waits (the reason in `kubectl get`); a rollback
//! goes through; after the cooldown exactly one release goes, and its failure opens the breaker for
//! twice as long; a reset closes it, recorded with who asked and why.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::Api;
use serde_json::{Value, json};
use sluice_api::release::Release;
use sluice_api::rollout::{CircuitState, Rollout, RolloutPhase, RolloutStatus};
use sluice_e2e::{
    ControllerProcess, TestNamespace, client, eventually, install_crds, kubectl, kubectl_sluice,
};

use crate::canary::{apply, request, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(60);

fn shop_rollout(name: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name, "labels": {"service": "shop"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/shop:0"}]}},
            "circuitBreaker": {"failures": 3, "cooldown": "6s", "maxCooldown": "1m",
                               "selector": {"matchLabels": {"service": "shop"}}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
        }
    })
}

fn paused(s: &RolloutStatus) -> bool {
    s.phase == Some(RolloutPhase::Paused) && s.current_step_index == Some(1)
}

fn held(s: &RolloutStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "ReleaseHeld" && c.status == "True" && c.reason == "CircuitOpen")
}

fn breaker(s: &RolloutStatus) -> CircuitState {
    s.circuit_breaker
        .as_ref()
        .map(|b| b.state)
        .unwrap_or_default()
}

/// Releases `image` on `name` and aborts it once it pauses: a failed release.
async fn fail(api: &Api<Rollout>, name: &str, image: &str) -> Result<()> {
    set_image(api, name, image).await?;
    wait_status(api, name, "the release to pause", paused).await?;
    request(api, name, "abort").await?;
    wait_status(api, name, "the abort", |s| s.abort).await?;
    Ok(())
}

#[tokio::test]
async fn a_shared_breaker_opens_after_three_failures_lets_one_release_through_and_a_reset_closes_it()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "breaker").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    for name in ["web", "api"] {
        apply(&api, &shop_rollout(name)).await?;
        wait_status(&api, name, "the first revision", |s| {
            s.phase == Some(RolloutPhase::Healthy)
        })
        .await?;
    }
    // web:1 released: web:0 is a known-good revision to roll back to.
    set_image(&api, "web", "registry.example/shop:1").await?;
    wait_status(&api, "web", "web:1 to pause", paused).await?;
    request(&api, "web", "promote").await?;
    wait_status(&api, "web", "web:1 to be stable", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    // Three failed releases across the service open the breaker.
    fail(&api, "web", "registry.example/shop:2").await?;
    fail(&api, "api", "registry.example/shop:2").await?;
    fail(&api, "web", "registry.example/shop:3").await?;
    let open = wait_status(&api, "web", "the breaker to open", |s| {
        breaker(s) == CircuitState::Open
    })
    .await?;
    let failures = open.circuit_breaker.clone().context("breaker")?.failures;
    ensure!(failures.len() == 3, "{failures:?}");

    // The next release waits, and says why in `kubectl get`.
    set_image(&api, "api", "registry.example/shop:3").await?;
    let waiting = wait_status(&api, "api", "api:3 to be held", held).await?;
    ensure!(waiting.current_step_index == Some(0), "{waiting:?}");
    let shown = kubectl(&["get", "rollouts.sluice.dev", "api", "-n", &ns.name])?;
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    println!("{shown}");
    ensure!(
        shown.contains("circuit breaker open after 3 failed release(s)"),
        "{shown}"
    );
    let plugin = kubectl_sluice(&ns.name, &["get", "rollout", "api"])?;
    let plugin = String::from_utf8_lossy(&plugin.stdout).to_string();
    ensure!(
        plugin.contains("Breaker:    Open after 3 failed release(s), half-open at"),
        "{plugin}"
    );

    // A rollback to a revision that was stable goes through the open breaker.
    set_image(&api, "web", "registry.example/shop:0").await?;
    let rollback = wait_status(&api, "web", "the rollback to run its steps", paused).await?;
    ensure!(!held(&rollback), "a rollback was held");
    request(&api, "web", "promote").await?;
    wait_status(&api, "web", "the rollback to complete", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    // After the cooldown the held release goes through: the one release let through half-open.
    let trial = wait_status(&api, "api", "api:3 to go through half-open", paused).await?;
    let trial_name = format!("api-{}", trial.release.as_ref().context("release")?.number);
    set_image(&api, "web", "registry.example/shop:4").await?;
    let web_waits = wait_status(&api, "web", "web:4 to wait for the trial", held).await?;
    let message = web_waits.message.clone().unwrap_or_default();
    ensure!(message.contains(&trial_name), "{message}");

    // The trial fails: open again, for twice the cooldown.
    request(&api, "api", "abort").await?;
    let reopened = wait_status(&api, "web", "the breaker to reopen", |s| {
        breaker(s) == CircuitState::Open
    })
    .await?;
    let b = reopened.circuit_breaker.clone().context("breaker")?;
    let cooldown = b
        .half_open_at
        .context("halfOpenAt")?
        .0
        .duration_since(b.opened_at.context("openedAt")?.0);
    ensure!(
        cooldown.as_secs() == 12,
        "cooldown after a failed trial: {cooldown:?}"
    );

    // A reset closes it now: web:4 goes, and the reset is recorded with who asked and why.
    let output = kubectl_sluice(
        &ns.name,
        &[
            "breaker",
            "reset",
            "web",
            "--reason",
            "INC-42 fixed upstream",
        ],
    )?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let going = wait_status(&api, "web", "web:4 to go after the reset", paused).await?;
    let reset = going
        .circuit_breaker
        .clone()
        .and_then(|b| b.last_reset)
        .context("lastReset")?;
    assert_eq!(reset.reason, "INC-42 fixed upstream");
    ensure!(reset.by.is_some(), "the reset says who asked");
    let number = going.release.as_ref().context("release")?.number;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let record = eventually("web:4's record to show the reset", WAIT, || async {
        let record = releases.get_opt(&format!("web-{number}")).await?;
        Ok(record.filter(|r| {
            r.spec
                .release
                .timeline
                .iter()
                .any(|e| e.reason == "CircuitBreakerReset")
        }))
    })
    .await?;
    let entry = record
        .spec
        .release
        .timeline
        .iter()
        .find(|e| e.reason == "CircuitBreakerReset")
        .context("reset")?;
    ensure!(
        entry.message.contains("INC-42") && entry.by.is_some(),
        "{entry:?}"
    );
    ensure!(record.spec.release.outcome.is_none(), "web:4 is in flight");
    wait_status(&api, "api", "api's view of the breaker to close", |s| {
        breaker(s) == CircuitState::Closed
    })
    .await?;
    let status = kubectl_sluice(&ns.name, &["breaker", "status", "web"])?;
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    ensure!(
        status.contains("Closed") && status.contains("INC-42"),
        "{status}"
    );
    Ok(())
}
