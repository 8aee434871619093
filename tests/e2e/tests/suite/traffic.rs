//! The traffic simulator gives the real Prometheus per-version metrics for fake pods.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;
use sluice_e2e::{TestNamespace, TrafficSim, client, eventually};

fn replica_set(hash: &str, annotations: Value) -> Result<ReplicaSet> {
    let labels = json!({"app": "web", POD_TEMPLATE_HASH_LABEL: hash});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("web-{hash}")},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1.0.0"}]}
            }
        }
    }))?)
}

/// Runs an instant query against the cluster's Prometheus; returns each series' value by hash.
async fn query_by_hash(prometheus: &str, promql: &str) -> Result<BTreeMap<String, f64>> {
    let path = format!("/api/v1/query?query={}", sluice_e2e::percent_encode(promql));
    let body = sluice_e2e::http_get(prometheus, &path).await?;
    let answer: Value = serde_json::from_str(&body)?;
    if answer["status"] != "success" {
        bail!("query {promql} failed: {body}");
    }
    answer["data"]["result"]
        .as_array()
        .context("no result")?
        .iter()
        .map(|series| {
            let hash = series["metric"]["pod_template_hash"]
                .as_str()
                .context("series without pod_template_hash")?;
            let value: f64 = series["value"][1]
                .as_str()
                .context("series without a value")?
                .parse()?;
            Ok((hash.to_owned(), value))
        })
        .collect()
}

#[tokio::test]
async fn simulated_versions_report_their_error_rates_and_an_even_split() -> Result<()> {
    let prometheus = std::env::var("SLUICE_E2E_PROMETHEUS_URL")
        .context("SLUICE_E2E_PROMETHEUS_URL is not set")?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "traffic").await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    for (hash, annotations) in [
        ("aaa", json!({})),
        ("bbb", json!({"sim.sluice.dev/error-rate": "0.05"})),
    ] {
        replica_sets
            .create(&PostParams::default(), &replica_set(hash, annotations)?)
            .await?;
    }
    // Both versions Ready before traffic starts, so neither has a head start.
    eventually(
        "2 ready pods in each version",
        Duration::from_secs(60),
        || {
            let replica_sets = replica_sets.clone();
            async move {
                let mut ready = Vec::new();
                for name in ["web-aaa", "web-bbb"] {
                    let rs = replica_sets.get(name).await?;
                    ready.push(rs.status.and_then(|s| s.ready_replicas).unwrap_or(0));
                }
                Ok((ready == [2, 2]).then_some(()))
            }
        },
    )
    .await?;

    let _sim = TrafficSim::start(&ns.name)?;
    let selector = format!(r#"namespace="{}""#, ns.name);
    let requests = |window: &str| {
        format!(
            "sum by (pod_template_hash) (rate(sim_http_requests_total{{{selector}}}[{window}]))"
        )
    };
    let error_ratio = format!(
        r#"sum by (pod_template_hash) (rate(sim_http_requests_total{{code="500",{selector}}}[30s])) / {}"#,
        requests("30s")
    );
    let (requests, recent_requests) = (requests("30s"), requests("5s"));
    eventually(
        "Prometheus to see 5% errors on bbb, none on aaa, and an even split",
        Duration::from_secs(30),
        || async {
            let ratios = query_by_hash(&prometheus, &error_ratio).await?;
            let rates = query_by_hash(&prometheus, &requests).await?;
            let recent_rates = query_by_hash(&prometheus, &recent_requests).await?;
            let (Some(aaa_ratio), Some(bbb_ratio), Some(aaa_rate), Some(bbb_rate)) = (
                ratios.get("aaa"),
                ratios.get("bbb"),
                rates.get("aaa"),
                rates.get("bbb"),
            ) else {
                return Ok(None);
            };
            // The simulator's counts are exact; what is left is where scrapes fall between ticks.
            let errors_right = *aaa_ratio == 0.0 && (bbb_ratio - 0.05).abs() < 0.01;
            let split_even = (aaa_rate - bbb_rate).abs() < 0.1 * aaa_rate.max(*bbb_rate);
            // 200 requests a second in all (the default). A 30 s rate only gets there once the
            // simulator has run for 30 s; 5 s of scrapes already tell.
            let recent_total: f64 = recent_rates.values().sum();
            let total_right = (recent_total - 200.0).abs() < 40.0;
            if errors_right && split_even && total_right {
                Ok(Some(()))
            } else {
                bail!(
                    "error ratios {ratios:?}, request rates {rates:?}, over the last 5 s {recent_rates:?}"
                )
            }
        },
    )
    .await
}
