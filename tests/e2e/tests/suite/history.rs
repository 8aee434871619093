//! The release record: each release of a Rollout leaves a `Release` object with its steps, analysis
//! verdicts and the measurements that decided them, who acted and how it ended; it outlives the
//! controller, and `kubectl sluice history` / `report` read it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice_api::release::{AbortCause, Release, ReleaseOutcome};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, TestNamespace, TrafficSim, client, eventually, install_crds, kubectl_sluice,
};

use crate::analysis::{apply, release, rollout, simulated_args, wait_status};

const WAIT: Duration = Duration::from_secs(60);

/// The record of release `number` of `web`, once `check` holds.
async fn record(
    releases: &Api<Release>,
    number: i64,
    what: &str,
    check: impl Fn(&Release) -> bool,
) -> Result<Release> {
    eventually(what, WAIT, || async {
        let found = releases.get_opt(&format!("web-{number}")).await?;
        Ok(found.filter(|r| check(r)))
    })
    .await
}

fn stdout(output: std::process::Output) -> Result<String> {
    ensure!(
        output.status.success(),
        "kubectl sluice failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The counter's value in the controller's `/metrics` (0 when absent).
async fn counter(controller: &ControllerProcess, series: &str) -> Result<f64> {
    let body = sluice_e2e::http_get(&controller.http, "/metrics").await?;
    Ok(body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test]
async fn the_report_of_an_aborted_release_names_the_metric_and_value_and_the_history_outlives_the_controller()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "history").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
    let _sim = TrafficSim::start(&ns.name)?;
    crate::analysis::apply_error_rate_template(&client, &ns.name).await?;
    let canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "error-rate"}], "args": simulated_args()}}
        ]
    });
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, &rollout(canary)).await?;
    wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let first = record(&releases, 1, "the first revision's record", |r| {
        r.spec.release.outcome == Some(ReleaseOutcome::Completed)
    })
    .await?;
    assert_eq!(
        first.spec.release.images,
        ["app=registry.example/web:1.0.0"]
    );

    // Release 2 errs on 5% of its requests: the analysis aborts it.
    release(&api, "registry.example/web:2.0.0", "0.05", "50").await?;
    let aborted = record(
        &releases,
        2,
        "the aborted release's record, stable restored",
        |r| {
            r.spec.release.outcome == Some(ReleaseOutcome::Aborted)
                && r.spec.release.restored_at.is_some()
        },
    )
    .await?;
    let spec = &aborted.spec;
    assert_eq!(spec.release.aborted_by, Some(AbortCause::Analysis));
    let metric = spec
        .analysis
        .iter()
        .flat_map(|run| &run.metrics)
        .find(|m| m.name == "error-rate")
        .context("the error-rate metric in the record")?;
    assert_eq!(metric.phase, "Failed");
    let value = metric
        .value
        .clone()
        .context("the failing measurement's value")?;
    let steps: Vec<(i32, i32)> = spec
        .release
        .steps
        .iter()
        .map(|s| (s.index, s.weight))
        .collect();
    assert_eq!(steps, [(0, 50), (1, 50)], "steps and weights reached");
    let report = stdout(kubectl_sluice(
        &ns.name,
        &["report", "web", "--number", "2"],
    )?)?;
    println!("{report}");
    for needed in [
        "Aborted (Analysis)",
        "metric error-rate Failed",
        value.as_str(),
        "setWeight 50",
        "RolloutAborted",
    ] {
        ensure!(
            report.contains(needed),
            "the report lacks {needed:?}:\n{report}"
        );
    }
    let markdown = stdout(kubectl_sluice(
        &ns.name,
        &["report", "web", "-o", "markdown"],
    )?)?;
    ensure!(
        markdown.starts_with("# Release 2 of Rollout web"),
        "{markdown}"
    );
    let labels = format!("namespace=\"{}\",rollout=\"web\"", ns.name);
    let aborts = format!(
        "sluice_releases_finished_total{{{labels},outcome=\"Aborted\",cause=\"Analysis\"}}"
    );
    assert_eq!(
        counter(&controller, &aborts).await?,
        1.0,
        "the change failure counted"
    );

    // SIGKILL: the history is in the API server, and the next controller counts only what is new.
    controller.kill()?;
    let controller = ControllerProcess::start(&ns.name)?;
    release(&api, "registry.example/web:3.0.0", "0", "50").await?;
    record(
        &releases,
        3,
        "release 3 completed under the new controller",
        |r| r.spec.release.outcome == Some(ReleaseOutcome::Completed),
    )
    .await?;
    let history = stdout(kubectl_sluice(&ns.name, &["history", "web"])?)?;
    println!("{history}");
    let lines: Vec<&str> = history.lines().skip(1).collect();
    ensure!(
        lines.len() == 3,
        "three releases in the history:\n{history}"
    );
    ensure!(
        lines[1].contains("Aborted (Analysis)") && lines[2].contains("Completed"),
        "{history}"
    );
    let started = counter(
        &controller,
        &format!("sluice_releases_started_total{{{labels}}}"),
    )
    .await?;
    assert_eq!(started, 1.0, "the new controller counts release 3 only");
    Ok(())
}

#[tokio::test]
async fn a_persons_abort_is_recorded_with_who_asked() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "history-by").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &api,
        &rollout(json!({"steps": [{"setWeight": 50}, {"pause": {}}]})),
    )
    .await?;
    wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    crate::analysis::set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(&api, "the release to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    stdout(kubectl_sluice(&ns.name, &["abort", "web"])?)?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let aborted = record(&releases, 2, "the aborted release's record", |r| {
        r.spec.release.outcome == Some(ReleaseOutcome::Aborted)
    })
    .await?;
    let me = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("who this test is")?;
    let entry = aborted
        .spec
        .release
        .timeline
        .iter()
        .find(|e| e.reason == "RolloutAborted")
        .context("the abort in the timeline")?;
    assert_eq!(entry.by.as_deref(), Some(me.as_str()));
    assert_eq!(aborted.spec.release.aborted_by, Some(AbortCause::User));
    // Taken off by the reconcile after the one that recorded it.
    sluice_e2e::eventually(
        "the requester taken off with the request",
        std::time::Duration::from_secs(10),
        || async {
            let annotations = api
                .get("web")
                .await?
                .metadata
                .annotations
                .unwrap_or_default();
            Ok(
                (!annotations.contains_key(sluice_api::names::REQUESTED_BY_ANNOTATION))
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}
