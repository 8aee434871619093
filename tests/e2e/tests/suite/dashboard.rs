//! `kubectl sluice dashboard` on the real control plane: a canary release watched in Debian's
//! Chromium (driven by Playwright, `tests/browser/dashboard.mjs`) moves through its steps on the
//! page, its analysis measurements are drawn against their thresholds, a gate's burn-down is drawn,
//! and a promote and an abort clicked on the page go through the request annotation; the row turns
//! red on the abort (the time it took is printed). Screenshots are kept in
//! `target/e2e-artifacts/dashboard/`. Without `--allow-actions` nothing can be written through the
//! dashboard, and it answers only to localhost.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sluice_api::names::ACTION_ANNOTATION;
use sluice_api::release::{AbortCause, Release};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, Dashboard, TestNamespace, client, eventually, install_crds, repo_root,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::analysis::{apply, prometheus_url, rollout, set_image, wait_status};

const WAIT: Duration = Duration::from_secs(60);

/// A metric measured every second whose value moves between 0.02 and 0.035, judged against 0.05.
fn level_template() -> Result<Value> {
    Ok(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "level"},
        "spec": {"metrics": [{
            "name": "error-ratio", "interval": "1s",
            "successCondition": "result[0] < 0.05", "failureCondition": "result[0] >= 0.05",
            "provider": {"prometheus": {"address": prometheus_url()?, "query": "vector(0.02 + 0.005 * (time() % 4))"}}
        }]}
    }))
}

/// A gate over made-up figures (3 to 10 errors in 10000 requests against 99%), selecting another
/// service: it is drawn, and holds nothing here.
fn gate() -> Result<Value> {
    Ok(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "checkout-slo"},
        "spec": {
            "selector": {"matchLabels": {"slo": "checkout"}},
            "objective": 99.0, "window": "1h", "evaluationInterval": "2s",
            "sli": {"events": {"errorQuery": "max_over_time(vector(3 + time() % 7)[{{window}}:1m])",
                               "totalQuery": "max_over_time(vector(10000)[{{window}}:1m])"}},
            "burnRateAlerts": [{"longWindow": "1h", "shortWindow": "5m", "factor": 14.4}],
            "prometheus": {"address": prometheus_url()?}
        }
    }))
}

#[tokio::test]
async fn a_release_moves_through_its_steps_on_the_page_and_an_abort_clicked_there_turns_its_row_red()
-> Result<()> {
    let browser_dir = repo_root().join("tests/browser");
    let chromium = tokio::task::spawn_blocking(sluice_testbed::browser::ensure_chromium).await??;
    let dir = browser_dir.clone();
    tokio::task::spawn_blocking(move || sluice_testbed::browser::ensure_playwright(&dir)).await??;

    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "dashboard").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    apply(
        &Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name),
        &level_template()?,
    )
    .await?;
    apply(
        &Api::<sluice_api::gate::ErrorBudgetGate>::namespaced(client.clone(), &ns.name),
        &gate()?,
    )
    .await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &rollouts,
        &rollout(json!({
            "steps": [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}, {"pause": {}},
                      {"setWeight": 80}, {"pause": {}}],
            "analysis": {"templates": [{"templateName": "level"}]}
        })),
    )
    .await?;
    wait_status(&rollouts, "the first revision Healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;

    let dashboard = Dashboard::start(&ns.name, &["--allow-actions"])?;
    let artifacts = repo_root().join("target/e2e-artifacts/dashboard");
    let mut driver = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .env("DASHBOARD_URL", &dashboard.url)
        .env("ROLLOUT", format!("{}/web", ns.name))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (Node.js is needed for the browser tests)")?;
    let stdout = driver.stdout.take().context("no stdout from node")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut result = None;
    let deadline = Duration::from_secs(240);
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if line == "ready" {
                // The page shows the Rollout Healthy: release the second revision.
                set_image(&rollouts, "registry.example/web:2.0.0").await?;
            } else if let Some(json) = line.strip_prefix("result ") {
                result = Some(serde_json::from_str::<Value>(json)?);
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(deadline, read)
        .await
        .context("the browser test did not finish in 4 minutes")??;
    let exit = driver.wait().await?;
    ensure!(
        exit.success(),
        "the browser test failed (stderr above; screenshot in {}; dashboard log {})",
        artifacts.display(),
        dashboard.log.display()
    );
    let result = result.context("the browser test printed no result")?;

    // The row went through the release's pauses in order, with the weights of the steps (a step
    // done at once, such as a weight whose pods are ready, may never be in a status of its own).
    let seen = result["seen"].as_array().context("seen")?;
    let steps: Vec<&str> = seen
        .iter()
        .filter_map(|s| s["state"]["step"].as_str())
        .collect();
    let weights: Vec<&str> = seen
        .iter()
        .filter_map(|s| s["state"]["weight"].as_str())
        .collect();
    let mut expected = ["1", "3", "5"].into_iter().peekable();
    for step in &steps {
        if expected.peek() == Some(step) {
            expected.next();
        }
    }
    ensure!(
        expected.next().is_none(),
        "the row did not show every pause in order: {steps:?}"
    );
    for weight in ["20", "50", "80"] {
        ensure!(
            weights.contains(&weight),
            "the row never showed weight {weight}: {weights:?}"
        );
    }
    ensure!(
        result["points"].as_u64().unwrap_or(0) >= 3 && result["thresholdLines"].as_u64() >= Some(2),
        "the chart has too little: {result}"
    );
    ensure!(
        result["red"] != json!("rgba(0, 0, 0, 0)"),
        "the aborted row has no colour: {result}"
    );
    ensure!(
        result["consoleErrors"] == json!([]),
        "the page logged errors: {}",
        result["consoleErrors"]
    );
    println!(
        "dashboard: abort clicked to row red in {} ms (abort request, controller, watch, server-sent event, redraw); {} measurements drawn",
        result["abortToRedMs"], result["points"]
    );

    // What the page did went through the request annotation, recorded with who asked.
    let status = rollouts.get("web").await?.status.unwrap_or_default();
    ensure!(status.abort, "the Rollout is not aborted: {status:?}");
    let releases: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let record = eventually("the aborted release recorded", WAIT, || async {
        Ok(releases
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .find(|r| r.spec.release.aborted_by == Some(AbortCause::User)))
    })
    .await?;
    let by: Vec<_> = record
        .spec
        .release
        .timeline
        .iter()
        .filter_map(|entry| entry.by.as_deref())
        .collect();
    ensure!(
        !by.is_empty(),
        "the promote and abort from the page were not recorded with who asked: {:?}",
        record.spec.release.timeline
    );
    Ok(())
}

/// One HTTP/1.1 request to the dashboard; the status and the body.
async fn request(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let (status, _, body) = exchange(url, method, path, headers).await?;
    Ok((status, body))
}

/// One HTTP/1.1 request to the dashboard; the status, the response's header lines (lowercase) and
/// the body.
pub(crate) async fn exchange(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String)> {
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(name, _)| *name == "Host") {
        head.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {answer:?}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Reads the event stream until a line containing `want`.
async fn read_until(events: &mut BufReader<tokio::net::TcpStream>, want: &str) -> Result<()> {
    let mut line = String::new();
    tokio::time::timeout(WAIT, async {
        loop {
            line.clear();
            if events.read_line(&mut line).await? == 0 {
                bail!("the event stream ended");
            }
            if line.contains(want) {
                return Ok(());
            }
        }
    })
    .await
    .with_context(|| format!("no {want:?} in the event stream"))?
}

#[tokio::test]
async fn the_dashboard_writes_nothing_without_allow_actions_and_answers_only_to_localhost()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "dashboard-ro").await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    apply(&rollouts, &rollout(json!({"steps": [{"setWeight": 50}]}))).await?;

    let dashboard = Dashboard::start(&ns.name, &[])?;
    let url = dashboard.url.clone();
    eventually("the dashboard ready", WAIT, || async {
        Ok((request(&url, "GET", "/readyz", &[]).await?.0 == 200).then_some(()))
    })
    .await?;
    let (status, state) = request(&url, "GET", "/api/state", &[]).await?;
    ensure!(status == 200, "{status} {state}");
    let state: Value = serde_json::from_str(&state)?;
    ensure!(
        state["objects"].as_array().is_some_and(|objects| objects
            .iter()
            .any(|o| o["kind"] == "Rollout" && o["name"] == "web")),
        "the Rollout is not on the board: {state}"
    );
    let (status, head, page) = exchange(&url, "GET", "/", &[]).await?;
    ensure!(
        status == 200 && page.contains("\"actions\":false") && page.contains("\"token\":\"\""),
        "{page}"
    );
    // No other site may show the page in a frame (clicks there would be the other site's).
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
    ] {
        ensure!(
            head.contains(header),
            "no {header:?} in the page's headers:\n{head}"
        );
    }

    // No action without --allow-actions, whatever the request carries.
    let (status, body) = request(
        &url,
        "POST",
        &format!("/api/rollouts/{}/web/abort", ns.name),
        &[("X-Sluice-Token", "")],
    )
    .await?;
    ensure!(status == 403, "an action was not refused: {status} {body}");
    ensure!(
        !rollouts
            .get("web")
            .await?
            .annotations()
            .contains_key(ACTION_ANNOTATION),
        "the read-only dashboard wrote a request"
    );
    // A page of another site that resolves its own name to loopback reads nothing.
    let (status, _) = request(
        &url,
        "GET",
        "/api/state",
        &[("Host", "attacker.example:3100")],
    )
    .await?;
    ensure!(status == 403, "answered another host: {status}");

    // Changes arrive as server-sent events: the board first, then the change.
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await?;
    stream
        .write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut events = BufReader::new(stream);
    read_until(&mut events, "event: snapshot").await?;
    let changed = Instant::now();
    rollouts
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    read_until(&mut events, "\"replicas\":3").await?;
    println!(
        "dashboard: a change reached the event stream {} ms after the write",
        changed.elapsed().as_millis()
    );

    // With --allow-actions, a request without the page's token is still refused.
    drop(dashboard);
    let acting = Dashboard::start(&ns.name, &["--allow-actions"])?;
    let (status, body) = request(
        &acting.url,
        "POST",
        &format!("/api/rollouts/{}/web/abort", ns.name),
        &[],
    )
    .await?;
    ensure!(status == 403 && body.contains("token"), "{status} {body}");
    Ok(())
}
