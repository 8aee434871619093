//! Harness for Sluice's end-to-end tests.
//!
//! Tests run against the cluster named by `SLUICE_E2E_KUBECONFIG`: the one `cargo xtask test` starts,
//! or any existing cluster. Each test works in a namespace of its own, deleted when the test ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod argo;
pub mod http;
pub mod proxy;
pub mod scale;
pub mod slo_history;

pub use argo::ArgoRolloutsController;
pub use slo_history::{SLO_METRIC, SloHistory, SloPrometheus, Stretch};

/// Label on every namespace the tests create.
pub const TEST_LABEL: &str = "sluice.dev/e2e";

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "sluice-e2e";

/// The kubeconfig of the cluster under test.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("SLUICE_E2E_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "SLUICE_E2E_KUBECONFIG is not set: run the suite with `cargo xtask test`, or point it at a cluster \
             (`cargo xtask cluster up` prints the exports)"
        ),
    }
}

/// A client for the cluster under test.
pub async fn client() -> Result<Client> {
    Ok(Client::try_from(config().await?)?)
}

/// A client for the cluster under test acting as `user` (impersonation, e.g.
/// `system:serviceaccount:NS:NAME`): what that user's RBAC allows, no more.
pub async fn client_as(user: &str) -> Result<Client> {
    let mut config = config().await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(Client::try_from(config)?)
}

async fn config() -> Result<Config> {
    let path = kubeconfig_path();
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// Runs kubectl (`SLUICE_E2E_KUBECTL`, else the one on PATH) against the cluster under test, from
/// the repository root.
pub fn kubectl(args: &[&str]) -> Result<Output> {
    let program = std::env::var_os("SLUICE_E2E_KUBECTL").unwrap_or_else(|| "kubectl".into());
    Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .current_dir(repo_root())
        .output()
        .context("running kubectl")
}

/// Runs kubectl and returns its standard output, failing with its standard error unless it
/// succeeds.
pub fn kubectl_stdout(args: &[&str]) -> Result<String> {
    let out = kubectl(args)?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `kubectl sluice ARGS` through kubectl's plugin discovery, with this build's plugin first on
/// PATH (`SLUICE_E2E_PLUGIN_DIR`, else `target/debug`).
pub fn kubectl_sluice(namespace: &str, args: &[&str]) -> Result<Output> {
    let plugin_dir = std::env::var_os("SLUICE_E2E_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"));
    let path = std::env::join_paths(std::iter::once(plugin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let kubectl = std::env::var_os("SLUICE_E2E_KUBECTL").unwrap_or_else(|| "kubectl".into());
    Ok(Command::new(kubectl)
        .arg("sluice")
        .args(["-n", namespace])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig_path())
        .output()?)
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// GET `path` from `base` (e.g. `http://127.0.0.1:8080`, `/metrics`) through the test bed's blocking
/// client, off the test's runtime.
pub async fn http_get(base: &str, path: &str) -> Result<String> {
    let (base, path) = (base.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || sluice_testbed::http::get(&base, &path))
        .await
        .context("the HTTP task panicked")?
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a PromQL query in a URL).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `N` free loopback ports, all held until every one is chosen so that none repeats.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with the last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(err) => Some(err),
        };
        if tokio::time::Instant::now() > deadline {
            match last {
                Some(err) => bail!("timed out after {timeout:?} waiting for {what}: {err:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the Rollout `name` is released on `image`: its spec on the image, Healthy, stable
/// on the current pod template, its status for the current generation. On a timeout the error
/// carries the Rollout's status.
pub async fn released_on(
    api: &Api<sluice_api::rollout::Rollout>,
    name: &str,
    image: &str,
    timeout: Duration,
) -> Result<()> {
    let released = eventually(&format!("{image} released"), timeout, || async {
        let ro = api.get(name).await?;
        let status = ro.status.clone().unwrap_or_default();
        let on_image = ro
            .spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| s.containers[0].image.as_deref() == Some(image));
        Ok((on_image
            && status.phase == Some(sluice_api::rollout::RolloutPhase::Healthy)
            && status.stable_rs == status.current_pod_hash
            && status.observed_generation == ro.metadata.generation)
            .then_some(()))
    })
    .await;
    if let Err(error) = released {
        let status = api.get(name).await?.status;
        bail!(
            "{error:#}; the Rollout's status: {}",
            serde_json::to_string(&status)?
        );
    }
    Ok(())
}

/// Installs (or updates) Sluice's CRDs by server-side apply and waits until they are served.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in sluice_api::crdgen::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        eventually(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates a namespace named after `prefix` with a random suffix.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{prefix}-"), "labels": {TEST_LABEL: "true"}}
        }))?;
        let created = api.create(&PostParams::default(), &ns).await?;
        let name = created.metadata.name.context("namespace without a name")?;
        Ok(Self { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await. Delete from a short-lived runtime on another thread with a client of its
        // own: the test's client is served by a task on the test's runtime, which this thread blocks.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let api: Api<Namespace> = Api::all(client().await?);
                api.delete(&name, &DeleteParams::background()).await?;
                anyhow::Ok(())
            })?;
            anyhow::Ok(())
        })
        .join();
    }
}

/// Parses every document of a multi-document YAML string.
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Creates (server-side apply) each Service `name` of `services`, selecting the pods labelled
/// `app: <app>` on port 80, given as `(app, name)` pairs.
pub async fn create_services(
    client: &Client,
    namespace: &str,
    services: &[(&str, &str)],
) -> Result<()> {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), namespace);
    for (app, name) in services {
        let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                     "spec": {"selector": {"app": app}, "ports": [{"port": 80}]}});
        api.patch(
            name,
            &kube::api::PatchParams::apply(FIELD_MANAGER),
            &kube::api::Patch::Apply(&svc),
        )
        .await?;
    }
    Ok(())
}

/// A controller process for one test, watching only that test's namespace; killed when dropped.
pub struct ControllerProcess {
    child: std::process::Child,
    pub namespace: String,
    pub log: PathBuf,
    /// Where it serves `/healthz`, `/readyz` and `/metrics`, e.g. `http://127.0.0.1:41234`.
    pub http: String,
}

impl ControllerProcess {
    /// Starts `sluice-controller --namespace NAMESPACE` (`SLUICE_E2E_CONTROLLER`, else the debug build).
    /// Its leader-election identity is fixed per namespace, as a pod's name is across container
    /// restarts, so a restarted controller takes its Lease back at once.
    pub fn start(namespace: &str) -> Result<Self> {
        Self::start_as(namespace, &format!("e2e-{namespace}"))
    }

    /// Starts a controller for `namespace` with its own leader-election identity and a 10 s Lease
    /// (renewed every 6 s, given up after 8 s without a renewal).
    pub fn start_as(namespace: &str, identity: &str) -> Result<Self> {
        Self::start_with(namespace, identity, &kubeconfig_path())
    }

    /// Starts a controller for `namespace` that reaches the cluster through `kubeconfig` (e.g. one
    /// that impersonates a ServiceAccount).
    pub fn start_with(
        namespace: &str,
        identity: &str,
        kubeconfig: &std::path::Path,
    ) -> Result<Self> {
        Self::start_with_env(namespace, identity, kubeconfig, &[])
    }

    /// Starts a controller for `namespace` with failpoints set (`FAILPOINTS`, e.g.
    /// `analysisrun-created=return`): the e2e build has them (`--features failpoints`); one without
    /// refuses to start.
    pub fn start_failing(namespace: &str, failpoints: &str) -> Result<Self> {
        Self::start_with_env(
            namespace,
            &format!("e2e-{namespace}"),
            &kubeconfig_path(),
            &[("FAILPOINTS", failpoints)],
        )
    }

    /// As [`Self::start_with`], with environment variables set (the controller's flags have
    /// `SLUICE_*` twins: `SLUICE_READ_SECRETS=false`).
    pub fn start_with_env(
        namespace: &str,
        identity: &str,
        kubeconfig: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let binary = std::env::var_os("SLUICE_E2E_CONTROLLER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/sluice-controller"));
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("controller-{namespace}-{identity}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&binary)
            .args(["--namespace", namespace, "--log-format", "text"])
            .args(["--identity", identity, "--lease-duration-seconds", "10"])
            // The test cluster's Prometheus (and the tests' own servers) listen on loopback.
            .args(["--allow-provider-address", "127.0.0.1"])
            .env("KUBECONFIG", kubeconfig)
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build -p sluice-controller --features failpoints`)",
                    binary.display()
                )
            })?;
        Ok(Self {
            child,
            namespace: namespace.to_owned(),
            log,
            http: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it answers `/readyz`: its caches listed (what it counts from then on is the
    /// test's own doing).
    pub async fn wait_ready(&self) -> Result<()> {
        eventually("the controller ready", Duration::from_secs(60), || async {
            Ok(http_get(&self.http, "/readyz").await.ok().map(drop))
        })
        .await
    }

    /// Whether the process has exited (on its own).
    pub fn try_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Kills the controller with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A traffic simulator (`sluice-traffic-sim`) for one test's namespace, scraped by the cluster's
/// Prometheus through a file-based discovery target; killed, and its target removed, when dropped.
pub struct TrafficSim {
    child: std::process::Child,
    // Held open: the simulator must never write to a closed stdout.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Where it serves `/metrics`.
    pub addr: std::net::SocketAddr,
    /// The namespace it simulates.
    pub namespace: String,
    /// Its log (stderr).
    pub log: PathBuf,
    target_file: PathBuf,
}

impl TrafficSim {
    /// Starts `sluice-traffic-sim --namespace NAMESPACE` (`SLUICE_E2E_TRAFFIC_SIM`, else the debug
    /// build) and registers it with Prometheus in `SLUICE_E2E_PROMETHEUS_TARGETS`, labelled
    /// `sim_namespace=NAMESPACE`.
    pub fn start(namespace: &str) -> Result<Self> {
        Self::start_with_args(namespace, &[])
    }

    /// As [`TrafficSim::start`], with extra command-line arguments (`--rps 50`, say).
    pub fn start_with_args(namespace: &str, args: &[&str]) -> Result<Self> {
        let targets = std::env::var_os("SLUICE_E2E_PROMETHEUS_TARGETS")
            .map(PathBuf::from)
            .context("SLUICE_E2E_PROMETHEUS_TARGETS is not set")?;
        let binary = std::env::var_os("SLUICE_E2E_TRAFFIC_SIM")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/sluice-traffic-sim"));
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("traffic-sim-{namespace}.log"));
        let mut command = Command::new(&binary);
        command.args(["--namespace", namespace]).args(args);
        let (child, stdout, line) =
            spawn_reading_first_line(command, &log, "cargo build -p sluice-traffic-sim")?;
        let mut sim = Self {
            child,
            _stdout: stdout,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            namespace: namespace.to_owned(),
            log,
            target_file: targets.join(format!("{namespace}.json")),
        };
        // It prints the address once bound, before it talks to the API server.
        sim.addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .with_context(|| {
                format!(
                    "the traffic simulator printed {line:?}, not its address; see {}",
                    sim.log.display()
                )
            })?;
        // Written aside and renamed, so Prometheus never reads half a file.
        let target = serde_json::json!([{
            "targets": [sim.addr.to_string()],
            "labels": {"sim_namespace": namespace},
        }]);
        let partial = targets.join(format!(".{namespace}.json.partial"));
        std::fs::write(&partial, serde_json::to_vec(&target)?)?;
        std::fs::rename(&partial, &sim.target_file)?;
        Ok(sim)
    }
}

impl TrafficSim {
    /// What it has counted for `app` so far (counters never reset while it runs), read from its
    /// `/metrics` directly: no Prometheus scrape interval in between.
    pub async fn requests(&self, app: &str) -> Result<RequestCounts> {
        let text = http_get(&format!("http://{}", self.addr), "/metrics").await?;
        RequestCounts::parse(&text, &self.namespace, app)
    }
}

/// A traffic simulator's request counters for one app (`sim_http_requests_total`), by version and
/// status code. Requests no pod served (a route sent them to a Service that selected no Ready pod)
/// are code 503 under version `none`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestCounts {
    /// Requests by (`pod_template_hash`, `code`).
    pub by_version_and_code: BTreeMap<(String, String), u64>,
}

impl RequestCounts {
    /// Reads the `sim_http_requests_total` series of `namespace`/`app` from the simulator's metrics
    /// text.
    pub fn parse(text: &str, namespace: &str, app: &str) -> Result<Self> {
        let mut counts = Self::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("sim_http_requests_total{") else {
                continue;
            };
            let (labels, value) = rest
                .split_once("} ")
                .with_context(|| format!("unreadable series {line:?}"))?;
            let label = |name: &str| {
                labels.split(',').find_map(|pair| {
                    pair.strip_prefix(name)?
                        .strip_prefix("=\"")?
                        .strip_suffix('"')
                })
            };
            if label("namespace") != Some(namespace) || label("app") != Some(app) {
                continue;
            }
            let (Some(hash), Some(code)) = (label("pod_template_hash"), label("code")) else {
                bail!("series without pod_template_hash or code: {line:?}");
            };
            let value: u64 = value
                .trim()
                .parse()
                .with_context(|| format!("unreadable value in {line:?}"))?;
            *counts
                .by_version_and_code
                .entry((hash.to_owned(), code.to_owned()))
                .or_insert(0) += value;
        }
        Ok(counts)
    }

    /// Every request of the app.
    pub fn total(&self) -> u64 {
        self.by_version_and_code.values().sum()
    }

    /// Requests not answered with a 2xx: errors of a version (500) and requests no pod served (503).
    pub fn failed(&self) -> u64 {
        self.by_version_and_code
            .iter()
            .filter(|((_, code), _)| !code.starts_with('2'))
            .map(|(_, count)| count)
            .sum()
    }

    /// Requests version `hash` answered, whatever the code.
    pub fn served_by(&self, hash: &str) -> u64 {
        self.by_version_and_code
            .iter()
            .filter(|((h, _), _)| h == hash)
            .map(|(_, count)| count)
            .sum()
    }

    /// What was counted since `earlier` (a reading of the same simulator).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            by_version_and_code: self
                .by_version_and_code
                .iter()
                .map(|(key, count)| {
                    let before = earlier.by_version_and_code.get(key).copied().unwrap_or(0);
                    (key.clone(), count.saturating_sub(before))
                })
                .collect(),
        }
    }
}

impl Drop for TrafficSim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.target_file);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` against the test cluster, its stderr to `log`, and reads the first line it
/// prints (where it listens); `build` says how to build it when it is missing.
fn spawn_reading_first_line(
    mut command: Command,
    log: &std::path::Path,
    build: &str,
) -> Result<(
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
)> {
    use std::io::BufRead as _;
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {program} (build it with `{build}`)"))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("no stdout from {program}");
    };
    let mut stdout = std::io::BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    Ok((child, stdout, line))
}

/// `kubectl-sluice dashboard` for one test's namespace, on a free loopback port; killed when
/// dropped.
pub struct Dashboard {
    child: std::process::Child,
    // Held open: the dashboard must never write to a closed stdout.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Where it serves, e.g. `http://127.0.0.1:41234/`.
    pub url: String,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Dashboard {
    /// Starts `kubectl-sluice -n NAMESPACE dashboard --address 127.0.0.1:0 ARGS` (the plugin of
    /// `SLUICE_E2E_PLUGIN_DIR`, else `target/debug`) and reads where it listens from its first line.
    pub fn start(namespace: &str, args: &[&str]) -> Result<Self> {
        let binary = std::env::var_os("SLUICE_E2E_PLUGIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug"))
            .join("kubectl-sluice");
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("dashboard-{namespace}.log"));
        let mut command = Command::new(&binary);
        command
            .args(["-n", namespace, "dashboard", "--address", "127.0.0.1:0"])
            .args(args);
        let (mut child, stdout, line) =
            spawn_reading_first_line(command, &log, "cargo build -p kubectl-sluice")?;
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .map(str::to_owned);
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the dashboard did not say where it listens: {line:?} (log: {})",
                log.display()
            );
        };
        Ok(Self {
            child,
            _stdout: stdout,
            url,
            log,
        })
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_read_one_apps_series_by_version_and_code() -> Result<()> {
        let text = r#"# TYPE sim_http_requests counter
sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="200"} 75
sim_http_requests_total{namespace="ns",app="web",pod_template_hash="aaa",code="500"} 2
sim_http_requests_total{namespace="ns",app="web",pod_template_hash="none",code="503"} 25
sim_http_requests_total{namespace="ns",app="api",pod_template_hash="aaa",code="200"} 1000
sim_http_requests_total{namespace="other",app="web",pod_template_hash="aaa",code="500"} 9
sim_http_mirrored_requests_total{namespace="ns",app="web",pod_template_hash="aaa"} 3
# EOF
"#;
        let counts = RequestCounts::parse(text, "ns", "web")?;
        assert_eq!(
            (counts.total(), counts.failed(), counts.served_by("aaa")),
            (102, 27, 77)
        );
        let mut earlier = counts.clone();
        earlier
            .by_version_and_code
            .insert(("aaa".to_owned(), "200".to_owned()), 70);
        let since = counts.since(&earlier);
        assert_eq!((since.total(), since.failed()), (5, 0));
        Ok(())
    }
}
