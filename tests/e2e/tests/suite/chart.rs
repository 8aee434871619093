//! The Helm chart: it lints, renders, is accepted by the API server, and the RBAC it grants is
//! enough for the operator to run a whole release (with analysis and a restart) and nothing fails
//! as forbidden.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
    kubeconfig_path, repo_root, yaml_documents,
};

const WAIT: Duration = Duration::from_secs(60);

fn helm(helm: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new(helm)
        .args(args)
        .current_dir(repo_root())
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies one rendered object by server-side apply (or only checks it, with `dry_run`).
async fn apply_object(client: &kube::Client, object: &Value, dry_run: bool) -> Result<()> {
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let kind = object["kind"].as_str().context("kind")?;
    let name = object["metadata"]["name"].as_str().context("name")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> =
        match (capabilities.scope, object["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

async fn delete_cluster_scoped(client: &kube::Client, objects: &[Value]) {
    for object in objects {
        let (Some(kind), Some(name)) =
            (object["kind"].as_str(), object["metadata"]["name"].as_str())
        else {
            continue;
        };
        if !matches!(kind, "ClusterRole" | "ClusterRoleBinding") {
            continue;
        }
        let gvk = GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind);
        if let Ok((resource, _)) = discovery::pinned_kind(client, &gvk).await {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let _ = api.delete(name, &Default::default()).await;
        }
    }
}

#[tokio::test]
async fn the_chart_installs_and_its_rbac_is_enough_to_run_a_release() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart").await?;
    let release = ns.name.clone();

    let lint = helm(&binaries.helm, &["lint", "charts/sluice"])?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");
    let bad = Command::new(&binaries.helm)
        .args([
            "template",
            "x",
            "charts/sluice",
            "--kube-version",
            "1.37.2",
            "--set",
            "replicaCount=zero",
        ])
        .current_dir(repo_root())
        .output()?;
    ensure!(
        !bad.status.success(),
        "values.schema.json accepted replicaCount=zero"
    );

    // Everything the chart renders, CRDs included, is accepted by the API server.
    let full = yaml_documents(&helm(
        &binaries.helm,
        &[
            "template",
            &release,
            "charts/sluice",
            "--namespace",
            &release,
            "--kube-version",
            "1.37.2",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "providerAddresses={prometheus.monitoring.svc,10.0.0.0/8}",
            "--set",
            "metrics.grafanaDashboards.enabled=true",
        ],
    )?)?;
    // Each dashboard in a ConfigMap Grafana's sidecar picks up, holding valid JSON.
    let dashboards: Vec<&Value> = full
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    ensure!(
        dashboards.len() == 2,
        "{} dashboard ConfigMaps",
        dashboards.len()
    );
    for dashboard in &dashboards {
        for text in dashboard["data"]
            .as_object()
            .into_iter()
            .flat_map(|d| d.values())
        {
            let parsed: Value = serde_json::from_str(text.as_str().unwrap_or_default())?;
            ensure!(
                parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
                "{parsed}"
            );
        }
    }
    let kinds: Vec<&str> = full.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "Role",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        ensure!(
            kinds.contains(&kind),
            "the chart renders no {kind}: {kinds:?}"
        );
    }
    let args = full
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].to_string())
        .unwrap_or_default();
    ensure!(
        args.contains("--allow-provider-address=prometheus.monitoring.svc")
            && args.contains("--allow-provider-address=10.0.0.0/8"),
        "providerAddresses do not reach the operator's arguments: {args}"
    );
    for object in &full {
        let mut object = object.clone();
        if object["metadata"]["namespace"].is_null()
            && object["kind"] != "CustomResourceDefinition"
            && !object["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("Cluster"))
        {
            object["metadata"]["namespace"] = json!(release);
        }
        apply_object(&client, &object, true).await?;
    }

    // The RBAC for one namespace, for real; the operator then runs as the chart's ServiceAccount.
    let scoped = yaml_documents(&helm(
        &binaries.helm,
        &[
            "template",
            &release,
            "charts/sluice",
            "--namespace",
            &release,
            "--kube-version",
            "1.37.2",
            "--set",
            "crds.install=false",
            "--set",
            &format!("watchNamespace={release}"),
        ],
    )?)?;
    let rbac: Vec<Value> = scoped
        .into_iter()
        .filter(|o| {
            o["kind"].as_str().is_some_and(|k| {
                matches!(
                    k,
                    "ServiceAccount"
                        | "Role"
                        | "RoleBinding"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                )
            })
        })
        .collect();
    // Least privilege: only verbs the operator sends (no wildcard, no update, no listing of
    // Secrets or watching of Leases), checked on what the chart renders; the release below proves
    // they are enough.
    let mut granted: Vec<String> = Vec::new();
    for rule in rbac.iter().filter_map(|o| o["rules"].as_array()).flatten() {
        for resource in rule["resources"].as_array().into_iter().flatten() {
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                granted.push(format!(
                    "{}:{}",
                    resource.as_str().unwrap_or_default(),
                    verb.as_str().unwrap_or_default()
                ));
            }
        }
    }
    for refused in [
        "*",
        ":update",
        "secrets:list",
        "secrets:watch",
        "leases:list",
        "leases:watch",
        "rollouts:get",
        "pods:get",
    ] {
        // "*" anywhere, ":update" for any resource, the others exactly ("releases" is not "leases").
        let grants = |g: &String| match refused {
            "*" => g.contains('*'),
            verb if verb.starts_with(':') => g.ends_with(verb),
            exact => g == exact,
        };
        ensure!(
            !granted.iter().any(grants),
            "the chart grants {refused}: {granted:?}"
        );
    }
    for object in &rbac {
        apply_object(&client, object, false).await?;
    }
    let result = run_release_as(&client, &release, &rbac).await;
    delete_cluster_scoped(&client, &rbac).await;
    result
}

async fn run_release_as(client: &kube::Client, ns: &str, rbac: &[Value]) -> Result<()> {
    let account = rbac
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .context("the chart's ServiceAccount")?;
    // The test's own kubeconfig, impersonating the ServiceAccount.
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig_path())?)?;
    let users = kubeconfig["users"]
        .as_sequence_mut()
        .context("kubeconfig users")?;
    for user in users {
        user["user"]["as"] =
            serde_yaml::Value::from(format!("system:serviceaccount:{ns}:{account}"));
    }
    let path = repo_root().join(format!("target/e2e-logs/kubeconfig-{ns}"));
    std::fs::create_dir_all(repo_root().join("target/e2e-logs"))?;
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    // The impersonation is real: the ServiceAccount cannot list Secrets across the cluster.
    let impersonated = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&path)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;
    match Api::<k8s_openapi::api::core::v1::Secret>::all(impersonated)
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("the chart's ServiceAccount may list all Secrets: {other:?}"),
    }
    let controller = ControllerProcess::start_with(ns, "chart", &path)?;

    let prometheus =
        std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL")?;
    let manifests = [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-stable", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-canary", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": ns},
               "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
                   {"name": "web-stable", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]}}),
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "up", "namespace": ns},
               "spec": {"metrics": [{"name": "up", "count": 1, "successCondition": "size(result) >= 0",
                   "inconclusiveLimit": 1,
                   "provider": {"prometheus": {"address": prometheus, "query": "vector(1)"}}}]}}),
    ];
    for manifest in &manifests {
        apply_object(client, manifest, false).await?;
    }
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let rollout = |image: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 2, "revisionHistoryLimit": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"canary": {
                    "canaryService": "web-canary", "stableService": "web-stable",
                    "trafficRouting": {"gatewayAPI": {"httpRoute": "web"}},
                    "scaleDownDelaySeconds": 1,
                    "steps": [{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "up"}]}}]
                }}
            }
        })
    };
    let healthy_on = |image: &'static str| {
        let api = api.clone();
        async move {
            eventually(&format!("{image} released"), WAIT, || async {
                let ro = api.get("web").await?;
                let status = ro.status.clone().unwrap_or_default();
                let on_image = ro
                    .spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .is_some_and(|s| s.containers[0].image.as_deref() == Some(image));
                Ok((on_image
                    && status.phase == Some(RolloutPhase::Healthy)
                    && status.stable_rs == status.current_pod_hash
                    && status.observed_generation == ro.metadata.generation)
                    .then_some(()))
            })
            .await
        }
    };
    for image in ["registry.example/web:1.0.0", "registry.example/web:2.0.0"] {
        api.patch(
            "web",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&rollout(image)),
        )
        .await?;
    }
    healthy_on("registry.example/web:2.0.0").await?;
    // A restart evicts pods.
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": "restart"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("the restart to finish", WAIT, || async {
        Ok(api
            .get("web")
            .await?
            .status
            .and_then(|s| s.restarted_at)
            .map(|_| ()))
    })
    .await?;
    let log = std::fs::read_to_string(&controller.log)?;
    ensure!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused something:\n{}",
        log.lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
