//! The operator as users run it: `helm install` of the chart, from the image this run built
//! (`cargo xtask image`), on the testbed's real node (containerd, runc, kubelet). It becomes Ready
//! with two replicas, one of them holding the leader Lease, and a disruption budget; it carries a
//! canary release with analysis (Prometheus reached by its Service name) to the end, and an abort
//! back to stable; `helm upgrade` to another image tag rolls the operator's pods under a release in
//! flight, which keeps its place and completes; `helm uninstall` leaves the users' Rollouts and
//! their ReplicaSets as they were. The chart's dashboard, with actions allowed, carries out an
//! abort asked through its Service.
//!
//! Run by `cargo xtask test`, which builds the images and starts the real node
//! (`SLUICE_E2E_IMAGES`, `SLUICE_E2E_REAL_NODE`, `SLUICE_E2E_CONTAINERD`); skipped, saying so,
//! without them (a cluster of one's own in `SLUICE_E2E_KUBECONFIG`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery;
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::names::{ACTION_ANNOTATION, ANALYSIS_KIND_LABEL, ROLLOUT_LABEL};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{FIELD_MANAGER, TestNamespace, client, eventually, install_crds, repo_root};

use crate::chart::{apply_object, helm};

/// The operator's pods start from an image already on the node: seconds, but the first pull of
/// the node's cgroups and network can be slow on a loaded machine.
const WAIT: Duration = Duration::from_secs(120);

/// Where the images of this run are and the node that runs them.
pub(crate) struct RealNode {
    /// `target/images` of the run: `<name>.oci.tar` per image.
    pub images: PathBuf,
    /// The node's containerd socket, where images are loaded.
    pub containerd: PathBuf,
    /// The node's name; it carries the label and the `NoSchedule` taint of this key, `true`.
    pub name: String,
}

impl RealNode {
    /// The real node of `cargo xtask test`, or `None` (said on stderr) without one.
    pub(crate) fn from_env() -> Result<Option<Self>> {
        let Some(images) = std::env::var_os("SLUICE_E2E_IMAGES") else {
            eprintln!(
                "skipped: no images of this run (SLUICE_E2E_IMAGES) and no real node; \
                 `cargo xtask test` provides both"
            );
            return Ok(None);
        };
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("SLUICE_E2E_IMAGES is set but {name} is not: the cluster has no real node")
            })
        };
        Ok(Some(Self {
            images: PathBuf::from(images),
            containerd: PathBuf::from(var("SLUICE_E2E_CONTAINERD")?),
            name: var("SLUICE_E2E_REAL_NODE")?,
        }))
    }

    /// Loads `<name>.oci.tar` into the node under `reference`.
    pub(crate) fn load(&self, name: &str, reference: &str) -> Result<()> {
        let archive = self.images.join(format!("{name}.oci.tar"));
        sluice_testbed::node::load_image_at(&self.containerd, &archive, reference)
            .with_context(|| format!("loading {} as {reference}", archive.display()))
    }

    /// Helm values that put a pod on this node (and nowhere else) with the image already there.
    pub(crate) fn placement(&self) -> Value {
        let label = sluice_testbed::node::NODE_LABEL;
        json!({
            "nodeSelector": {label: "true"},
            "tolerations": [{"key": label, "operator": "Exists", "effect": "NoSchedule"}],
        })
    }
}

/// The image reference the chart gives by default to the image whose values are at `image` (a
/// JSON pointer into values.yaml: `/image`, `/dashboard/image`), built as the chart builds it:
/// `registry/repository` (the repository alone without a registry), then `@digest`, or `:tag`
/// with the tag defaulting to the chart's `appVersion`.
pub(crate) fn chart_image(image: &str) -> Result<String> {
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/sluice/Chart.yaml"),
    )?)?;
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/sluice/values.yaml"),
    )?)?;
    let image = values
        .pointer(image)
        .with_context(|| format!("{image} in values.yaml"))?;
    let field = |name: &str| image[name].as_str().unwrap_or_default();
    let repository = field("repository");
    ensure!(!repository.is_empty(), "no repository in {image}");
    let name = match field("registry") {
        "" => repository.to_owned(),
        registry => format!("{}/{repository}", registry.trim_end_matches('/')),
    };
    Ok(match (field("digest"), field("tag")) {
        ("", "") => format!(
            "{name}:{}",
            chart["appVersion"].as_str().context("appVersion")?
        ),
        ("", tag) => format!("{name}:{tag}"),
        (digest, _) => format!("{name}@{digest}"),
    })
}

/// `helm install RELEASE charts/sluice` into the namespace of its name, with the values file.
fn helm_install(helm_bin: &std::path::Path, release: &str, values: &str) -> Result<String> {
    helm(
        helm_bin,
        &[
            "install",
            release,
            "charts/sluice",
            "--namespace",
            release,
            "--values",
            values,
        ],
    )
}

/// Writes Helm values to a file of the test's own and returns its path.
pub(crate) fn values_file(name: &str, values: &Value) -> Result<PathBuf> {
    let dir = repo_root().join("target/e2e-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("values-{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(values)?)?;
    Ok(path)
}

/// Deep-merges `overlay` into `base`.
pub(crate) fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

#[tokio::test]
async fn helm_installs_the_operator_from_its_image_and_it_carries_a_release_and_an_abort()
-> Result<()> {
    let Some(node) = RealNode::from_env()? else {
        return Ok(());
    };
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let image = chart_image("/image")?;
    // The chart's default reference names the archive this run built; a second tag of it is the
    // upgrade below (the same bytes: what is tested is the roll of the operator's pods).
    let upgrade_tag = "upgrade";
    let (repository, _) = image.rsplit_once(':').context("image without a tag")?;
    node.load("sluice-controller", &image)?;
    node.load("sluice-controller", &format!("{repository}:{upgrade_tag}"))?;
    node.load("kubectl-sluice", &chart_image("/dashboard/image")?)?;

    let client = client().await?;
    install_crds(&client).await?;
    let apps = TestNamespace::create(&client, "incluster").await?;
    let operator = TestNamespace::create(&client, "incluster-op").await?;
    let release = operator.name.clone();
    let dashboard = format!("{release}-sluice-dashboard");
    // The name the page is reached by, through its Service.
    let dashboard_host = format!("{dashboard}.{release}.svc");
    let mut values = json!({
        "crds": {"install": false},
        // The cluster-wide admission policy is the images test's; the operator refuses the same.
        "imagePolicy": {"enabled": false},
        "watchNamespace": apps.name,
        "image": {"pullPolicy": "Never"},
        // A crashed leader's place is taken within 5 s instead of 15.
        "leaderElection": {"leaseDurationSeconds": 5},
        // The dashboard, its actions allowed (it runs on the node too: the operator's placement).
        "dashboard": {"enabled": true, "allowActions": true, "allowedHosts": [dashboard_host],
                      "image": {"pullPolicy": "Never"},
                      // Pods of namespaces with this label may reach the page; no others.
                      "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels": {CLIENT_LABEL: release}}}]}},
    });
    merge(&mut values, &node.placement());
    let values = values_file(&release, &values)?;
    let values = values.display().to_string();

    let result = async {
        // helm install → both replicas Ready, one holding the Lease.
        let started = Instant::now();
        helm_install(&binaries.helm, &release, &values)?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &release);
        let name = format!("{release}-sluice");
        let ready = operator_ready(&deployments, &leases, &name).await?;
        let install_to_ready = started.elapsed();
        eprintln!(
            "helm install → operator Ready (2 replicas, Lease held by {ready}): {:.1} s",
            install_to_ready.as_secs_f64()
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), &release);
        for pod in pods.list(&ListParams::default()).await? {
            let spec = pod.spec.clone().unwrap_or_default();
            ensure!(
                spec.node_name.as_deref() == Some(node.name.as_str()),
                "the operator's pod {} is not on the real node: {:?}",
                pod.metadata.name.unwrap_or_default(),
                spec.node_name
            );
        }
        let pdb: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &release);
        eventually(
            "the disruption budget to allow one eviction",
            WAIT,
            || async {
                let status = pdb.get(&name).await?.status.unwrap_or_default();
                Ok((status.current_healthy == 2 && status.disruptions_allowed == 1).then_some(()))
            },
        )
        .await?;

        let page = Page::ready(&client, &release, &dashboard, &dashboard_host).await?;
        // Only pods the chart's NetworkPolicy names reach the dashboard (kube-router enforces it
        // on the node): one in the users' namespace does not, one in a labelled namespace does.
        let url = format!("http://{dashboard_host}:3100/healthz");
        let allowed = TestNamespace::create(&client, "incluster-client").await?;
        let label = json!({"metadata": {"labels": {CLIENT_LABEL: release}}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                &allowed.name,
                &PatchParams::default(),
                &Patch::Merge(&label),
            )
            .await?;
        let refused = probe(&client, &node, &apps.name, &url).await?;
        ensure!(
            refused
                .as_ref()
                .is_some_and(|why| !why.contains("no such host")),
            "a pod of another namespace reached the dashboard: {refused:?}"
        );
        // The label is a second old: kube-router takes it in within a sync or two.
        eventually(
            "a pod of the namespace the policy allows to reach the dashboard",
            WAIT,
            || async {
                let reached = probe(&client, &node, &allowed.name, &url).await?;
                ensure!(reached.is_none(), "{reached:?}");
                Ok(Some(()))
            },
        )
        .await?;
        let route_on_stable = release_and_abort(&client, &apps.name, &page).await?;
        eprintln!(
            "abort → route on stable (operator in-cluster): {} ms",
            route_on_stable.as_millis()
        );

        upgrade_under_a_release(
            &client,
            &binaries.helm,
            &release,
            &values,
            &apps.name,
            upgrade_tag,
        )
        .await?;

        // helm uninstall: the operator goes, the users' Rollouts and ReplicaSets stay.
        let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &apps.name);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &apps.name);
        let before = replica_counts(&sets).await?;
        helm(
            &binaries.helm,
            &["uninstall", &release, "--namespace", &release, "--wait"],
        )?;
        ensure!(
            deployments.get_opt(&name).await?.is_none(),
            "the operator's Deployment outlived helm uninstall"
        );
        ensure!(
            rollouts.get_opt("web").await?.is_some(),
            "helm uninstall deleted the users' Rollout"
        );
        let after = replica_counts(&sets).await?;
        ensure!(
            before == after,
            "helm uninstall changed the users' ReplicaSets: {before:?} then {after:?}"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = helm(
            &binaries.helm,
            &["uninstall", &release, "--namespace", &release],
        );
    }
    result
}

/// Waits until the operator's Deployment has both replicas Ready on its current template and one
/// of its pods holds the Lease; returns the holder.
async fn operator_ready(
    deployments: &Api<Deployment>,
    leases: &Api<Lease>,
    name: &str,
) -> Result<String> {
    eventually("the operator to be Ready and lead", WAIT, || async {
        let deployment = deployments.get(name).await?;
        let status = deployment.status.unwrap_or_default();
        let rolled = status.observed_generation == deployment.metadata.generation
            && status.updated_replicas == Some(2)
            && status.ready_replicas == Some(2)
            && status.replicas == Some(2);
        if !rolled {
            return Ok(None);
        }
        Ok(leases
            .get_opt(name)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    })
    .await
}

async fn replica_counts(sets: &Api<ReplicaSet>) -> Result<Vec<(String, i32)>> {
    let mut counts: Vec<(String, i32)> = sets
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|rs| {
            let replicas = rs.spec.and_then(|s| s.replicas).unwrap_or_default();
            (rs.metadata.name.unwrap_or_default(), replicas)
        })
        .collect();
    counts.sort();
    Ok(counts)
}

fn rollout(image: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2, "revisionHistoryLimit": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"canary": {
                "canaryService": "web-canary", "stableService": "web-stable",
                "trafficRouting": {"gatewayAPI": {"httpRoute": "web"}},
                "scaleDownDelaySeconds": 1,
                "steps": steps,
            }}
        }
    })
}

/// The HTTPRoute's weights, stable's and canary's.
async fn route_weights(routes: &Api<DynamicObject>) -> Result<(i64, i64)> {
    let route = routes.get("web").await?;
    let backends = &route.data["spec"]["rules"][0]["backendRefs"];
    let weight = |service: &str| {
        backends
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"] == service)
            .and_then(|b| b["weight"].as_i64())
            .unwrap_or(-1)
    };
    Ok((weight("web-stable"), weight("web-canary")))
}

async fn apply_rollout(api: &Api<Rollout>, manifest: &Value) -> Result<()> {
    api.patch(
        "web",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await?;
    Ok(())
}

async fn healthy_on(api: &Api<Rollout>, image: &str) -> Result<()> {
    sluice_e2e::released_on(api, "web", image, WAIT).await
}

async fn paused_at(
    api: &Api<Rollout>,
    routes: &Api<DynamicObject>,
    weights: (i64, i64),
) -> Result<()> {
    eventually(
        &format!("the release paused at {weights:?}"),
        WAIT,
        || async {
            let status = api.get("web").await?.status.unwrap_or_default();
            Ok((status.phase == Some(RolloutPhase::Paused)
                && route_weights(routes).await? == weights)
                .then_some(()))
        },
    )
    .await
}

async fn routes_api(client: &kube::Client, ns: &str) -> Result<Api<DynamicObject>> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let (resource, _) = discovery::pinned_kind(client, &gvk).await?;
    Ok(Api::namespaced_with(client.clone(), ns, &resource))
}

/// The label of the namespaces whose pods the dashboard's NetworkPolicy lets in.
const CLIENT_LABEL: &str = "sluice.dev/e2e-dashboard-client";

/// Runs the testbed's probe in a pod of `ns` on the real node against `url`: `None` if it got an
/// answer, else why not (the probe's output: refused, timed out, no such host).
async fn probe(
    client: &kube::Client,
    node: &RealNode,
    ns: &str,
    url: &str,
) -> Result<Option<String>> {
    let mut pod = json!({
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "probe", "image": sluice_testbed::netpol::PROBE_IMAGE,
                "imagePullPolicy": "Never", "args": ["get", url, "3s"],
            }],
        },
    });
    merge(&mut pod["spec"], &node.placement());
    let pod: Pod = serde_json::from_value(pod)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&Default::default(), &pod).await?;
    let phase = eventually(&format!("the probe in {ns} to finish"), WAIT, || async {
        let phase = pods.get("probe").await?.status.and_then(|s| s.phase);
        Ok(phase.filter(|p| p == "Succeeded" || p == "Failed"))
    })
    .await?;
    let output = pods.logs("probe", &Default::default()).await?;
    pods.delete("probe", &Default::default()).await?;
    Ok((phase != "Succeeded").then_some(output))
}

/// The chart's dashboard, reached through its Service from this machine (the node: kube-proxy
/// leads a ClusterIP to the pod).
struct Page {
    url: String,
    host: String,
    token: String,
}

impl Page {
    /// Waits for the dashboard to be Ready and reads the actions' token from its page.
    async fn ready(client: &kube::Client, ns: &str, name: &str, host: &str) -> Result<Self> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        eventually("the dashboard Ready", WAIT, || async {
            let status = deployments.get(name).await?.status.unwrap_or_default();
            Ok((status.ready_replicas == Some(1)).then_some(()))
        })
        .await?;
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), ns);
        let service = services.get(name).await?;
        let spec = service.spec.unwrap_or_default();
        let ip = spec
            .cluster_ip
            .context("the dashboard's Service has no address")?;
        let port = spec.ports.unwrap_or_default().first().map_or(0, |p| p.port);
        let url = format!("http://{ip}:{port}");
        // kube-proxy leads the Service to the pod once it has seen the EndpointSlice.
        let page = eventually("the dashboard's page through its Service", WAIT, || async {
            let (status, _, page) =
                crate::dashboard::exchange(&url, "GET", "/", &[("Host", host)]).await?;
            ensure!(status == 200, "the dashboard's page: {status} {page}");
            Ok(Some(page))
        })
        .await?;
        let config = page
            .split_once(r#"<script id="config" type="application/json">"#)
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(config, _)| config)
            .context("no configuration in the page")?;
        let config: Value = serde_json::from_str(config)?;
        ensure!(
            config["actions"] == true,
            "actions are not allowed: {config}"
        );
        let token = config["token"].as_str().unwrap_or_default().to_owned();
        Ok(Self {
            url,
            host: host.to_owned(),
            token,
        })
    }

    /// Asks for `action` on the Rollout `ns/name`, as the page's button does.
    async fn act(&self, ns: &str, name: &str, action: &str) -> Result<()> {
        let (status, _, body) = crate::dashboard::exchange(
            &self.url,
            "POST",
            &format!("/api/rollouts/{ns}/{name}/{action}"),
            &[("Host", &self.host), ("X-Sluice-Token", &self.token)],
        )
        .await?;
        ensure!(
            (200..300).contains(&status),
            "the dashboard refused {action}: {status} {body}"
        );
        Ok(())
    }
}

/// A canary release with analysis to the end, then a release aborted at 50 % through the
/// dashboard's Service: returns the time from the abort request to the route all on stable.
async fn release_and_abort(client: &kube::Client, ns: &str, page: &Page) -> Result<Duration> {
    let manifests = [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-stable", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-canary", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": ns},
               "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
                   {"name": "web-stable", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]}}),
        // Prometheus by its Service name, as the samples and a default install have it.
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "up", "namespace": ns},
               "spec": {"metrics": [{"name": "up", "count": 2, "interval": "1s",
                   "successCondition": "result[0] >= 1",
                   "provider": {"prometheus": {"address": "http://prometheus.monitoring.svc:9090",
                                               "query": "vector(1)"}}}]}}),
    ];
    for manifest in &manifests {
        apply_object(client, manifest, false).await?;
    }
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let routes = routes_api(client, ns).await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), ns);

    let with_analysis = json!([
        {"setWeight": 20},
        {"analysis": {"templates": [{"templateName": "up"}]}},
        {"setWeight": 60},
    ]);
    apply_rollout(
        &api,
        &rollout("registry.example/web:1.0.0", with_analysis.clone()),
    )
    .await?;
    healthy_on(&api, "registry.example/web:1.0.0").await?;
    apply_rollout(&api, &rollout("registry.example/web:2.0.0", with_analysis)).await?;
    healthy_on(&api, "registry.example/web:2.0.0").await?;
    ensure!(
        route_weights(&routes).await? == (100, 0),
        "the released version is not all on stable: {:?}",
        route_weights(&routes).await?
    );
    // The analysis measured Prometheus from the operator's pod: two measurements of 1.
    let run = runs
        .list(&ListParams::default())
        .await?
        .into_iter()
        .next()
        .context("no AnalysisRun")?;
    let status = run.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(AnalysisPhase::Successful),
        "the analysis did not succeed: {status:?}"
    );
    let measured = serde_json::to_string(&status.metric_results)?;
    ensure!(
        status
            .metric_results
            .first()
            .is_some_and(|m| m.measurements.len() == 2),
        "two measurements expected: {measured}"
    );

    // A release paused at 50 %, aborted: how long until the route is all on stable again.
    let paused = json!([{"setWeight": 50}, {"pause": {}}]);
    apply_rollout(&api, &rollout("registry.example/web:3.0.0", paused)).await?;
    paused_at(&api, &routes, (50, 50)).await?;
    let asked = Instant::now();
    page.act(ns, "web", "abort").await?;
    eventually("the route back on stable", WAIT, || async {
        Ok((route_weights(&routes).await? == (100, 0)).then_some(()))
    })
    .await?;
    let took = asked.elapsed();
    eventually("the abort recorded, stable at full size", WAIT, || async {
        let status = api.get("web").await?.status.unwrap_or_default();
        Ok((status.abort
            && status.phase == Some(RolloutPhase::Degraded)
            && status.available_replicas == Some(2))
        .then_some(()))
    })
    .await?;
    Ok(took)
}

/// `helm upgrade` to another image tag while a release waits at 50 %: the route keeps its weights
/// throughout, one new pod leads, and the release then completes.
async fn upgrade_under_a_release(
    client: &kube::Client,
    helm_bin: &std::path::Path,
    release: &str,
    values: &str,
    ns: &str,
    tag: &str,
) -> Result<()> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let routes = routes_api(client, ns).await?;
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    apply_rollout(&api, &rollout("registry.example/web:4.0.0", steps)).await?;
    paused_at(&api, &routes, (50, 50)).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), release);
    let leases: Api<Lease> = Api::namespaced(client.clone(), release);
    let pods: Api<Pod> = Api::namespaced(client.clone(), release);
    let name = format!("{release}-sluice");
    let old_pods: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let started = Instant::now();
    helm(
        helm_bin,
        &[
            "upgrade",
            release,
            "charts/sluice",
            "--namespace",
            release,
            "--values",
            values,
            "--set",
            &format!("image.tag={tag}"),
        ],
    )?;
    // While the pods roll, the release in flight keeps its weights.
    let watch_route = async {
        loop {
            let weights = route_weights(&routes).await?;
            if weights != (50, 50) {
                bail!("the route moved to {weights:?} during the operator's upgrade");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let holder = tokio::select! {
        ready = async {
            eventually("the upgraded operator to lead", WAIT, || async {
                let holder = operator_ready(&deployments, &leases, &name).await?;
                let image = deployments
                    .get(&name)
                    .await?
                    .spec
                    .and_then(|s| s.template.spec)
                    .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
                    .unwrap_or_default();
                Ok((image.ends_with(&format!(":{tag}")) && !old_pods.contains(&holder))
                    .then_some(holder))
            })
            .await
        } => ready?,
        moved = watch_route => { moved?; bail!("unreachable") }
    };
    eprintln!(
        "helm upgrade → the new operator leads ({holder}): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        route_weights(&routes).await? == (50, 50),
        "the route moved during the upgrade"
    );
    // The new leader carries on from the status the old one left.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {ACTION_ANNOTATION: "promote-full"}}})),
    )
    .await?;
    healthy_on(&api, "registry.example/web:4.0.0").await?;
    ensure!(
        route_weights(&routes).await? == (100, 0),
        "after the upgrade the release did not end on the new version"
    );
    Ok(())
}

/// Helm values of an install as the README's quick start has it (the address policy, the probes,
/// the RBAC all the chart's defaults), in the test's namespace, on the real node.
fn default_install(node: &RealNode, watch: &str) -> Value {
    let mut values = json!({
        "crds": {"install": false},
        "imagePolicy": {"enabled": false},
        "watchNamespace": watch,
        "image": {"pullPolicy": "Never"},
    });
    merge(&mut values, &node.placement());
    values
}

#[tokio::test]
async fn every_sample_runs_on_a_default_install_and_each_analysis_measures() -> Result<()> {
    let Some(node) = RealNode::from_env()? else {
        return Ok(());
    };
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    node.load("sluice-controller", &chart_image("/image")?)?;
    let client = client().await?;
    install_crds(&client).await?;
    let samples = TestNamespace::create(&client, "samples-live").await?;
    let operator = TestNamespace::create(&client, "samples-op").await?;
    let release = operator.name.clone();
    let values = values_file(&release, &default_install(&node, &samples.name))?;
    let values = values.display().to_string();
    helm_install(&binaries.helm, &release, &values)?;
    let result = async {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &release);
        operator_ready(&deployments, &leases, &format!("{release}-sluice")).await?;
        sluice_e2e::kubectl_stdout(&["apply", "-n", &samples.name, "-f", "config/"])
            .context("applying config/")?;

        // First releases, then a second of the canary and of the blue-green sample: their analysis
        // (a step's, a background one and a pre-promotion one) queries Prometheus by the address
        // the samples give, which the default policy allows and CoreDNS resolves.
        let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &samples.name);
        for name in ["checkout", "ledger"] {
            eventually(&format!("{name} released"), WAIT, || async {
                let status = rollouts.get(name).await?.status.unwrap_or_default();
                Ok((status.phase == Some(RolloutPhase::Healthy)).then_some(()))
            })
            .await?;
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {"sluice.dev/e2e-release": "2"}}}}});
            rollouts
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        // The sample gate selects checkout: it reached Prometheus (which has no data for checkout
        // here, so it is Unknown with NoData) and, as its onUnknown says, holds the release. Let
        // it through, as a team would for a service without traffic yet.
        let gates: Api<sluice_api::gate::ErrorBudgetGate> =
            Api::namespaced(client.clone(), &samples.name);
        let reason = eventually("the sample gate evaluated", WAIT, || async {
            let status = gates.get("checkout-slo").await?.status.unwrap_or_default();
            if status.reason.as_deref() == Some("PrometheusUnreachable") {
                bail!("the gate could not query Prometheus: {:?}", status.message);
            }
            Ok(status.last_evaluation_time.and(status.reason))
        })
        .await?;
        ensure!(reason == "NoData", "the gate's reason: {reason}");
        let allow = json!({"spec": {"onUnknown": "Allow"}});
        gates
            .patch("checkout-slo", &PatchParams::default(), &Patch::Merge(&allow))
            .await?;
        // Past the canary's two-minute pause, to its analysis step.
        eventually("checkout paused at its first pause", WAIT, || async {
            let status = rollouts.get("checkout").await?.status.unwrap_or_default();
            Ok((status.current_step_index == Some(1)
                && status.phase == Some(RolloutPhase::Paused))
            .then_some(()))
        })
        .await?;
        let promote = json!({"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}});
        rollouts
            .patch("checkout", &PatchParams::default(), &Patch::Merge(&promote))
            .await?;

        let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &samples.name);
        // Each run that measured, as (Rollout, kind, metric): none may have measured an error.
        let expected = [
            ("checkout", "background", "canary-vs-baseline"),
            ("checkout", "step", "error-rate"),
            ("ledger", "pre-promotion", "error-rate"),
        ];
        let measured = eventually("every sample's analysis to measure", WAIT, || async {
            // No data is Inconclusive, which pauses the canary: a person promotes past it.
            let checkout = rollouts.get("checkout").await?;
            let paused = checkout
                .status
                .as_ref()
                .is_some_and(|s| !s.pause_conditions.is_empty());
            if paused && !checkout.annotations().contains_key(ACTION_ANNOTATION) {
                rollouts
                    .patch("checkout", &PatchParams::default(), &Patch::Merge(&promote))
                    .await?;
            }
            let mut measured: Vec<(String, String, String)> = Vec::new();
            for run in runs.list(&ListParams::default()).await? {
                let labels = run.metadata.labels.clone().unwrap_or_default();
                let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
                let status = run.status.clone().unwrap_or_default();
                for result in &status.metric_results {
                    if let Some(error) = result
                        .measurements
                        .iter()
                        .find(|m| m.phase == AnalysisPhase::Error)
                    {
                        bail!(
                            "{} measured an error: {:?}",
                            run.metadata.name.unwrap_or_default(),
                            error.message
                        );
                    }
                    if !result.measurements.is_empty() {
                        measured.push((
                            label(ROLLOUT_LABEL),
                            label(ANALYSIS_KIND_LABEL),
                            result.name.clone(),
                        ));
                    }
                }
            }
            measured.sort();
            measured.dedup();
            // With no data each new background run pauses the canary again at once: once it has
            // measured, it is taken off, and the promotes reach the step's analysis.
            let background_measured = measured.iter().any(|m| m.1 == "background");
            let has_background = checkout
                .spec
                .strategy
                .canary
                .as_ref()
                .is_some_and(|c| c.analysis.is_some());
            if background_measured && has_background {
                let drop = json!({"spec": {"strategy": {"canary": {"analysis": null}}}});
                rollouts
                    .patch("checkout", &PatchParams::default(), &Patch::Merge(&drop))
                    .await?;
            }
            let all = expected.iter().all(|(rollout, kind, metric)| {
                measured
                    .iter()
                    .any(|m| (m.0.as_str(), m.1.as_str(), m.2.as_str()) == (*rollout, *kind, *metric))
            });
            Ok(all.then_some(measured))
        })
        .await;
        let measured = match measured {
            Ok(measured) => measured,
            Err(error) => {
                let status = rollouts.get("checkout").await?.status;
                bail!("{error:#}; checkout: {}", serde_json::to_string(&status)?)
            }
        };
        eprintln!("samples measured (Rollout, analysis, metric): {measured:?}");

        // An ExternalName Service is an in-cluster name for any address: here the node's (whose
        // Prometheus answers), by a name `pods insecure` DNS resolves to it. The default policy
        // allows `*.svc` names into the cluster's ranges only (discovered: no node has a pod range
        // here, so the Service range), and the run ends in Error naming them.
        let port = crate::analysis::prometheus_url()?
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .context("the Prometheus URL has no port")?;
        let node_ip = sluice_testbed::node::NODE_IP.replace('.', "-");
        for manifest in [
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "elsewhere", "namespace": samples.name},
                   "spec": {"type": "ExternalName",
                            "externalName": format!("{node_ip}.default.pod.cluster.local")}}),
            json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
                   "metadata": {"name": "elsewhere", "namespace": samples.name,
                                "labels": {"sluice.dev/standalone": "true"}},
                   "spec": {"metrics": [{"name": "up", "count": 1, "consecutiveErrorLimit": 0,
                       "successCondition": "result[0] == 1",
                       "provider": {"prometheus": {
                           "address": format!("http://elsewhere.{}.svc:{port}", samples.name),
                           "query": "vector(1)"}}}]}}),
        ] {
            apply_object(&client, &manifest, false).await?;
        }
        let run = crate::tenancy::finished(&runs, "elsewhere").await?;
        let status = run.status.unwrap_or_default();
        let said = serde_json::to_string(&status)?;
        ensure!(
            status.phase == Some(AnalysisPhase::Error)
                && said.contains("cluster's address ranges")
                && said.contains("10.96.0.0/16"),
            "the ExternalName Service's address was not refused: {said}"
        );

        Ok(())
    }
    .await;
    let _ = helm(
        &binaries.helm,
        &["uninstall", &release, "--namespace", &release],
    );
    result
}
