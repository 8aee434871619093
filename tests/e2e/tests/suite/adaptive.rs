//! Adaptive step plans on the real control plane: after an aborted release the next one runs the
//! cautious plan derived from the Rollout's steps (a midway weight first), recorded with why; a
//! pinned plan is used as pinned.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::Api;
use serde_json::json;
use sluice_api::release::{PlanProfile, Release};
use sluice_api::rollout::{Rollout, RolloutPhase, RolloutStatus};
use sluice_e2e::{
    ControllerProcess, TestNamespace, client, eventually, install_crds, kubectl_sluice,
};

use crate::canary::{apply, request, rollout, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(60);

fn profile(status: &RolloutStatus) -> Option<PlanProfile> {
    status.release.as_ref()?.plan.as_ref().map(|p| p.profile)
}

#[tokio::test]
async fn after_an_abort_the_next_release_runs_the_cautious_plan_and_a_pin_is_obeyed() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "adaptive").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({
        "steps": [{"setWeight": 40}, {"pause": {}}],
        "adaptive": {"lookback": 3, "fastAfter": 5}
    });
    apply(
        &api,
        &rollout("web", 5, "registry.example/web:1.0.0", canary),
    )
    .await?;
    wait_status(&api, "web", "the first revision", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    // Release 2 runs the Rollout's own steps, and is aborted.
    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let standard = wait_status(&api, "web", "release 2 to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    assert_eq!(profile(&standard), Some(PlanProfile::Standard));
    assert_eq!(standard.current_step_index, Some(1));
    request(&api, "web", "abort").await?;
    wait_status(&api, "web", "the abort", |s| s.abort).await?;

    // Release 3: cautious, because release 2 was aborted: 20% first, then 40%, then the pause.
    set_image(&api, "web", "registry.example/web:3.0.0").await?;
    let cautious = wait_status(&api, "web", "release 3 to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let plan = cautious
        .release
        .as_ref()
        .and_then(|r| r.plan.clone())
        .context("plan")?;
    assert_eq!(plan.profile, PlanProfile::Cautious);
    ensure!(plan.reason.contains("web-2"), "{}", plan.reason);
    assert_eq!(
        cautious.current_step_index,
        Some(2),
        "three cautious steps: 20%, 40%, pause"
    );
    let number = cautious.release.as_ref().context("release")?.number;
    let steps: Vec<(i32, i32)> = cautious
        .release
        .as_ref()
        .context("release")?
        .steps
        .iter()
        .map(|s| (s.index, s.weight))
        .collect();
    assert_eq!(
        steps,
        [(0, 20), (1, 40), (2, 40)],
        "the weights the cautious steps reached"
    );
    let shown = kubectl_sluice(&ns.name, &["get", "rollout", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    ensure!(
        shown.contains("Plan:     Cautious") && shown.contains("setWeight: 20"),
        "{shown}"
    );
    request(&api, "web", "promote").await?;
    wait_status(&api, "web", "release 3 to complete", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let record = eventually("release 3's record", WAIT, || async {
        Ok(releases
            .get_opt(&format!("web-{number}"))
            .await?
            .filter(|r| r.spec.release.outcome.is_some()))
    })
    .await?;
    ensure!(
        record
            .spec
            .release
            .timeline
            .iter()
            .any(|e| e.reason == "PlanChosen" && e.message.contains("Cautious")),
        "the record says which plan and why"
    );

    // A pin is obeyed for the next release.
    let pinned = kubectl_sluice(&ns.name, &["plan", "pin", "web", "fast"])?;
    ensure!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    set_image(&api, "web", "registry.example/web:4.0.0").await?;
    let fast = wait_status(&api, "web", "release 4 to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let plan = fast
        .release
        .as_ref()
        .and_then(|r| r.plan.clone())
        .context("plan")?;
    assert_eq!(plan.profile, PlanProfile::Fast);
    ensure!(plan.reason.contains("pinned"), "{}", plan.reason);
    Ok(())
}
