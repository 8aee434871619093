//! Chaos: the controller is killed (SIGKILL) at random moments while a routed canary, a canary
//! without a router and a blue-green release run side by side, and restarted. After each kill and
//! after each recovery the cluster is checked against what the strategies promise: stable never
//! below its size, the route's weights always adding up, blue-green's active Service only ever on a
//! fully available version, no ReplicaSet for a template other than the Rollout's revisions, and every
//! release reaching its latest image. `SLUICE_CHAOS_KILLS` sets the number of kills (CI: 10; run 50
//! or more locally); figures are printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const REPLICAS: i32 = 2;
const SETTLE: Duration = Duration::from_secs(90);

/// The Rollouts under test: (name, strategy).
fn rollouts() -> Vec<(&'static str, Value)> {
    vec![
        (
            "routed",
            json!({"canary": {
                "canaryService": "routed-canary", "stableService": "routed-stable",
                "trafficRouting": {"gatewayAPI": {"httpRoute": "routed"}},
                "scaleDownDelaySeconds": 1, "abortScaleDownDelaySeconds": 1,
                "steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 80}]
            }}),
        ),
        (
            "plain",
            json!({"canary": {
                "canaryService": "plain-canary", "stableService": "plain-stable",
                "maxSurge": 1, "maxUnavailable": 0,
                "steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]
            }}),
        ),
        (
            "bg",
            json!({"blueGreen": {
                "activeService": "bg-active", "previewService": "bg-preview",
                "scaleDownDelaySeconds": 1
            }}),
        ),
    ]
}

fn manifest(name: &str, strategy: &Value, image: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": strategy
        }
    })
}

fn routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    )
}

async fn create_objects(client: &Client, ns: &str) -> Result<()> {
    sluice_e2e::create_services(
        client,
        ns,
        &[
            ("routed", "routed-stable"),
            ("routed", "routed-canary"),
            ("plain", "plain-stable"),
            ("plain", "plain-canary"),
            ("bg", "bg-active"),
            ("bg", "bg-preview"),
        ],
    )
    .await?;
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "routed"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
            {"name": "routed-stable", "port": 80, "weight": 100},
            {"name": "routed-canary", "port": 80, "weight": 0}]}]}
    });
    routes(client, ns)
        .patch(
            "routed",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&route),
        )
        .await?;
    Ok(())
}

/// A small deterministic generator (the seed is printed, so a failing run can be repeated).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What is wrong with the cluster now, by the strategies' promises.
async fn violations(
    client: &Client,
    ns: &str,
    images: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let all_sets = sets.list(&ListParams::default()).await?.items;
    for (name, _) in rollouts() {
        let rollout = api.get(name).await?;
        let status = rollout.status.clone().unwrap_or_default();
        let owned: Vec<&ReplicaSet> = all_sets
            .iter()
            .filter(|rs| rs.name_any().starts_with(&format!("{name}-")))
            .collect();
        let size = |hash: &str| {
            owned
                .iter()
                .find(|rs| {
                    rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
                })
                .map(|rs| {
                    (
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                        rs.status
                            .as_ref()
                            .and_then(|s| s.available_replicas)
                            .unwrap_or(0),
                    )
                })
        };
        // Every ReplicaSet is one of the revisions this test asked for.
        let known = images.get(name).map(Vec::len).unwrap_or(0);
        if owned.len() > known {
            found.push(format!(
                "{name}: {} ReplicaSets for {known} revisions",
                owned.len()
            ));
        }
        let Some(stable) = status.stable_rs.clone() else {
            continue;
        };
        let selected = |service: String| {
            let services = services.clone();
            async move {
                Ok::<_, anyhow::Error>(
                    services
                        .get(&service)
                        .await?
                        .spec
                        .and_then(|s| s.selector)
                        .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned()),
                )
            }
        };
        match name {
            "routed" => {
                // With a router, stable stays whole through the release.
                if size(&stable).is_none_or(|(wanted, _)| wanted < REPLICAS) {
                    found.push(format!(
                        "routed: stable {stable} at {:?} of {REPLICAS}",
                        size(&stable)
                    ));
                }
                let route = routes(client, ns).get("routed").await?;
                let weights: i64 = route.data["spec"]["rules"][0]["backendRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["weight"].as_i64())
                    .sum();
                if weights != 100 {
                    found.push(format!("routed: route weights add up to {weights}"));
                }
            }
            "plain" => {
                // Without a router (maxUnavailable 0): the pods wanted never drop below replicas.
                let wanted: i32 = owned
                    .iter()
                    .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                    .sum();
                if wanted < REPLICAS {
                    found.push(format!(
                        "plain: {wanted} pods wanted in all, below {REPLICAS}"
                    ));
                }
            }
            _ => {
                // The active Service selects only a version that is fully available.
                if let Some(active) = selected("bg-active".to_owned()).await?
                    && size(&active).is_none_or(|(_, available)| available < REPLICAS)
                {
                    found.push(format!(
                        "bg: active on {active}, which has {:?} of {REPLICAS} available",
                        size(&active)
                    ));
                }
            }
        }
    }
    Ok(found)
}

/// Waits until every Rollout is Healthy on the last image it was given.
async fn settled(api: &Api<Rollout>, images: &BTreeMap<String, Vec<String>>) -> Result<()> {
    eventually(
        "every release to reach its latest image",
        SETTLE,
        || async {
            for (name, history) in images {
                let rollout = api.get(name).await?;
                let status = rollout.status.clone().unwrap_or_default();
                let image = rollout
                    .spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone());
                if image.as_ref() != history.last()
                    || status.phase != Some(RolloutPhase::Healthy)
                    || status.observed_generation != rollout.metadata.generation
                    || status.stable_rs != status.current_pod_hash
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

#[tokio::test]
async fn random_kills_never_break_a_promise_and_every_release_finishes() -> Result<()> {
    let kills: usize = std::env::var("SLUICE_CHAOS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    let seed = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let mut random = Lcg(seed);
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chaos").await?;
    create_objects(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, strategy) in rollouts() {
        let image = "registry.example/app:0".to_owned();
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(manifest(name, &strategy, &image)),
        )
        .await?;
        images.entry(name.to_owned()).or_default().push(image);
    }
    let mut controller = ControllerProcess::start(&ns.name)?;
    settled(&api, &images).await?;

    let started = Instant::now();
    let (mut checks, mut found) = (0usize, Vec::new());
    for round in 1..=kills {
        // New images for some of the Rollouts, then a kill at a random moment of their releases.
        for (name, strategy) in rollouts() {
            if random.below(3) == 0 && round > 1 {
                continue;
            }
            let image = format!("registry.example/app:{round}");
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(manifest(name, &strategy, &image)),
            )
            .await?;
            images.entry(name.to_owned()).or_default().push(image);
        }
        tokio::time::sleep(Duration::from_millis(random.below(2500))).await;
        controller.kill()?;
        checks += 1;
        found.extend(
            violations(&client, &ns.name, &images)
                .await?
                .into_iter()
                .map(|v| format!("round {round}, after the kill: {v}")),
        );
        controller = ControllerProcess::start(&ns.name)?;
        settled(&api, &images)
            .await
            .with_context(|| format!("round {round} (seed {seed})"))?;
        checks += 1;
        found.extend(
            violations(&client, &ns.name, &images)
                .await?
                .into_iter()
                .map(|v| format!("round {round}, settled: {v}")),
        );
    }
    println!(
        "chaos: {kills} kills (seed {seed}) across a routed canary, a canary without a router and a blue-green release, {checks} checks, {} violations, {:.1?}",
        found.len(),
        started.elapsed()
    );
    ensure!(
        found.is_empty(),
        "promises broken (seed {seed}):\n{}",
        found.join("\n")
    );
    Ok(())
}
