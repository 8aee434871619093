//! `sluice-bench scale`: how a controller copes with many Rollouts in one namespace. Figures are
//! printed, never asserted.
//!
//! 1. N Rollouts (a canary with a `setWeight` and a one-second pause, `replicas` R, no Services, no
//!    routes, no analysis) are created, with bounded concurrency, before the controller starts.
//! 2. The controller starts; the clock runs until every Rollout is Healthy at its generation
//!    (`status.phase` Healthy and `status.observedGeneration` equal to `metadata.generation`), as
//!    a watch sees them.
//! 3. The controller's RSS (`VmRSS`) is sampled every 500 ms throughout: peak, and steady (after the
//!    idle window).
//! 4. Idle: for 30 s after all are Healthy, the controller's CPU seconds, its API requests per
//!    second (its own `/metrics` counter), and as a cross-check the API server's own request rate,
//!    cluster-wide (every client: kube-controller-manager, kube-scheduler and kwok included).
//! 5. Mass update: every Rollout's image changes at once (bounded concurrency); the clock runs until
//!    all are Healthy at their new generation, from the first change and from the moment the last
//!    change was accepted.
//!
//! The controller under test is a [`ControllerUnderTest`]: how to start it, its process, and how to
//! judge its objects' health. Every wait is bounded by `--timeout`: when it runs out, what was
//! reached is printed instead.
//!
//! Alone, Sluice's controller runs as the end-to-end tests start it ([`ControllerProcess`]: leader
//! election on a 10 s Lease), so its idle requests are mostly the Lease's renewals.
//!
//! With `--peer argo-rollouts` the scenario runs twice on the same cluster, one controller at a
//! time, each in a fresh namespace: first Sluice's, then [`ArgoRollouts`]' controller (built from
//! its Go module by [`sluice_testbed::ensure_argo_rollouts`], its CRDs installed first), and a
//! comparison follows the two tables. Both then run without leader election (Argo's with
//! `--leader-elect=false`, Sluice's with `--leader-elect false`), each with its own default API
//! client rate (Argo's client-go: 40 requests/s, burst 80; Sluice's kube client: no limit). Argo's
//! CRDs take Sluice's short names (`ro`, `rollouts`), so this refuses to run against the
//! development or test cluster; `cargo xtask bench scale --peer` uses a cluster of its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::{
    ControllerProcess, TestNamespace, free_ports, http_get, install_crds, kubeconfig_path, kubectl,
    kubectl_stdout, repo_root,
};

/// Usage of `sluice-bench scale`.
pub const USAGE: &str = "sluice-bench scale --rollouts N [--replicas R] [--timeout SECONDS] \
                         [--idle SECONDS] [--concurrency C] [--peer argo-rollouts]";

/// A controller to compare Sluice's with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Argo Rollouts ([`ArgoRollouts`]).
    ArgoRollouts,
}

/// The scenario's parameters.
#[derive(Clone, Debug)]
pub struct ScaleArgs {
    /// Rollouts to create.
    pub rollouts: usize,
    /// `spec.replicas` of each.
    pub replicas: i32,
    /// The bound of every wait.
    pub timeout: Duration,
    /// The idle window after all are Healthy.
    pub idle: Duration,
    /// Requests in flight while creating and updating.
    pub concurrency: usize,
    /// Run the scenario for this controller too, after Sluice's, and compare.
    pub peer: Option<Peer>,
}

impl ScaleArgs {
    /// Parses `--rollouts N [--replicas R] [--timeout S] [--idle S] [--concurrency C]
    /// [--peer argo-rollouts]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut parsed = Self {
            rollouts: 0,
            replicas: 0,
            timeout: Duration::from_secs(600),
            idle: Duration::from_secs(30),
            concurrency: 50,
            peer: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |what: &str| -> Result<String> {
                it.next()
                    .cloned()
                    .with_context(|| format!("{arg} needs {what}; usage: {USAGE}"))
            };
            match arg.as_str() {
                "--rollouts" => parsed.rollouts = value("a number")?.parse()?,
                "--replicas" => parsed.replicas = value("a number")?.parse()?,
                "--timeout" => parsed.timeout = Duration::from_secs(value("seconds")?.parse()?),
                "--idle" => parsed.idle = Duration::from_secs(value("seconds")?.parse()?),
                "--concurrency" => parsed.concurrency = value("a number")?.parse()?,
                "--peer" => match value("a controller")?.as_str() {
                    "argo-rollouts" => parsed.peer = Some(Peer::ArgoRollouts),
                    other => bail!(
                        "unknown peer {other:?} (argo-rollouts is the one known); usage: {USAGE}"
                    ),
                },
                other => bail!("unknown argument {other:?}; usage: {USAGE}"),
            }
        }
        if parsed.rollouts == 0 || parsed.replicas < 0 || parsed.concurrency == 0 {
            bail!(
                "--rollouts and --concurrency must be positive, --replicas not negative; usage: {USAGE}"
            );
        }
        Ok(parsed)
    }
}

/// One object's health, as the controller under test reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `status.phase`, or `-` before the controller wrote one.
    pub phase: String,
    /// The status describes the object's current generation.
    pub observed: bool,
    /// Healthy, and the status describes the object's current generation.
    pub healthy_at_generation: bool,
}

/// A controller the scenario measures: how to install its API, what it releases, how to start it and
/// how to read its objects' health.
pub trait ControllerUnderTest: Send + Sync + 'static {
    /// Its name in the figures.
    fn name(&self) -> &str;
    /// How it runs, for the figures' title (leader election, say); empty if nothing to say.
    fn setup(&self) -> String {
        String::new()
    }
    /// The kind of object it releases.
    fn resource(&self) -> ApiResource;
    /// Installs what it needs in the cluster (CRDs) before any object is created.
    fn install<'a>(&'a self, client: &'a Client) -> BoxFuture<'a, Result<()>>;
    /// An object called `name` running `image` with `replicas` pods, which completes its release
    /// without a person: no Services, routes or analysis.
    fn manifest(&self, name: &str, image: &str, replicas: i32) -> Value;
    /// The object's health.
    fn health(&self, object: &DynamicObject) -> Health;
    /// Starts the controller, watching `namespace`.
    fn start(&self, namespace: &str) -> Result<Box<dyn RunningController>>;
}

/// A started controller process; stopped when dropped.
pub trait RunningController: Send {
    /// Its process id, for `/proc`.
    fn pid(&self) -> u32;
    /// Where it serves Prometheus metrics (a full URL base, e.g. `http://127.0.0.1:8080`), if it does.
    fn metrics_base(&self) -> Option<String>;
    /// The counter of API requests it made, summed over every label set, if it has one.
    fn api_requests_metric(&self) -> Option<String>;
    /// What a series of that counter counts, from its label set, for a breakdown: `verb resource`.
    fn request_key(&self, labels: &str) -> String {
        verb_and_resource(labels)
    }
    /// Its log.
    fn log(&self) -> Option<PathBuf>;
}

/// Sluice's controller: `SLUICE_E2E_CONTROLLER` (the release build under `cargo xtask bench`),
/// for the namespace.
pub struct Sluice {
    /// Take part in leader election on a 10 s Lease, as the end-to-end tests start it
    /// ([`ControllerProcess`]); else `--leader-elect false`, as a single instance (and as the peer
    /// runs).
    pub leader_elect: bool,
}

/// `value` as a number, whether JSON has it as a number or a string (Argo writes
/// `observedGeneration` as a string).
fn as_i64(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Health read from `status.phase` and `status.observedGeneration`, the shape Sluice and Argo
/// Rollouts share.
pub fn phase_and_generation(object: &DynamicObject) -> Health {
    let status = &object.data["status"];
    let phase = status["phase"].as_str().unwrap_or("-").to_owned();
    let observed = as_i64(&status["observedGeneration"])
        .is_some_and(|observed| Some(observed) == object.metadata.generation);
    Health {
        healthy_at_generation: observed && phase == "Healthy",
        observed,
        phase,
    }
}

/// The scenario's object: a canary with a `setWeight` and a one-second pause, no Services, routes
/// or analysis. Sluice's Rollout and Argo's share this shape.
fn canary_manifest(api_version: &str, name: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": api_version, "kind": "Rollout", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": 1}}]}}
        }
    })
}

impl ControllerUnderTest for Sluice {
    fn name(&self) -> &str {
        "sluice"
    }

    fn setup(&self) -> String {
        if self.leader_elect {
            "leader election on a 10 s Lease".to_owned()
        } else {
            "no leader election".to_owned()
        }
    }

    fn resource(&self) -> ApiResource {
        ApiResource::erase::<sluice_api::Rollout>(&())
    }

    fn install<'a>(&'a self, client: &'a Client) -> BoxFuture<'a, Result<()>> {
        Box::pin(install_crds(client))
    }

    fn manifest(&self, name: &str, image: &str, replicas: i32) -> Value {
        canary_manifest("sluice.dev/v1alpha1", name, image, replicas)
    }

    fn health(&self, object: &DynamicObject) -> Health {
        phase_and_generation(object)
    }

    fn start(&self, namespace: &str) -> Result<Box<dyn RunningController>> {
        if self.leader_elect {
            return Ok(Box::new(SluiceProcess(ControllerProcess::start(
                namespace,
            )?)));
        }
        let binary = std::env::var_os("SLUICE_E2E_CONTROLLER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/sluice-controller"));
        let [port] = free_ports::<1>()?;
        let mut command = Command::new(&binary);
        command
            .args(["--namespace", namespace, "--log-format", "text"])
            .args(["--leader-elect", "false"])
            .env("KUBECONFIG", kubeconfig_path())
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{port}"));
        Ok(Box::new(Spawned::start(
            command,
            &format!("controller-{namespace}.log"),
            format!("http://127.0.0.1:{port}"),
            "sluice_api_requests_total",
            verb_and_resource,
        )?))
    }
}

struct SluiceProcess(ControllerProcess);

impl RunningController for SluiceProcess {
    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn metrics_base(&self) -> Option<String> {
        Some(self.0.http.clone())
    }

    fn api_requests_metric(&self) -> Option<String> {
        Some("sluice_api_requests_total".to_owned())
    }

    fn log(&self) -> Option<PathBuf> {
        Some(self.0.log.clone())
    }
}

/// Argo Rollouts' controller ([`sluice_testbed::ensure_argo_rollouts`]), run out of cluster for the
/// namespace without leader election:
/// `POD_NAMESPACE=<ns> rollouts-controller --kubeconfig <file> --namespaced --namespace <ns>
/// --leader-elect=false --metricsPort <port> --healthzPort <port>`. Its own count of API requests
/// is client-go's, through Argo's transport wrapper: `controller_clientset_k8s_request_total`.
pub struct ArgoRollouts {
    name: String,
    build: sluice_testbed::ArgoRollouts,
}

/// Argo Rollouts' CRDs, which [`ArgoRollouts::install`] waits for.
const ARGO_CRDS: [&str; 5] = [
    "crd/rollouts.argoproj.io",
    "crd/analysisruns.argoproj.io",
    "crd/analysistemplates.argoproj.io",
    "crd/clusteranalysistemplates.argoproj.io",
    "crd/experiments.argoproj.io",
];

impl ArgoRollouts {
    /// Builds the controller if it is not in the cache yet, and finds its CRDs.
    pub async fn locate() -> Result<Self> {
        let build = crate::argo::build().await?;
        Ok(Self {
            name: format!("argo-rollouts {}", build.version),
            build,
        })
    }
}

impl ControllerUnderTest for ArgoRollouts {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self) -> String {
        "no leader election".to_owned()
    }

    fn resource(&self) -> ApiResource {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
        ApiResource::from_gvk_with_plural(&gvk, "rollouts")
    }

    fn install<'a>(&'a self, _client: &'a Client) -> BoxFuture<'a, Result<()>> {
        let crds = self.build.crds.display().to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // The directory holds a kustomization.yaml, which `apply -f` refuses.
                kubectl_stdout(&["apply", "--server-side", "--force-conflicts", "-k", &crds])?;
                let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
                wait.extend(ARGO_CRDS);
                // Right after the apply a CRD may have no conditions at all yet, which `kubectl wait`
                // reports as an error rather than waiting: try again for a while.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match kubectl_stdout(&wait) {
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        done => break done.map(drop),
                    }
                }
            })
            .await
            .context("the kubectl task panicked")?
            .context("installing Argo Rollouts' CRDs")
        })
    }

    fn manifest(&self, name: &str, image: &str, replicas: i32) -> Value {
        canary_manifest("argoproj.io/v1alpha1", name, image, replicas)
    }

    fn health(&self, object: &DynamicObject) -> Health {
        phase_and_generation(object)
    }

    fn start(&self, namespace: &str) -> Result<Box<dyn RunningController>> {
        let [metrics, healthz] = free_ports::<2>()?;
        let command = crate::argo::controller_command(
            &self.build.controller,
            namespace,
            &kubeconfig_path(),
            metrics,
            healthz,
        );
        Ok(Box::new(Spawned::start(
            command,
            &format!("argo-rollouts-{namespace}.log"),
            format!("http://127.0.0.1:{metrics}"),
            "controller_clientset_k8s_request_total",
            argo_request_key,
        )?))
    }
}

/// `verb resource` of a series of Argo's `controller_clientset_k8s_request_total`
/// (`kind`, `namespace`, `name`, `verb`, `status_code`). Its `kind` is the path segment before the
/// last one, so for a subresource (`.../rollouts/<name>/status`) it is the object's name and `name`
/// is `status`: those read `<verb> */status`. A create whose body it cannot parse as JSON has no
/// `kind` (its ReplicaSets, which client-go sends as protobuf): `create ?`.
fn argo_request_key(labels: &str) -> String {
    let verb = label(labels, "verb").unwrap_or("-").to_lowercase();
    match label(labels, "name") {
        Some("status") => format!("{verb} */status"),
        _ => match label(labels, "kind").filter(|kind| !kind.is_empty()) {
            Some(kind) => format!("{verb} {kind}"),
            None => format!("{verb} ?"),
        },
    }
}

/// A controller this module started itself, logging to `target/e2e-logs`; killed when dropped.
struct Spawned {
    child: Child,
    metrics: String,
    metric: &'static str,
    key: fn(&str) -> String,
    log: PathBuf,
}

impl Spawned {
    fn start(
        mut command: Command,
        log_name: &str,
        metrics: String,
        metric: &'static str,
        key: fn(&str) -> String,
    ) -> Result<Self> {
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.canonicalize().unwrap_or(logs).join(log_name);
        let file = std::fs::File::create(&log)?;
        let program = Path::new(command.get_program()).to_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child,
            metrics,
            metric,
            key,
            log,
        })
    }
}

impl RunningController for Spawned {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics_base(&self) -> Option<String> {
        Some(self.metrics.clone())
    }

    fn api_requests_metric(&self) -> Option<String> {
        Some(self.metric.to_owned())
    }

    fn request_key(&self, labels: &str) -> String {
        (self.key)(labels)
    }

    fn log(&self) -> Option<PathBuf> {
        Some(self.log.clone())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The process, from /proc.
/// Resident memory of `pid` in KiB (`VmRSS`), or `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The state letter and utime + stime (clock ticks) of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after its closing one.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// CPU seconds `pid` has used.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat(pid).map(|(_, ticks)| ticks as f64 / ticks_per_second)
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// `getconf CLK_TCK`, else 100.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|ticks: &f64| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// RSS samples of a process every 500 ms, until stopped or the process is gone.
struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(kib) = rss_kib(pid) else { break };
                if let Ok(mut log) = log.lock() {
                    log.push((Instant::now(), kib));
                }
            }
        });
        Self { samples, stop }
    }

    /// Takes a sample now (the periodic ones may miss a short phase).
    fn sample_now(&self, pid: u32) {
        if let (Some(kib), Ok(mut log)) = (rss_kib(pid), self.samples.lock()) {
            log.push((Instant::now(), kib));
        }
    }

    /// The largest sample taken in `[from, to)`.
    fn peak(&self, from: Instant, to: Instant) -> Option<u64> {
        let samples = self.samples.lock().ok()?;
        samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, kib)| *kib)
            .max()
    }

    fn count(&self) -> usize {
        self.samples.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics in the Prometheus text format.

/// Every series of `name` in a Prometheus text exposition: its label set (the text between the
/// braces) and value. `None` if the exposition has no such metric at all; no series for a metric
/// declared (`# TYPE`) without any yet.
fn series<'a>(text: &'a str, name: &str) -> Option<Vec<(&'a str, f64)>> {
    let family = name.strip_suffix("_total").unwrap_or(name);
    let mut found = false;
    let mut all = Vec::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let declared = declared.split_whitespace().next().unwrap_or_default();
            if declared == name || declared == family {
                found = true;
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (metric, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            None => match line.split_once(' ') {
                Some((metric, rest)) => (metric, "", rest),
                None => continue,
            },
        };
        if metric != name {
            continue;
        }
        found = true;
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            all.push((labels, value));
        }
    }
    found.then_some(all)
}

/// The series of `name` for which `keep` holds of their label set, summed by `key` of it.
fn grouped(
    text: &str,
    name: &str,
    keep: impl Fn(&str) -> bool,
    key: impl Fn(&str) -> String,
) -> Option<Counts> {
    let mut counts = Counts::new();
    for (labels, value) in series(text, name)? {
        if keep(labels) {
            *counts.entry(key(labels)).or_default() += value;
        }
    }
    Some(counts)
}

/// Request counts by verb and resource.
type Counts = BTreeMap<String, f64>;

/// Sums every series of `name` for which `keep` holds of its label set.
#[cfg(test)]
fn sum_series(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> Option<f64> {
    grouped(text, name, keep, |_| String::new()).map(|c| c.values().sum())
}

/// `verb resource[/subresource]` of a label set, for a breakdown.
fn verb_and_resource(labels: &str) -> String {
    let resource = label(labels, "resource").unwrap_or("-");
    match label(labels, "subresource").filter(|s| !s.is_empty()) {
        Some(sub) => format!("{} {resource}/{sub}", label(labels, "verb").unwrap_or("-")),
        None => format!("{} {resource}", label(labels, "verb").unwrap_or("-")),
    }
}

/// Counts taken at two moments: the total rate, the total, and the `top` keys that grew most, with
/// their rates (`per_second`) or counts.
fn rates(
    before: &(Instant, Counts),
    after: &(Instant, Counts),
    top: usize,
    per_second: bool,
) -> (f64, f64, String) {
    let window = after.0.duration_since(before.0).as_secs_f64();
    let mut deltas: Vec<(&String, f64)> = after
        .1
        .iter()
        .map(|(key, value)| (key, value - before.1.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, delta)| *delta > 0.0)
        .collect();
    deltas.sort_by(|a, b| b.1.total_cmp(&a.1));
    // A fold from +0.0: an empty `sum` of floats is -0.0, printed "-0".
    let total: f64 = deltas.iter().fold(0.0, |sum, (_, d)| sum + d);
    let mut breakdown: Vec<String> = deltas
        .iter()
        .take(top)
        .map(|(key, delta)| {
            if per_second {
                format!("{key} {:.2}", delta / window)
            } else {
                format!("{key} {delta}")
            }
        })
        .collect();
    if deltas.len() > top {
        breakdown.push(format!("{} more", deltas.len() - top));
    }
    (total / window, total, breakdown.join(", "))
}

/// The value of label `name` in a label set such as `code="200",verb="GET"`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("{name}=\"");
    let mut from = 0;
    while let Some(at) = labels[from..].find(&needle) {
        let start = from + at;
        // A whole label name: at the start, or after a comma.
        if start == 0 || labels[..start].ends_with(',') {
            let value = &labels[start + needle.len()..];
            return value.find('"').map(|end| &value[..end]);
        }
        from = start + needle.len();
    }
    None
}

/// The API server's request counts from its `/metrics` (WATCH excluded), by verb and resource, and
/// the moment they were read.
async fn apiserver_counts() -> Result<(Instant, Counts)> {
    let out = tokio::task::spawn_blocking(|| kubectl(&["get", "--raw", "/metrics"]))
        .await
        .context("the kubectl task panicked")??;
    let at = Instant::now();
    if !out.status.success() {
        bail!(
            "kubectl get --raw /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let not_watch =
        |labels: &str| !label(labels, "verb").is_some_and(|v| v.eq_ignore_ascii_case("WATCH"));
    let counts = grouped(
        &text,
        "apiserver_request_total",
        not_watch,
        verb_and_resource,
    )
    .context("the API server's /metrics has no apiserver_request_total")?;
    Ok((at, counts))
}

/// Waits until the controller has sent nothing but Lease renewals for `quiet` (at most `limit`), and
/// says how long that took; `None` if it serves no request counter.
async fn wait_until_quiet(
    controller: &dyn RunningController,
    quiet: Duration,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let sent = |counts: &Counts| -> f64 {
        counts
            .iter()
            .filter(|(key, _)| !key.contains("leases"))
            .map(|(_, n)| n)
            .sum()
    };
    let mut last = sent(&controller_requests(controller).await?.1);
    let mut quiet_since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent(&controller_requests(controller).await?.1);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            break;
        }
    }
    Some(quiet_since.duration_since(started))
}

/// The controller's API request counter by verb and resource, and the moment it was read; `None`
/// if it serves no such counter (or could not be read).
async fn controller_requests(controller: &dyn RunningController) -> Option<(Instant, Counts)> {
    let base = controller.metrics_base()?;
    let metric = controller.api_requests_metric()?;
    let text = match http_get(&base, "/metrics").await {
        Ok(text) => text,
        Err(err) => {
            eprintln!("  (could not read the controller's /metrics: {err:#})");
            return None;
        }
    };
    let at = Instant::now();
    grouped(
        &text,
        &metric,
        |_| true,
        |labels| controller.request_key(labels),
    )
    .map(|counts| (at, counts))
}

// ---------------------------------------------------------------------------------------------
// The watch.

#[derive(Clone, Debug)]
struct Tracked {
    generation: i64,
    health: Health,
    /// When this generation and health were first seen.
    since: Instant,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Tracked>,
    /// The generation each object must reach (after an update); none: any.
    targets: HashMap<String, i64>,
    /// The watch has listed every object once.
    listed: bool,
}

impl State {
    fn done(&self, name: &str, object: &Tracked) -> bool {
        object.health.healthy_at_generation
            && self
                .targets
                .get(name)
                .is_none_or(|target| object.generation >= *target)
    }

    /// How many are done, and a summary of where all are.
    fn progress(&self) -> (usize, String) {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        let mut done = 0;
        for (name, object) in &self.objects {
            let state = if self.done(name, object) {
                done += 1;
                continue;
            } else if self
                .targets
                .get(name)
                .is_some_and(|target| object.generation < *target)
            {
                "change not seen yet".to_owned()
            } else if !object.health.observed {
                "not observed yet".to_owned()
            } else {
                object.health.phase.clone()
            };
            *states.entry(state).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let summary = if states.is_empty() {
            "all there".to_owned()
        } else {
            format!("the others: {}", states.join(", "))
        };
        (done, summary)
    }
}

/// Every object of the kind in the namespace as a watch sees it, with when each reached its
/// current health.
struct Tracker {
    state: Arc<Mutex<State>>,
    events: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    fn start(api: Api<DynamicObject>, peer: Arc<dyn ControllerUnderTest>) -> Self {
        let state: Arc<Mutex<State>> = Arc::default();
        let events = Arc::new(AtomicU64::new(0));
        let (shared, counter) = (state.clone(), events.clone());
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let event = match event {
                    Ok(event) => event,
                    Err(err) => {
                        eprintln!("  (watch error, retrying: {err})");
                        continue;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let Ok(mut state) = shared.lock() else { return };
                match event {
                    watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                        let name = object.name_any();
                        let generation = object.metadata.generation.unwrap_or(0);
                        let health = peer.health(&object);
                        let since = match state.objects.get(&name) {
                            Some(old) if old.generation == generation && old.health == health => {
                                old.since
                            }
                            _ => now,
                        };
                        state.objects.insert(
                            name,
                            Tracked {
                                generation,
                                health,
                                since,
                            },
                        );
                    }
                    watcher::Event::Delete(object) => {
                        state.objects.remove(&object.name_any());
                    }
                    watcher::Event::Init => {}
                    watcher::Event::InitDone => state.listed = true,
                }
            }
        });
        Self {
            state,
            events,
            task,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut state| f(&mut state))
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Waits until the watch has listed and sees `count` objects.
    async fn wait_seen(&self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self
                .with(|s| if s.listed { s.objects.len() } else { 0 })
                .unwrap_or(0);
            if seen >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the watch saw {seen} of {count} objects after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `count` objects are Healthy at their (target) generation, printing progress every
    /// 10 s. The moment is the watch event that made the last one so, not when this noticed.
    async fn wait_done(
        &self,
        what: &str,
        count: usize,
        started: Instant,
        timeout: Duration,
        pid: u32,
    ) -> Wait {
        let deadline = started + timeout;
        let mut report = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            let (done, summary, last, per_object) = self
                .with(|state| {
                    let (done, summary) = state.progress();
                    let times: Vec<Instant> = state
                        .objects
                        .iter()
                        .filter(|(name, object)| state.done(name, object))
                        .map(|(_, object)| object.since.max(started))
                        .collect();
                    let last = times.iter().max().copied();
                    let per_object: Vec<f64> = times
                        .iter()
                        .map(|at| at.duration_since(started).as_secs_f64())
                        .collect();
                    (done, summary, last, per_object)
                })
                .unwrap_or((0, "the watch's state is poisoned".to_owned(), None, vec![]));
            if done >= count {
                let at = last.unwrap_or(now);
                return Wait::Done {
                    at,
                    took: at.duration_since(started),
                    per_object,
                };
            }
            let exited = !alive(pid);
            if exited || now > deadline {
                let reached = format!(
                    "{done}/{count} Healthy at their generation after {:.1} s ({summary})",
                    now.duration_since(started).as_secs_f64()
                );
                eprintln!(
                    "  {what}: {} — {reached}",
                    if exited {
                        "the controller exited"
                    } else {
                        "timed out"
                    }
                );
                return Wait::Stopped {
                    reason: if exited {
                        "controller exited"
                    } else {
                        "timed out"
                    },
                    reached,
                };
            }
            if now >= report {
                eprintln!(
                    "  {:>6.1} s: {done}/{count} Healthy at their generation ({summary})",
                    now.duration_since(started).as_secs_f64()
                );
                report = now + Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait ended.
enum Wait {
    Done {
        /// The watch event that completed it.
        at: Instant,
        took: Duration,
        /// Seconds from the start to each object's completion.
        per_object: Vec<f64>,
    },
    Stopped {
        reason: &'static str,
        reached: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The figures.

/// Everything measured, filled in as the scenario goes; printed even when it stopped half-way.
#[derive(Default)]
struct Figures {
    rows: Vec<(String, String)>,
    summary: Summary,
}

/// The figures a comparison puts side by side; `None` where the scenario did not get that far, or
/// the controller has no such figure.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The controller's name.
    pub controller: String,
    /// Controller start → all Healthy at their generation.
    pub to_healthy: Option<Duration>,
    /// RSS peak over the run (as far as it went), in KiB.
    pub peak_rss_kib: Option<u64>,
    /// RSS after the idle window, in KiB.
    pub steady_rss_kib: Option<u64>,
    /// CPU seconds while idle, per 30 s.
    pub idle_cpu_per_30s: Option<f64>,
    /// API requests per second while idle, by its own count.
    pub idle_requests_per_second: Option<f64>,
    /// Mass update → all Healthy at the new generation, from the first change.
    pub update_from_first: Option<Duration>,
    /// The same, from the moment the last change was accepted.
    pub update_after_last: Option<Duration>,
    /// Why the scenario stopped early, if it did.
    pub error: Option<String>,
}

impl Summary {
    /// An error if the scenario stopped early.
    pub fn into_result(self) -> Result<()> {
        match self.error {
            Some(err) => bail!("the scenario for {} stopped early: {err}", self.controller),
            None => Ok(()),
        }
    }
}

/// The comparison: one row per figure, both values, and the peer's over the base's.
fn print_comparison(args: &ScaleArgs, base: &Summary, peer: &Summary) {
    type Format = fn(f64) -> String;
    let seconds: Format = |v| format!("{v:.2} s");
    let mebibytes: Format = |v| format!("{:.1} MiB", v / 1024.0);
    let cpu: Format = |v| format!("{v:.3} s");
    let per_second: Format = |v| format!("{v:.3}/s");
    let duration = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let kib = |k: Option<u64>| k.map(|k| k as f64);
    let figures: [(&str, Option<f64>, Option<f64>, Format); 7] = [
        (
            "controller start → all Healthy at their generation",
            duration(base.to_healthy),
            duration(peer.to_healthy),
            seconds,
        ),
        (
            "controller RSS peak",
            kib(base.peak_rss_kib),
            kib(peer.peak_rss_kib),
            mebibytes,
        ),
        (
            "controller RSS steady (after idle)",
            kib(base.steady_rss_kib),
            kib(peer.steady_rss_kib),
            mebibytes,
        ),
        (
            "idle: controller CPU per 30 s",
            base.idle_cpu_per_30s,
            peer.idle_cpu_per_30s,
            cpu,
        ),
        (
            "idle: controller API requests/s (its own count)",
            base.idle_requests_per_second,
            peer.idle_requests_per_second,
            per_second,
        ),
        (
            "mass update → all Healthy, from the first change",
            duration(base.update_from_first),
            duration(peer.update_from_first),
            seconds,
        ),
        (
            "mass update → all Healthy, after the last accepted",
            duration(base.update_after_last),
            duration(peer.update_after_last),
            seconds,
        ),
    ];
    let show = |value: Option<f64>, format: Format| value.map_or_else(|| "n/a".to_owned(), format);
    let ratio_header = format!("{} / {}", peer.controller, base.controller);
    let mut table = vec![[
        String::new(),
        base.controller.clone(),
        peer.controller.clone(),
        ratio_header,
    ]];
    for (what, b, p, format) in figures {
        table.push([
            what.to_owned(),
            show(b, format),
            show(p, format),
            ratio(b, p),
        ]);
    }
    let width = |column: usize| {
        table
            .iter()
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    println!(
        "\nComparison: {} Rollouts ({} replicas each), the same cluster, one controller at a time, \
         both without leader election",
        args.rollouts, args.replicas
    );
    for row in &table {
        let pad = |column: usize| widths[column].saturating_sub(row[column].chars().count());
        println!(
            "  {}{}  {}{}  {}{}  {}",
            row[0],
            " ".repeat(pad(0)),
            " ".repeat(pad(1)),
            row[1],
            " ".repeat(pad(2)),
            row[2],
            row[3]
        );
    }
    for summary in [base, peer] {
        if let Some(err) = &summary.error {
            println!("  ({} stopped early: {err})", summary.controller);
        }
    }
}

/// `peer / base`, or why there is none.
fn ratio(base: Option<f64>, peer: Option<f64>) -> String {
    match (base, peer) {
        (Some(base), Some(peer)) if base > 0.0 => format!("{:.2}×", peer / base),
        (Some(_), Some(0.0)) => "both 0".to_owned(),
        (Some(_), Some(_)) => "n/a (base 0)".to_owned(),
        _ => "n/a".to_owned(),
    }
}

impl Figures {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (what, value) = (what.into(), value.into());
        eprintln!("  {what}: {value}");
        self.rows.push((what, value));
    }

    fn print(&self, title: &str) {
        let width = self.rows.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
        println!("\n{title}");
        for (what, value) in &self.rows {
            println!("  {what:<width$}  {value}");
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn wait_figure(wait: &Wait) -> String {
    match wait {
        Wait::Done {
            took, per_object, ..
        } => {
            let mut sorted = per_object.clone();
            sorted.sort_by(f64::total_cmp);
            format!(
                "{} (each: p50 {:.1} s, p90 {:.1} s, p99 {:.1} s)",
                secs(*took),
                percentile(&sorted, 50.0),
                percentile(&sorted, 90.0),
                percentile(&sorted, 99.0)
            )
        }
        Wait::Stopped { reason, reached } => format!("{reason}: {reached}"),
    }
}

/// The controller's API requests in a phase, in all and per object, with the largest kinds.
fn request_rows(
    figures: &mut Figures,
    before: Option<&(Instant, Counts)>,
    after: Option<&(Instant, Counts)>,
    objects: usize,
) {
    match (before, after) {
        (Some(before), Some(after)) => {
            let (rate, total, breakdown) = rates(before, after, 5, false);
            figures.row(
                "  controller API requests in that time",
                format!(
                    "{total} ({:.1} per object, {rate:.1}/s): {breakdown}",
                    total / objects as f64
                ),
            );
        }
        _ => figures.row("  controller API requests in that time", "n/a"),
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// Runs `sluice-bench scale ARGS` against [`Sluice`], and with `--peer` against the peer too, then
/// compares them.
pub async fn main(args: &[String]) -> Result<()> {
    let args = ScaleArgs::parse(args)?;
    let client = crate::client().await?;
    let Some(peer) = args.peer else {
        let sluice = Arc::new(Sluice { leader_elect: true });
        return run(&client, &args, sluice).await?.into_result();
    };
    refuse_shared_cluster()?;
    // Before Sluice's run, so that a failed build costs no run.
    let other: Arc<dyn ControllerUnderTest> = match peer {
        Peer::ArgoRollouts => Arc::new(ArgoRollouts::locate().await?),
    };
    let sluice = run(
        &client,
        &args,
        Arc::new(Sluice {
            leader_elect: false,
        }),
    )
    .await?;
    let other = run(&client, &args, other).await?;
    print_comparison(&args, &sluice, &other);
    sluice.into_result().and(other.into_result())
}

/// Refuses the development and test clusters (`target/sluice-cluster`, `target/sluice-cluster-test`)
/// for a peer: its controller and the CRD versions it installs must not change the cluster the
/// end-to-end tests and the demo run in.
fn refuse_shared_cluster() -> Result<()> {
    let kubeconfig = kubeconfig_path();
    let dir = kubeconfig.parent().and_then(|dir| dir.canonicalize().ok());
    for shared in ["sluice-cluster", "sluice-cluster-test"] {
        let shared = repo_root().join("target").join(shared);
        if dir.is_some() && dir == shared.canonicalize().ok() {
            bail!(
                "{} is the kubeconfig of {}: a peer must not be installed there; use `cargo xtask bench scale --peer ...`, which starts a \
                 cluster of its own",
                kubeconfig.display(),
                shared.display()
            );
        }
    }
    Ok(())
}

/// Runs the scenario for `peer` in a namespace of its own, prints the figures (also when it stopped
/// half-way), and deletes the namespace. Fails only if it could not start or clean up; where the
/// scenario stopped early is in the summary.
pub async fn run(
    client: &Client,
    args: &ScaleArgs,
    peer: Arc<dyn ControllerUnderTest>,
) -> Result<Summary> {
    peer.install(client).await?;
    let ns = TestNamespace::create(client, "bench-scale").await?;
    eprintln!(
        "scale: {} {} objects ({}) with {} replicas each in namespace {}, controller {}",
        args.rollouts,
        peer.resource().kind,
        peer.resource().api_version,
        args.replicas,
        ns.name,
        peer.name()
    );
    let mut figures = Figures::default();
    let mut controller: Option<Box<dyn RunningController>> = None;
    let result = scenario(client, args, &peer, &ns.name, &mut figures, &mut controller).await;
    let log = controller.as_ref().and_then(|c| c.log());
    // Stop the controller before the namespace goes, so it does not chase the deletions.
    drop(controller);
    let setup = peer.setup();
    figures.print(&format!(
        "Scale: {} {} ({} replicas each), controller {}{}, one namespace{}",
        args.rollouts,
        peer.resource().plural,
        args.replicas,
        peer.name(),
        if setup.is_empty() {
            String::new()
        } else {
            format!(" ({setup})")
        },
        log.map(|l| format!("; its log: {}", l.display()))
            .unwrap_or_default()
    ));
    figures.summary.controller = peer.name().to_owned();
    if let Err(err) = &result {
        println!("  stopped early: {err:#}");
        figures.summary.error = Some(format!("{err:#}"));
    }
    eprintln!("deleting namespace {}", ns.name);
    let deleted = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::background())
        .await?;
    loop {
        if namespaces.get_opt(&ns.name).await?.is_none() {
            eprintln!(
                "namespace {} gone after {}",
                ns.name,
                secs(deleted.elapsed())
            );
            break;
        }
        if deleted.elapsed() > args.timeout.max(Duration::from_secs(120)) {
            eprintln!(
                "namespace {} still terminating after {}; leaving it",
                ns.name,
                secs(deleted.elapsed())
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(figures.summary)
}

async fn scenario(
    client: &Client,
    args: &ScaleArgs,
    peer: &Arc<dyn ControllerUnderTest>,
    namespace: &str,
    figures: &mut Figures,
    controller_slot: &mut Option<Box<dyn RunningController>>,
) -> Result<()> {
    let n = args.rollouts;
    let resource = peer.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let ticks = clock_ticks();
    let tracker = Tracker::start(api.clone(), peer.clone());
    let name = |i: usize| format!("scale-{i:05}");

    // 1. Create them all before the controller starts.
    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let manifest = peer.manifest(&name(i), "registry.example/scale:1", args.replicas);
            async move {
                let object: DynamicObject = serde_json::from_value(manifest)?;
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating {}", object.name_any()))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let creating = created.elapsed();
    figures.row(
        format!("create {n} ({} in flight)", args.concurrency),
        format!(
            "{} ({:.0} per second)",
            secs(creating),
            n as f64 / creating.as_secs_f64()
        ),
    );
    tracker.wait_seen(n, args.timeout).await?;

    // 2. Start the controller; all Healthy at their generation.
    let started = Instant::now();
    let controller = &**controller_slot.insert(peer.start(namespace)?);
    let pid = controller.pid();
    let rss = RssSampler::start(pid);
    let cpu_at_start = cpu_seconds(pid, ticks).unwrap_or(0.0);
    let initial = tracker
        .wait_done("first sync", n, started, args.timeout, pid)
        .await;
    figures.row(
        "controller start → all Healthy at their generation",
        wait_figure(&initial),
    );
    if let Wait::Done { took, .. } = &initial {
        figures.summary.to_healthy = Some(*took);
    }
    rss.sample_now(pid);
    let cpu_at_healthy = cpu_seconds(pid, ticks);
    figures.row(
        "  controller CPU in that time",
        cpu_at_healthy.map_or_else(
            || "n/a".to_owned(),
            |cpu| format!("{:.2} s", cpu - cpu_at_start),
        ),
    );
    figures.summary.peak_rss_kib = rss.peak(started, Instant::now() + Duration::from_millis(1));
    figures.row(
        "  controller RSS peak in that time",
        mib(figures.summary.peak_rss_kib),
    );
    let requests_at_healthy = controller_requests(controller).await;
    request_rows(
        figures,
        Some(&(started, Counts::new())),
        requests_at_healthy.as_ref(),
        n,
    );
    if !alive(pid) {
        bail!("the controller exited");
    }

    // 3 and 4. Idle, once the work of the first sync (its Events above all) is sent.
    let drained = wait_until_quiet(controller, Duration::from_secs(3), args.timeout).await;
    figures.row(
        "  then sending its backlog (Events) until 3 s without a request",
        drained.map_or_else(|| "n/a".to_owned(), secs),
    );
    let idle_from = Instant::now();
    let events_before = tracker.events();
    let cpu_before = cpu_seconds(pid, ticks);
    let requests_before = controller_requests(controller).await;
    let apiserver_before = apiserver_counts().await;
    eprintln!("  idle for {}", secs(args.idle));
    tokio::time::sleep(args.idle).await;
    let cpu_after = cpu_seconds(pid, ticks);
    rss.sample_now(pid);
    let requests_after = controller_requests(controller).await;
    let apiserver_after = apiserver_counts().await;
    let idle_for = idle_from.elapsed();
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        figures.summary.idle_cpu_per_30s = Some((after - before) / idle_for.as_secs_f64() * 30.0);
    }
    figures.row(
        format!("idle {}: controller CPU", secs(args.idle)),
        match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => format!(
                "{:.2} s ({:.2}% of one core)",
                after - before,
                (after - before) / idle_for.as_secs_f64() * 100.0
            ),
            _ => "n/a".to_owned(),
        },
    );
    let metric = controller
        .api_requests_metric()
        .unwrap_or_else(|| "-".to_owned());
    match (&requests_before, &requests_after) {
        (Some(before), Some(after)) => {
            let (rate, total, breakdown) = rates(before, after, 6, true);
            figures.summary.idle_requests_per_second = Some(rate);
            figures.row(
                "idle: controller API requests/s",
                format!(
                    "{rate:.2}/s ({total} requests in {}; {metric}, every label set)",
                    secs(after.0.duration_since(before.0))
                ),
            );
            figures.row("    by verb and resource, per second", breakdown);
        }
        _ => figures.row(
            "idle: controller API requests/s",
            format!("n/a (no {metric} on its /metrics)"),
        ),
    }
    match (&apiserver_before, &apiserver_after) {
        (Ok(before), Ok(after)) => {
            let (rate, _, breakdown) = rates(before, after, 8, true);
            figures.row(
                "idle: API server requests/s, cluster-wide",
                format!(
                    "{rate:.2}/s, WATCH excluded (all clients: kube-controller-manager, \
                     kube-scheduler, kwok, the controller, this bench)"
                ),
            );
            figures.row("    by verb and resource, per second", breakdown);
        }
        (Err(err), _) | (_, Err(err)) => figures.row(
            "idle: API server requests/s, cluster-wide",
            format!("n/a ({err:#})"),
        ),
    }
    figures.row(
        format!("idle: watch events on {}", resource.plural),
        (tracker.events() - events_before).to_string(),
    );
    figures.summary.peak_rss_kib = rss.peak(started, Instant::now());
    figures.summary.steady_rss_kib = rss_kib(pid);
    figures.row(
        "controller RSS peak so far / steady (after idle)",
        format!(
            "{} / {}",
            mib(figures.summary.peak_rss_kib),
            mib(figures.summary.steady_rss_kib)
        ),
    );

    // 5. Mass update.
    let first_change = Instant::now();
    let cpu_before_update = cpu_seconds(pid, ticks);
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.example/scale:2"}
    ]}}}});
    let accepted: Vec<(String, i64, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let patch = &patch;
            let name = name(i);
            async move {
                let object = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .with_context(|| format!("updating {name}"))?;
                let generation = object.metadata.generation.unwrap_or(0);
                anyhow::Ok((name, generation, Instant::now()))
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let last_accepted = accepted
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or(first_change);
    tracker.with(|state| {
        state.targets = accepted
            .into_iter()
            .map(|(name, generation, _)| (name, generation))
            .collect();
    });
    figures.row(
        format!(
            "mass update: {n} image changes ({} in flight)",
            args.concurrency
        ),
        format!(
            "last accepted {} after the first was sent",
            secs(last_accepted.duration_since(first_change))
        ),
    );
    let update = tracker
        .wait_done("mass update", n, first_change, args.timeout, pid)
        .await;
    figures.row(
        "mass update → all Healthy at the new generation, from the first change",
        wait_figure(&update),
    );
    if let Wait::Done { at, took, .. } = &update {
        let after_last = at.saturating_duration_since(last_accepted);
        figures.summary.update_from_first = Some(*took);
        figures.summary.update_after_last = Some(after_last);
        figures.row("  after the last change was accepted", secs(after_last));
    }
    rss.sample_now(pid);
    figures.row(
        "  controller CPU in that time",
        match (cpu_before_update, cpu_seconds(pid, ticks)) {
            (Some(before), Some(after)) => format!("{:.2} s", after - before),
            _ => "n/a".to_owned(),
        },
    );
    figures.row(
        "  controller RSS peak in that time",
        mib(rss.peak(first_change, Instant::now() + Duration::from_millis(1))),
    );
    let requests_after_update = controller_requests(controller).await;
    request_rows(
        figures,
        requests_after.as_ref(),
        requests_after_update.as_ref(),
        n,
    );
    figures.summary.peak_rss_kib = rss.peak(started, Instant::now() + Duration::from_millis(1));
    figures.row(
        "controller RSS peak over the run",
        format!(
            "{} ({} samples every 500 ms)",
            mib(figures.summary.peak_rss_kib),
            rss.count()
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_by_label() {
        let text = "# HELP apiserver_request_total x\n# TYPE apiserver_request_total counter\n\
            apiserver_request_total{code=\"200\",verb=\"GET\",resource=\"pods\"} 5\n\
            apiserver_request_total{code=\"200\",verb=\"WATCH\",resource=\"pods\"} 7\n\
            apiserver_request_total{code=\"201\",verb=\"POST\",resource=\"rollouts\"} 2.5e1\n\
            apiserver_request_total_other 100\n";
        let not_watch = |l: &str| label(l, "verb") != Some("WATCH");
        assert_eq!(
            sum_series(text, "apiserver_request_total", not_watch),
            Some(30.0)
        );
        assert_eq!(
            sum_series(text, "apiserver_request_total", |l| label(l, "resource")
                == Some("rollouts")),
            Some(25.0)
        );
        assert_eq!(
            sum_series(text, "sluice_api_requests_total", |_| true),
            None
        );
        let declared = "# TYPE sluice_api_requests counter\n# EOF\n";
        assert_eq!(
            sum_series(declared, "sluice_api_requests_total", |_| true),
            Some(0.0)
        );
    }

    #[test]
    fn keys_argo_requests_by_verb_and_resource() {
        assert_eq!(
            argo_request_key(
                "kind=\"replicasets\",name=\"N/A\",namespace=\"ns\",status_code=\"201\",verb=\"Create\""
            ),
            "create replicasets"
        );
        assert_eq!(
            argo_request_key(
                "kind=\"scale-00001\",name=\"status\",namespace=\"ns\",status_code=\"200\",verb=\"Patch\""
            ),
            "patch */status"
        );
        assert_eq!(
            argo_request_key(
                "kind=\"\",name=\"\",namespace=\"\",status_code=\"201\",verb=\"Create\""
            ),
            "create ?"
        );
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(2.0), Some(5.0)), "2.50×");
        assert_eq!(ratio(Some(0.0), Some(0.0)), "both 0");
        assert_eq!(ratio(Some(0.0), Some(1.0)), "n/a (base 0)");
        assert_eq!(ratio(None, Some(1.0)), "n/a");
    }

    #[test]
    fn parses_a_peer() -> Result<()> {
        let args: Vec<String> = ["--rollouts", "10", "--peer", "argo-rollouts"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(ScaleArgs::parse(&args)?.peer, Some(Peer::ArgoRollouts));
        assert!(ScaleArgs::parse(&args[..2])?.peer.is_none());
        Ok(())
    }

    #[test]
    fn label_matches_whole_names() {
        assert_eq!(
            label("subresource=\"status\",resource=\"rollouts\"", "resource"),
            Some("rollouts")
        );
        assert_eq!(label("subresource=\"status\"", "resource"), None);
    }
}
