//! The web metric provider against a real HTTP server the test starts on loopback: a POST with a
//! body and a bearer token read from a Secret, a JSONPath into the answer, conditions over its fields
//! (in Argo Rollouts' language); a healthy answer lets the release complete, a bad one aborts it. The
//! token never shows in the run.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds};
use tokio::io::AsyncWriteExt;

use crate::analysis::{apply, rollout, set_image, wait_status};

const TOKEN: &str = "w3b-t0ken-never-shown";

/// What the service saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: String,
}

/// A JSON service on loopback: answers `answer` to a request carrying the bearer token, 401 to any
/// other; records what it saw.
async fn service(answer: Arc<Mutex<Value>>, seen: Arc<Mutex<Vec<Seen>>>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                let Some(request) = sluice_e2e::http::read_request(&mut stream).await else {
                    return;
                };
                let (head, body) = (request.head, request.body);
                let authorized = head
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
                if let Ok(mut seen) = seen.lock() {
                    seen.push(Seen { head, body });
                }
                let (status, text) = if authorized {
                    let value = answer.lock().map(|a| a.clone()).unwrap_or(Value::Null);
                    ("200 OK", value.to_string())
                } else {
                    ("401 Unauthorized", r#"{"error":"no token"}"#.to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(address)
}

#[tokio::test]
async fn a_web_metric_judges_a_release_by_a_json_answer_with_a_token_from_a_secret() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "web-metric").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let answer = Arc::new(Mutex::new(
        json!({"data": {"status": "ok", "errorRate": 0.01}}),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let address = service(answer.clone(), seen.clone()).await?;

    apply(
        &Api::<Secret>::namespaced(client.clone(), &ns.name),
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "web-token", "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
                "stringData": {"token": TOKEN}}),
    )
    .await?;
    apply(
        &Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name),
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "health"},
            "spec": {
                "args": [
                    {"name": "service"},
                    {"name": "token", "valueFrom": {"secretKeyRef": {"name": "web-token", "key": "token"}}}
                ],
                "metrics": [{
                    "name": "health", "count": 2, "interval": "1s",
                    "successCondition": "result.status == \"ok\" and result.errorRate < 0.05",
                    "provider": {"web": {
                        "url": format!("{address}/health/{{{{args.service}}}}"),
                        "method": "POST",
                        "headers": [{"key": "Authorization", "value": "Bearer {{args.token}}"}],
                        "body": "{\"service\": \"{{args.service}}\"}",
                        "timeoutSeconds": 5,
                        "jsonPath": "{$.data}"
                    }}
                }, {
                    // Argo Rollouts' jsonBody: arguments fill its strings, never its shape.
                    "name": "health-json", "count": 2, "interval": "1s",
                    "successCondition": "result.status == \"ok\"",
                    "provider": {"web": {
                        "url": format!("{address}/health-json"),
                        "method": "POST",
                        "headers": [{"key": "Authorization", "value": "Bearer {{args.token}}"}],
                        "jsonBody": {"service": "{{args.service}}", "checks": ["errors", "{{args.service}}-latency"], "window": 60},
                        "jsonPath": "{$.data}"
                    }}
                }]
            }
        }),
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"maxSurge": 1, "maxUnavailable": 0, "steps": [
        {"setWeight": 50},
        {"analysis": {"templates": [{"templateName": "health"}],
                      "args": [{"name": "service", "value": "checkout"}]}}
    ]});
    apply(&api, &rollout(canary)).await?;
    let first = wait_status(&api, "the first revision to be healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    let stable = first.stable_rs.context("stable")?;

    // A healthy answer: the release completes on it.
    set_image(&api, "registry.example/web:2.0.0").await?;
    let done = wait_status(&api, "the release to complete on a healthy answer", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let list = runs.list(&ListParams::default()).await?.items;
    let run = list.first().context("a run")?;
    let recorded = run.status.clone().unwrap_or_default();
    assert_eq!(recorded.phase, Some(AnalysisPhase::Successful));
    let measurement = &recorded.metric_results[0].measurements[0];
    ensure!(
        measurement.value.as_deref() == Some(r#"{"errorRate":0.01,"status":"ok"}"#),
        "the picked JSON is the value: {:?}",
        measurement.value
    );
    ensure!(
        measurement.metadata.get("url").map(String::as_str)
            == Some(format!("{address}/health/checkout").as_str()),
        "{:?}",
        measurement.metadata
    );
    let requests = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let request = requests
        .iter()
        .find(|r| r.head.starts_with("POST /health/"))
        .context("a request")?;
    ensure!(
        request.head.starts_with("POST /health/checkout "),
        "{}",
        request.head
    );
    ensure!(
        request.body == r#"{"service": "checkout"}"#,
        "{}",
        request.body
    );
    let json_request = requests
        .iter()
        .find(|r| r.head.starts_with("POST /health-json "))
        .context("a jsonBody request")?;
    ensure!(
        json_request
            .head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("content-type: application/json")),
        "{}",
        json_request.head
    );
    let sent: Value = serde_json::from_str(&json_request.body)?;
    assert_eq!(
        sent,
        json!({"service": "checkout", "checks": ["errors", "checkout-latency"], "window": 60})
    );
    ensure!(
        !serde_json::to_string(&list)?.contains(TOKEN),
        "the token shows in a run"
    );

    // A bad answer: the release aborts naming the metric.
    if let Ok(mut a) = answer.lock() {
        *a = json!({"data": {"status": "degraded", "errorRate": 0.2}});
    }
    let released = done.stable_rs.context("stable")?;
    set_image(&api, "registry.example/web:3.0.0").await?;
    let aborted = wait_status(&api, "a bad answer to abort the release", |s| s.abort).await?;
    ensure!(
        aborted.stable_rs.as_deref() == Some(released.as_str()),
        "stable moved: {aborted:?}"
    );
    let message = aborted.message.unwrap_or_default();
    ensure!(message.contains("health"), "{message}");
    println!(
        "web metric: {} requests, every one with the token; abort said: {message}",
        requests.len()
    );
    Ok(())
}
