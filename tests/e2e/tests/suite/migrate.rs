//! `kubectl sluice migrate` over manifests written for Argo Rollouts: the converted manifests apply
//! to the real API server as they are, and a canary of each router runs to completion.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use serde_json::json;
use sluice_api::rollout::Rollout;
use sluice_e2e::{
    ControllerProcess, TestNamespace, client, eventually, install_crds, kubectl, kubectl_sluice,
    repo_root,
};

use crate::canary::{healthy_on, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn argo_rollouts_manifests_migrate_and_each_router_runs_a_canary_to_completion() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "migrate").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let dir = repo_root().join("tests/e2e/argo-manifests");
    let out = kubectl_sluice(&ns.name, &["migrate", "-f", &dir.display().to_string()])?;
    ensure!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = String::from_utf8(out.stdout)?;
    ensure!(
        !converted.contains("argoproj.io"),
        "an Argo Rollouts kind is left:\n{converted}"
    );
    let file = repo_root().join(format!("target/e2e-logs/migrated-{}.yaml", ns.name));
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    std::fs::write(&file, &converted)?;
    let applied = kubectl(&["apply", "-n", &ns.name, "-f", &file.display().to_string()])?;
    ensure!(
        applied.status.success(),
        "kubectl apply refused the migrated manifests: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let rollouts = ["web-gw", "web-mesh", "web-edge"];
    let mut stable = Vec::new();
    for name in rollouts {
        let status = wait_status(&api, name, "the first revision to be healthy", |s| {
            healthy_on(s, None)
        })
        .await?;
        stable.push(status.stable_rs.context("stable")?);
    }
    for name in rollouts {
        set_image(&api, name, "registry.example/web:2.0.0").await?;
    }
    // The NGINX canary's own Ingress exists while its release is in flight.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    eventually("the canary Ingress at 50%", WAIT, || async {
        let canary = ingresses.get_opt("web-edge-web-edge-canary").await?;
        Ok(canary
            .and_then(|i| {
                i.metadata
                    .annotations
                    .and_then(|a| a.get("nginx.ingress.kubernetes.io/canary-weight").cloned())
            })
            .filter(|w| w == "50")
            .map(|_| ()))
    })
    .await?;
    for (name, old) in rollouts.iter().zip(&stable) {
        let done = wait_status(&api, name, "the canary to complete", |s| {
            healthy_on(s, None) && s.stable_rs.as_deref() != Some(old.as_str())
        })
        .await?;
        ensure!(done.current_pod_hash == done.stable_rs, "{name}: {done:?}");
    }
    eventually("the canary Ingress to go", WAIT, || async {
        Ok(ingresses
            .get_opt("web-edge-web-edge-canary")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn migrate_names_every_field_it_cannot_carry_and_fails() -> Result<()> {
    let dir = repo_root().join("target/e2e-logs/migrate-unsupported");
    std::fs::create_dir_all(&dir)?;
    let manifest = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
            "strategy": {"canary": {
                "trafficRouting": {"alb": {"ingress": "web"}},
                "steps": [{"setWeight": 10}, {"experiment": {"templates": []}}]}}
        }
    });
    std::fs::write(dir.join("rollout.json"), serde_json::to_string(&manifest)?)?;
    let out = kubectl_sluice("default", &["migrate", "-f", &dir.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "migrate succeeded: {stderr}");
    for path in [
        "Rollout/web: spec.strategy.canary.steps[1].experiment",
        "Rollout/web: spec.strategy.canary.trafficRouting.alb",
    ] {
        ensure!(stderr.contains(path), "{path} not reported:\n{stderr}");
    }
    let converted = String::from_utf8_lossy(&out.stdout);
    ensure!(
        converted.contains("sluice.dev/v1alpha1") && !converted.contains("experiment"),
        "{converted}"
    );
    Ok(())
}
