//! Analysis with the real controller and a real Prometheus: step and background runs, verdicts that
//! promote, abort or pause a release, and a Prometheus that cannot be reached.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase, RolloutStatus};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, TrafficSim, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn prometheus_url() -> Result<String> {
    std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL is not set")
}

/// An AnalysisTemplate with one Prometheus metric.
fn template(name: &str, metric: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {"args": [{"name": "job"}], "metrics": [metric]}
    })
}

/// The Rollout `web` (two replicas of `registry.example/web:1.0.0`) with this canary strategy.
pub(crate) fn rollout(canary: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
            "strategy": {"canary": canary}
        }
    })
}

pub(crate) async fn apply<K>(api: &Api<K>, manifest: &Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = manifest["metadata"]["name"].as_str().context("name")?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await?;
    Ok(())
}

pub(crate) async fn set_image(api: &Api<Rollout>, image: &str) -> Result<()> {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The status of the Rollout `web` once `check` holds.
pub(crate) async fn wait_status(
    api: &Api<Rollout>,
    what: &str,
    check: impl Fn(&RolloutStatus) -> bool,
) -> Result<RolloutStatus> {
    eventually(what, WAIT, || async {
        let status = api.get("web").await?.status.unwrap_or_default();
        Ok(check(&status).then_some(status))
    })
    .await
}

async fn replica_sets(client: &Client, ns: &str) -> Result<Vec<(String, i32, i32)>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|rs| {
            (
                rs.labels()
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                rs.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
            )
        })
        .collect())
}

/// Waits until Prometheus has scraped itself, so that `up{job="prometheus"}` has data.
async fn prometheus_has_data() -> Result<()> {
    let url = prometheus_url()?;
    eventually("Prometheus to have scraped itself", WAIT, || {
        let url = url.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || {
                sluice_testbed::http::get(
                    &url,
                    "/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D",
                )
            })
            .await??;
            let answer: Value = serde_json::from_str(&body)?;
            Ok((answer["data"]["result"][0]["value"][1] == "1").then_some(()))
        }
    })
    .await
}

/// Sets up a namespace with a controller, the template and a healthy first revision; returns the
/// stable hash.
async fn start(
    client: &Client,
    ns: &TestNamespace,
    metric: Value,
    canary: Value,
) -> Result<(Api<Rollout>, String)> {
    prometheus_has_data().await?;
    apply(
        &Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name),
        &template("check", metric),
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, &rollout(canary)).await?;
    let first = wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    Ok((api, first.stable_rs.context("stable")?))
}

fn step_canary() -> Value {
    json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "check"}], "args": [{"name": "job", "value": "prometheus"}]}}
        ]
    })
}

#[tokio::test]
async fn a_passing_step_analysis_lets_the_release_complete() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-pass").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = json!({
        "name": "up", "count": 2, "interval": "1s",
        "successCondition": "result[0] == 1",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
    });
    let (api, stable) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let done = wait_status(&api, "the release to complete after its analysis", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let list = runs.list(&ListParams::default()).await?.items;
    ensure!(list.len() == 1, "expected one run, got {}", list.len());
    let status = list[0].status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(AnalysisPhase::Successful));
    let result = &status.metric_results[0];
    assert_eq!((result.count, result.successful), (2, 2));
    assert_eq!(result.measurements[0].value.as_deref(), Some("[1]"));
    ensure!(
        result.measurements[0]
            .metadata
            .get("query")
            .map(String::as_str)
            == Some("up{job=\"prometheus\"}"),
        "the query sent is recorded with its arguments filled in: {:?}",
        result.measurements[0].metadata
    );
    assert!(done.canary.is_some());
    Ok(())
}

#[tokio::test]
async fn a_failing_step_analysis_aborts_to_stable_naming_the_metric() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-fail").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = json!({
        "name": "errors", "count": 3, "interval": "1s",
        "failureCondition": "result[0] >= 1",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
    });
    let (api, stable) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let aborted = wait_status(&api, "the failed analysis to abort the release", |s| {
        s.abort
    })
    .await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("analysis failed")
            && message.contains("\"errors\"")
            && message.contains("[1]")
            && message.contains("result[0] >= 1"),
        "the abort names the metric, its value and the condition: {message}"
    );
    assert_eq!(aborted.phase, Some(RolloutPhase::Degraded));
    let weights = aborted
        .canary
        .as_ref()
        .and_then(|c| c.weights.clone())
        .context("weights")?;
    assert_eq!((weights.stable.weight, weights.canary.weight), (100, 0));
    eventually("stable back at full strength", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        Ok(sets.contains(&(stable.clone(), 2, 2)).then_some(()))
    })
    .await?;
    // The plugin shows the run, the metric's tally and its latest value.
    let out = sluice_e2e::kubectl_sluice(&ns.name, &["get", "rollout", "web"])?;
    let view = String::from_utf8_lossy(&out.stdout);
    ensure!(
        view.contains("Analysis:")
            && view.contains("✖ [step]")
            && view.contains("errors: Failed")
            && view.contains("last [1]"),
        "{view}"
    );
    Ok(())
}

#[tokio::test]
async fn a_query_with_no_data_pauses_the_release_as_inconclusive() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-nodata").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = json!({
        "name": "errors", "count": 1,
        "successCondition": "result[0] < 0.01",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}-nothing-scrapes-this\"}"}}
    });
    let (api, _) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "an inconclusive pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
            && s.pause_conditions
                .iter()
                .any(|p| p.reason == "InconclusiveAnalysis")
    })
    .await?;
    ensure!(!paused.abort, "no data must not abort");
    let run = paused
        .canary
        .and_then(|c| c.current_step_analysis_run_status)
        .context("the run is recorded")?;
    ensure!(
        run.message
            .as_deref()
            .is_some_and(|m| m.contains("no data")),
        "{run:?}"
    );
    // A person decides: promote goes on to complete the release.
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": "promote"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_status(&api, "the release to complete once promoted", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.current_pod_hash == s.stable_rs
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_prometheus_errors_and_aborts_never_promotes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-down").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    // Nothing listens on port 1.
    let metric = json!({
        "name": "errors", "count": 2, "interval": "1s", "consecutiveErrorLimit": 2,
        "successCondition": "result[0] < 0.01",
        "provider": {"prometheus": {"address": "http://127.0.0.1:1", "query": "up{job=\"{{args.job}}\"}", "timeout": 2}}
    });
    let (api, stable) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let aborted = wait_status(&api, "the errors to abort the release", |s| {
        s.abort || s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    ensure!(
        aborted.stable_rs.as_deref() == Some(stable.as_str()),
        "a release was promoted with Prometheus unreachable"
    );
    let message = aborted.message.unwrap_or_default();
    ensure!(
        message.contains("errors in a row") && message.contains("127.0.0.1:1"),
        "{message}"
    );
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let run = runs.list(&ListParams::default()).await?.items;
    let status = run[0].status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(AnalysisPhase::Error));
    assert_eq!(status.metric_results[0].consecutive_error, 3);
    Ok(())
}

#[tokio::test]
async fn a_failing_metric_with_on_failure_pause_holds_instead_of_aborting() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-hold").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = json!({
        "name": "errors", "count": 1, "onFailure": "Pause",
        "failureCondition": "result[0] >= 1",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
    });
    let (api, _) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "a pause for a person", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    ensure!(!paused.abort, "onFailure: Pause must not abort");
    ensure!(
        paused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("InconclusiveAnalysis")),
        "{:?}",
        paused.message
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_background_analysis_aborts_the_release() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-bg").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    // `up` is 1, so every measurement fails; the run starts at step 1 (the pause), in the background.
    let metric = json!({
        "name": "errors", "interval": "1s",
        "failureCondition": "result[0] >= 1",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
    });
    let canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "analysis": {"templates": [{"templateName": "check"}], "args": [{"name": "job", "value": "prometheus"}], "startingStep": 1},
        "steps": [{"setWeight": 50}, {"pause": {}}]
    });
    let (api, stable) = start(&client, &ns, metric, canary).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    let aborted = wait_status(&api, "the background analysis to abort", |s| s.abort).await?;
    let message = aborted.message.unwrap_or_default();
    ensure!(message.contains("background analysis failed"), "{message}");
    assert_eq!(aborted.stable_rs.as_deref(), Some(stable.as_str()));
    Ok(())
}

/// The AnalysisTemplate `error-rate`: the canary's error ratio (the simulator's counters) measured 4
/// times 2 s apart after 3 s, failing at 2% or more.
pub(crate) async fn apply_error_rate_template(
    client: &kube::Client,
    namespace: &str,
) -> Result<()> {
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), namespace);
    apply(&templates, &json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "error-rate"},
        "spec": {
            "args": [{"name": "ns"}, {"name": "canary-hash"}],
            "metrics": [{
                "name": "error-rate", "interval": "2s", "count": 4, "initialDelay": "3s",
                // The first seconds of a new version may have no rate yet: tolerate a few.
                "inconclusiveLimit": 5,
                "successCondition": "result[0] < 0.02", "failureCondition": "result[0] >= 0.02",
                "provider": {"prometheus": {"address": prometheus_url()?, "query": ERROR_RATIO}}
            }]
        }
    })).await
}

/// The error ratio of one version, from the simulator's counters.
pub(crate) const ERROR_RATIO: &str = "sum(rate(sim_http_requests_total{namespace=\"{{args.ns}}\",pod_template_hash=\"{{args.canary-hash}}\",code=\"500\"}[10s])) / sum(rate(sim_http_requests_total{namespace=\"{{args.ns}}\",pod_template_hash=\"{{args.canary-hash}}\"}[10s]))";

pub(crate) fn simulated_args() -> Value {
    json!([
        {"name": "ns", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}
    ])
}

/// Sets the canary's image and what the simulator makes its pods do.
pub(crate) async fn release(
    api: &Api<Rollout>,
    image: &str,
    error_rate: &str,
    latency_ms: &str,
) -> Result<()> {
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": {"sim.sluice.dev/error-rate": error_rate, "sim.sluice.dev/latency-ms": latency_ms}},
        "spec": {"containers": [{"name": "app", "image": image}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_and_one_with_five_percent_errors_is_aborted_at_once()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-sim").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let _sim = TrafficSim::start(&ns.name)?;
    apply_error_rate_template(&client, &ns.name).await?;
    let canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "error-rate"}], "args": simulated_args()}}
        ]
    });
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = rollout(canary);
    manifest["spec"]["replicas"] = json!(4);
    apply(&api, &manifest).await?;
    wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    release(&api, "registry.example/web:2.0.0", "0", "50").await?;
    let promoted = wait_status(&api, "the healthy canary to be promoted", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.current_pod_hash == s.stable_rs
    })
    .await?;
    let stable = promoted.stable_rs.clone().context("stable")?;

    release(&api, "registry.example/web:3.0.0", "0.05", "50").await?;
    let aborted = wait_status(&api, "the erroring canary to be aborted", |s| s.abort).await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(
        message.contains("\"error-rate\"") && message.contains("result[0] >= 0.02"),
        "{message}"
    );
    assert_eq!(aborted.stable_rs.as_deref(), Some(stable.as_str()));
    // The abort came within one interval (2 s) of the failing measurement.
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let failed = runs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(AnalysisPhase::Failed))
        })
        .context("the failed run")?;
    let measured = failed
        .status
        .as_ref()
        .and_then(|s| s.metric_results[0].measurements.last().cloned())
        .and_then(|m| m.finished_at)
        .context("the failing measurement")?;
    let aborted_at = aborted.aborted_at.context("abortedAt")?;
    let lag = aborted_at.0.duration_since(measured.0);
    ensure!(
        lag.as_secs_f64() < 2.0,
        "abort {lag:?} after the failing measurement"
    );
    eventually("stable at full strength, the canary gone", WAIT, || async {
        let sets = replica_sets(&client, &ns.name).await?;
        let canary_gone = sets
            .iter()
            .filter(|(h, _, _)| *h != stable)
            .all(|(_, r, _)| *r == 0);
        Ok((sets.contains(&(stable.clone(), 4, 4)) && canary_gone).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_baseline_judge_catches_a_latency_regression_a_fixed_threshold_passes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-judge").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let _sim = TrafficSim::start(&ns.name)?;
    let url = prometheus_url()?;
    let buckets = "sum by (le) (increase(sim_http_request_duration_seconds_bucket{namespace=\"{{args.ns}}\",pod_template_hash=\"{{hash}}\"}[{{window}}]))";
    let p95 = "histogram_quantile(0.95, sum by (le) (rate(sim_http_request_duration_seconds_bucket{namespace=\"{{args.ns}}\",pod_template_hash=\"{{args.canary-hash}}\"}[10s])))";
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(client.clone(), &ns.name);
    apply(&templates, &json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "latency"},
        "spec": {
            "args": [{"name": "ns"}, {"name": "canary-hash"}],
            "metrics": [
                {"name": "p95-under-500ms", "initialDelay": "8s", "count": 1,
                 "successCondition": "result[0] < 0.5",
                 "provider": {"prometheus": {"address": url, "query": p95}}},
                {"name": "versus-baseline", "initialDelay": "8s", "count": 1,
                 "provider": {"baseline": {
                     "prometheus": {"address": url}, "window": "8s",
                     "metrics": [{"name": "latency", "latency": {"bucketQuery": buckets}, "tolerance": 0.25}]
                 }}}
            ]
        }
    })).await?;
    let canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "latency"}], "args": simulated_args()}}
        ]
    });
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = rollout(canary);
    manifest["spec"]["replicas"] = json!(4);
    manifest["spec"]["template"]["metadata"]["annotations"] =
        json!({"sim.sluice.dev/latency-ms": "60"});
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let stable = first.stable_rs.context("stable")?;

    // Three times slower, yet well under 500 ms.
    release(&api, "registry.example/web:2.0.0", "0", "180").await?;
    let aborted = wait_status(&api, "the judge to abort the slower canary", |s| {
        s.abort || s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    ensure!(
        aborted.abort,
        "the slower canary was promoted: {:?}",
        aborted.message
    );
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let run = runs.list(&ListParams::default()).await?.items;
    let status = run[0].status.clone().unwrap_or_default();
    let phase_of = |name: &str| {
        status
            .metric_results
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.phase, r.measurements.last().cloned()))
    };
    let (threshold, _) = phase_of("p95-under-500ms").context("fixed threshold metric")?;
    assert_eq!(threshold, AnalysisPhase::Successful, "{status:?}");
    let (judged, measurement) = phase_of("versus-baseline").context("judge metric")?;
    assert_eq!(judged, AnalysisPhase::Failed, "{status:?}");
    let measurement = measurement.context("judge measurement")?;
    ensure!(
        measurement
            .metadata
            .get("metric.latency")
            .is_some_and(|m| m.contains("High")),
        "{:?}",
        measurement.metadata
    );
    Ok(())
}

/// A Prometheus of its own that answers only with basic authentication; stopped when dropped.
struct GuardedPrometheus {
    child: Option<std::process::Child>,
    url: String,
    port: u16,
    _dir: std::path::PathBuf,
}

impl GuardedPrometheus {
    fn start(username: &str, password: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("sluice-e2e-prometheus-{port}"));
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(
            dir.join("prometheus.yml"),
            "global:\n  scrape_interval: 1h\n",
        )?;
        let hash = bcrypt::hash(password, 4)?;
        std::fs::write(
            dir.join("web.yml"),
            format!("basic_auth_users:\n  {username}: {hash}\n"),
        )?;
        let mut prometheus = Self {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            _dir: dir,
        };
        prometheus.child = Some(prometheus.spawn()?);
        Ok(prometheus)
    }

    fn spawn(&self) -> Result<std::process::Child> {
        let binary = sluice_testbed::prometheus::ensure_installed()?;
        let dir = &self._dir;
        Ok(std::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--web.config.file={}",
                dir.join("web.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?)
    }

    /// SIGKILLs it, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address, with the same data.
    fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Some(self.spawn()?);
        Ok(())
    }
}

impl Drop for GuardedPrometheus {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A namespace with a controller, a Prometheus of its own behind basic authentication (credentials
/// in a Secret) and a canary whose step analysis asks it `scalar(vector(1))` every second, `count`
/// times with `consecutiveErrorLimit`; its second revision has just been applied.
async fn release_measured_by_guarded(
    prefix: &str,
    count: i32,
    error_limit: i32,
) -> Result<(
    Client,
    TestNamespace,
    ControllerProcess,
    GuardedPrometheus,
    Api<Rollout>,
    String,
)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let controller = ControllerProcess::start(&ns.name)?;
    let password = format!("{prefix}-Pa55");
    let prometheus = GuardedPrometheus::start("sluice", &password)?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    apply(
        &secrets,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "prometheus-auth", "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
            "stringData": {"username": "sluice", "password": password}
        }),
    )
    .await?;
    let metric = json!({
        "name": "one", "interval": "1s", "count": count, "consecutiveErrorLimit": error_limit,
        "successCondition": "result == 1.0",
        "provider": {"prometheus": {
            "address": prometheus.url, "query": "scalar(vector(1))", "timeout": 2,
            "authentication": {"basic": {
                "usernameSecretRef": {"name": "prometheus-auth", "key": "username"},
                "passwordSecretRef": {"name": "prometheus-auth", "key": "password"}
            }}
        }}
    });
    let (api, stable) = start(&client, &ns, metric, step_canary()).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    Ok((client, ns, controller, prometheus, api, stable))
}

/// Prometheus killed mid-analysis and started again a few seconds later: the measurements while it
/// is down are recorded as errors (never as passes), then measuring resumes and the release
/// completes on real answers, within the metric's `consecutiveErrorLimit`.
#[tokio::test]
async fn prometheus_killed_and_restarted_during_analysis_records_errors_then_resumes() -> Result<()>
{
    let (client, ns, _controller, mut prometheus, api, stable) =
        release_measured_by_guarded("analysis-restart", 12, 30).await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let tally = || async {
        let list = runs.list(&ListParams::default()).await?.items;
        anyhow::Ok(
            list.iter()
                .filter_map(|r| r.status.as_ref())
                .flat_map(|s| s.metric_results.iter())
                .map(|m| (m.successful, m.error))
                .next(),
        )
    };
    eventually("two successful measurements", WAIT, || async {
        Ok(tally().await?.filter(|(ok, _)| *ok >= 2))
    })
    .await?;
    prometheus.kill();
    eventually("a measurement to fail as an error", WAIT, || async {
        Ok(tally().await?.filter(|(_, errors)| *errors >= 1))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    prometheus.restart()?;
    let done = wait_status(
        &api,
        "the release to complete once Prometheus is back",
        |s| s.abort || s.stable_rs.as_deref() != Some(stable.as_str()),
    )
    .await?;
    ensure!(!done.abort, "aborted: {:?}", done.message);
    let run = runs.list(&ListParams::default()).await?.items;
    let status = run[0].status.clone().unwrap_or_default();
    let result = &status.metric_results[0];
    println!(
        "Prometheus down mid-analysis: {} errors recorded, {} successful measurements, run {:?}",
        result.error, result.successful, status.phase
    );
    assert_eq!(status.phase, Some(AnalysisPhase::Successful));
    ensure!(result.error >= 1 && result.successful >= 3, "{result:?}");
    Ok(())
}

#[tokio::test]
async fn a_prometheus_behind_basic_auth_is_queried_with_credentials_from_a_secret() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-auth").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let guarded = GuardedPrometheus::start("sluice", "s3cret-Pa55")?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    apply(
        &secrets,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "prometheus-auth", "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
            "stringData": {"username": "sluice", "password": "s3cret-Pa55", "wrong": "guess"}
        }),
    )
    .await?;
    // Wait until the guarded server answers at all (it refuses without credentials).
    let url = guarded.url.clone();
    eventually("the guarded Prometheus to start", WAIT, || {
        let url = url.clone();
        async move {
            let answer = sluice_e2e::http_get(&url, "/-/ready").await;
            Ok(answer
                .err()
                .map(|e| e.to_string())
                .filter(|e| e.contains("401"))
                .map(|_| ()))
        }
    })
    .await?;
    let run = |name: &str, password_key: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"metrics": [{
                "name": "one", "count": 1, "consecutiveErrorLimit": 0,
                "successCondition": "result == 1.0",
                "provider": {"prometheus": {
                    "address": guarded.url, "query": "scalar(vector(1))",
                    "authentication": {"basic": {
                        "usernameSecretRef": {"name": "prometheus-auth", "key": "username"},
                        "passwordSecretRef": {"name": "prometheus-auth", "key": password_key}
                    }}
                }}
            }]}
        })
    };
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    apply(&runs, &run("with-credentials", "password")).await?;
    apply(&runs, &run("wrong-password", "wrong")).await?;
    let finished = |name: &'static str| {
        let runs = runs.clone();
        async move {
            eventually(&format!("run {name} to finish"), WAIT, || async {
                let status = runs.get(name).await?.status.unwrap_or_default();
                Ok(status
                    .phase
                    .filter(|p| !matches!(p, AnalysisPhase::Pending | AnalysisPhase::Running))
                    .map(|_| status))
            })
            .await
        }
    };
    let good = finished("with-credentials").await?;
    assert_eq!(
        good.phase,
        Some(AnalysisPhase::Successful),
        "{:?}",
        good.message
    );
    assert_eq!(
        good.metric_results[0].measurements[0].value.as_deref(),
        Some("1")
    );
    let bad = finished("wrong-password").await?;
    assert_eq!(bad.phase, Some(AnalysisPhase::Error));
    let message = bad.message.unwrap_or_default();
    ensure!(
        message.contains(&guarded.url) && !message.contains("guess"),
        "the error names the server and never the secret: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_stopped_during_analysis_ends_in_error_and_an_abort_never_a_promotion()
-> Result<()> {
    let (client, ns, _controller, guarded, api, stable) =
        release_measured_by_guarded("analysis-outage", 30, 2).await?;
    // Measurements pass while Prometheus serves...
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    eventually("two successful measurements", WAIT, || async {
        let list = runs.list(&ListParams::default()).await?.items;
        Ok(list
            .iter()
            .filter_map(|r| r.status.as_ref())
            .flat_map(|s| s.metric_results.iter())
            .any(|m| m.successful >= 2)
            .then_some(()))
    })
    .await?;
    // ...then it stops.
    drop(guarded);
    let ended = wait_status(&api, "the outage to abort the release", |s| {
        s.abort || s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    ensure!(
        ended.abort && ended.stable_rs.as_deref() == Some(stable.as_str()),
        "promoted during an outage: {:?}",
        ended.message
    );
    let message = ended.message.unwrap_or_default();
    ensure!(message.contains("errors in a row"), "{message}");
    let run = runs.list(&ListParams::default()).await?.items;
    let status = run[0].status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(AnalysisPhase::Error));
    Ok(())
}

/// The controller dies between naming an analysis run in the status and creating it, or between
/// creating it and everything after: either way the restarted controller carries on with that one
/// run (created again under the same name if missing), and its failure ends the release. A second
/// run in its place would leave the first one's verdict unread.
#[tokio::test]
async fn a_crash_between_starting_a_run_and_recording_it_never_forgets_the_run() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    for failpoint in ["analysisrun-created", "analysisrun-recorded"] {
        let ns = TestNamespace::create(&client, &format!("crash-{failpoint}")).await?;
        let mut controller = ControllerProcess::start(&ns.name)?;
        let metric = json!({
            "name": "errors", "count": 3, "interval": "1s",
            "failureCondition": "result[0] >= 1",
            "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
        });
        let (api, stable) = start(&client, &ns, metric, step_canary()).await?;
        controller.kill()?;
        let mut crashing =
            ControllerProcess::start_failing(&ns.name, &format!("{failpoint}=return"))?;
        set_image(&api, "registry.example/web:2.0.0").await?;
        eventually(
            &format!("the controller to die at {failpoint}"),
            WAIT,
            || {
                let exited = crashing.try_exited();
                async move { Ok(exited?.then_some(())) }
            },
        )
        .await?;
        let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
        let at_crash = runs.list(&ListParams::default()).await?.items.len();
        let _restarted = ControllerProcess::start(&ns.name)?;
        let aborted = wait_status(&api, "the failed run to abort the release", |s| s.abort).await?;
        let names: Vec<String> = runs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|r| r.name_any())
            .collect();
        println!("{failpoint}: {at_crash} run(s) at the crash, {names:?} after the restart");
        ensure!(
            names.len() == 1,
            "{failpoint}: one run expected after the restart, found {names:?}"
        );
        let recorded = aborted
            .canary
            .as_ref()
            .and_then(|c| c.current_step_analysis_run_status.as_ref())
            .map(|r| r.name.clone());
        ensure!(
            recorded.as_deref() == Some(names[0].as_str()),
            "{failpoint}: the status names {recorded:?}, the run is {}",
            names[0]
        );
        ensure!(aborted.stable_rs.as_deref() == Some(stable.as_str()));
    }
    Ok(())
}

/// A template written for Argo Rollouts, unchanged but for its apiVersion: conditions in Argo's
/// expression language (`all(result, {# == 1})`, `and`, `asInt`, `default`) and an argument read
/// from a label of the Rollout through `fieldRef`. The release is judged on it and completes.
#[tokio::test]
async fn a_template_copied_from_argo_rollouts_judges_a_release_unchanged() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-argo").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    prometheus_has_data().await?;
    let templates = Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name);
    apply(
        &templates,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "check"},
            "spec": {
                "args": [{"name": "job", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job']"}}}],
                "metrics": [{
                    "name": "up", "count": 2, "interval": "1s",
                    "successCondition": "all(result, {# == 1}) and len(result) > 0",
                    "failureCondition": "asInt(default(result, [0])[0]) != 1",
                    "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
                }]
            }
        }),
    )
    .await?;
    let valid = eventually("the template to be checked", WAIT, || async {
        let status = templates.get("check").await?.status.unwrap_or_default();
        Ok(status.conditions.into_iter().find(|c| c.type_ == "Valid"))
    })
    .await?;
    ensure!(valid.status == "True", "{valid:?}");

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "check"}]}}]
    }));
    manifest["metadata"]["labels"] = json!({"job": "prometheus"});
    apply(&api, &manifest).await?;
    let first = wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let stable = first.stable_rs.context("stable")?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(
        &api,
        "the release to complete on the Argo-style analysis",
        |s| {
            s.phase == Some(RolloutPhase::Healthy)
                && s.stable_rs.as_deref() != Some(stable.as_str())
        },
    )
    .await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let list = runs.list(&ListParams::default()).await?.items;
    ensure!(list.len() == 1, "expected one run, got {}", list.len());
    let status = list[0].status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(AnalysisPhase::Successful));
    let result = &status.metric_results[0];
    assert_eq!((result.count, result.successful), (2, 2));
    let query = result.measurements[0].metadata.get("query");
    ensure!(
        query.map(String::as_str) == Some("up{job=\"prometheus\"}"),
        "the fieldRef argument is read from the Rollout's label: {query:?}"
    );
    Ok(())
}

/// A condition neither CEL nor Argo's language can evaluate (an unknown function) is found when the
/// template is applied: the template says so in its `Valid` condition and an Event, a Rollout that
/// names it is held before it creates anything, and a run that uses it is an Error at once. Fixing
/// the template lets the Rollout go on.
#[tokio::test]
async fn a_condition_that_cannot_be_evaluated_is_refused_with_the_template_not_at_a_measurement()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-invalid").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = |condition: &str| -> Result<Value> {
        Ok(json!({
            "name": "up", "successCondition": condition,
            "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
        }))
    };
    let templates = Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name);
    apply(&templates, &template("check", metric("p99(result) < 1")?)).await?;
    let invalid = eventually("the template to be found invalid", WAIT, || async {
        let status = templates.get("check").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Valid" && c.status == "False"))
    })
    .await?;
    for word in ["\"up\"", "successCondition", "p99"] {
        ensure!(invalid.message.contains(word), "{}", invalid.message);
    }
    eventually("an InvalidSpec Event on the template", WAIT, || async {
        let out = sluice_e2e::kubectl(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=InvalidSpec,involvedObject.kind=AnalysisTemplate",
            "-o",
            "name",
        ])?;
        Ok((!out.stdout.is_empty()).then_some(()))
    })
    .await?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, &rollout(step_canary())).await?;
    let held = wait_status(&api, "an InvalidSpec naming the template", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "True")
    })
    .await?;
    let message = &held
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .context("condition")?
        .message;
    ensure!(
        message.contains("\"check\"") && message.contains("p99"),
        "{message}"
    );
    ensure!(
        replica_sets(&client, &ns.name).await?.is_empty(),
        "a ReplicaSet was created for a Rollout naming an invalid template"
    );

    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &runs,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "by-hand", "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"args": [{"name": "job", "value": "prometheus"}], "metrics": [metric("p99(result) < 1")?]}
        }),
    )
    .await?;
    let run = eventually("the run to be an Error", WAIT, || async {
        let status = runs.get("by-hand").await?.status.unwrap_or_default();
        Ok((status.phase == Some(AnalysisPhase::Error)).then_some(status))
    })
    .await?;
    ensure!(
        run.metric_results.iter().all(|m| m.measurements.is_empty()),
        "no measurement is taken: {run:?}"
    );
    let said = run.message.unwrap_or_default();
    ensure!(said.contains("p99"), "{said}");

    apply(&templates, &template("check", metric("result[0] == 1")?)).await?;
    wait_status(
        &api,
        "the Rollout to go on once the template is fixed",
        |s| s.phase == Some(RolloutPhase::Healthy),
    )
    .await?;
    let fixed = templates.get("check").await?.status.unwrap_or_default();
    ensure!(
        fixed
            .conditions
            .iter()
            .any(|c| c.type_ == "Valid" && c.status == "True"),
        "{fixed:?}"
    );
    Ok(())
}

/// `dryRun` and `measurementRetention` on the Rollout's analysis reference, as Argo Rollouts has
/// them: the failing metric is measured and recorded (two measurements kept of three) but cannot
/// stop the release.
#[tokio::test]
async fn a_dry_run_named_by_the_rollout_measures_a_failing_metric_without_stopping_the_release()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "analysis-dry-run").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let metric = json!({
        "name": "errors", "count": 3, "interval": "1s", "failureLimit": 2,
        "failureCondition": "result[0] >= 0",
        "provider": {"prometheus": {"address": prometheus_url()?, "query": "up{job=\"{{args.job}}\"}"}}
    });
    let canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "check"}],
                          "args": [{"name": "job", "value": "prometheus"}],
                          "dryRun": [{"metricName": "errors"}],
                          "measurementRetention": [{"metricName": "*", "limit": 2}]}}
        ]
    });
    let (api, stable) = start(&client, &ns, metric, canary).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(
        &api,
        "the release to complete past its dry-run metric",
        |s| {
            s.phase == Some(RolloutPhase::Healthy)
                && s.stable_rs.as_deref() != Some(stable.as_str())
        },
    )
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
    let result = &status.metric_results[0];
    ensure!(
        result.dry_run && result.phase == AnalysisPhase::Failed && result.failed == 3,
        "the dry-run metric failed, recorded: {result:?}"
    );
    ensure!(
        result.measurements.len() == 2,
        "two measurements kept: {}",
        result.measurements.len()
    );
    assert_eq!(status.phase, Some(AnalysisPhase::Successful));
    Ok(())
}
