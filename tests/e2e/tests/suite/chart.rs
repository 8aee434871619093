//! The Helm chart: it lints, renders, is accepted by the API server, and the RBAC it grants is
//! enough for the operator to run a whole release (with analysis and a restart) and nothing fails
//! as forbidden. The dashboard it can add reads what it shows and writes nothing, unless actions
//! are allowed: then it may patch Rollouts (a person's request) and nothing else. It takes the
//! values users expect of a chart (extra arguments, environment and volumes, spread constraints,
//! images by registry and digest, probe timings, ServiceMonitor settings), packages to a chart
//! that renders the same, and adds Sluice's kinds to Kubernetes' view, edit and admin roles.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};
use sluice_api::names::{ACTION_ANNOTATION, REQUESTED_BY_ANNOTATION};
use sluice_api::rollout::Rollout;
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, client_as, eventually, install_crds,
    kubeconfig_path, repo_root, yaml_documents,
};

const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn helm(helm: &std::path::Path, args: &[&str]) -> Result<String> {
    let mut command = Command::new(helm);
    // The suite's cluster, not whatever the environment names (`helm install` and `upgrade` reach it).
    if let Some(kubeconfig) = std::env::var_os("SLUICE_E2E_KUBECONFIG") {
        command.env("KUBECONFIG", kubeconfig);
    }
    let out = command
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
pub(crate) async fn apply_object(
    client: &kube::Client,
    object: &Value,
    dry_run: bool,
) -> Result<()> {
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

    let lint = helm(&binaries.helm, &["lint", "--strict", "charts/sluice"])?;
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
    let rbac = scoped_rbac(&binaries.helm, &release, &[])?;
    // Least privilege: only verbs the operator sends (no wildcard, no update, no Secret read by
    // name: those open to analysis are watched by their label; no watching of Leases), checked on
    // what the chart renders; the release below proves they are enough.
    let mut granted: Vec<String> = Vec::new();
    for rule in rbac.iter().filter_map(|o| o["rules"].as_array()).flatten() {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    granted.push(format!(
                        "{}/{}:{}",
                        group.as_str().unwrap_or_default(),
                        resource.as_str().unwrap_or_default(),
                        verb.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    // `group/resource:verb`, the core group empty. Argo Rollouts' Rollouts (argoproj.io) are read
    // with get during a takeover; Sluice's own are only ever listed and watched. The one update is
    // on `rollouts/finalizers`, which OwnerReferencesPermissionEnforcement (on in the testbed)
    // asks of whoever owns objects by a Rollout with blockOwnerDeletion; no finalizer is written.
    for refused in [
        "*",
        ":update",
        "/secrets:get",
        "coordination.k8s.io/leases:list",
        "coordination.k8s.io/leases:watch",
        "sluice.dev/rollouts:get",
        "/pods:get",
    ] {
        // "*" anywhere, ":update" for any resource, the others exactly ("releases" is not "leases").
        let grants = |g: &String| match refused {
            "*" => g.contains('*'),
            verb if verb.starts_with(':') => {
                g.ends_with(verb) && g != "sluice.dev/rollouts/finalizers:update"
            }
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

/// The test's own kubeconfig, impersonating the chart's ServiceAccount of `rbac`; its path.
fn impersonating(ns: &str, rbac: &[Value]) -> Result<std::path::PathBuf> {
    let account = rbac
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .context("the chart's ServiceAccount")?;
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
    Ok(path)
}

/// The RBAC objects the chart renders for an operator watching `ns` only, with `extra` values.
fn scoped_rbac(helm_bin: &std::path::Path, ns: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let watch = format!("watchNamespace={ns}");
    let mut args = vec![
        "template",
        ns,
        "charts/sluice",
        "--namespace",
        ns,
        "--kube-version",
        "1.37.2",
        "--set",
        "crds.install=false",
        "--set",
        &watch,
        // The roles aggregated into view, edit and admin are people's, not the operator's;
        // `the_aggregated_roles_give_sluice_kinds_to_view_edit_and_admin` checks them.
        "--set",
        "rbac.aggregateToDefaultRoles=false",
    ];
    args.extend_from_slice(extra);
    Ok(yaml_documents(&helm(helm_bin, &args)?)?
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
        .collect())
}

/// Installed with `readSecrets=false`, the operator cannot read a Secret an analysis names: the run
/// ends in Error saying so, instead of retrying the refused read for ever (as it did before).
#[tokio::test]
async fn without_read_secrets_a_run_naming_a_secret_ends_in_error_saying_so() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "no-secrets").await?;
    let rbac = scoped_rbac(&binaries.helm, &ns.name, &["--set", "readSecrets=false"])?;
    ensure!(
        !serde_json::to_string(&rbac)?.contains("\"secrets\""),
        "readSecrets=false still grants Secrets"
    );
    for object in &rbac {
        apply_object(&client, object, false).await?;
    }
    let result = async {
        let path = impersonating(&ns.name, &rbac)?;
        // As the chart's Deployment runs it (`--read-secrets=false`).
        let _controller = ControllerProcess::start_with_env(
            &ns.name,
            "no-secrets",
            &path,
            &[("SLUICE_READ_SECRETS", "false")],
        )?;
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "job", "namespace": ns.name,
                         "labels": {"sluice.dev/analysis-secret": "true"}},
            "stringData": {"job": "prometheus"}});
        apply_object(&client, &secret, false).await?;
        let prometheus =
            std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL")?;
        let run = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "reads-a-secret", "namespace": ns.name,
                         "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"args": [{"name": "job", "valueFrom": {"secretKeyRef": {"name": "job", "key": "job"}}}],
                     "metrics": [{"name": "up", "interval": "1s", "count": 1,
                        "successCondition": "result[0] == 1",
                        "provider": {"prometheus": {"address": prometheus,
                                                    "query": "up{job=\"{{args.job}}\"}"}}}]}});
        apply_object(&client, &run, false).await?;
        let runs: Api<sluice_api::analysis::AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
        let run = crate::tenancy::finished(&runs, "reads-a-secret").await?;
        let said = serde_json::to_string(&run.status)?;
        ensure!(
            run.status.as_ref().and_then(|s| s.phase)
                == Some(sluice_api::analysis::AnalysisPhase::Error)
                && said.contains("readSecrets is false"),
            "{said}"
        );
        Ok(())
    }
    .await;
    delete_cluster_scoped(&client, &rbac).await;
    result
}

async fn run_release_as(client: &kube::Client, ns: &str, rbac: &[Value]) -> Result<()> {
    let path = impersonating(ns, rbac)?;
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
    let healthy_on = |image: &'static str| sluice_e2e::released_on(&api, "web", image, WAIT);
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

/// The kinds the dashboard lists and watches, as (API group, resource).
const DASHBOARD_WATCHES: [(&str, &str); 5] = [
    ("sluice.dev", "rollouts"),
    ("sluice.dev", "analysisruns"),
    ("sluice.dev", "errorbudgetgates"),
    ("sluice.dev", "releases"),
    ("apps", "replicasets"),
];

/// `helm template` of the chart as release `release` in namespace `namespace`, with `sets`.
fn render(
    helm_path: &std::path::Path,
    release: &str,
    namespace: &str,
    sets: &[String],
) -> Result<Vec<Value>> {
    let mut args = vec![
        "template",
        release,
        "charts/sluice",
        "--namespace",
        namespace,
        "--kube-version",
        "1.37.2",
    ];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    yaml_documents(&helm(helm_path, &args)?)
}

/// As a subchart (Helm passes `global`), with its names and namespace overridden and labels added:
/// every object carries the labels and the new names, every namespaced object lands in the override
/// namespace, every selector still selects its own pods, and the API server accepts all of it.
#[tokio::test]
async fn the_chart_renders_as_a_subchart_with_overrides_and_common_labels() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart-override").await?;
    let objects = render(
        &binaries.helm,
        "parent",
        "elsewhere",
        &[
            "global.imageRegistry=registry.example".to_owned(),
            "nameOverride=flow".to_owned(),
            format!("fullnameOverride={}-gate", ns.name),
            format!("namespaceOverride={}", ns.name),
            "commonLabels.team=payments".to_owned(),
            "crds.install=false".to_owned(),
            "dashboard.enabled=true".to_owned(),
            "dashboard.allowActions=true".to_owned(),
            "networkPolicy.enabled=true".to_owned(),
        ],
    )?;
    ensure!(objects.len() > 10, "{} objects rendered", objects.len());
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(
            object["metadata"]["labels"]["team"] == "payments",
            "{kind} {name} lacks the common label"
        );
        if kind != "ValidatingAdmissionPolicy" && kind != "ValidatingAdmissionPolicyBinding" {
            ensure!(
                name.starts_with(&format!("{}-gate", ns.name)),
                "{kind} {name} is not named after fullnameOverride"
            );
        }
        if let Some(namespace) = object["metadata"]["namespace"].as_str() {
            ensure!(
                namespace == ns.name,
                "{kind} {name} is in {namespace}, not the override"
            );
        }
        if object["metadata"]["labels"]["app.kubernetes.io/name"].is_string() {
            let label = object["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap_or_default();
            ensure!(
                label.starts_with("flow"),
                "{kind} {name}: app.kubernetes.io/name {label}"
            );
        }
        if kind == "Deployment" {
            ensure!(
                selects(
                    &object["spec"]["selector"]["matchLabels"],
                    &object["spec"]["template"]["metadata"]["labels"]
                ),
                "{name}'s selector does not select its pods"
            );
        }
    }
    for object in &objects {
        apply_object(&client, object, true).await?;
    }
    Ok(())
}

fn is_dashboard(object: &Value) -> bool {
    object["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"
}

/// Whether the equality selector `selector` (a non-empty map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether the user of `client` may `verb` `resource` (`rollouts/status` names a subresource) of
/// `group` in `namespace` (empty: across the cluster), as a SelfSubjectAccessReview answers.
async fn may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> Result<bool> {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "subresource": subresource, "namespace": namespace}}
    }))?;
    let reviewed = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await?;
    Ok(reviewed.status.is_some_and(|s| s.allowed))
}

/// Whether a request failed as forbidden (or succeeded: `Ok(false)`); any other failure is one.
fn forbidden<T>(result: kube::Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(true),
        Err(error) => Err(error.into()),
    }
}

#[tokio::test]
async fn the_chart_runs_the_dashboard_read_only_unless_actions_are_allowed() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let client = client().await?;
    install_crds(&client).await?;
    // The release's namespace (the dashboard's Deployment and ServiceAccount) and the one watched,
    // apart, so that a Role or a binding in the wrong one shows.
    let home = TestNamespace::create(&client, "chart-dashboard").await?;
    let team = TestNamespace::create(&client, "chart-dashboard-team").await?;
    let chart: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/sluice/Chart.yaml"),
    )?)?;
    let app_version = chart["appVersion"]
        .as_str()
        .context("Chart.yaml appVersion")?;
    // A Rollout for the dashboard's ServiceAccount to list, and to act on only when allowed.
    apply_object(
        &client,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": team.name},
            "spec": {
                "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
            }
        }),
        false,
    )
    .await?;

    for (i, (allow_actions, scoped)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let release = format!("{}-{i}", home.name);
        let mut sets = vec![
            "crds.install=false".to_owned(),
            "networkPolicy.enabled=true".to_owned(),
        ];
        if scoped {
            sets.push(format!("watchNamespace={}", team.name));
        }
        let without = render(&binaries.helm, &release, &home.name, &sets)?;
        ensure!(
            !without.iter().any(is_dashboard),
            "the dashboard is on by default"
        );
        sets.push("dashboard.enabled=true".to_owned());
        sets.push(format!("dashboard.allowActions={allow_actions}"));
        let what = format!("the dashboard with {sets:?}");

        let mut lint_args = vec!["lint", "charts/sluice"];
        for set in &sets {
            lint_args.extend(["--set", set.as_str()]);
        }
        let lint = helm(&binaries.helm, &lint_args)?;
        ensure!(lint.contains("0 chart(s) failed"), "{what}: {lint}");

        // The install notes say how to reach it, and whether it may act (a dry run, before the
        // RBAC below exists: Helm refuses to install over objects it does not own, as it does over
        // an image policy some other test installed).
        let notes = helm(
            &binaries.helm,
            &[
                &["install", &release, "charts/sluice", "--dry-run=client"][..],
                &["--namespace", &home.name],
                &["--kubeconfig", &kubeconfig_path().to_string_lossy()],
                &lint_args[2..],
                &["--set", "imagePolicy.enabled=false"],
            ]
            .concat(),
        )?;
        let notes = notes
            .split_once("\nNOTES:\n")
            .map(|(_, notes)| notes)
            .context("no NOTES")?;
        let forward = format!(
            "kubectl -n {} port-forward svc/{release}-sluice-dashboard 3100",
            home.name
        );
        ensure!(
            notes.contains(&forward),
            "{what}: notes without {forward}:\n{notes}"
        );
        let watched = match scoped {
            true => format!("The dashboard (namespace {})", team.name),
            false => "The dashboard (all namespaces)".to_owned(),
        };
        ensure!(
            notes.contains(&watched),
            "{what}: notes without {watched}:\n{notes}"
        );
        ensure!(
            notes.contains("read-only") != allow_actions,
            "{what}: the notes say it is read-only or not wrongly:\n{notes}"
        );

        let rendered = render(&binaries.helm, &release, &home.name, &sets)?;
        // The operator's objects are those rendered without the dashboard, unchanged.
        let (dashboard, operator): (Vec<Value>, Vec<Value>) =
            rendered.into_iter().partition(is_dashboard);
        ensure!(operator == without, "{what} changes the operator's objects");
        let result = check_dashboard(
            &client,
            &dashboard,
            &operator,
            allow_actions,
            scoped.then_some(team.name.as_str()),
            &home.name,
            &team.name,
            app_version,
        )
        .await
        .with_context(|| what.clone());
        delete_cluster_scoped(&client, &dashboard).await;
        result?;
    }
    Ok(())
}

/// Checks the dashboard's rendered objects, has the API server validate them (a dry run), applies
/// its RBAC and checks, as its ServiceAccount, what that RBAC allows.
#[allow(clippy::too_many_arguments)]
async fn check_dashboard(
    client: &kube::Client,
    dashboard: &[Value],
    operator: &[Value],
    allow_actions: bool,
    watch_namespace: Option<&str>,
    home: &str,
    team: &str,
    app_version: &str,
) -> Result<()> {
    let of_kind = |objects: &[Value], kind: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .cloned()
            .collect()
    };
    let mut kinds: Vec<&str> = dashboard
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    kinds.sort_unstable();
    // The NetworkPolicy: ingress from nobody unless dashboard.networkPolicy.from names peers.
    let mut expected = vec!["Deployment", "NetworkPolicy", "Service", "ServiceAccount"];
    expected.extend(match watch_namespace {
        Some(_) => ["Role", "RoleBinding"],
        None => ["ClusterRole", "ClusterRoleBinding"],
    });
    if allow_actions {
        // SelfSubjectReviews are cluster-scoped: a ClusterRole whatever the namespace watched.
        expected.extend(["ClusterRole", "ClusterRoleBinding"]);
    }
    expected.sort_unstable();
    ensure!(kinds == expected, "the dashboard's objects: {kinds:?}");

    let [policy] = &of_kind(dashboard, "NetworkPolicy")[..] else {
        bail!("not one dashboard NetworkPolicy");
    };
    ensure!(
        policy["spec"]["policyTypes"] == json!(["Ingress"])
            && policy["spec"]["ingress"] == json!([])
            && policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                == "dashboard",
        "the dashboard's NetworkPolicy lets someone in by default: {policy}"
    );

    let [account] = &of_kind(dashboard, "ServiceAccount")[..] else {
        bail!("not one ServiceAccount");
    };
    let account = account["metadata"]["name"]
        .as_str()
        .context("ServiceAccount name")?
        .to_owned();
    ensure!(account.ends_with("-sluice-dashboard"), "{account}");

    // The Deployment: the arguments from the values, the probes, the operator's hardening.
    let [deployment] = &of_kind(dashboard, "Deployment")[..] else {
        bail!("not one dashboard Deployment");
    };
    let [controller] = &of_kind(operator, "Deployment")[..] else {
        bail!("not one operator Deployment");
    };
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    ensure!(
        pod["spec"]["containers"].as_array().map(Vec::len) == Some(1),
        "{pod}"
    );
    let mut args = vec!["dashboard".to_owned(), "--address=0.0.0.0:3100".to_owned()];
    args.push(match watch_namespace {
        Some(ns) => format!("--namespace={ns}"),
        None => "--all-namespaces".to_owned(),
    });
    if allow_actions {
        args.push("--allow-actions".to_owned());
    }
    ensure!(
        container["args"] == json!(args),
        "args {}",
        container["args"]
    );
    ensure!(
        container["image"] == format!("ghcr.io/sluice-dev/kubectl-sluice:{app_version}"),
        "image {}",
        container["image"]
    );
    ensure!(
        container["ports"] == json!([{"name": "http", "containerPort": 3100}]),
        "ports {}",
        container["ports"]
    );
    ensure!(
        container["readinessProbe"]["httpGet"] == json!({"path": "/readyz", "port": "http"})
            && container["livenessProbe"]["httpGet"] == json!({"path": "/healthz", "port": "http"}),
        "probes: {container}"
    );
    let hardened = &controller["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    ensure!(
        container["securityContext"] == *hardened
            && hardened["readOnlyRootFilesystem"] == true
            && hardened["allowPrivilegeEscalation"] == false
            && pod["spec"]["securityContext"]
                == controller["spec"]["template"]["spec"]["securityContext"]
            && pod["spec"]["securityContext"]["runAsNonRoot"] == true,
        "not the operator's securityContext: {pod}"
    );
    ensure!(pod["spec"]["serviceAccountName"] == account, "{pod}");
    ensure!(deployment["spec"]["replicas"] == 1, "{deployment}");

    // The Service, on the port, selecting the dashboard's pods.
    let [service] = &of_kind(dashboard, "Service")[..] else {
        bail!("not one dashboard Service");
    };
    ensure!(
        service["spec"]["type"] == "ClusterIP"
            && service["spec"]["ports"]
                == json!([{"name": "http", "port": 3100, "targetPort": "http"}]),
        "{service}"
    );

    // No selector of the operator's selects the dashboard's pods, and the other way round.
    let dashboard_pods = &pod["metadata"]["labels"];
    let controller_pods = &controller["spec"]["template"]["metadata"]["labels"];
    let operator_selectors = [
        ("Deployment", "/spec/selector"),
        ("Service", "/spec/selector"),
        ("PodDisruptionBudget", "/spec/selector"),
        ("NetworkPolicy", "/spec/podSelector"),
    ];
    for (kind, pointer) in operator_selectors {
        let objects = of_kind(operator, kind);
        ensure!(!objects.is_empty(), "the operator has no {kind}");
        for object in objects {
            let selector = object.pointer(pointer).context("a selector")?;
            let selector = match kind {
                "Service" => selector,
                _ => {
                    ensure!(selector["matchExpressions"].is_null(), "{selector}");
                    &selector["matchLabels"]
                }
            };
            ensure!(
                selects(selector, controller_pods) && !selects(selector, dashboard_pods),
                "the operator's {kind} selector {selector} selects the dashboard's pods \
                 ({dashboard_pods}) or not the operator's ({controller_pods})"
            );
        }
    }
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &service["spec"]["selector"],
    ] {
        ensure!(
            selects(selector, dashboard_pods) && !selects(selector, controller_pods),
            "the dashboard's selector {selector}"
        );
    }

    // The RBAC, exactly: list and watch; get and patch on Rollouts and create on
    // SelfSubjectReviews only with actions allowed.
    let scope = watch_namespace.unwrap_or("cluster");
    let mut granted = BTreeSet::new();
    let roles: Vec<Value> = [
        of_kind(dashboard, "Role"),
        of_kind(dashboard, "ClusterRole"),
    ]
    .concat();
    for role in &roles {
        let in_scope = role["metadata"]["namespace"].as_str().unwrap_or("cluster");
        for rule in role["rules"].as_array().into_iter().flatten() {
            ensure!(
                rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
                "{rule}"
            );
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        granted.insert(format!(
                            "{in_scope} {}/{} {}",
                            group.as_str().unwrap_or_default(),
                            resource.as_str().unwrap_or_default(),
                            verb.as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (group, resource) in DASHBOARD_WATCHES {
        for verb in ["list", "watch"] {
            wanted.insert(format!("{scope} {group}/{resource} {verb}"));
        }
    }
    if allow_actions {
        wanted.insert(format!("{scope} sluice.dev/rollouts get"));
        wanted.insert(format!("{scope} sluice.dev/rollouts patch"));
        wanted.insert("cluster authentication.k8s.io/selfsubjectreviews create".to_owned());
    }
    ensure!(
        granted == wanted,
        "the dashboard's RBAC grants {granted:?}, not {wanted:?}"
    );
    let bindings: Vec<Value> = [
        of_kind(dashboard, "RoleBinding"),
        of_kind(dashboard, "ClusterRoleBinding"),
    ]
    .concat();
    ensure!(bindings.len() == roles.len(), "{bindings:?}");
    for binding in &bindings {
        let bound = roles.iter().any(|r| {
            binding["roleRef"]["kind"] == r["kind"]
                && binding["roleRef"]["name"] == r["metadata"]["name"]
                && binding["metadata"]["namespace"] == r["metadata"]["namespace"]
        });
        ensure!(
            bound
                && binding["subjects"]
                    == json!([{"kind": "ServiceAccount", "name": account, "namespace": home}]),
            "{binding}"
        );
    }

    // The API server accepts every object (the operator's too); the RBAC is then applied for real.
    for object in dashboard.iter().chain(operator) {
        apply_object(client, object, true).await?;
    }
    for object in dashboard.iter().filter(|o| {
        o["kind"]
            .as_str()
            .is_some_and(|k| k == "ServiceAccount" || k.contains("Role"))
    }) {
        apply_object(client, object, false).await?;
    }

    // As the ServiceAccount: what the RBAC allows, once the authorizer has seen it.
    let user = format!("system:serviceaccount:{home}:{account}");
    let dashboard_client = client_as(&user).await?;
    eventually("the dashboard's RBAC to take effect", WAIT, || async {
        Ok(
            may(&dashboard_client, "list", "sluice.dev", "rollouts", team)
                .await?
                .then_some(()),
        )
    })
    .await?;
    let cluster_wide = watch_namespace.is_none();
    let mut expectations: Vec<(&str, &str, &str, &str, bool)> = Vec::new();
    for (group, resource) in DASHBOARD_WATCHES {
        for verb in ["list", "watch"] {
            expectations.push((verb, group, resource, team, true));
            expectations.push((verb, group, resource, home, cluster_wide));
            expectations.push((verb, group, resource, "", cluster_wide));
        }
    }
    expectations.extend([
        ("patch", "sluice.dev", "rollouts", team, allow_actions),
        (
            "patch",
            "sluice.dev",
            "rollouts",
            "",
            allow_actions && cluster_wide,
        ),
        ("get", "sluice.dev", "rollouts", team, allow_actions),
        ("update", "sluice.dev", "rollouts", team, false),
        ("create", "sluice.dev", "rollouts", team, false),
        ("delete", "sluice.dev", "rollouts", team, false),
        ("patch", "sluice.dev", "rollouts/status", team, false),
        ("patch", "sluice.dev", "analysisruns", team, false),
        ("create", "sluice.dev", "analysisruns", team, false),
        ("patch", "sluice.dev", "errorbudgetgates", team, false),
        ("patch", "sluice.dev", "releases", team, false),
        ("patch", "apps", "replicasets", team, false),
        ("delete", "apps", "replicasets", team, false),
        ("list", "", "pods", team, false),
        ("list", "", "secrets", team, false),
        ("get", "", "secrets", team, false),
        // Kubernetes' system:basic-user grants it to everyone; the chart grants it with actions.
        (
            "create",
            "authentication.k8s.io",
            "selfsubjectreviews",
            "",
            true,
        ),
    ]);
    for (verb, group, resource, namespace, allowed) in expectations {
        ensure!(
            may(&dashboard_client, verb, group, resource, namespace).await? == allowed,
            "{user} {} {verb} {group}/{resource} in {namespace:?}",
            if allowed { "may not" } else { "may" }
        );
    }

    // And for real: it lists every kind it watches; it acts only with actions allowed.
    Api::<Rollout>::namespaced(dashboard_client.clone(), team)
        .list(&Default::default())
        .await?
        .items
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("web"))
        .context("the dashboard's ServiceAccount does not see the Rollout")?;
    Api::<sluice_api::AnalysisRun>::namespaced(dashboard_client.clone(), team)
        .list(&Default::default())
        .await?;
    Api::<sluice_api::ErrorBudgetGate>::namespaced(dashboard_client.clone(), team)
        .list(&Default::default())
        .await?;
    Api::<sluice_api::Release>::namespaced(dashboard_client.clone(), team)
        .list(&Default::default())
        .await?;
    Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(dashboard_client.clone(), team)
        .list(&Default::default())
        .await?;
    let everywhere = Api::<Rollout>::all(dashboard_client.clone())
        .list(&Default::default())
        .await;
    ensure!(
        forbidden(everywhere)? != cluster_wide,
        "listing Rollouts in every namespace {} forbidden",
        if cluster_wide { "is" } else { "is not" }
    );
    let me = Api::<k8s_openapi::api::authentication::v1::SelfSubjectReview>::all(
        dashboard_client.clone(),
    )
    .create(&Default::default(), &Default::default())
    .await?;
    ensure!(
        me.status.and_then(|s| s.user_info).and_then(|u| u.username) == Some(user.clone()),
        "the SelfSubjectReview does not name {user}"
    );
    // An action as the dashboard carries it out: the Rollout read first (a request still pending
    // is refused), then the request written, dry run: authorized (or not) like a real one.
    let read = Api::<Rollout>::namespaced(dashboard_client.clone(), team)
        .get("web")
        .await;
    ensure!(
        forbidden(read)? != allow_actions,
        "reading the Rollout before a request {} forbidden",
        if allow_actions { "is" } else { "is not" }
    );
    let request = json!({"metadata": {"annotations": {
        ACTION_ANNOTATION: "promote", REQUESTED_BY_ANNOTATION: user}}});
    let params = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let patched = Api::<Rollout>::namespaced(dashboard_client.clone(), team)
        .patch("web", &params, &Patch::Merge(&request))
        .await;
    ensure!(
        forbidden(patched)? != allow_actions,
        "patching the Rollout's request annotation {} forbidden",
        if allow_actions { "is" } else { "is not" }
    );
    Ok(())
}

/// `helm template` of `chart` (the chart's directory or a packaged chart) as release `release` in
/// `namespace`, with the values file `values` if any and `sets`: Helm's text, as it printed it.
fn template_text(
    helm_path: &std::path::Path,
    chart: &str,
    release: &str,
    namespace: &str,
    values: Option<&std::path::Path>,
    sets: &[&str],
) -> Result<String> {
    let values = values.map(|v| v.display().to_string());
    let mut args = vec![
        "template",
        release,
        chart,
        "--namespace",
        namespace,
        "--kube-version",
        "1.37.2",
    ];
    if let Some(values) = &values {
        args.extend(["--values", values.as_str()]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(helm_path, &args)
}

/// The one object of `kind` (and, for a Deployment, the dashboard's or not) in `objects`.
fn one<'a>(objects: &'a [Value], kind: &str, dashboard: bool) -> Result<&'a Value> {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && is_dashboard(o) == dashboard)
        .collect();
    match found[..] {
        [object] => Ok(object),
        _ => bail!("{} {kind} objects (dashboard: {dashboard})", found.len()),
    }
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every value users expect of a chart like cert-manager's or Argo CD's lands where it should; the
/// default render of the images and probes is what it was; the schema refuses a bad digest and a
/// disruption budget with both bounds; the packaged chart renders exactly as the directory; and
/// the API server accepts what the values render.
#[tokio::test]
async fn the_chart_takes_the_conventional_values() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let helm_path = binaries.helm.as_path();
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart-values").await?;
    let release = ns.name.clone();
    let chart: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/sluice/Chart.yaml"),
    )?)?;
    let app_version = chart["appVersion"]
        .as_str()
        .context("Chart.yaml appVersion")?;
    let version = chart["version"].as_str().context("Chart.yaml version")?;

    // The defaults: the images and probes exactly as before the registry, digest and probe values.
    let default_sets = [
        "dashboard.enabled=true",
        "metrics.serviceMonitor.enabled=true",
    ];
    let text = template_text(
        helm_path,
        "charts/sluice",
        &release,
        &release,
        None,
        &default_sets,
    )?;
    for line in [
        format!("        image: \"ghcr.io/sluice-dev/sluice-controller:{app_version}\"\n"),
        format!("        image: \"ghcr.io/sluice-dev/kubectl-sluice:{app_version}\"\n"),
    ] {
        ensure!(text.contains(&line), "the default render lacks {line:?}");
    }
    ensure!(
        crate::in_cluster::chart_image("/image")?
            == format!("ghcr.io/sluice-dev/sluice-controller:{app_version}")
            && crate::in_cluster::chart_image("/dashboard/image")?
                == format!("ghcr.io/sluice-dev/kubectl-sluice:{app_version}"),
        "chart_image does not build the chart's default references"
    );
    let defaults = yaml_documents(&text)?;
    for dashboard in [false, true] {
        let pod = &one(&defaults, "Deployment", dashboard)?["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        ensure!(
            container["livenessProbe"]
                == json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10})
                && container["readinessProbe"]
                    == json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}),
            "the default probes changed: {container}"
        );
        ensure!(
            pod["topologySpreadConstraints"].is_null()
                && pod["volumes"].is_null()
                && container["volumeMounts"].is_null(),
            "the defaults add spread constraints or volumes: {pod}"
        );
    }
    let operator =
        &one(&defaults, "Deployment", false)?["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        operator["env"].as_array().map(Vec::len) == Some(3)
            && operator["args"].as_array().map(Vec::len) == Some(7),
        "the defaults add arguments or environment: {operator}"
    );
    let budget = &one(&defaults, "PodDisruptionBudget", false)?["spec"];
    ensure!(
        budget["minAvailable"] == 1 && budget["maxUnavailable"].is_null(),
        "the default disruption budget: {budget}"
    );
    let monitor = one(&defaults, "ServiceMonitor", false)?;
    ensure!(
        monitor["metadata"]["namespace"] == release.as_str()
            && monitor["spec"]["namespaceSelector"].is_null()
            && monitor["spec"]["endpoints"]
                == json!([{"port": "http", "path": "/metrics", "interval": "30s"}]),
        "the default ServiceMonitor: {monitor}"
    );

    // Every new value set.
    let spread = json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway"});
    let values = json!({
        "crds": {"install": false},
        "imagePolicy": {"enabled": false},
        "extraArgs": ["--identity=sluice-e2e", "--allow-provider-address=thanos.example.com"],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"},
                     {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "volumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra", "readOnly": true}],
        "topologySpreadConstraints": [spread],
        // The digest wins over the tag.
        "image": {"registry": "registry.example:5000", "repository": "mirror/sluice-controller",
                  "tag": "9.9.9", "digest": DIGEST},
        "livenessProbe": {"initialDelaySeconds": 3, "periodSeconds": 11, "timeoutSeconds": 2,
                          "failureThreshold": 4, "successThreshold": 1},
        "readinessProbe": {"periodSeconds": 6, "successThreshold": 2},
        "podDisruptionBudget": {"maxUnavailable": "50%"},
        "metrics": {"serviceMonitor": {
            "enabled": true, "namespace": "monitoring", "interval": "15s", "scrapeTimeout": "10s",
            "scheme": "https", "tlsConfig": {"serverName": "sluice", "insecureSkipVerify": true},
            "honorLabels": true,
            "relabelings": [{"action": "replace", "targetLabel": "team", "replacement": "payments"}],
            "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
        }},
        "dashboard": {
            "enabled": true,
            // No registry: the repository is the whole name.
            "image": {"registry": "", "repository": "mirror.example/kubectl-sluice", "tag": "9.9.9"},
            "livenessProbe": {"periodSeconds": 20, "failureThreshold": 6},
            "readinessProbe": {"periodSeconds": 7, "initialDelaySeconds": 2},
        },
    });
    let values_path = crate::in_cluster::values_file(&format!("{release}-conventional"), &values)?;
    let text = template_text(
        helm_path,
        "charts/sluice",
        &release,
        &release,
        Some(&values_path),
        &[],
    )?;
    let objects = yaml_documents(&text)?;

    let pod = &one(&objects, "Deployment", false)?["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(
        container["image"] == format!("registry.example:5000/mirror/sluice-controller@{DIGEST}"),
        "image {}",
        container["image"]
    );
    let args = container["args"].as_array().context("args")?;
    ensure!(
        args.len() == 9
            && args[7] == "--identity=sluice-e2e"
            && args[8] == "--allow-provider-address=thanos.example.com",
        "extraArgs are not appended: {args:?}"
    );
    let env = container["env"].as_array().context("env")?;
    ensure!(
        env.len() == 5 && env[3] == values["extraEnv"][0] && env[4] == values["extraEnv"][1],
        "extraEnv: {env:?}"
    );
    ensure!(
        pod["volumes"] == values["volumes"] && container["volumeMounts"] == values["volumeMounts"],
        "volumes {} and mounts {}",
        pod["volumes"],
        container["volumeMounts"]
    );
    // A constraint without a labelSelector selects its own Deployment's pods.
    let mut operator_spread = spread.clone();
    operator_spread["labelSelector"] = json!({"matchLabels": {
        "app.kubernetes.io/name": "sluice", "app.kubernetes.io/instance": release}});
    ensure!(
        pod["topologySpreadConstraints"] == json!([operator_spread]),
        "topologySpreadConstraints {}",
        pod["topologySpreadConstraints"]
    );
    let mut liveness = values["livenessProbe"].clone();
    liveness["httpGet"] = json!({"path": "/healthz", "port": "http"});
    let mut readiness = values["readinessProbe"].clone();
    readiness["httpGet"] = json!({"path": "/readyz", "port": "http"});
    ensure!(
        container["livenessProbe"] == liveness && container["readinessProbe"] == readiness,
        "probes: {} {}",
        container["livenessProbe"],
        container["readinessProbe"]
    );

    let dashboard_pod = &one(&objects, "Deployment", true)?["spec"]["template"]["spec"];
    let dashboard = &dashboard_pod["containers"][0];
    ensure!(
        dashboard["image"] == "mirror.example/kubectl-sluice:9.9.9",
        "dashboard image {}",
        dashboard["image"]
    );
    ensure!(
        dashboard["livenessProbe"]
            == json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20, "failureThreshold": 6})
            && dashboard["readinessProbe"]
                == json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 7, "initialDelaySeconds": 2}),
        "dashboard probes: {dashboard}"
    );
    // The operator's constraints, by default, selecting the dashboard's pods.
    let dashboard_labels =
        &dashboard_pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"];
    ensure!(
        dashboard_pod["topologySpreadConstraints"]
            .as_array()
            .map(Vec::len)
            == Some(1)
            && dashboard_pod["topologySpreadConstraints"][0]["topologyKey"]
                == spread["topologyKey"]
            && dashboard_labels["app.kubernetes.io/component"] == "dashboard"
            && dashboard_labels["app.kubernetes.io/name"] == "sluice-dashboard",
        "the dashboard's spread constraints: {}",
        dashboard_pod["topologySpreadConstraints"]
    );
    ensure!(
        dashboard["args"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|x| x == "--identity=sluice-e2e"))
            && dashboard["env"].is_null()
            && dashboard_pod["volumes"].is_null(),
        "the operator's extras reach the dashboard: {dashboard_pod}"
    );

    let budget = &one(&objects, "PodDisruptionBudget", false)?["spec"];
    ensure!(
        budget["maxUnavailable"] == "50%" && budget["minAvailable"].is_null(),
        "the disruption budget: {budget}"
    );

    let monitor = one(&objects, "ServiceMonitor", false)?;
    ensure!(
        monitor["metadata"]["namespace"] == "monitoring"
            && monitor["spec"]["namespaceSelector"] == json!({"matchNames": [release]}),
        "the ServiceMonitor's namespace: {monitor}"
    );
    let service_monitor = &values["metrics"]["serviceMonitor"];
    ensure!(
        monitor["spec"]["endpoints"]
            == json!([{
                "port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s",
                "scheme": "https", "tlsConfig": service_monitor["tlsConfig"], "honorLabels": true,
                "relabelings": service_monitor["relabelings"],
                "metricRelabelings": service_monitor["metricRelabelings"],
            }]),
        "the ServiceMonitor's endpoint: {}",
        monitor["spec"]["endpoints"]
    );

    // The dashboard's own spread constraints, when given, replace the operator's.
    let own = template_text(
        helm_path,
        "charts/sluice",
        &release,
        &release,
        Some(&values_path),
        &[
            "dashboard.topologySpreadConstraints[0].maxSkew=2",
            "dashboard.topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
            "dashboard.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
        ],
    )?;
    let own = yaml_documents(&own)?;
    let constraints =
        &one(&own, "Deployment", true)?["spec"]["template"]["spec"]["topologySpreadConstraints"];
    ensure!(
        constraints.as_array().map(Vec::len) == Some(1)
            && constraints[0]["topologyKey"] == "kubernetes.io/hostname"
            && constraints[0]["maxSkew"] == 2,
        "dashboard.topologySpreadConstraints: {constraints}"
    );

    // The schema refuses a digest that is not sha256:<64 hex> and a budget with both bounds (the
    // template too, when the schema is skipped).
    for (set, refusal) in [
        ("image.digest=sha256:abc", "/image/digest"),
        ("image.digest=latest", "/image/digest"),
        (
            "dashboard.image.digest=sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "/dashboard/image/digest",
        ),
        (
            "podDisruptionBudget.minAvailable=1,podDisruptionBudget.maxUnavailable=1",
            "/podDisruptionBudget/maxUnavailable",
        ),
        ("livenessProbe.httpGet.path=/x", "/livenessProbe"),
    ] {
        let refused = template_text(helm_path, "charts/sluice", "x", "x", None, &[set]);
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains(refusal)),
            "{set} is not refused at {refusal}: {refused:?}"
        );
    }
    let both = helm(
        helm_path,
        &[
            "template",
            "x",
            "charts/sluice",
            "--kube-version",
            "1.37.2",
            "--skip-schema-validation",
            "--set",
            "podDisruptionBudget.minAvailable=1,podDisruptionBudget.maxUnavailable=1",
        ],
    );
    ensure!(
        both.as_ref()
            .is_err_and(|e| format!("{e:#}").contains("minAvailable or maxUnavailable, not both")),
        "the template renders a budget with both bounds: {both:?}"
    );

    // `helm package`: the packaged chart renders byte for byte what the directory renders.
    let dir = repo_root().join(format!("target/e2e-logs/chart-package-{release}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir_arg = dir.display().to_string();
    helm(helm_path, &["package", "charts/sluice", "-d", &dir_arg])?;
    let packaged = dir.join(format!("sluice-{version}.tgz"));
    ensure!(packaged.is_file(), "no {}", packaged.display());
    let packaged = packaged.display().to_string();
    for (values, sets) in [
        (None, &[][..]),
        (None, &default_sets[..]),
        (Some(values_path.as_path()), &[][..]),
    ] {
        let from_dir = template_text(helm_path, "charts/sluice", &release, &release, values, sets)?;
        let from_package = template_text(helm_path, &packaged, &release, &release, values, sets)?;
        ensure!(
            from_dir == from_package,
            "the packaged chart renders differently with {values:?} {sets:?}"
        );
    }
    let lint = helm(helm_path, &["lint", "--strict", &packaged])?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");
    let _ = std::fs::remove_dir_all(&dir);

    // The API server accepts what the values render (the ServiceMonitor's CRD is not installed).
    for object in objects.iter().filter(|o| o["kind"] != "ServiceMonitor") {
        apply_object(&client, object, true).await?;
    }
    Ok(())
}

/// Whether the ClusterRole `role` has a rule on the API group sluice.dev.
fn grants_sluice(role: &Value) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|r| {
        r["apiGroups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("sluice.dev")))
    })
}

/// The aggregated ClusterRoles add Sluice's kinds to Kubernetes' view, edit and admin roles: a
/// user bound to `edit` in a namespace may read and patch Rollouts there, one bound to `view` may
/// read but not patch, and neither may write AnalysisRuns or Releases, which the operator writes.
/// Without the chart's roles, `edit` grants nothing on Sluice's kinds (checked first, when no other
/// release of the chart has aggregated roles in the cluster).
#[tokio::test]
async fn the_aggregated_roles_give_sluice_kinds_to_view_edit_and_admin() -> Result<()> {
    let binaries = tokio::task::spawn_blocking(sluice_testbed::ensure_binaries).await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chart-aggregate").await?;
    let release = ns.name.clone();
    let fullname = format!("{release}-sluice");

    let off = render(
        &binaries.helm,
        &release,
        &release,
        &["rbac.aggregateToDefaultRoles=false".to_owned()],
    )?;
    ensure!(
        !off.iter()
            .any(|o| o["metadata"]["labels"].as_object().is_some_and(|l| l
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")))),
        "rbac.aggregateToDefaultRoles=false still renders aggregated roles"
    );
    let roles: Vec<Value> = render(&binaries.helm, &release, &release, &[])?
        .into_iter()
        .filter(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["labels"].as_object().is_some_and(|l| {
                    l.keys()
                        .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                })
        })
        .collect();

    // What each role grants, as `resource verb` on sluice.dev: view reads every kind the CRDs
    // define; edit and admin write all of them but AnalysisRuns and Releases.
    let plurals: BTreeSet<String> = sluice_api::crdgen::crds()
        .into_iter()
        .map(|crd| crd.spec.names.plural)
        .collect();
    ensure!(plurals.len() >= 6, "{plurals:?}");
    let read = ["get", "list", "watch"];
    let write = ["create", "update", "patch", "delete", "deletecollection"];
    ensure!(roles.len() == 3, "{} aggregated roles", roles.len());
    for (suffix, label) in [
        ("view", "rbac.authorization.k8s.io/aggregate-to-view"),
        ("edit", "rbac.authorization.k8s.io/aggregate-to-edit"),
        ("admin", "rbac.authorization.k8s.io/aggregate-to-admin"),
    ] {
        let name = format!("{fullname}-{suffix}");
        let role = roles
            .iter()
            .find(|r| r["metadata"]["name"] == name.as_str())
            .with_context(|| format!("no ClusterRole {name}"))?;
        ensure!(
            role["metadata"]["labels"][label] == "true"
                && role["metadata"]["labels"].as_object().map(|l| {
                    l.keys()
                        .filter(|k| k.starts_with("rbac.authorization.k8s.io/"))
                        .count()
                }) == Some(1),
            "{name} is not aggregated to {suffix} alone: {}",
            role["metadata"]["labels"]
        );
        let mut granted = BTreeSet::new();
        for rule in role["rules"].as_array().into_iter().flatten() {
            ensure!(rule["apiGroups"] == json!(["sluice.dev"]), "{name}: {rule}");
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    granted.insert(format!(
                        "{} {}",
                        resource.as_str().unwrap_or_default(),
                        verb.as_str().unwrap_or_default()
                    ));
                }
            }
        }
        let mut wanted = BTreeSet::new();
        for plural in &plurals {
            let written_by_the_operator = plural == "analysisruns" || plural == "releases";
            for verb in read {
                wanted.insert(format!("{plural} {verb}"));
            }
            if suffix != "view" && !written_by_the_operator {
                for verb in write {
                    wanted.insert(format!("{plural} {verb}"));
                }
            }
        }
        // The Rollouts' scale subresource, as Deployments' in the built-in roles.
        let scale: &[&str] = match suffix {
            "view" => &read,
            _ => &["get", "update", "patch"],
        };
        for verb in scale {
            wanted.insert(format!("rollouts/scale {verb}"));
        }
        ensure!(
            granted == wanted,
            "{name} grants {granted:?}, not {wanted:?}"
        );
    }

    // A Rollout, and a person bound to each built-in role in the namespace.
    apply_object(
        &client,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": release},
            "spec": {
                "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
            }
        }),
        false,
    )
    .await?;
    let mut people = Vec::new();
    for role in ["view", "edit", "admin"] {
        let user = format!("{release}-{role}er");
        apply_object(
            &client,
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("people-{role}"), "namespace": release},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            }),
            false,
        )
        .await?;
        people.push((role, client_as(&user).await?));
    }
    let (_, viewer) = &people[0];
    let (_, editor) = &people[1];

    // Before the chart's roles, edit grants nothing on Sluice's kinds, unless some other release
    // of the chart aggregated its own (then this check says nothing and is skipped).
    let cluster_roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    let others = cluster_roles
        .list(
            &kube::api::ListParams::default()
                .labels("rbac.authorization.k8s.io/aggregate-to-edit=true"),
        )
        .await?
        .items
        .into_iter()
        .filter(|r| grants_sluice(&serde_json::to_value(r).unwrap_or_default()))
        .count();
    if others == 0 {
        eventually("edit to grant nothing on Rollouts", WAIT, || async {
            Ok((!may(editor, "get", "sluice.dev", "rollouts", &release).await?).then_some(()))
        })
        .await?;
    } else {
        eprintln!(
            "{others} aggregated roles of other releases grant Sluice's kinds to edit: no before"
        );
    }

    let result = async {
        for role in &roles {
            apply_object(&client, role, false).await?;
        }
        // The aggregation controller fills the built-in roles within seconds.
        for (role, person) in &people {
            eventually(&format!("{role} to read Rollouts"), WAIT, || async {
                Ok(may(person, "get", "sluice.dev", "rollouts", &release)
                    .await?
                    .then_some(()))
            })
            .await?;
        }
        eventually("edit to patch Rollouts", WAIT, || async {
            Ok(may(editor, "patch", "sluice.dev", "rollouts", &release)
                .await?
                .then_some(()))
        })
        .await?;

        // For real: edit reads and patches the Rollout, view reads it and may not patch it.
        let patch = json!({"metadata": {"labels": {"team": "payments"}}});
        for (role, person) in &people {
            let rollouts = Api::<Rollout>::namespaced(person.clone(), &release);
            rollouts
                .get("web")
                .await
                .with_context(|| format!("{role} reading the Rollout"))?;
            let patched = rollouts
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            ensure!(
                forbidden(patched)? == (*role == "view"),
                "{role} {} patch the Rollout",
                if *role == "view" { "may" } else { "may not" }
            );
        }
        ensure!(
            Api::<Rollout>::namespaced(client.clone(), &release)
                .get("web")
                .await?
                .metadata
                .labels
                .unwrap_or_default()
                .get("team")
                .map(String::as_str)
                == Some("payments"),
            "the editor's patch did not land"
        );
        // Nobody but the operator writes runs and release records; everybody reads them.
        for (role, person) in &people {
            for resource in ["analysisruns", "releases"] {
                ensure!(
                    may(person, "list", "sluice.dev", resource, &release).await?,
                    "{role} may not list {resource}"
                );
                for verb in ["create", "patch", "delete"] {
                    ensure!(
                        !may(person, verb, "sluice.dev", resource, &release).await?,
                        "{role} may {verb} {resource}"
                    );
                }
            }
            for resource in ["analysistemplates", "errorbudgetgates"] {
                ensure!(
                    may(person, "create", "sluice.dev", resource, &release).await?
                        == (*role != "view"),
                    "{role} create {resource}"
                );
            }
        }
        // Bound in this namespace only.
        ensure!(
            !may(viewer, "get", "sluice.dev", "rollouts", "default").await?
                && !may(editor, "patch", "sluice.dev", "rollouts", "default").await?,
            "a RoleBinding grants Rollouts in another namespace"
        );
        Ok(())
    }
    .await;
    delete_cluster_scoped(&client, &roles).await;
    result
}
