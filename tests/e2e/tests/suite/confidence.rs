//! The confidence score: a `confidence` step scores the release from weighted factors and goes on
//! (at or above 80), waits for a person (60 to 80, `ConfidenceReview` with the breakdown), or
//! aborts (below 60); the score is in status, the release record, an Event and `kubectl sluice get`.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_api::release::{AbortCause, Release};
use sluice_api::rollout::{ConfidenceDecision, Rollout, RolloutPhase};
use sluice_e2e::http::{Answer, TestServer};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds, kubectl_sluice};

use crate::analysis::{apply, set_image, wait_status};

/// Weights that make the score readable: analysis 40, traffic exposed 20, history 20, test
/// coverage 20. With a passing analysis at 25% of traffic after a completed release, the score is
/// 70 without declared coverage and 80 with 50%.
fn steps(with_analysis: bool) -> serde_json::Value {
    let mut steps = vec![json!({"setWeight": 25})];
    if with_analysis {
        steps.push(json!({"analysis": {"templates": [{"templateName": "tests"}]}}));
    }
    steps.push(json!({"confidence": {"weights": {
        "analysis": 40, "checks": 0, "blastRadius": 20, "history": 20, "changeSize": 0, "testCoverage": 20
    }}}));
    json!(steps)
}

async fn set_coverage(api: &Api<Rollout>, image: &str, coverage: Option<&str>) -> Result<()> {
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": {"sluice.dev/test-coverage": coverage}},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_confidence_step_goes_on_waits_for_a_person_or_aborts_by_its_score() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "confidence").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let server = TestServer::start().await?;
    server.answer("/tests", Answer::json(200, json!({"passed": true})));
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &templates,
        &crate::checks::check_template("tests", &server.address),
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &api,
        &crate::analysis::rollout(
            json!({"maxSurge": 1, "maxUnavailable": 0, "steps": steps(true)}),
        ),
    )
    .await?;
    wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    // 70: a person decides. The message carries the breakdown; promote goes on.
    set_image(&api, "registry.example/web:2.0.0").await?;
    let review = wait_status(&api, "a confidence review", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "ConfidenceReview")
    })
    .await?;
    let score = review
        .canary
        .as_ref()
        .and_then(|c| c.confidence.clone())
        .context("no score in status")?;
    ensure!(
        score.score == 70 && score.decision == ConfidenceDecision::Review,
        "{score:?}"
    );
    let message = review.message.clone().unwrap_or_default();
    ensure!(
        message.contains("ConfidenceReview: confidence 70 of 100: analysis 100×40")
            && message.contains("testCoverage 0×20 (not declared"),
        "{message}"
    );
    let shown = kubectl_sluice(&ns.name, &["get", "rollout", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    ensure!(
        shown.contains("Confidence: 70/100 at step 3: Review")
            && shown.contains("blastRadius    50 × 20  the new version has served 25% of traffic"),
        "{shown}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let scored = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ConfidenceScored"))
        .context("no ConfidenceScored Event")?;
    ensure!(
        scored.type_.as_deref() == Some("Warning")
            && scored
                .message
                .as_deref()
                .is_some_and(|m| m.contains("waiting for a person")),
        "{scored:?}"
    );
    let reviewed = review.current_pod_hash.clone().context("hash")?;
    crate::canary::request(&api, "web", "promote").await?;
    wait_status(&api, "2.0.0 promoted by a person", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() == Some(reviewed.as_str())
    })
    .await?;
    let record = Api::<Release>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|r| r.spec.release.revision == reviewed)
        .context("no release record")?;
    ensure!(
        record.spec.release.confidence.len() == 1 && record.spec.release.confidence[0].score == 70,
        "{:?}",
        record.spec.release.confidence
    );

    // 80 with 50% coverage declared: it goes on by itself.
    set_coverage(&api, "registry.example/web:3.0.0", Some("50")).await?;
    let done = wait_status(&api, "3.0.0 released on its score", |s| {
        s.phase == Some(RolloutPhase::Healthy)
            && s.stable_rs.as_deref() != Some(reviewed.as_str())
            && s.stable_rs == s.current_pod_hash
    })
    .await?;
    let score = done.canary.and_then(|c| c.confidence).context("no score")?;
    ensure!(
        score.score == 80 && score.decision == ConfidenceDecision::Promote,
        "{score:?}"
    );

    // No analysis has run: 30, aborted.
    let mut manifest = crate::analysis::rollout(
        json!({"maxSurge": 1, "maxUnavailable": 0, "steps": steps(false)}),
    );
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example/web:4.0.0");
    manifest["spec"]["template"]["metadata"]["annotations"] =
        json!({"sluice.dev/test-coverage": "0"});
    apply(&api, &manifest).await?;
    let aborted = wait_status(&api, "the release aborted on its score", |s| s.abort).await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(message.contains("confidence 30 is below 60"), "{message}");
    ensure!(
        aborted.release.and_then(|r| r.aborted_by) == Some(AbortCause::LowConfidence),
        "not recorded as LowConfidence"
    );
    Ok(())
}

/// Blue-green's `prePromotionConfidence`: the ready preview is scored before promotion (it has
/// served no user traffic); a score under `promoteAt` waits for a person with active untouched, and
/// their promote switches active.
#[tokio::test]
async fn blue_green_pre_promotion_confidence_waits_for_a_person_before_the_switch() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "confidence-bg").await?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-active"), ("web", "web-preview")],
    )
    .await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = crate::analysis::rollout(json!({}));
    // Nothing has served traffic before the switch: the blast radius is 0 and the score under 100.
    manifest["spec"]["strategy"] = json!({"blueGreen": {
        "activeService": "web-active", "previewService": "web-preview",
        "prePromotionConfidence": {"promoteAt": 100, "abortBelow": 0}
    }});
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let review = wait_status(&api, "a confidence review before promotion", |s| {
        s.pause_conditions
            .iter()
            .any(|p| p.reason == "ConfidenceReview")
    })
    .await?;
    let score = review
        .blue_green
        .as_ref()
        .and_then(|b| b.confidence.clone())
        .context("status.blueGreen.confidence")?;
    ensure!(score.decision == ConfidenceDecision::Review, "{score:?}");
    ensure!(
        score
            .factors
            .iter()
            .any(|f| f.name == "blastRadius" && f.value == 0),
        "{score:?}"
    );
    ensure!(
        review.phase == Some(RolloutPhase::Paused)
            && review
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("ConfidenceReview: confidence ")),
        "{review:?}"
    );
    let active = |s: &sluice_api::rollout::RolloutStatus| {
        s.blue_green
            .as_ref()
            .and_then(|b| b.active_selector.clone())
    };
    ensure!(
        active(&review) == first.stable_rs,
        "active moved: {review:?}"
    );
    let shown = kubectl_sluice(&ns.name, &["get", "rollout", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    ensure!(
        shown.contains(&format!(
            "Confidence: {}/100 before promotion: Review",
            score.score
        )),
        "{shown}"
    );
    crate::canary::request(&api, "web", "promote").await?;
    let revision = review.current_pod_hash.clone().context("hash")?;
    let done = wait_status(&api, "2.0.0 active and stable", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() == Some(revision.as_str())
    })
    .await?;
    ensure!(
        active(&done).as_deref() == Some(revision.as_str()),
        "{done:?}"
    );
    Ok(())
}
