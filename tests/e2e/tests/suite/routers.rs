//! Istio and NGINX routing as Argo Rollouts does it, on the real API server with Istio's own CRDs
//! (from its API module) and the built-in Ingress: the exact VirtualService, DestinationRule and
//! canary Ingress contents a proxy would read at each step, abort and promotion.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{apply, healthy_on, request, rollout, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(60);

/// Istio's `kind` (`plural`) in `ns`.
pub(crate) fn istio(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// Applies `manifest` (server-side, forcing ownership of its fields).
pub(crate) async fn apply_dynamic(api: &Api<DynamicObject>, manifest: &Value) -> Result<()> {
    let name = manifest["metadata"]["name"].as_str().context("name")?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await?;
    Ok(())
}

/// The route destinations of a VirtualService as (host, subset, weight), per route kind and index.
async fn destinations(api: &Api<DynamicObject>, route_type: &str, i: usize) -> Result<Value> {
    let vs = api.get("web").await?;
    Ok(vs.data["spec"][route_type][i]["route"].clone())
}

fn weighted(host: &str, weight: i64) -> Value {
    json!({"destination": {"host": host, "port": {"number": 80}}, "weight": weight})
}

fn subset(host: &str, subset: &str, weight: i64) -> Value {
    json!({"destination": {"host": host, "subset": subset}, "weight": weight})
}

async fn invalid_spec_message(api: &Api<Rollout>) -> Option<String> {
    let status = api.get("web").await.ok()?.status?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec" && c.status == "True")
        .map(|c| c.message.clone())
}

#[tokio::test]
async fn istio_virtual_service_http_tls_and_tcp_routes_follow_the_release() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "istio").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let services = istio(&client, &ns.name, "VirtualService", "virtualservices");
    // A route with a third destination is refused, not rewritten.
    let mut vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web"},
        "spec": {
            "hosts": ["web.example"], "gateways": ["mesh"],
            "http": [
                {"name": "other", "route": [weighted("elsewhere", 100)]},
                {"name": "primary", "route": [
                    weighted("web-stable", 100), weighted("web-canary", 0), weighted("legacy", 0)]}],
            "tls": [{"match": [{"port": 443, "sniHosts": ["web.example"]}],
                     "route": [weighted("web-stable.NS.svc.cluster.local", 100), weighted("web-canary", 0)]}],
            "tcp": [{"match": [{"port": 5432}],
                     "route": [weighted("web-stable", 100), weighted("web-canary", 0)]}]
        }
    });
    vs["spec"]["tls"][0]["route"][0]["destination"]["host"] =
        json!(format!("web-stable.{}.svc.cluster.local", ns.name));
    apply_dynamic(&services, &vs).await?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({
        "canaryService": "web-canary", "stableService": "web-stable",
        "trafficRouting": {"istio": {"virtualService": {
            "name": "web", "routes": ["primary"],
            "tlsRoutes": [{"port": 443, "sniHosts": ["web.example"]}],
            "tcpRoutes": [{"port": 5432}]}}},
        "scaleDownDelaySeconds": 2,
        "steps": [{"setWeight": 20}, {"pause": {}}]
    });
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let message = eventually(
        "an InvalidSpec naming the third destination",
        WAIT,
        || async { Ok(invalid_spec_message(&api).await) },
    )
    .await?;
    ensure!(
        message.contains("\"legacy\"") && message.contains("neither the canary nor the stable"),
        "{message}"
    );

    // Fixed by hand: the change to the VirtualService wakes the Rollout.
    vs["spec"]["http"][1]["route"] =
        json!([weighted("web-stable", 100), weighted("web-canary", 0)]);
    apply_dynamic(&services, &vs).await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;

    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    wait_status(&api, "web", "the canary to pause at 20%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let stable_fqdn = format!("web-stable.{}.svc.cluster.local", ns.name);
    assert_eq!(
        destinations(&services, "http", 1).await?,
        json!([weighted("web-stable", 80), weighted("web-canary", 20)])
    );
    assert_eq!(
        destinations(&services, "tls", 0).await?,
        json!([weighted(&stable_fqdn, 80), weighted("web-canary", 20)])
    );
    assert_eq!(
        destinations(&services, "tcp", 0).await?,
        json!([weighted("web-stable", 80), weighted("web-canary", 20)])
    );
    // The route Sluice does not manage is untouched; the VirtualService is marked in flight.
    assert_eq!(
        destinations(&services, "http", 0).await?,
        json!([weighted("elsewhere", 100)])
    );
    let marked = services.get("web").await?;
    assert_eq!(
        marked
            .annotations()
            .get("sluice.dev/release-in-flight")
            .map(String::as_str),
        Some("web")
    );

    request(&api, "web", "promote").await?;
    let done = wait_status(&api, "web", "the release to complete", |s| {
        healthy_on(s, None) && s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    ensure!(done.stable_rs.is_some());
    for (route_type, i, host) in [
        ("http", 1, "web-stable"),
        ("tls", 0, stable_fqdn.as_str()),
        ("tcp", 0, "web-stable"),
    ] {
        assert_eq!(
            destinations(&services, route_type, i).await?,
            json!([weighted(host, 100), weighted("web-canary", 0)]),
            "{route_type} route {i} after promotion"
        );
    }
    let after = services.get("web").await?;
    ensure!(
        !after
            .annotations()
            .contains_key("sluice.dev/release-in-flight"),
        "still marked in flight"
    );
    Ok(())
}

#[tokio::test]
async fn istio_destination_rule_subsets_follow_the_release_and_the_abort() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "istio-subsets").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    sluice_e2e::create_services(&client, &ns.name, &[("web", "web")]).await?;
    let rules = istio(&client, &ns.name, "DestinationRule", "destinationrules");
    apply_dynamic(
        &rules,
        &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web"},
            "spec": {"host": "web", "subsets": [
                {"name": "canary", "labels": {"app": "web"}},
                {"name": "stable"}]}
        }),
    )
    .await?;
    let services = istio(&client, &ns.name, "VirtualService", "virtualservices");
    apply_dynamic(
        &services,
        &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web"},
            "spec": {"hosts": ["web"], "http": [{"route": [
                subset("web", "stable", 100), subset("web", "canary", 0)]}]}
        }),
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    // Subset-level routing as Argo Rollouts writes it: no canary or stable Service.
    let canary = json!({
        "trafficRouting": {"istio": {
            "virtualService": {"name": "web"},
            "destinationRule": {"name": "web", "canarySubsetName": "canary", "stableSubsetName": "stable"}}},
        "abortScaleDownDelaySeconds": 2,
        "steps": [{"setWeight": 25}, {"pause": {}}]
    });
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().context("stable")?;
    let subsets = || async {
        let rule = rules.get("web").await?;
        Ok::<Value, anyhow::Error>(rule.data["spec"]["subsets"].clone())
    };
    let label = "sluice.dev/pod-template-hash";
    assert_eq!(
        subsets().await?,
        json!([
            {"name": "canary", "labels": {"app": "web", label: stable}},
            {"name": "stable", "labels": {label: stable}}])
    );

    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    let paused = wait_status(&api, "web", "the canary to pause at 25%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let canary_hash = paused.current_pod_hash.clone().context("hash")?;
    assert_eq!(
        subsets().await?,
        json!([
            {"name": "canary", "labels": {"app": "web", label: canary_hash}},
            {"name": "stable", "labels": {label: stable}}])
    );
    assert_eq!(
        destinations(&services, "http", 0).await?,
        json!([subset("web", "stable", 75), subset("web", "canary", 25)])
    );

    request(&api, "web", "abort").await?;
    wait_status(&api, "web", "the abort", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await?;
    // All traffic back on stable, and no subset selects the aborted version.
    eventually("the subsets and weights back on stable", WAIT, || async {
        let back = destinations(&services, "http", 0).await?
            == json!([subset("web", "stable", 100), subset("web", "canary", 0)])
            && subsets().await?
                == json!([
                    {"name": "canary", "labels": {"app": "web", label: stable}},
                    {"name": "stable", "labels": {label: stable}}]);
        Ok(back.then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn nginx_canary_ingress_is_created_weighted_and_removed_with_each_release() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "nginx").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let path = |service: &str| {
        json!({"path": "/", "pathType": "Prefix",
               "backend": {"service": {"name": service, "port": {"number": 80}}}})
    };
    let stable_ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {"ingressClassName": "nginx", "rules": [
            {"host": "web.example", "http": {"paths": [path("web-stable")]}},
            {"host": "admin.example", "http": {"paths": [path("admin")]}}]}
    });
    ingresses
        .patch(
            "web",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&stable_ingress),
        )
        .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({
        "canaryService": "web-canary", "stableService": "web-stable",
        "trafficRouting": {"nginx": {"stableIngress": "web",
            "additionalIngressAnnotations": {"canary-by-header": "X-Canary"}}},
        "scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2,
        "steps": [{"setWeight": 30}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]
    });
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    ensure!(
        ingresses.get_opt("web-web-canary").await?.is_none(),
        "a canary Ingress exists without a release"
    );

    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    wait_status(&api, "web", "the canary to pause at 30%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let weight_of = |ingress: &Ingress| {
        ingress
            .annotations()
            .get("nginx.ingress.kubernetes.io/canary-weight")
            .cloned()
    };
    let canary_ingress = ingresses.get("web-web-canary").await?;
    let annotations = canary_ingress.annotations();
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/canary")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(weight_of(&canary_ingress).as_deref(), Some("30"));
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/canary-by-header")
            .map(String::as_str),
        Some("X-Canary")
    );
    let spec = serde_json::to_value(canary_ingress.spec.clone().context("spec")?)?;
    assert_eq!(
        spec,
        json!({"ingressClassName": "nginx", "rules": [
            {"host": "web.example", "http": {"paths": [path("web-canary")]}}]}),
        "only the stable paths, sent to the canary Service"
    );
    let owner = canary_ingress
        .owner_references()
        .first()
        .context("owner")?
        .clone();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Rollout", "web", Some(true))
    );

    request(&api, "web", "promote").await?;
    eventually("the canary Ingress at 60%", WAIT, || async {
        let ingress = ingresses.get("web-web-canary").await?;
        Ok((weight_of(&ingress).as_deref() == Some("60")).then_some(()))
    })
    .await?;
    request(&api, "web", "promote").await?;
    eventually(
        "the release to complete and the canary Ingress to go",
        WAIT,
        || async {
            let status = api.get("web").await?.status.unwrap_or_default();
            let gone = ingresses.get_opt("web-web-canary").await?.is_none();
            Ok((healthy_on(&status, status.current_pod_hash.as_deref()) && gone).then_some(()))
        },
    )
    .await?;

    // An abort takes the canary Ingress away too.
    set_image(&api, "web", "registry.example/web:3.0.0").await?;
    eventually("a canary Ingress at 30% again", WAIT, || async {
        let ingress = ingresses.get_opt("web-web-canary").await?;
        Ok(ingress
            .is_some_and(|i| weight_of(&i).as_deref() == Some("30"))
            .then_some(()))
    })
    .await?;
    request(&api, "web", "abort").await?;
    eventually("the canary Ingress to go after the abort", WAIT, || async {
        Ok(ingresses
            .get_opt("web-web-canary")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let stable_after = ingresses.get("web").await?;
    assert_eq!(
        serde_json::to_value(stable_after.spec.context("spec")?)?,
        stable_ingress["spec"],
        "the stable Ingress is only read"
    );
    Ok(())
}

#[tokio::test]
async fn istio_header_and_mirror_routes_stand_ahead_of_the_users_route_during_the_release()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "istio-managed").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let services = istio(&client, &ns.name, "VirtualService", "virtualservices");
    apply_dynamic(
        &services,
        &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web"},
            "spec": {"hosts": ["web"], "http": [{"name": "primary", "route": [
                weighted("web-stable", 100), weighted("web-canary", 0)]}]}
        }),
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({
        "canaryService": "web-canary", "stableService": "web-stable",
        "trafficRouting": {
            "istio": {"virtualService": {"name": "web", "routes": ["primary"]}},
            "managedRoutes": [{"name": "beta-testers"}, {"name": "shadow"}]
        },
        "steps": [
            {"setCanaryScale": {"replicas": 1}},
            {"setHeaderRoute": {"name": "beta-testers",
                                "match": [{"headerName": "x-beta", "headerValue": {"prefix": "yes"}}]}},
            {"setMirrorRoute": {"name": "shadow", "percentage": 25,
                                "match": [{"method": {"exact": "GET"}, "path": {"prefix": "/api"}}]}},
            {"setWeight": 10},
            {"pause": {}}
        ]
    });
    apply(
        &api,
        &rollout("web", 4, "registry.example/web:1.0.0", canary),
    )
    .await?;
    wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    set_image(&api, "web", "registry.example/web:2.0.0").await?;
    wait_status(&api, "web", "the canary to pause at 10%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let vs = services.get("web").await?;
    let canary = json!({"host": "web-canary", "port": {"number": 80}});
    let stable = json!({"host": "web-stable", "port": {"number": 80}});
    assert_eq!(
        vs.data["spec"]["http"],
        json!([
            {"name": "beta-testers", "match": [{"headers": {"x-beta": {"prefix": "yes"}}}],
             "route": [{"destination": canary, "weight": 100}]},
            {"name": "shadow", "match": [{"method": {"exact": "GET"}, "uri": {"prefix": "/api"}}],
             "route": [{"destination": stable, "weight": 90}, {"destination": canary, "weight": 10}],
             "mirror": canary, "mirrorPercentage": {"value": 25}},
            {"name": "primary", "route": [weighted("web-stable", 90), weighted("web-canary", 10)]}
        ]),
        "the managed routes first, in managedRoutes order, the user's route behind them"
    );

    request(&api, "web", "promote").await?;
    wait_status(&api, "web", "the release to complete", |s| {
        healthy_on(s, None) && s.current_pod_hash == s.stable_rs
    })
    .await?;
    eventually("the managed routes to go", WAIT, || async {
        let vs = services.get("web").await?;
        Ok((vs.data["spec"]["http"]
            == json!([{"name": "primary", "route": [weighted("web-stable", 100), weighted("web-canary", 0)]}]))
        .then_some(()))
    })
    .await?;
    Ok(())
}
