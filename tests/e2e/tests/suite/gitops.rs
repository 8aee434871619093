//! Argo CD's health checks (`config/argocd/*.lua`) run with a real Lua interpreter (Debian's
//! `lua5.4`, installed by the test tooling) over every state a Rollout, its AnalysisRuns and an
//! ErrorBudgetGate went through in real releases on the control plane: each object a watch saw is
//! judged, and the judgement must follow the state the controller recorded.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::http::{Answer, TestServer};
use sluice_e2e::{ControllerProcess, TestNamespace, client, install_crds, repo_root};

use crate::analysis::{apply, set_image, wait_status};

/// A JSON value as a Lua table constructor (null is nil, as Argo CD's conversion makes it).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What Argo CD would show for `object` with the health check `script`: its status and message.
fn health(lua: &std::path::Path, script: &str, object: &Value) -> Result<(String, String)> {
    let chunk = format!(
        "local function health(obj)\n{script}\nend\nlocal hs = health({})\nio.write(hs.status, '\\t', hs.message or '')\n",
        lua_literal(object)
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(chunk.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("lua failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    let (status, message) = text.split_once('\t').context("no status")?;
    Ok((status.to_owned(), message.to_owned()))
}

/// The health checks as a user installs them: the `argocd-cm` patch the README's command applies,
/// by resource (`sluice.dev_Rollout`, ...).
fn installed_scripts() -> Result<std::collections::BTreeMap<String, String>> {
    let output = Command::new("bash")
        .arg(repo_root().join("config/argocd/argocd-cm-patch.sh"))
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let patch: Value = serde_yaml::from_slice(&output.stdout)?;
    let data = patch["data"].as_object().context("the patch has no data")?;
    Ok(data
        .iter()
        .filter_map(|(key, script)| {
            let kind = key.strip_prefix("resource.customizations.health.")?;
            Some((kind.to_owned(), script.as_str()?.to_owned()))
        })
        .collect())
}

/// The versions of objects a watch saw, as JSON.
type Seen = Arc<Mutex<Vec<Value>>>;
/// What Argo CD should show for an object, from the state its status records.
type Meaning = fn(&Value) -> &'static str;

/// Every version of the objects of kind `K` a watch in `ns` sees, as JSON.
fn record<K>(api: Api<K>) -> Seen
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K: Send + 'static,
{
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::Apply(object) | watcher::Event::InitApply(object) = event
                && let (Ok(value), Ok(mut seen)) = (serde_json::to_value(&object), log.lock())
            {
                seen.push(value);
            }
        }
    });
    seen
}

/// A gate selecting `slo: <selects>` whose Prometheus cannot be reached: it judges Unknown (and so
/// holds the releases it selects).
fn unreachable_gate(selects: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "slo"},
        "spec": {
            "selector": {"matchLabels": {"slo": selects}},
            "objective": 99.0, "window": "1h", "evaluationInterval": "2s",
            "sli": {"events": {"errorQuery": "sum(increase(errors_total[{{window}}]))",
                               "totalQuery": "sum(increase(requests_total[{{window}}]))"}},
            "prometheus": {"address": "http://127.0.0.1:1"}
        }
    })
}

#[tokio::test]
async fn argo_cd_health_checks_follow_every_state_of_real_releases_runs_and_gates() -> Result<()> {
    let lua = tokio::task::spawn_blocking(|| {
        sluice_testbed::prometheus::ensure_debian_program("lua5.4", "lua5.4")
    })
    .await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "gitops").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    let gates: Api<sluice_api::ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
    let rollouts_seen = record(api.clone());
    let runs_seen = record(runs.clone());
    let gates_seen = record(gates.clone());

    // A release: healthy, progressing, paused at a step, aborted.
    apply(
        &api,
        &crate::analysis::rollout(json!({
            "maxSurge": 1, "maxUnavailable": 0,
            "steps": [{"setWeight": 50}, {"pause": {}}]
        })),
    )
    .await?;
    wait_status(&api, "healthy", |s| s.phase == Some(RolloutPhase::Healthy)).await?;
    set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(&api, "paused", |s| s.phase == Some(RolloutPhase::Paused)).await?;
    crate::canary::request(&api, "web", "abort").await?;
    wait_status(&api, "aborted", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await?;

    // Runs that succeed and fail, and a gate that cannot reach its Prometheus.
    let server = TestServer::start().await?;
    server.answer("/ok", Answer::json(200, json!({"passed": true})));
    server.answer("/bad", Answer::json(200, json!({"passed": false})));
    for (name, path) in [("passes", "/ok"), ("fails", "/bad")] {
        apply(&runs, &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"metrics": [{
                "name": "check", "count": 2, "interval": "1s",
                "successCondition": "result.passed == true",
                "provider": {"web": {"url": format!("{}{path}", server.address), "jsonPath": "{$}"}}
            }]}
        }))
        .await?;
    }
    apply(&gates, &unreachable_gate("none")).await?;
    sluice_e2e::eventually(
        "the runs finished and the gate judged",
        std::time::Duration::from_secs(60),
        || async {
            let done = |name: &str| {
                let runs = runs.clone();
                let name = name.to_owned();
                async move {
                    runs.get(&name).await.map(|r| {
                        r.status.and_then(|s| s.phase).is_some_and(|p| {
                            !matches!(p, AnalysisPhase::Pending | AnalysisPhase::Running)
                        })
                    })
                }
            };
            let gate = gates.get("slo").await?;
            Ok((done("passes").await?
                && done("fails").await?
                && gate.status.and_then(|s| s.state).is_some())
            .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    // Every version seen, judged; each judgement as the state recorded says.
    let mut outcomes: BTreeSet<(String, String)> = BTreeSet::new();
    let installed = installed_scripts()?;
    let checks: [(&str, &Seen, Meaning); 3] = [
        ("sluice.dev_Rollout", &rollouts_seen, |o| {
            let status = &o["status"];
            if status["observedGeneration"].as_i64().is_none()
                || status["observedGeneration"].as_i64() < o["metadata"]["generation"].as_i64()
            {
                return "Progressing";
            }
            match status["phase"].as_str() {
                Some("Healthy") => "Healthy",
                Some("Paused") => "Suspended",
                Some("Degraded") => "Degraded",
                _ => "Progressing",
            }
        }),
        (
            "sluice.dev_AnalysisRun",
            &runs_seen,
            |o| match o["status"]["phase"].as_str() {
                Some("Successful") => "Healthy",
                Some("Failed" | "Error") => "Degraded",
                Some("Inconclusive") => "Suspended",
                _ => "Progressing",
            },
        ),
        ("sluice.dev_ErrorBudgetGate", &gates_seen, |o| {
            let status = &o["status"];
            if status["state"].is_null()
                || status["observedGeneration"].as_i64() < o["metadata"]["generation"].as_i64()
            {
                return "Progressing";
            }
            match status["state"].as_str() {
                Some("Open" | "Warning") => "Healthy",
                Some("Frozen" | "CriticalOnly") => "Suspended",
                _ => "Degraded",
            }
        }),
    ];
    for (file, seen, expected) in checks {
        let source = installed
            .get(file)
            .with_context(|| format!("the argocd-cm patch has no health check for {file}"))?;
        let objects = seen.lock().map(|s| s.clone()).unwrap_or_default();
        ensure!(!objects.is_empty(), "{file}: no object seen");
        for object in &objects {
            let (status, message) = health(&lua, source, object)?;
            let want = expected(object);
            ensure!(
                status == want,
                "{file}: {status} ({message}) for a status that means {want}: {}",
                object["status"]
            );
            outcomes.insert((file.to_owned(), status));
        }
    }
    for (file, status) in [
        ("sluice.dev_Rollout", "Healthy"),
        ("sluice.dev_Rollout", "Progressing"),
        ("sluice.dev_Rollout", "Suspended"),
        ("sluice.dev_Rollout", "Degraded"),
        ("sluice.dev_AnalysisRun", "Healthy"),
        ("sluice.dev_AnalysisRun", "Degraded"),
        ("sluice.dev_ErrorBudgetGate", "Degraded"),
    ] {
        ensure!(
            outcomes.contains(&(file.to_owned(), status.to_owned())),
            "{file} never judged {status}: {outcomes:?}"
        );
    }
    eprintln!("health checks judged: {outcomes:?}");
    Ok(())
}

/// The kstatus checker (`tests/kstatus`, Flux's `sigs.k8s.io/cli-utils/pkg/kstatus`), built with
/// the machine's Go into the testbed's cache.
fn kstatus_checker() -> Result<std::path::PathBuf> {
    sluice_testbed::binaries::go_program("kstatus", &repo_root().join("tests/kstatus"))
}

/// kstatus's verdict ("Current", "InProgress", "Failed", ...) for each object.
fn kstatus(checker: &std::path::Path, objects: &[Value]) -> Result<Vec<(String, String)>> {
    let mut child = Command::new(checker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&serde_json::to_vec(objects)?)?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?
        .lines()
        .map(|l| {
            let (status, message) = l.split_once('\t').unwrap_or((l, ""));
            (status.to_owned(), message.to_owned())
        })
        .collect())
}

/// `kubectl wait --for=condition=Ready` on the Rollout: whether it succeeded within `seconds`.
fn wait_ready(ns: &str, seconds: u32) -> Result<bool> {
    let output = sluice_e2e::kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &format!("--timeout={seconds}s"),
        "rollouts.sluice.dev/web",
    ])?;
    Ok(output.status.success())
}

#[tokio::test]
async fn flux_kstatus_reads_every_phase_and_kubectl_wait_for_ready_follows_the_release()
-> Result<()> {
    let checker = tokio::task::spawn_blocking(kstatus_checker).await??;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "kstatus").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let seen = record(api.clone());

    let mut manifest = crate::analysis::rollout(json!({
        "maxSurge": 1, "maxUnavailable": 0,
        "steps": [{"setWeight": 50}, {"pause": {}}]
    }));
    manifest["metadata"]["labels"] = json!({"slo": "web"});
    apply(&api, &manifest).await?;
    wait_status(&api, "healthy", |s| s.phase == Some(RolloutPhase::Healthy)).await?;
    ensure!(
        wait_ready(&ns.name, 30)?,
        "kubectl wait for Ready failed on a healthy Rollout"
    );
    set_image(&api, "registry.example/web:2.0.0").await?;
    wait_status(&api, "paused", |s| s.phase == Some(RolloutPhase::Paused)).await?;
    crate::canary::request(&api, "web", "promote").await?;
    wait_status(&api, "2.0.0 stable", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
    })
    .await?;
    ensure!(
        wait_ready(&ns.name, 30)?,
        "kubectl wait for Ready failed on a finished release"
    );
    set_image(&api, "registry.example/web:3.0.0").await?;
    wait_status(&api, "3.0.0 paused", |s| {
        s.phase == Some(RolloutPhase::Paused) && s.stable_rs != s.current_pod_hash
    })
    .await?;
    crate::canary::request(&api, "web", "abort").await?;
    wait_status(&api, "aborted", |s| s.abort).await?;
    ensure!(
        !wait_ready(&ns.name, 3)?,
        "kubectl wait for Ready passed on an aborted release"
    );

    // A gate that cannot judge holds the next release.
    let gates: Api<sluice_api::ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
    apply(&gates, &unreachable_gate("web")).await?;
    set_image(&api, "registry.example/web:4.0.0").await?;
    wait_status(&api, "4.0.0 held", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ReleaseHeld" && c.status == "True")
    })
    .await?;
    ensure!(
        !wait_ready(&ns.name, 3)?,
        "kubectl wait for Ready passed on a held release"
    );

    let objects = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let verdicts = kstatus(&checker, &objects)?;
    let mut by_phase: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (object, (status, message)) in objects.iter().zip(&verdicts) {
        let generation_seen = object["status"]["observedGeneration"].as_i64()
            >= object["metadata"]["generation"].as_i64();
        let phase = object["status"]["phase"].as_str().unwrap_or("none");
        let want = match phase {
            // kstatus reads an object the controller has not written a status to yet as Current
            // (its rule for resources without one); the controller writes one at once.
            "none" if object["status"].is_null() => "Current",
            _ if !generation_seen => "InProgress",
            "Healthy" => "Current",
            "Progressing" => "InProgress",
            // Not done until a person (or the gate) lets it go: Ready is False, as for kubectl wait.
            "Paused" => "InProgress",
            "Degraded" => "Failed",
            _ => "InProgress",
        };
        ensure!(
            status == want,
            "kstatus says {status} ({message}) for phase {phase}, want {want}: {}",
            object["status"]
        );
        by_phase
            .entry(phase.to_owned())
            .or_default()
            .insert(status.clone());
    }
    for phase in ["Healthy", "Progressing", "Paused", "Degraded"] {
        ensure!(
            by_phase.contains_key(phase),
            "no {phase} status seen: {by_phase:?}"
        );
    }
    eprintln!("kstatus by phase: {by_phase:?}");
    Ok(())
}
