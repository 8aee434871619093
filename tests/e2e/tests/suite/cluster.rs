//! The local control plane itself works: scheduling, fake nodes, Gateway API CRDs, Prometheus.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use sluice_e2e::{TestNamespace, client, eventually};

#[tokio::test]
async fn deployment_gets_ready_pods_on_kwok_nodes() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "smoke").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1.0.0"}]}
            }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    // kube-controller-manager creates the pods, kube-scheduler places them, kwok makes them Ready.
    eventually("3 ready replicas", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move {
            let ready = deployments
                .get("web")
                .await?
                .status
                .and_then(|s| s.ready_replicas);
            Ok((ready == Some(3)).then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn gateway_api_httproute_crd_is_installed() -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client().await?);
    let route = crds.get("httproutes.gateway.networking.k8s.io").await?;
    assert!(
        route
            .spec
            .versions
            .iter()
            .any(|v| v.name == "v1" && v.served)
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_scrapes_and_answers_queries() -> Result<()> {
    let url = std::env::var("SLUICE_E2E_PROMETHEUS_URL")
        .context("SLUICE_E2E_PROMETHEUS_URL is not set")?;
    eventually(
        "Prometheus to report its own target up",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || {
                    sluice_testbed::http::get(
                        &url,
                        "/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D",
                    )
                })
                .await??;
                let answer: serde_json::Value = serde_json::from_str(&body)?;
                let up =
                    answer["status"] == "success" && answer["data"]["result"][0]["value"][1] == "1";
                Ok(up.then_some(()))
            }
        },
    )
    .await
}
