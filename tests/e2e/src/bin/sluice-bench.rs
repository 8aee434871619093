//! Benchmarks on the real control plane, with figures printed (never asserted).
//!
//! `sluice-bench abort [--count N]`: how fast an abort takes effect. For each of N releases paused at
//! 50%, it requests an abort (the `sluice.dev/action` annotation, as `kubectl sluice abort` does) and
//! times, from that request, until
//! - with a Gateway API route: the HTTPRoute's weights are back at 100% stable, and stable is fully
//!   available (with a router stable is never scaled down, so this is the same moment or earlier);
//! - without a router (traffic split by replica count): the canary ReplicaSet is scaled to zero, and
//!   stable is back at full size with every pod available.
//!
//! Times are taken from watch events, so they include the API server's and the watch's latency, as a
//! user's client would see them. Run through `cargo xtask bench abort`, which starts the cluster and
//! builds the controller in release mode.
//!
//! `sluice-bench scale --rollouts N [--replicas R] [--timeout S] [--peer argo-rollouts]`: many
//! Rollouts in one namespace, with Sluice's controller and, with `--peer`, then with Argo Rollouts'
//! on the same cluster, compared; see [`sluice_e2e::scale`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun, AnalysisTemplate};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use sluice_e2e::{ControllerProcess, FIELD_MANAGER, TestNamespace, client, install_crds};

const REPLICAS: i32 = 4;
const WAIT: Duration = Duration::from_secs(60);

/// What the watches saw, with the moment they saw it.
#[derive(Clone, Debug)]
enum Seen {
    /// The route's canary weight.
    Route(i64),
    /// A ReplicaSet: hash, spec.replicas, status.availableReplicas.
    ReplicaSet(String, i32, i32),
    /// An AnalysisRun of the version with this hash was recorded as Failed.
    RunFailed(String),
}

type Log = Arc<Mutex<Vec<(Instant, Seen)>>>;

fn routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    )
}

fn canary_weight(route: &DynamicObject) -> i64 {
    route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["name"] == "web-canary"))
        .and_then(|r| r["weight"].as_i64())
        .unwrap_or(-1)
}

fn spawn_watches(client: &Client, ns: &str, log: &Log) {
    let route_log = log.clone();
    let stream = watcher(routes(client, ns), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(route)) = stream.next().await {
            let seen = Seen::Route(canary_weight(&route));
            if let Ok(mut log) = route_log.lock() {
                log.push((Instant::now(), seen));
            }
        }
    });
    let run_log = log.clone();
    let stream = watcher(
        Api::<AnalysisRun>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(run)) = stream.next().await {
            let failed = run
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Some(AnalysisPhase::Failed));
            if failed {
                let hash = run
                    .labels()
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
                    .unwrap_or_default();
                if let Ok(mut log) = run_log.lock() {
                    log.push((Instant::now(), Seen::RunFailed(hash)));
                }
            }
        }
    });
    let rs_log = log.clone();
    let stream = watcher(
        Api::<ReplicaSet>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(rs)) = stream.next().await {
            let hash = rs
                .labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default();
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let available = rs
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if let Ok(mut log) = rs_log.lock() {
                log.push((Instant::now(), Seen::ReplicaSet(hash, replicas, available)));
            }
        }
    });
}

/// The first moment at or after `since` when `check` holds for what was seen.
async fn first_seen(
    log: &Log,
    since: Instant,
    what: &str,
    check: impl Fn(&Seen) -> bool,
) -> Result<Duration> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(at) = log.lock().ok().and_then(|log| {
            log.iter()
                .find(|(at, seen)| *at >= since && check(seen))
                .map(|(at, _)| *at)
        }) {
            return Ok(at.duration_since(since));
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The latest state of each ReplicaSet as the watch saw it.
fn latest_sets(log: &Log) -> BTreeMap<String, (i32, i32)> {
    let mut sets = BTreeMap::new();
    if let Ok(log) = log.lock() {
        for (_, seen) in log.iter() {
            if let Seen::ReplicaSet(hash, replicas, available) = seen {
                sets.insert(hash.clone(), (*replicas, *available));
            }
        }
    }
    sets
}

/// The canary weight of the route as the watch last saw it.
fn latest_route_weight(log: &Log) -> Option<i64> {
    let log = log.lock().ok()?;
    log.iter().rev().find_map(|(_, seen)| match seen {
        Seen::Route(weight) => Some(*weight),
        Seen::ReplicaSet(..) | Seen::RunFailed(_) => None,
    })
}

async fn wait_rollout(
    api: &Api<Rollout>,
    what: &str,
    check: impl Fn(&Rollout) -> bool,
) -> Result<Rollout> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rollout = api.get("web").await?;
        if check(&rollout) {
            return Ok(rollout);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}: {:?}",
                rollout.status.and_then(|s| s.message)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn manifest(routed: bool, image: &str) -> Value {
    let mut canary = json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "abortScaleDownDelaySeconds": 5,
        "steps": [{"setWeight": 50}, {"pause": {}}]
    });
    if routed {
        canary["canaryService"] = json!("web-canary");
        canary["stableService"] = json!("web-stable");
        canary["trafficRouting"] = json!({"gatewayAPI": {"httpRoute": "web"}});
    }
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"canary": canary}
        }
    })
}

async fn create_routing(client: &Client, ns: &str) -> Result<()> {
    sluice_e2e::create_services(client, ns, &[("web", "web-stable"), ("web", "web-canary")])
        .await?;
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
            {"name": "web-stable", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]}
    });
    routes(client, ns)
        .patch(
            "web",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&route),
        )
        .await?;
    Ok(())
}

/// Per-abort timings: (traffic back on stable, stable fully available).
/// A canary whose step analysis fails at its first measurement (`up` is 1 and the failure condition
/// is `result[0] >= 1`).
fn failing_analysis_manifest(routed: bool, image: &str) -> Value {
    let mut manifest = manifest(routed, image);
    manifest["spec"]["strategy"]["canary"]["steps"] = json!([
        {"setWeight": 50},
        {"analysis": {"templates": [{"templateName": "fails"}]}}
    ]);
    manifest
}

fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1000.0
    } else {
        -(from.duration_since(to).as_secs_f64() * 1000.0)
    }
}

/// Per release: (traffic back on stable, stable fully available), from the moment the failing
/// AnalysisRun was recorded.
async fn analysis_series(client: &Client, routed: bool, count: usize) -> Result<Vec<(f64, f64)>> {
    let prometheus = std::env::var("SLUICE_E2E_PROMETHEUS_URL")
        .context("SLUICE_E2E_PROMETHEUS_URL is not set")?;
    let ns = TestNamespace::create(
        client,
        if routed {
            "bench-analysis-routed"
        } else {
            "bench-analysis-basic"
        },
    )
    .await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    if routed {
        create_routing(client, &ns.name).await?;
    }
    let template = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "fails"},
        "spec": {"metrics": [{
            "name": "up", "count": 1, "failureCondition": "result[0] >= 1",
            "provider": {"prometheus": {"address": prometheus, "query": "up{job=\"prometheus\"}"}}
        }]}
    });
    Api::<AnalysisTemplate>::namespaced(client.clone(), &ns.name)
        .patch(
            "fails",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&template),
        )
        .await?;
    let log: Log = Arc::default();
    spawn_watches(client, &ns.name, &log);
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let apply = |image: String| {
        let api = api.clone();
        async move {
            api.patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&failing_analysis_manifest(routed, &image)),
            )
            .await
        }
    };
    apply("registry.example/web:0".to_owned()).await?;
    let first = wait_rollout(&api, "the first revision", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(RolloutPhase::Healthy))
    })
    .await?;
    let stable = first.status.and_then(|s| s.stable_rs).context("stable")?;

    let mut samples = Vec::new();
    let mut previous = stable.clone();
    for i in 1..=count {
        let started = Instant::now();
        apply(format!("registry.example/web:{i}")).await?;
        // This release's abort, not the previous one's (still in status for a moment).
        let aborted = wait_rollout(&api, "the failed analysis to abort", |r| {
            r.status.as_ref().is_some_and(|s| {
                s.abort
                    && s.current_pod_hash.as_deref() != Some(stable.as_str())
                    && s.current_pod_hash.as_deref() != Some(previous.as_str())
            })
        })
        .await?;
        let canary = aborted
            .status
            .and_then(|s| s.current_pod_hash)
            .context("canary")?;
        previous = canary.clone();
        let stable_whole = |s: &Seen| matches!(s, Seen::ReplicaSet(h, r, a) if *h == stable && *r == REPLICAS && *a == REPLICAS);
        let failed = first_seen(
            &log,
            started,
            "the failed run",
            |s| matches!(s, Seen::RunFailed(h) if *h == canary),
        )
        .await?;
        let failed_at = started + failed;
        let traffic_at = if routed {
            let up = first_seen(&log, started, "the route at 50%", |s| {
                matches!(s, Seen::Route(50))
            })
            .await?;
            started
                + up
                + first_seen(&log, started + up, "the route back on stable", |s| {
                    matches!(s, Seen::Route(0))
                })
                .await?
        } else {
            started
                + first_seen(
                    &log,
                    started,
                    "the canary scaled to zero",
                    |s| matches!(s, Seen::ReplicaSet(h, 0, _) if *h == canary),
                )
                .await?
        };
        let capacity_at = if routed {
            // With a router stable is never scaled down.
            failed_at
        } else {
            failed_at + first_seen(&log, failed_at, "stable fully available", stable_whole).await?
        };
        let sample = (
            signed_ms(failed_at, traffic_at),
            signed_ms(failed_at, capacity_at),
        );
        eprintln!(
            "  release {i:>2}/{count}: traffic on stable {:>7.1} ms, stable fully available {:>7.1} ms after the failed run was recorded",
            sample.0, sample.1
        );
        samples.push(sample);
    }
    Ok(samples)
}

async fn abort_series(client: &Client, routed: bool, count: usize) -> Result<Vec<(f64, f64)>> {
    let ns = TestNamespace::create(
        client,
        if routed {
            "bench-routed"
        } else {
            "bench-basic"
        },
    )
    .await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    if routed {
        create_routing(client, &ns.name).await?;
    }
    let log: Log = Arc::default();
    spawn_watches(client, &ns.name, &log);
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let apply = |image: String| {
        let api = api.clone();
        async move {
            api.patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest(routed, &image)),
            )
            .await
        }
    };
    apply("registry.example/web:0".to_owned()).await?;
    wait_rollout(&api, "the first revision", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(RolloutPhase::Healthy))
    })
    .await?;

    let mut samples = Vec::new();
    for i in 1..=count {
        apply(format!("registry.example/web:{i}")).await?;
        let paused = wait_rollout(&api, "the canary to pause at 50%", |r| {
            r.status.as_ref().is_some_and(|s| {
                s.phase == Some(RolloutPhase::Paused)
                    && s.current_step_index == Some(1)
                    && s.canary
                        .as_ref()
                        .and_then(|c| c.weights.as_ref())
                        .is_some_and(|w| w.canary.weight == 50)
            })
        })
        .await?;
        let status = paused.status.unwrap_or_default();
        let stable = status.stable_rs.context("stable")?;
        let canary = status.current_pod_hash.context("canary")?;
        // Let the watches catch up with the paused state before the clock starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if routed && latest_route_weight(&log) != Some(50) {
            bail!("the route is not at 50% before the abort");
        }

        let started = Instant::now();
        let patch = json!({"metadata": {"annotations": {"sluice.dev/action": "abort"}}});
        api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let traffic = if routed {
            first_seen(&log, started, "the route back on stable", |s| {
                matches!(s, Seen::Route(0))
            })
            .await?
        } else {
            first_seen(
                &log,
                started,
                "the canary scaled to zero",
                |s| matches!(s, Seen::ReplicaSet(h, 0, _) if *h == canary),
            )
            .await?
        };
        // Stable may have been whole all along (with a router): then it counts from the abort.
        let stable_whole = |s: &Seen| matches!(s, Seen::ReplicaSet(h, r, a) if *h == stable && *r == REPLICAS && *a == REPLICAS);
        let capacity = if latest_sets(&log)
            .get(&stable)
            .is_some_and(|(r, a)| *r == REPLICAS && *a == REPLICAS)
        {
            Duration::ZERO
        } else {
            first_seen(&log, started, "stable fully available", stable_whole).await?
        };
        wait_rollout(&api, "the abort to be recorded", |r| {
            r.status.as_ref().is_some_and(|s| s.abort)
        })
        .await?;
        let sample = (
            traffic.as_secs_f64() * 1000.0,
            capacity.as_secs_f64() * 1000.0,
        );
        eprintln!(
            "  abort {i:>2}/{count}: traffic on stable after {:>7.1} ms, stable fully available after {:>7.1} ms",
            sample.0, sample.1
        );
        samples.push(sample);
    }
    Ok(samples)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn report(title: &str, values: &[f64]) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    println!(
        "  {title:<34} n={:<3} min {:>7.1}  median {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}  (ms)",
        sorted.len(),
        sorted.first().copied().unwrap_or(f64::NAN),
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
}

/// Blue-green: from `promote` to the active Service selecting the new version, and from `abort`
/// (during post-promotion analysis) to the active Service back on the old one.
async fn bluegreen_bench(client: &Client, count: usize) -> Result<()> {
    let prometheus = std::env::var("SLUICE_E2E_PROMETHEUS_URL")
        .context("SLUICE_E2E_PROMETHEUS_URL is not set")?;
    let ns = TestNamespace::create(client, "bench-bluegreen").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    sluice_e2e::create_services(
        client,
        &ns.name,
        &[("web", "web-active"), ("web", "web-preview")],
    )
    .await?;
    // A post-promotion analysis that keeps measuring, so the release can be aborted after the switch.
    let template = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "slow"},
        "spec": {"metrics": [{
            "name": "up", "count": 1000, "interval": "5s", "successCondition": "true",
            "provider": {"prometheus": {"address": prometheus, "query": "vector(1)"}}
        }]}
    });
    Api::<AnalysisTemplate>::namespaced(client.clone(), &ns.name)
        .patch(
            "slow",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&template),
        )
        .await?;
    // The active Service's selector, from a watch.
    let active: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let log = active.clone();
    let stream = watcher(
        services.clone(),
        watcher::Config::default().fields("metadata.name=web-active"),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(svc)) = stream.next().await {
            let hash = svc
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned())
                .unwrap_or_default();
            if let Ok(mut log) = log.lock() {
                log.push((Instant::now(), hash));
            }
        }
    });
    let selected_after = |since: Instant, hash: String| {
        let active = active.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(at) = active.lock().ok().and_then(|l| {
                    l.iter()
                        .find(|(at, h)| *at >= since && *h == hash)
                        .map(|(at, _)| *at)
                }) {
                    return Ok(at.duration_since(since).as_secs_f64() * 1000.0);
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for the active Service to select {hash}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = |image: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"blueGreen": {
                    "activeService": "web-active", "previewService": "web-preview",
                    "autoPromotionEnabled": false, "abortScaleDownDelaySeconds": 2,
                    "postPromotionAnalysis": {"templates": [{"templateName": "slow"}]}
                }}
            }
        })
    };
    let apply = |image: String| {
        let api = api.clone();
        async move {
            api.patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest(&image)),
            )
            .await
        }
    };
    let request = |action: &'static str| {
        let api = api.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {"sluice.dev/action": action}}});
            api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    apply("registry.example/web:0".to_owned()).await?;
    let first = wait_rollout(&api, "the first revision", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(RolloutPhase::Healthy))
    })
    .await?;
    let stable = first.status.and_then(|s| s.stable_rs).context("stable")?;
    let mut promotions = Vec::new();
    let mut switch_backs = Vec::new();
    let mut previous = stable.clone();
    for i in 1..=count {
        apply(format!("registry.example/web:{i}")).await?;
        let paused = wait_rollout(&api, "the preview to wait for promotion", |r| {
            r.status.as_ref().is_some_and(|s| {
                s.phase == Some(RolloutPhase::Paused)
                    && s.current_pod_hash
                        .as_deref()
                        .is_some_and(|h| h != stable && h != previous)
            })
        })
        .await?;
        let green = paused
            .status
            .and_then(|s| s.current_pod_hash)
            .context("hash")?;
        previous = green.clone();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let promoted = Instant::now();
        request("promote").await?;
        let switch = selected_after(promoted, green.clone()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let aborted = Instant::now();
        request("abort").await?;
        let back = selected_after(aborted, stable.clone()).await?;
        wait_rollout(&api, "the abort", |r| {
            r.status.as_ref().is_some_and(|s| s.abort)
        })
        .await?;
        eprintln!(
            "  release {i:>2}/{count}: switch {switch:>7.1} ms after promote, back {back:>7.1} ms after abort"
        );
        promotions.push(switch);
        switch_backs.push(back);
    }
    println!("\nBlue-green, through the active Service's selector (watch events):");
    report("promote → active on the new version", &promotions);
    report("abort → active back on the old one", &switch_backs);
    Ok(())
}

async fn analysis_bench(client: &Client, count: usize) -> Result<()> {
    eprintln!("failing step analysis with a Gateway API route ({count} releases)");
    let routed = analysis_series(client, true, count).await?;
    eprintln!("failing step analysis without a router ({count} releases)");
    let basic = analysis_series(client, false, count).await?;
    println!("\nFrom the failed AnalysisRun being recorded to:");
    println!(" with a Gateway API HTTPRoute");
    report(
        "route at 100% stable",
        &routed.iter().map(|s| s.0).collect::<Vec<_>>(),
    );
    report(
        "stable fully available",
        &routed.iter().map(|s| s.1).collect::<Vec<_>>(),
    );
    println!(" without a router (replica ratio)");
    report(
        "canary scaled to zero",
        &basic.iter().map(|s| s.0).collect::<Vec<_>>(),
    );
    report(
        "stable fully available",
        &basic.iter().map(|s| s.1).collect::<Vec<_>>(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "scale") {
        return sluice_e2e::scale::main(&args[1..]).await;
    }
    let mut count = 20usize;
    let mut which = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--count" => {
                count = it
                    .next()
                    .context("--count needs a number")?
                    .parse()
                    .context("--count needs a number")?;
            }
            "abort" => which = Some("abort"),
            "analysis" => which = Some("analysis"),
            "bluegreen" => which = Some("bluegreen"),
            other => {
                bail!(
                    "unknown argument {other:?}; usage: sluice-bench abort|analysis|bluegreen [--count N], or {}",
                    sluice_e2e::scale::USAGE
                )
            }
        }
    }
    let client = client().await?;
    install_crds(&client).await?;
    match which {
        Some("abort") => {}
        Some("analysis") => return analysis_bench(&client, count).await,
        Some("bluegreen") => return bluegreen_bench(&client, count).await,
        _ => bail!(
            "usage: sluice-bench abort|analysis|bluegreen [--count N], or {}",
            sluice_e2e::scale::USAGE
        ),
    }
    eprintln!(
        "abort with a Gateway API route ({count} releases, {REPLICAS} replicas, paused at 50%)"
    );
    let routed = abort_series(&client, true, count).await?;
    eprintln!("abort without a router, traffic by replica count ({count} releases)");
    let basic = abort_series(&client, false, count).await?;
    println!("\nFrom the abort request to:");
    println!(" with a Gateway API HTTPRoute");
    report(
        "route at 100% stable",
        &routed.iter().map(|s| s.0).collect::<Vec<_>>(),
    );
    report(
        "stable fully available",
        &routed.iter().map(|s| s.1).collect::<Vec<_>>(),
    );
    println!(" without a router (replica ratio)");
    report(
        "canary scaled to zero",
        &basic.iter().map(|s| s.0).collect::<Vec<_>>(),
    );
    report(
        "stable fully available",
        &basic.iter().map(|s| s.1).collect::<Vec<_>>(),
    );
    Ok(())
}
