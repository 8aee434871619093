//! Notifications against receivers the test starts: sinks in the namespace's ConfigMap
//! `sluice-notifications` (Slack for the whole namespace, a CloudEvents sink with its URL and token
//! in a Secret that the Rollout subscribes to, and a receiver that never answers), each transition
//! sent once, an abort not delayed by the receiver that never answers, and nothing sent again after
//! a controller restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use sluice_api::release::Release;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::http::{Answer, TestServer};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds};

use crate::analysis::{apply, set_image, wait_status};

fn bodies(server: &TestServer, path: &str) -> Vec<Value> {
    server
        .received_on(path)
        .iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect()
}

/// A receiver that accepts connections and never answers.
async fn black_hole() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(address)
}

#[tokio::test]
async fn each_transition_is_notified_once_a_silent_sink_delays_nothing_and_a_restart_resends_nothing()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "notify").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    server.answer("/chat", Answer::json(200, json!({"ok": true})));
    server.answer("/events", Answer::json(202, json!({})));
    let silent = black_hole().await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "audit", "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
                "stringData": {"url": format!("{}/events", server.address), "token": "s3cret"}
            }))?,
        )
        .await?;
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "sluice-notifications"},
                "data": {
                    "chat": format!("format: slack\nurl: {}/chat\non: [aborted, completed]\n", server.address),
                    "audit": "format: cloudevents\nurlFrom: {secretKeyRef: {name: audit, key: url}}\ntokenFrom: {secretKeyRef: {name: audit, key: token}}\n",
                    "pager": format!("format: json\nurl: {silent}/page\n")
                }
            }))?,
        )
        .await?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}, {"pause": {}}]
    }));
    manifest["spec"]["notifications"] = json!([
        {"sink": "audit"},
        {"sink": "pager", "on": ["aborted"]}
    ]);
    apply(&api, &manifest).await?;
    wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    // A release that waits for a person and is promoted.
    set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(&api, "paused at the pause step", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep")
    })
    .await?;
    // The release's weight and step, as the releases dashboard draws them. The gauges are set in
    // the reconcile that wrote this status, a moment after the write the status shows.
    let wanted: Vec<String> = [
        ("sluice_rollout_canary_weight", "50"),
        ("sluice_rollout_canary_step", "1"),
    ]
    .iter()
    .map(|(series, value)| {
        format!(
            "{series}{{namespace=\"{}\",rollout=\"web\"}} {value}",
            ns.name
        )
    })
    .collect();
    sluice_e2e::eventually(
        "the weight and step on /metrics",
        Duration::from_secs(10),
        || async {
            let exported = sluice_e2e::http_get(&controller.http, "/metrics").await?;
            match wanted
                .iter()
                .find(|line| !exported.lines().any(|l| l == line.as_str()))
            {
                None => Ok(Some(())),
                Some(missing) => anyhow::bail!("no {missing:?} in /metrics"),
            }
        },
    )
    .await?;
    crate::canary::request(&api, "web", "promote").await?;
    let done = wait_status(&api, "2.0.0 stable", |s| {
        s.phase == Some(RolloutPhase::Healthy)
            && s.release.as_ref().is_some_and(|r| r.outcome.is_some())
    })
    .await?;
    let number = done.release.as_ref().map(|r| r.number).context("release")?;
    sluice_e2e::eventually(
        "the completion announced",
        Duration::from_secs(30),
        || async {
            Ok(bodies(&server, "/chat")
                .iter()
                .any(|b| b["text"].as_str().is_some_and(|t| t.contains("completed")))
                .then_some(()))
        },
    )
    .await?;
    let audit = server.received_on("/events");
    let of_release: Vec<Value> = bodies(&server, "/events")
        .into_iter()
        .filter(|e| e["data"]["release"] == number)
        .collect();
    let types: Vec<&str> = of_release
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    ensure!(
        types
            == [
                "dev.sluice.release.started",
                "dev.sluice.release.step",
                "dev.sluice.release.paused",
                "dev.sluice.release.promoted",
                "dev.sluice.release.step",
                "dev.sluice.release.completed"
            ],
        "{types:?}"
    );
    let request = audit.first().context("no CloudEvent")?;
    ensure!(
        request.headers.get("authorization").map(String::as_str) == Some("Bearer s3cret")
            && request.headers.get("content-type").map(String::as_str)
                == Some("application/cloudevents+json")
            && request.headers.contains_key("x-sluice-dedupe-key"),
        "{:?}",
        request.headers
    );
    let ids: std::collections::BTreeSet<&str> =
        of_release.iter().filter_map(|e| e["id"].as_str()).collect();
    ensure!(
        ids.len() == of_release.len(),
        "an id sent twice: {of_release:?}"
    );

    // An abort while the pager never answers: the abort is not held up by it.
    set_image(&api, "registry.example/web:3.0.0").await?;
    wait_status(&api, "3.0.0 paused", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep")
            && s.stable_rs != s.current_pod_hash
    })
    .await?;
    let asked = Instant::now();
    crate::canary::request(&api, "web", "abort").await?;
    wait_status(&api, "3.0.0 aborted", |s| s.abort).await?;
    let took = asked.elapsed();
    eprintln!(
        "abort reflected in status {took:?} after the request, with a sink that never answers"
    );
    sluice_e2e::eventually(
        "the abort announced in chat",
        Duration::from_secs(30),
        || async {
            Ok(bodies(&server, "/chat")
                .iter()
                .any(|b| b["text"].as_str().is_some_and(|t| t.contains("aborted")))
                .then_some(()))
        },
    )
    .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    sluice_e2e::eventually(
        "the silent sink reported",
        Duration::from_secs(60),
        || async {
            let failed = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("NotificationFailed"));
            Ok(failed.filter(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("sink pager"))
            }))
        },
    )
    .await?;

    // A restart sends nothing again.
    let before: BTreeMap<&str, usize> = ["/chat", "/events"]
        .into_iter()
        .map(|p| (p, server.received_on(p).len()))
        .collect();
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let record = releases.get(&format!("web-{number}")).await?;
    ensure!(
        record
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("sluice.dev/notified")),
        "{:?}",
        record.metadata.annotations
    );
    controller.kill()?;
    let _controller = ControllerProcess::start(&ns.name)?;
    // The restarted controller reconciles (a request it acts on proves it) and looks at what is due.
    crate::canary::request(&api, "web", "pause").await?;
    wait_status(&api, "the restarted controller acting", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "PausedByUser")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (path, count) in before {
        let now = server.received_on(path).len();
        ensure!(
            now == count,
            "{path}: {count} before the restart, {now} after"
        );
    }
    Ok(())
}

/// A release replaced by a new revision in the same status write whose process then dies: what was
/// left to send of it (here, all of it: its sink was slower than the release) is sent by the
/// restarted controller, which learns of it only from the release's record.
#[tokio::test]
async fn a_release_replaced_just_before_a_crash_is_still_announced_after_the_restart() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "notify-crash").await?;
    let server = TestServer::start().await?;
    server.answer("/hook", Answer::json(200, json!({})));
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "sluice-notifications"},
                "data": {"hook": format!("format: json\nurl: {}/hook\non: [started, paused]\n", server.address)}
            }))?,
        )
        .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = crate::analysis::rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}, {"pause": {}}]
    }));
    {
        let _controller = ControllerProcess::start(&ns.name)?;
        apply(&api, &manifest).await?;
        wait_status(&api, "the first revision healthy", |s| {
            s.phase == Some(RolloutPhase::Healthy)
        })
        .await?;
    }
    // Its sink holds every delivery for ten minutes, and it dies right after the status write that
    // replaces a release in flight.
    let mut crashing = ControllerProcess::start_failing(
        &ns.name,
        "notifications-held=return(600000);release-replaced=return",
    )?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "2.0.0 paused", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "CanaryPauseStep")
    })
    .await?;
    let replaced = paused
        .release
        .as_ref()
        .map(|r| r.number)
        .context("release")?;
    set_image(&api, "registry.example/web:3.0.0").await?;
    sluice_e2e::eventually(
        "the controller to die after replacing the release",
        Duration::from_secs(60),
        || {
            let exited = crashing.try_exited();
            async move { Ok(exited?.then_some(())) }
        },
    )
    .await?;
    let sent = |number: i64, trigger: &str| {
        bodies(&server, "/hook")
            .into_iter()
            .filter(|b| b["release"] == number && b["trigger"] == trigger)
            .count()
    };
    ensure!(
        sent(replaced, "started") + sent(replaced, "paused") == 0,
        "sent before the crash"
    );

    let _restarted = ControllerProcess::start(&ns.name)?;
    sluice_e2e::eventually(
        "the replaced release's start and pause announced",
        Duration::from_secs(30),
        || async {
            let kinds: Vec<String> = bodies(&server, "/hook")
                .iter()
                .filter(|b| b["release"] == replaced)
                .filter_map(|b| b["trigger"].as_str().map(str::to_owned))
                .collect();
            if kinds.len() > 2 {
                anyhow::bail!("sent more than once: {kinds:?}");
            }
            Ok((kinds == ["started", "paused"]).then_some(()))
        },
    )
    .await
    .with_context(|| format!("received: {:?}", bodies(&server, "/hook")))?;
    // And the release that replaced it, once.
    sluice_e2e::eventually(
        "the new release's start announced",
        Duration::from_secs(30),
        || async { Ok((sent(replaced + 1, "started") == 1).then_some(())) },
    )
    .await?;
    Ok(())
}
