//! What the controller costs the API server: a settled Rollout's reconcile reads its caches and sends
//! nothing; an abort sends only the writes that carry it out. Counted by the controller itself in
//! `sluice_api_requests_total` (verb, resource) and per reconcile in
//! `sluice_rollout_reconcile_api_requests`, which this test reads from `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{
    apply, create_routing, healthy_on, rollout, route_weights, routed_canary, wait_status,
};

const WAIT: Duration = Duration::from_secs(60);

/// Requests by (verb, resource), the Rollout reconciles so far, and the requests the finished
/// reconciles sent (the per-reconcile histogram's sum).
pub(crate) struct Counts {
    requests: BTreeMap<(String, String), u64>,
    reconciles: u64,
    reconcile_requests: u64,
}

impl Counts {
    pub(crate) async fn read(controller: &ControllerProcess) -> Result<Self> {
        let body = sluice_e2e::http_get(&controller.http, "/metrics").await?;
        let mut requests = BTreeMap::new();
        let mut reconciles = 0;
        let mut reconcile_requests = 0;
        for line in body.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: u64 = value.parse::<f64>().map_or(0, |v| v as u64);
            if series == "sluice_rollout_reconciles_total" {
                reconciles = value;
            } else if series == "sluice_rollout_reconcile_api_requests_sum" {
                reconcile_requests = value;
            } else if let Some(labels) = series.strip_prefix("sluice_api_requests_total{") {
                let label = |name: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                        .map(|v| v.trim_end_matches(['"', '}']).to_owned())
                        .unwrap_or_default()
                };
                requests.insert((label("verb"), label("resource")), value);
            }
        }
        Ok(Self {
            requests,
            reconciles,
            reconcile_requests,
        })
    }

    /// What was sent since `before`, watches and the leader Lease left out: a watch is opened per
    /// kind and re-opened now and then, and the Lease is renewed every few seconds, whatever the
    /// Rollouts do.
    pub(crate) fn since(&self, before: &Counts) -> BTreeMap<(String, String), u64> {
        self.requests
            .iter()
            .filter(|((verb, resource), _)| verb != "watch" && resource != "leases")
            .map(|(key, n)| {
                (
                    key.clone(),
                    n - before.requests.get(key).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Waits until the controller has reconciled at least `count` more times than `before` and has
/// been quiet for a moment, then reads the counts.
async fn after_reconciles(
    controller: &ControllerProcess,
    before: &Counts,
    count: u64,
) -> Result<Counts> {
    eventually("the reconciles", WAIT, || async {
        let now = Counts::read(controller).await?;
        Ok((now.reconciles >= before.reconciles + count).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Counts::read(controller).await
}

/// Changes the Rollout's metadata (an annotation: a reconcile that has nothing to decide), waits for
/// the reconcile and reads the counts.
pub(crate) async fn touch_and_count(
    controller: &ControllerProcess,
    api: &Api<Rollout>,
    name: &str,
    i: usize,
    before: &Counts,
) -> Result<Counts> {
    let touch = json!({"metadata": {"annotations": {"e2e.sluice.dev/touch": i.to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    after_reconciles(controller, before, 1).await
}

#[tokio::test]
async fn a_settled_rollout_costs_no_requests_and_an_abort_only_its_writes() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "requests").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    // A template named by a later step: a reconcile checks that it exists, from its cache.
    let templates: Api<sluice_api::analysis::AnalysisTemplate> =
        Api::namespaced(client.clone(), &ns.name);
    templates
        .patch(
            "checks",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "checks"},
                "spec": {"metrics": [{"name": "up", "successCondition": "result[0] == 1",
                    "provider": {"prometheus": {"address": "http://127.0.0.1:9", "query": "up"}}}]}
            })),
        )
        .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 50}, {"pause": {}}, {"analysis": {"templates": [{"templateName": "checks"}]}}]);
    apply(
        &api,
        &rollout(
            "web",
            2,
            "registry.example/web:1.0.0",
            routed_canary(steps.clone()),
        ),
    )
    .await?;
    wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Settled: reconciles woken by the Rollout's own metadata and by a template it names read caches
    // only. (A Service's labels would wake nothing: the cache keeps only what a decision reads.)
    let before = Counts::read(&controller).await?;
    let mut settled = Counts::read(&controller).await?;
    for i in 0..3 {
        settled = touch_and_count(&controller, &api, "web", i, &settled).await?;
        let touch = json!({"metadata": {"labels": {"e2e.sluice.dev/touch": i.to_string()}}});
        templates
            .patch("checks", &PatchParams::default(), &Patch::Merge(&touch))
            .await?;
        settled = after_reconciles(&controller, &settled, 1).await?;
    }
    let sent = settled.since(&before);
    println!(
        "settled Rollout: {} reconciles, API requests: {sent:?}",
        settled.reconciles - before.reconciles
    );
    ensure!(
        sent.is_empty(),
        "a settled Rollout's reconciles sent requests: {sent:?}"
    );
    ensure!(
        settled.reconcile_requests == before.reconcile_requests,
        "the per-reconcile count says settled reconciles sent {} requests",
        settled.reconcile_requests - before.reconcile_requests
    );

    // A release paused at 50%, then aborted.
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:2.0.0", routed_canary(steps)),
    )
    .await?;
    wait_status(&api, "web", "the release to pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Counts::read(&controller).await?;
    let abort = json!({"metadata": {"annotations": {"sluice.dev/action": "abort"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&abort))
        .await?;
    wait_status(&api, "web", "the abort", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await?;
    eventually("traffic back on stable", WAIT, || async {
        Ok((route_weights(&client, &ns.name).await? == (100, 0)).then_some(()))
    })
    .await?;
    let aborted = after_reconciles(&controller, &before, 1).await?;
    let sent = aborted.since(&before);
    println!(
        "abort: {} reconciles, API requests: {sent:?}",
        aborted.reconciles - before.reconciles
    );
    let reads: Vec<_> = sent
        .keys()
        .filter(|(verb, _)| verb == "get" || verb == "list")
        .collect();
    ensure!(
        reads.is_empty(),
        "an abort read from the API server instead of the caches: {reads:?}"
    );
    // Claim the request, put the route back and the canary Service on stable, record the status
    // (with the request's id), the release's record and an Event, then take the handled request off
    // the Rollout: each write once (the Rollout's metadata twice: claim, then clear), none that
    // changes nothing.
    let twice: Vec<_> = sent
        .iter()
        .filter(|((verb, resource), n)| {
            **n > if verb == "patch" && resource == "rollouts" {
                2
            } else {
                1
            }
        })
        .collect();
    ensure!(
        twice.is_empty(),
        "an abort wrote something twice: {twice:?}"
    );
    let writes: u64 = sent.values().sum();
    ensure!(writes <= 7, "an abort took {writes} requests: {sent:?}");
    // The reconciles sent them all but the Event, which a background task sends.
    let events = sent
        .iter()
        .filter(|((_, resource), _)| resource == "events")
        .map(|(_, n)| n)
        .sum::<u64>();
    let by_reconciles = aborted.reconcile_requests - before.reconcile_requests;
    ensure!(
        by_reconciles == writes - events,
        "the per-reconcile count ({by_reconciles}) differs from the requests sent ({sent:?})"
    );
    Ok(())
}

/// A run whose argument and whose Prometheus token come from Secrets reads them from the cache of
/// Secrets open to analysis (watched by their label): it measures five times and sends no request
/// for a Secret. Before, each of its reconciles fetched both with a GET.
#[tokio::test]
async fn a_run_reading_secrets_sends_no_request_for_them() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "requests-secrets").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    let prometheus =
        std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL")?;
    // Ready: its caches listed (the Secrets' among them), which is not counted below.
    controller.wait_ready().await?;
    let before = Counts::read(&controller).await?;
    for manifest in [
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "analysis", "namespace": ns.name,
                            "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
               "stringData": {"job": "prometheus", "token": "s3cret"}}),
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
               "metadata": {"name": "reads-secrets", "namespace": ns.name,
                            "labels": {"sluice.dev/standalone": "true"}},
               "spec": {
                   "args": [{"name": "job", "valueFrom": {"secretKeyRef": {"name": "analysis", "key": "job"}}}],
                   "metrics": [{"name": "up", "interval": "1s", "count": 5,
                       "successCondition": "result[0] == 1",
                       "provider": {"prometheus": {
                           "address": prometheus,
                           "authentication": {"bearer": {"tokenSecretRef": {"name": "analysis", "key": "token"}}},
                           "query": "max(up{job=\"{{args.job}}\"})"}}}]}}),
    ] {
        crate::chart::apply_object(&client, &manifest, false).await?;
    }
    let runs: Api<sluice_api::analysis::AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let run = crate::tenancy::finished(&runs, "reads-secrets").await?;
    let status = run.status.unwrap_or_default();
    let measured: usize = status
        .metric_results
        .iter()
        .map(|m| m.measurements.len())
        .sum();
    ensure!(
        status.phase == Some(sluice_api::analysis::AnalysisPhase::Successful) && measured == 5,
        "the run did not measure five times: {}",
        serde_json::to_string(&status)?
    );
    let sent = Counts::read(&controller).await?.since(&before);
    println!("a run reading two Secrets five times, API requests: {sent:?}");
    let secret_requests: u64 = sent
        .iter()
        .filter(|((_, resource), _)| resource == "secrets")
        .map(|(_, n)| n)
        .sum();
    ensure!(secret_requests == 0, "requests for Secrets: {sent:?}");
    Ok(())
}
