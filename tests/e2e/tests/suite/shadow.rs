//! Header and mirror routes (`setHeaderRoute`, `setMirrorRoute`, `managedRoutes`) through the
//! Gateway API: the new version gets a copy of real requests (shadow traffic) before any user
//! request, Prometheus judges it on those copies, and a bad one is aborted before a single user
//! request reaches it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{ControllerProcess, TestNamespace, TrafficSim, client, eventually, install_crds};

use crate::analysis::simulated_args;
use crate::canary::{apply, create_routing, healthy_on, sluice_e2e_routes, wait_status};

const WAIT: Duration = Duration::from_secs(60);

/// The user's rule's (stable, canary) weights and the names of the rules Sluice added, in order.
type RouteState = ((i64, i64), Vec<String>);

fn read(route: &DynamicObject) -> RouteState {
    let rules = route.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let managed = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    let user = rules.iter().find(|r| r["name"].is_null());
    let weight = |name: &str| {
        user.and_then(|r| r["backendRefs"].as_array())
            .and_then(|refs| refs.iter().find(|b| b["name"] == name))
            .and_then(|b| b["weight"].as_i64())
            .unwrap_or(-1)
    };
    ((weight("web-stable"), weight("web-canary")), managed)
}

/// Every distinct state of the route in order, from a watch.
fn record(client: &Client, ns: &str) -> Arc<Mutex<Vec<RouteState>>> {
    let seen: Arc<Mutex<Vec<RouteState>>> = Arc::default();
    let log = seen.clone();
    let stream = watcher(sluice_e2e_routes(client, ns), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.applied_objects());
        while let Some(Ok(route)) = stream.next().await {
            let state = read(&route);
            if let Ok(mut seen) = log.lock()
                && seen.last() != Some(&state)
            {
                seen.push(state);
            }
        }
    });
    seen
}

/// A counter of the simulator's, for one version: the sum over its other labels.
async fn counter(sim: &TrafficSim, name: &str, hash: &str) -> Result<f64> {
    let text = sluice_e2e::http_get(&format!("http://{}", sim.addr), "/metrics").await?;
    let needle = format!("pod_template_hash=\"{hash}\"");
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with(&format!("{name}{{")) && line.contains(&needle) {
            let value = line.rsplit(' ').next().context("a value")?;
            total += value.parse::<f64>()?;
        }
    }
    Ok(total)
}

#[tokio::test]
async fn a_shadowed_version_is_judged_on_mirrored_requests_and_aborted_before_any_user_request()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "shadow").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let sim = TrafficSim::start(&ns.name)?;
    create_routing(&client, &ns.name).await?;
    crate::analysis::apply_error_rate_template(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({
        "canaryService": "web-canary", "stableService": "web-stable",
        "trafficRouting": {
            "gatewayAPI": {"httpRoute": "web"},
            "managedRoutes": [{"name": "beta-testers"}, {"name": "shadow"}]
        },
        "scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2,
        "steps": [
            {"setCanaryScale": {"replicas": 2}},
            {"setHeaderRoute": {"name": "beta-testers",
                                "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}},
            {"setMirrorRoute": {"name": "shadow", "percentage": 100,
                                "match": [{"path": {"prefix": "/"}}]}},
            {"analysis": {"templates": [{"templateName": "error-rate"}], "args": simulated_args()}},
            {"setWeight": 20},
            {"pause": {}}
        ]
    });
    apply(
        &api,
        &crate::canary::rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    let seen = record(&client, &ns.name);

    // The new version fails one request in five: only its shadow traffic can tell.
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": {"sim.sluice.dev/error-rate": "0.2"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/web:2.0.0"}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    // While it is analysed, the route carries both managed rules ahead of the user's.
    let shadowing = eventually("the header and mirror rules in the route", WAIT, || async {
        let route = sluice_e2e_routes(&client, &ns.name).get("web").await?;
        Ok((read(&route).1 == ["beta-testers", "shadow"]).then_some(route))
    })
    .await?;
    let rules = &shadowing.data["spec"]["rules"];
    assert_eq!(rules[0]["name"], "beta-testers");
    assert_eq!(
        rules[0]["matches"][0]["headers"],
        json!([{"name": "x-beta", "type": "Exact", "value": "yes"}])
    );
    assert_eq!(
        rules[0]["backendRefs"]
            .as_array()
            .map(|b| b.iter().map(|b| b["name"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("web-canary")]),
        "the header rule sends to the canary only"
    );
    assert_eq!(rules[1]["name"], "shadow");
    assert_eq!(
        rules[1]["filters"][0]["requestMirror"]["backendRef"]["name"],
        "web-canary"
    );
    assert_eq!(rules[1]["filters"][0]["requestMirror"]["percent"], 100);

    let aborted = wait_status(&api, "web", "the shadowed version to be aborted", |s| {
        s.abort
    })
    .await?;
    let message = aborted.message.clone().unwrap_or_default();
    ensure!(message.contains("\"error-rate\""), "{message}");
    let canary_hash = aborted.current_pod_hash.clone().context("hash")?;
    assert_ne!(canary_hash, stable);

    // The abort takes the managed rules away; users' weights never left stable.
    eventually("the route without managed rules", WAIT, || async {
        let route = sluice_e2e_routes(&client, &ns.name).get("web").await?;
        Ok((read(&route) == ((100, 0), Vec::new())).then_some(()))
    })
    .await?;
    let route = sluice_e2e_routes(&client, &ns.name).get("web").await?;
    ensure!(
        !route
            .annotations()
            .contains_key("sluice.dev/release-in-flight"),
        "still marked in flight"
    );
    let states = seen.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(
        states.iter().all(|(weights, _)| *weights == (100, 0)),
        "a user request could reach the new version: {states:?}"
    );
    let names: BTreeSet<Vec<String>> = states.iter().map(|(_, names)| names.clone()).collect();
    ensure!(
        names.contains(&vec!["beta-testers".to_owned(), "shadow".to_owned()]),
        "{states:?}"
    );

    // The new version served requests, every one of them a mirrored copy.
    let served = counter(&sim, "sim_http_requests_total", &canary_hash).await?;
    let mirrored = counter(&sim, "sim_http_mirrored_requests_total", &canary_hash).await?;
    ensure!(served > 0.0, "the shadowed version served nothing");
    assert_eq!(served, mirrored, "a user request reached the new version");
    let status = api.get("web").await?.status.unwrap_or_default();
    assert_eq!(status.phase, Some(RolloutPhase::Degraded));
    Ok(())
}
