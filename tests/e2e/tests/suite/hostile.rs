//! A Prometheus stand-in that answers with hostile responses, a real HTTP server on loopback: a
//! 50 MB body, 100,000 series, invalid JSON, and a slow drip; and eight web metrics answered with
//! arrays of two million zeros. Each run ends in Error saying what
//! was wrong, the controller's memory stays bounded, and an unrelated release in the same namespace
//! keeps its pace (its abort latency, measured before and during the attack, is printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::canary::{apply, healthy_on, rollout, wait_status};

const WAIT: Duration = Duration::from_secs(90);

/// What the stand-in answers on one port.
#[derive(Clone)]
enum Answer {
    /// This many bytes of JSON-looking text, undeclared, as fast as it can.
    Huge(usize),
    /// A well-formed vector of this many series.
    Series(usize),
    /// Not JSON.
    Invalid,
    /// A well-formed answer, one byte every `pause`.
    Drip(Duration),
    /// A JSON array of zeros just under this many bytes, declared.
    Zeros(usize),
}

/// Serves `answer` to every request on a loopback port; returns its address.
async fn stand_in(answer: Answer) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = stream.read(&mut request).await;
                let json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
                let _ = match answer {
                    Answer::Huge(bytes) => {
                        let head = format!("{json}Connection: close\r\n\r\n");
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'['; 64 << 10];
                        let mut sent = 0;
                        while sent < bytes {
                            if stream.write_all(&chunk).await.is_err() {
                                return;
                            }
                            sent += chunk.len();
                        }
                        Ok(())
                    }
                    Answer::Series(n) => {
                        let series = vec![r#"{"metric":{},"value":[1,"1"]}"#; n].join(",");
                        let body = format!(
                            r#"{{"status":"success","data":{{"resultType":"vector","result":[{series}]}}}}"#
                        );
                        let head = format!(
                            "{json}Connection: close\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(head.as_bytes()).await.ok();
                        stream.write_all(body.as_bytes()).await
                    }
                    Answer::Invalid => {
                        let body = "{\"status\":\"success\",\"data\":{\"resultType\":";
                        let head = format!("{json}Content-Length: {}\r\n\r\n", body.len());
                        stream.write_all(head.as_bytes()).await.ok();
                        stream.write_all(body.as_bytes()).await
                    }
                    Answer::Zeros(bytes) => {
                        let body = format!("[{}0]", "0,".repeat(bytes / 2 - 2));
                        // One answer per connection, said so: a client must not send the next
                        // request on a connection this server closes.
                        let head = format!(
                            "{json}Connection: close\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(head.as_bytes()).await.ok();
                        stream.write_all(body.as_bytes()).await
                    }
                    Answer::Drip(pause) => {
                        let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
                        let head = format!("{json}Content-Length: {}\r\n\r\n", body.len());
                        stream.write_all(head.as_bytes()).await.ok();
                        for byte in body.as_bytes() {
                            if stream.write_all(&[*byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(pause).await;
                        }
                        Ok(())
                    }
                };
            });
        }
    });
    Ok(address)
}

/// The controller's resident memory, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// The controller's resident memory sampled every 100 ms, for its peak.
struct PeakRss {
    peak: Arc<std::sync::Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn sample(pid: u32, before: f64) -> Self {
        let peak = Arc::new(std::sync::Mutex::new(before));
        let task = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let (Ok(rss), Ok(mut peak)) = (rss_mib(pid), peak.lock()) {
                        *peak = peak.max(rss);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self { peak, task }
    }

    /// Stops sampling; the peak seen, in MiB.
    fn stop(self) -> f64 {
        self.task.abort();
        self.peak.lock().map(|p| *p).unwrap_or_default()
    }
}

/// Waits for run `name` to finish, in Error with its last measurement saying `says`; prints it.
async fn ended_in_error(runs: &Api<AnalysisRun>, name: &str, says: &str) -> Result<AnalysisRun> {
    let run = crate::tenancy::finished(runs, name).await?;
    let status = run.status.clone().unwrap_or_default();
    let said = status.metric_results[0]
        .measurements
        .last()
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    println!("run {name}: {:?}: {said}", status.phase);
    ensure!(
        status.phase == Some(AnalysisPhase::Error),
        "{name}: {status:?}"
    );
    ensure!(
        said.contains(says),
        "{name}: {said:?} does not say {says:?}"
    );
    Ok(run)
}

/// The unrelated Rollout `web`: a canary that pauses at 50% for a person, healthy on its first
/// revision, and the latency of an abort of its first release (before any attack).
async fn unrelated_release(
    client: &kube::Client,
    namespace: &str,
) -> Result<(Api<Rollout>, Value, Duration)> {
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    let steps =
        json!({"maxSurge": 1, "maxUnavailable": 0, "steps": [{"setWeight": 50}, {"pause": {}}]});
    apply(
        &rollouts,
        &rollout("web", 2, "registry.example/web:1.0.0", steps.clone()),
    )
    .await?;
    wait_status(&rollouts, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let before = abort_latency(&rollouts, "registry.example/web:2.0.0", &steps).await?;
    Ok((rollouts, steps, before))
}

/// Releases `image` on the unrelated Rollout, waits for its pause, asks for an abort and returns
/// how long the abort took to be recorded and stable to be whole again.
async fn abort_latency(api: &Api<Rollout>, image: &str, steps: &Value) -> Result<Duration> {
    apply(api, &rollout("web", 2, image, steps.clone())).await?;
    wait_status(api, "web", "the release to pause", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    let asked = Instant::now();
    let patch = json!({"metadata": {"annotations": {"sluice.dev/action": "abort"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("the abort to be recorded", WAIT, || async {
        let status = api.get("web").await?.status.unwrap_or_default();
        Ok(status.abort.then_some(()))
    })
    .await?;
    Ok(asked.elapsed())
}

#[tokio::test]
async fn hostile_answers_end_in_errors_with_bounded_memory_and_other_releases_keep_pace()
-> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "hostile").await?;
    let controller = ControllerProcess::start(&ns.name)?;

    // The unrelated release: a canary that pauses at 50% for a person, aborted once before the
    // attack and once during it.
    let (rollouts, steps, before) = unrelated_release(&client, &ns.name).await?;
    let rss_before = rss_mib(controller.pid())?;

    let answers = [
        (
            "huge",
            Answer::Huge(50 << 20),
            "answered too much: more than 4 MiB",
        ),
        ("series", Answer::Series(100_000), "100000 series"),
        (
            "invalid",
            Answer::Invalid,
            "JSON that is not the query API's",
        ),
        (
            "drip",
            Answer::Drip(Duration::from_millis(500)),
            "could not query Prometheus",
        ),
    ];
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    for (name, answer, _) in &answers {
        let address = stand_in(answer.clone()).await?;
        let run = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"metrics": [{
                "name": "probe", "interval": "1s", "count": 3, "consecutiveErrorLimit": 2,
                "successCondition": "result[0] == 1",
                "provider": {"prometheus": {"address": address, "query": "up", "timeout": 2}}
            }]}
        });
        runs.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&run),
        )
        .await?;
    }
    // Eight web metrics measured at once, each answered with a JSON array of two million zeros
    // (just under the 4 MiB read): parsed, each would be a few hundred MiB.
    let zeros = stand_in(Answer::Zeros((4 << 20) - 1024)).await?;
    let web_metrics: Vec<Value> = (0..8)
        .map(|i| {
            json!({
                "name": format!("zeros-{i}"), "interval": "1s", "count": 2,
                "consecutiveErrorLimit": 1, "successCondition": "size(result) > 0",
                "provider": {"web": {"url": format!("{zeros}/zeros"), "timeoutSeconds": 5}}
            })
        })
        .collect();
    let web_run = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "web-zeros", "labels": {"sluice.dev/standalone": "true"}},
        "spec": {"metrics": web_metrics}
    });
    runs.patch(
        "web-zeros",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&web_run),
    )
    .await?;
    // Sample memory while the runs are being measured, and abort the unrelated release meanwhile.
    let sampling = PeakRss::sample(controller.pid(), rss_before);
    let during = abort_latency(&rollouts, "registry.example/web:3.0.0", &steps).await?;
    for (name, _, says) in &answers {
        let run = ended_in_error(&runs, name, says).await?;
        let size = serde_json::to_string(&run)?.len();
        ensure!(size < 64 << 10, "{name}: the run is {size} bytes");
    }
    let run = crate::tenancy::finished(&runs, "web-zeros").await?;
    let status = run.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(AnalysisPhase::Error),
        "web-zeros: {status:?}"
    );
    for result in &status.metric_results {
        let said = result
            .measurements
            .last()
            .and_then(|m| m.message.clone())
            .unwrap_or_default();
        ensure!(
            said.contains("more than 100000 values"),
            "{}: {said:?}",
            result.name
        );
    }
    println!(
        "web-zeros: Error: {} metrics refused their answers",
        status.metric_results.len()
    );
    let peak = sampling.stop();
    println!(
        "hostile answers: controller RSS {rss_before:.1} MiB before, {peak:.1} MiB at most during; \
         the unrelated release's abort took {:.0} ms before and {:.0} ms during the attack",
        before.as_secs_f64() * 1000.0,
        during.as_secs_f64() * 1000.0
    );
    // Not a timing: a bound on what was buffered. A 50 MB answer read whole would pass it.
    ensure!(
        peak - rss_before < 48.0,
        "the controller grew by {:.1} MiB",
        peak - rss_before
    );
    Ok(())
}

/// Conditions as a hostile tenant writes them. Those whose text shows their cost (a gigabyte built
/// by `repeat`, loops nested twelve deep, an accumulator that doubles) are refused when their
/// template is applied; one that never gives true or false is found by the evaluator (a child
/// process); two that pass both but are too costly on a thousand series (gigabytes of copies, a
/// million copies of the answer) end their runs in Error, stopped by the evaluator's limits. The
/// controller stays up, its memory does not move with them, and an unrelated release's abort keeps
/// its pace (printed before and during).
#[tokio::test]
async fn hostile_conditions_are_refused_or_stopped_and_other_releases_keep_pace() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "hostile-conditions").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;

    let (rollouts, steps, before) = unrelated_release(&client, &ns.name).await?;
    let rss_before = rss_mib(controller.pid())?;

    let sampling = PeakRss::sample(controller.pid(), rss_before);

    let address = stand_in(Answer::Series(1000)).await?;
    let nested = (0..12).fold("# > 0".to_owned(), |inner, _| {
        format!("all(result, {{{inner}}})")
    });
    let refused = [
        (
            "growth",
            "len(repeat(repeat(\"a\",1000),1000000)) > 0".to_owned(),
            "repeat() is not allowed",
        ),
        ("nested", nested, "nests loops over lists more than 2 deep"),
        (
            "accumulator",
            "len(reduce(result, #acc + #acc, \"ab\")) > 0".to_owned(),
            "reduce() is not allowed",
        ),
        ("never", "result[0] + 0.5".to_owned(), "not true or false"),
    ];
    let templates = Api::<sluice_api::AnalysisTemplate>::namespaced(client.clone(), &ns.name);
    for (name, condition, _) in &refused {
        let template = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": name},
            "spec": {"metrics": [{
                "name": "probe", "successCondition": condition,
                "provider": {"prometheus": {"address": address, "query": "up"}}
            }]}
        });
        templates
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&template),
            )
            .await?;
    }
    let costly = [
        (
            "memory",
            "let s = join(map(result, {string(#)}), \",\"); \
             len(map(result, {map(result, {[s, s, s, s, s, s, s, s]})})) > 0",
            "MiB of memory",
        ),
        (
            "cpu",
            "result.all(x, result.all(y, (result + result).size() > 0))",
            "of processor time",
        ),
    ];
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), &ns.name);
    for (name, condition, _) in &costly {
        let run = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"metrics": [{
                "name": "probe", "interval": "1s", "count": 3, "consecutiveErrorLimit": 2,
                "successCondition": condition,
                "provider": {"prometheus": {"address": address, "query": "up", "timeout": 5}}
            }]}
        });
        runs.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&run),
        )
        .await?;
    }
    let during = abort_latency(&rollouts, "registry.example/web:3.0.0", &steps).await?;

    for (name, _, says) in &refused {
        let invalid = eventually(
            &format!("template {name} to be found invalid"),
            WAIT,
            || async {
                let status = templates.get(name).await?.status.unwrap_or_default();
                Ok(status
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Valid" && c.status == "False"))
            },
        )
        .await?;
        println!("template {name}: {}", invalid.message);
        ensure!(
            invalid.message.contains(says),
            "{name}: {:?} does not say {says:?}",
            invalid.message
        );
    }
    for (name, _, says) in &costly {
        ended_in_error(&runs, name, says).await?;
    }
    let peak = sampling.stop();
    println!(
        "hostile conditions: controller RSS {rss_before:.1} MiB before, {peak:.1} MiB at most \
         during; the unrelated release's abort took {:.0} ms before and {:.0} ms during",
        before.as_secs_f64() * 1000.0,
        during.as_secs_f64() * 1000.0
    );
    ensure!(!controller.try_exited()?, "the controller exited");
    // Not a timing: a bound on what was held. Either costly condition evaluated in the controller
    // takes gigabytes.
    ensure!(
        peak - rss_before < 48.0,
        "the controller grew by {:.1} MiB",
        peak - rss_before
    );
    Ok(())
}
