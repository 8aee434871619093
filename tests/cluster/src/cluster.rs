//! Starts and stops a local control plane: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok with fake nodes, and Prometheus, all on loopback.
//!
//! Each component runs as its own process group, so a cluster brought up by `cargo xtask cluster up`
//! outlives the command. Everything about a running cluster lives in its state directory: pid files,
//! logs, certificates, data and the kubeconfig.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::binaries::{
    Binaries, argo_rollouts_crds, ensure_binaries, gateway_api_crds, istio_crds, kwok_stages,
    spinner,
};
use crate::http;
use crate::pki;
use crate::prometheus;

/// Number of fake nodes, unless `SLUICE_CLUSTER_NODES` says otherwise.
pub const NODE_COUNT: usize = 2;

/// Pods each fake node takes.
pub const PODS_PER_NODE: usize = 110;

/// How to start a cluster. [`up`] reads them from the environment ([`Options::from_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fake nodes (`SLUICE_CLUSTER_NODES`, default [`NODE_COUNT`]), [`PODS_PER_NODE`] pods each.
    pub nodes: usize,
    /// The API client rate of kube-controller-manager and kube-scheduler, in requests per second,
    /// with a burst of twice that (`SLUICE_CLUSTER_API_QPS`; default: the components' own, 20 and
    /// 50), so that a benchmark with many objects measures the operator and not them.
    pub api_qps: Option<u32>,
    /// A node that runs real containers beside the fake ones ([`crate::node`]):
    /// `SLUICE_CLUSTER_REAL_NODE=1`.
    pub real_node: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: NODE_COUNT,
            api_qps: None,
            real_node: false,
        }
    }
}

impl Options {
    /// The defaults, changed by `SLUICE_CLUSTER_NODES` and `SLUICE_CLUSTER_API_QPS` when set.
    pub fn from_env() -> Result<Self> {
        fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
            match std::env::var(name) {
                Ok(value) if !value.trim().is_empty() => value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("{name}={value:?} is not a positive number")),
                _ => Ok(None),
            }
        }
        let defaults = Self::default();
        Ok(Self {
            nodes: var::<usize>("SLUICE_CLUSTER_NODES")?
                .filter(|n| *n > 0)
                .unwrap_or(defaults.nodes),
            api_qps: var::<u32>("SLUICE_CLUSTER_API_QPS")?
                .filter(|q| *q > 0)
                .or(defaults.api_qps),
            real_node: var::<u8>("SLUICE_CLUSTER_REAL_NODE")?
                .map_or(defaults.real_node, |flag| flag != 0),
        })
    }
}

/// A running cluster, as described by its state directory.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub prometheus_url: String,
    /// Prometheus's file-based discovery directory: a `*.json` target file here is scraped.
    pub prometheus_targets: PathBuf,
}

impl Cluster {
    /// Environment variables that point tests and tools at this cluster.
    /// With a real node: its name (`SLUICE_E2E_REAL_NODE`) and its containerd's socket
    /// (`SLUICE_E2E_CONTAINERD`), where tests load images.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "SLUICE_E2E_KUBECONFIG",
                self.kubeconfig.display().to_string(),
            ),
            ("SLUICE_E2E_KUBECTL", self.kubectl.display().to_string()),
            ("SLUICE_E2E_PROMETHEUS_URL", self.prometheus_url.clone()),
            (
                "SLUICE_E2E_PROMETHEUS_TARGETS",
                self.prometheus_targets.display().to_string(),
            ),
        ];
        let socket = crate::node::containerd_socket(&self.state_dir);
        if socket.exists() {
            env.push(("SLUICE_E2E_REAL_NODE", crate::node::NODE_NAME.to_owned()));
            env.push(("SLUICE_E2E_CONTAINERD", socket.display().to_string()));
        }
        env
    }

    /// Reads a cluster's description from its state directory.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let read = |file: &str| -> Result<String> {
            Ok(fs::read_to_string(state_dir.join(file))
                .with_context(|| {
                    format!(
                        "no cluster in {} (run `cargo xtask cluster up`)",
                        state_dir.display()
                    )
                })?
                .trim()
                .to_owned())
        };
        Ok(Self {
            state_dir: state_dir.to_owned(),
            kubeconfig: state_dir.join("kubeconfig"),
            kubectl: PathBuf::from(read("kubectl-path")?),
            prometheus_url: read("prometheus-url")?,
            prometheus_targets: PathBuf::from(read("prometheus-targets")?),
        })
    }

    /// Runs our kubectl against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }
}

/// Loopback ports for every component, chosen free at start-up.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
    kwok: u16,
    prometheus: u16,
    /// The real node's: kubelet healthz and API, kube-proxy healthz and metrics.
    node: [u16; 4],
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Ports {
    fn pick() -> Result<Self> {
        Ok(Self {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            controller_manager: free_port()?,
            scheduler: free_port()?,
            kwok: free_port()?,
            prometheus: free_port()?,
            node: [free_port()?, free_port()?, free_port()?, free_port()?],
        })
    }
}

/// The components in start order; stopped in reverse.
const COMPONENTS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus",
];

/// Lists the components of the cluster in `state_dir` that are running, with their pids.
pub fn running_components(state_dir: &Path) -> Vec<(&'static str, i32)> {
    COMPONENTS
        .iter()
        .chain(crate::node::NODE_COMPONENTS.iter())
        .filter_map(|name| {
            let pid: i32 = fs::read_to_string(state_dir.join("pids").join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            is_alive(pid).then_some((*name, pid))
        })
        .collect()
}

pub(crate) fn is_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie left by a dead parent counts as gone.
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// Brings up a cluster in `state_dir`, or returns the one already running there, with the
/// [`Options`] of the environment (`SLUICE_CLUSTER_NODES`, `SLUICE_CLUSTER_API_QPS`).
pub fn up(state_dir: &Path) -> Result<Cluster> {
    up_with(state_dir, &Options::from_env()?)
}

/// Brings up a cluster in `state_dir` with `options`, or returns the one already running there,
/// given nodes up to `options.nodes` if it has fewer. Its API rates cannot change while it runs: a
/// warning says so when they are below those asked for.
pub fn up_with(state_dir: &Path, options: &Options) -> Result<Cluster> {
    let running = running_components(state_dir);
    let is_running = |name: &str| running.iter().any(|(n, _)| *n == name);
    let has_node = crate::node::NODE_COMPONENTS.iter().all(|n| is_running(n));
    if COMPONENTS.iter().all(|n| is_running(n))
        && (has_node || !options.real_node)
        && let Ok(cluster) = Cluster::load(state_dir)
    {
        eprintln!("A cluster is already running in {}", state_dir.display());
        let nodes = node_count(state_dir);
        if options.nodes > nodes {
            let step = spinner(&format!(
                "registering kwok nodes {nodes}..{}",
                options.nodes
            ));
            add_nodes(&cluster, nodes, options.nodes)?;
            step.finish_and_clear();
            eprintln!(
                "Added {} kwok nodes (now {})",
                options.nodes - nodes,
                options.nodes
            );
        }
        let qps = api_qps(state_dir);
        if let Some(wanted) = options.api_qps
            && qps.is_none_or(|qps| qps < wanted)
        {
            eprintln!(
                "warning: the cluster in {} runs kube-controller-manager and kube-scheduler at {}, not \
                 the {wanted} API requests per second asked for; `cargo xtask cluster down` and start \
                 again to change it",
                state_dir.display(),
                qps.map_or_else(|| "their default rate".to_owned(), |q| q.to_string()),
            );
        }
        return Ok(cluster);
    }
    down(state_dir)?;
    let binaries = ensure_binaries()?;
    let prometheus_bin = prometheus::ensure_installed()?;
    let gateway_crds = gateway_api_crds()?;
    let istio_crds = istio_crds()?;
    let argo_crds = argo_rollouts_crds()?;
    let node_tools = if options.real_node {
        Some(crate::node::ensure_tools()?)
    } else {
        None
    };
    let started = Instant::now();
    fs::create_dir_all(state_dir.join("pids"))?;
    if options.real_node {
        crate::node::claim(state_dir)?;
    }
    fs::create_dir_all(state_dir.join("logs"))?;
    let pki = pki::generate(&state_dir.join("pki"))?;
    let ports = Ports::pick()?;
    let kubeconfig = state_dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &pki, ports.apiserver)?;
    fs::write(
        state_dir.join("kubectl-path"),
        binaries.kubectl.display().to_string(),
    )?;
    let prometheus_url = format!("http://127.0.0.1:{}", ports.prometheus);
    fs::write(state_dir.join("prometheus-url"), &prometheus_url)?;
    let prometheus_targets = prometheus::targets_dir(state_dir);
    fs::write(
        state_dir.join("prometheus-targets"),
        prometheus_targets.display().to_string(),
    )?;
    let cluster = Cluster {
        state_dir: state_dir.to_owned(),
        kubeconfig: kubeconfig.clone(),
        kubectl: binaries.kubectl.clone(),
        prometheus_url,
        prometheus_targets,
    };

    let step = spinner("starting etcd");
    start_etcd(state_dir, &binaries, &ports)?;
    wait_for(state_dir, "etcd", Duration::from_secs(30), || {
        Ok(http::get_port(ports.etcd_client, "/health")?.contains("\"health\":\"true\""))
    })?;

    step.set_message("starting kube-apiserver");
    start_apiserver(state_dir, &binaries, &pki, &ports, options.real_node)?;
    wait_for(state_dir, "kube-apiserver", Duration::from_secs(90), || {
        let out = cluster
            .kubectl()
            .args(["get", "--raw", "/readyz"])
            .stderr(Stdio::null())
            .output()?;
        Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok")
    })?;

    step.set_message("starting kube-controller-manager, kube-scheduler and kwok");
    if let Some(qps) = options.api_qps {
        fs::write(state_dir.join("api-qps"), qps.to_string())?;
    }
    start_controller_manager(state_dir, &binaries, &pki, &kubeconfig, &ports, options)?;
    start_scheduler(state_dir, &binaries, &kubeconfig, &ports, options)?;
    start_kwok(state_dir, &binaries, &kubeconfig, &ports)?;

    step.set_message(format!("registering {} kwok nodes", options.nodes));
    add_nodes(&cluster, 0, options.nodes)?;

    if let Some(tools) = &node_tools {
        step.set_message("starting the real node (containerd, kubelet, kube-proxy)");
        crate::node::start(state_dir, tools, &kubeconfig, &pki.ca_cert, ports.node)?;
        wait_for(state_dir, "kubelet", Duration::from_secs(120), || {
            let out = cluster
                .kubectl()
                .args([
                    "get",
                    "node",
                    crate::node::NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ])
                .stderr(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "True")
        })?;
        // It reads the node's address from the registered node.
        step.set_message("starting kube-router's network-policy controller");
        crate::netpol::start(state_dir, &tools.kube_router, &kubeconfig)?;
    }

    step.set_message("waiting for the default ServiceAccount (kube-controller-manager)");
    wait_for(
        state_dir,
        "kube-controller-manager",
        Duration::from_secs(60),
        || {
            Ok(cluster
                .kubectl()
                .args(["get", "serviceaccount", "default", "-n", "default"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success())
        },
    )?;

    for (what, crds) in [("Gateway API", &gateway_crds), ("Istio", &istio_crds)] {
        step.set_message(format!("installing the {what} CRDs"));
        let out = cluster
            .kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(crds)
            .output()?;
        if !out.status.success() {
            bail!(
                "installing {what} CRDs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Argo Rollouts' CRDs, beside Sluice's: its directory also holds a kustomization.yaml, which
    // `kubectl apply -f <dir>` would take for a manifest, so the CRD files one by one.
    step.set_message("installing Argo Rollouts' CRDs");
    let mut argo_files: Vec<PathBuf> = fs::read_dir(&argo_crds)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().ends_with("-crd.yaml"))
        .collect();
    argo_files.sort();
    let mut apply = cluster.kubectl();
    apply.args(["apply", "--server-side"]);
    for file in &argo_files {
        apply.arg("-f").arg(file);
    }
    let out = apply.output()?;
    if !out.status.success() {
        bail!(
            "installing Argo Rollouts' CRDs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step.set_message("starting Prometheus");
    // The real node's pods reach it at the node's address, through the `monitoring/prometheus`
    // Service (one listen address: every interface, loopback included).
    let prometheus_host = if node_tools.is_some() {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    prometheus::start(
        state_dir,
        &prometheus_bin,
        prometheus_host,
        ports.prometheus,
    )?;
    if node_tools.is_some() {
        apply_stdin(
            &cluster,
            &crate::node::service_endpoints(ports.apiserver, ports.prometheus),
        )?;
    }
    wait_for(state_dir, "prometheus", Duration::from_secs(60), || {
        Ok(http::get_port(ports.prometheus, "/-/ready").is_ok_and(|body| body.contains("Ready")))
    })?;
    step.finish_and_clear();
    eprintln!(
        "Cluster up in {:.1?}: {}",
        started.elapsed(),
        state_dir.display()
    );
    Ok(cluster)
}

/// Starts a process that runs beside the cluster (the demo's operator, say) in its own process
/// group, logging to `logs/<name>.log`; `down` stops it before the cluster. Replaces a running one
/// of the same name. Returns the log's path.
pub fn spawn_addon(state_dir: &Path, name: &str, mut command: Command) -> Result<PathBuf> {
    let pids = state_dir.join("pids").join("addons");
    fs::create_dir_all(&pids)?;
    stop_addons(state_dir, Some(name));
    let log_path = state_dir.join("logs").join(format!("{name}.log"));
    let log = File::create(&log_path)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    fs::write(pids.join(format!("{name}.pid")), child.id().to_string())?;
    Ok(log_path)
}

/// Stops the add-ons started with [`spawn_addon`] (only the one called `only`, if given).
fn stop_addons(state_dir: &Path, only: Option<&str>) {
    let Ok(entries) = fs::read_dir(state_dir.join("pids").join("addons")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let pid = fs::read_to_string(&path)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|pid| is_alive(*pid)) {
            let group = Pid::from_raw(pid);
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_alive(pid) {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        let _ = fs::remove_file(&path);
    }
}

/// Stops every component of the cluster in `state_dir` and removes its state.
pub fn down(state_dir: &Path) -> Result<()> {
    stop_addons(state_dir, None);
    // The node's containers first, while containerd still runs (its shims outlive it).
    if state_dir.join("node").exists() {
        crate::node::stop_containers();
    }
    for (name, pid) in running_components(state_dir).into_iter().rev() {
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_alive(pid) {
            eprintln!("{name} did not stop on SIGTERM; killing it");
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    if state_dir.join("node").exists() {
        crate::node::clean_up(state_dir);
        // kube-router leaves its rules behind; they would go on enforcing its last policies.
        if let Err(error) = crate::netpol::clean_up() {
            eprintln!("{error:#}");
        }
        crate::node::release(state_dir);
    }
    if state_dir.exists() {
        fs::remove_dir_all(state_dir)
            .with_context(|| format!("removing {}", state_dir.display()))?;
    }
    Ok(())
}

/// Starts `program` in its own process group, logging to `logs/<name>.log`, and records its pid.
pub(crate) fn spawn_component(
    state_dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<()> {
    let log = File::create(state_dir.join("logs").join(format!("{name}.log")))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    fs::write(
        state_dir.join("pids").join(format!("{name}.pid")),
        child.id().to_string(),
    )?;
    Ok(())
}

/// Polls `ready` until it answers true, failing early (with the log's tail) if the component died.
pub(crate) fn wait_for(
    state_dir: &Path,
    name: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready().unwrap_or(false) {
            return Ok(());
        }
        let alive = running_components(state_dir)
            .iter()
            .any(|(n, _)| *n == name);
        if !alive || Instant::now() > deadline {
            let log = fs::read_to_string(state_dir.join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{name} {} within {timeout:?}; last lines of its log:\n{}",
                if alive { "was not ready" } else { "exited" },
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn arg(flag: &str, value: impl std::fmt::Display) -> String {
    format!("--{flag}={value}")
}

fn start_etcd(state_dir: &Path, bins: &Binaries, ports: &Ports) -> Result<()> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    spawn_component(
        state_dir,
        "etcd",
        &bins.etcd,
        &[
            arg("name", "sluice"),
            arg("data-dir", state_dir.join("etcd").display()),
            arg("listen-client-urls", &client),
            arg("advertise-client-urls", &client),
            arg("listen-peer-urls", &peer),
            arg("initial-advertise-peer-urls", &peer),
            arg("initial-cluster", format!("sluice={peer}")),
            // A throwaway test cluster: durability buys nothing, fsync costs seconds.
            "--unsafe-no-fsync".to_owned(),
            arg("quota-backend-bytes", 4u64 << 30),
        ],
    )
}

fn start_apiserver(
    state_dir: &Path,
    bins: &Binaries,
    pki: &pki::Pki,
    ports: &Ports,
    real_node: bool,
) -> Result<()> {
    // With a real node its pods reach the API server at the node's address (the `kubernetes`
    // Service's endpoint), so it listens there too.
    let (bind, advertise) = if real_node {
        ("0.0.0.0", crate::node::NODE_IP)
    } else {
        ("127.0.0.1", "127.0.0.1")
    };
    spawn_component(
        state_dir,
        "kube-apiserver",
        &bins.kube_apiserver,
        &[
            arg(
                "etcd-servers",
                format!("http://127.0.0.1:{}", ports.etcd_client),
            ),
            arg("bind-address", bind),
            arg("advertise-address", advertise),
            // Loopback cannot back the `kubernetes` Service; nothing in a kwok cluster dials it.
            // With a real node the testbed writes its EndpointSlice (the node's address).
            arg("endpoint-reconciler-type", "none"),
            // Logs and exec of the real node's pods: the kubelet checks this client.
            arg("kubelet-client-certificate", pki.admin_cert.display()),
            arg("kubelet-client-key", pki.admin_key.display()),
            arg("kubelet-preferred-address-types", "InternalIP"),
            arg("secure-port", ports.apiserver),
            arg("tls-cert-file", pki.server_cert.display()),
            arg("tls-private-key-file", pki.server_key.display()),
            arg("client-ca-file", pki.ca_cert.display()),
            arg(
                "service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ),
            arg(
                "service-account-key-file",
                pki.service_account_pub.display(),
            ),
            arg(
                "service-account-signing-key-file",
                pki.service_account_key.display(),
            ),
            arg("service-cluster-ip-range", "10.96.0.0/16"),
            arg("authorization-mode", "RBAC"),
            // As hardened clusters run it: owning an object with blockOwnerDeletion needs update
            // on the owner's finalizers, which the chart's RBAC must grant.
            arg(
                "enable-admission-plugins",
                "OwnerReferencesPermissionEnforcement",
            ),
            arg("allow-privileged", "true"),
        ],
    )
}

/// `--kube-api-qps` and `--kube-api-burst` for `options.api_qps`, if set.
fn api_rate_args(options: &Options) -> Vec<String> {
    options.api_qps.map_or_else(Vec::new, |qps| {
        vec![
            arg("kube-api-qps", qps),
            arg("kube-api-burst", u64::from(qps) * 2),
        ]
    })
}

fn start_controller_manager(
    state_dir: &Path,
    bins: &Binaries,
    pki: &pki::Pki,
    kubeconfig: &Path,
    ports: &Ports,
    options: &Options,
) -> Result<()> {
    spawn_component(
        state_dir,
        "kube-controller-manager",
        &bins.kube_controller_manager,
        &[
            arg("kubeconfig", kubeconfig.display()),
            arg("authentication-kubeconfig", kubeconfig.display()),
            arg("authorization-kubeconfig", kubeconfig.display()),
            arg("bind-address", "127.0.0.1"),
            arg("secure-port", ports.controller_manager),
            arg("leader-elect", "false"),
            arg(
                "service-account-private-key-file",
                pki.service_account_key.display(),
            ),
            arg("root-ca-file", pki.ca_cert.display()),
            arg("cluster-signing-cert-file", pki.ca_cert.display()),
            arg("cluster-signing-key-file", pki.ca_key.display()),
            arg("use-service-account-credentials", "true"),
            // Pods of a bad version are deleted and recreated quickly in tests.
            arg("concurrent-replicaset-syncs", 10),
        ]
        .into_iter()
        .chain(api_rate_args(options))
        .collect::<Vec<_>>(),
    )
}

fn start_scheduler(
    state_dir: &Path,
    bins: &Binaries,
    kubeconfig: &Path,
    ports: &Ports,
    options: &Options,
) -> Result<()> {
    spawn_component(
        state_dir,
        "kube-scheduler",
        &bins.kube_scheduler,
        &[
            arg("kubeconfig", kubeconfig.display()),
            arg("authentication-kubeconfig", kubeconfig.display()),
            arg("authorization-kubeconfig", kubeconfig.display()),
            arg("bind-address", "127.0.0.1"),
            arg("secure-port", ports.scheduler),
            arg("leader-elect", "false"),
        ]
        .into_iter()
        // Deprecated flags, but honoured without a --config file.
        .chain(api_rate_args(options))
        .collect::<Vec<_>>(),
    )
}

/// Annotation that marks the nodes kwok manages.
const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

fn start_kwok(state_dir: &Path, bins: &Binaries, kubeconfig: &Path, ports: &Ports) -> Result<()> {
    let config = state_dir.join("kwok.yaml");
    fs::write(&config, kwok_stages()?)?;
    spawn_component(
        state_dir,
        "kwok",
        &bins.kwok,
        &[
            arg("kubeconfig", kubeconfig.display()),
            arg("config", config.display()),
            arg("manage-all-nodes", "false"),
            arg(
                "manage-nodes-with-annotation-selector",
                format!("{KWOK_NODE_ANNOTATION}=fake"),
            ),
            arg("cidr", "10.244.0.0/16"),
            arg("node-ip", "127.0.0.1"),
            arg("node-lease-duration-seconds", 40),
            arg("server-address", format!("127.0.0.1:{}", ports.kwok)),
        ],
    )
}

/// The number of kwok nodes the cluster in `state_dir` was given (clusters started before it was
/// recorded have [`NODE_COUNT`]).
pub fn node_count(state_dir: &Path) -> usize {
    fs::read_to_string(state_dir.join("nodes"))
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(NODE_COUNT)
}

/// The API rate kube-controller-manager and kube-scheduler of the cluster in `state_dir` were
/// started with, if not their defaults.
pub fn api_qps(state_dir: &Path) -> Option<u32> {
    fs::read_to_string(state_dir.join("api-qps"))
        .ok()
        .and_then(|n| n.trim().parse().ok())
}

/// Registers kwok nodes `kwok-node-{from}` to `kwok-node-{to - 1}` (Node objects that kwok manages
/// by annotation) and waits until `to` nodes are Ready.
fn add_nodes(cluster: &Cluster, from: usize, to: usize) -> Result<()> {
    apply_stdin(cluster, &nodes_manifest(from..to))?;
    wait_for(&cluster.state_dir, "kwok", Duration::from_secs(60), || {
        let out = cluster
            .kubectl()
            .args(["get", "nodes", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{\"\\n\"}{end}"])
            .stderr(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l == "True")
            .count()
            >= to)
    })?;
    fs::write(cluster.state_dir.join("nodes"), to.to_string())?;
    Ok(())
}

fn nodes_manifest(range: std::ops::Range<usize>) -> String {
    let mut yaml = String::new();
    for i in range {
        let _ = write!(
            yaml,
            r#"---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-{i}
  annotations:
    {KWOK_NODE_ANNOTATION}: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-{i}
    kubernetes.io/os: linux
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable: {{cpu: "32", memory: 256Gi, pods: "{PODS_PER_NODE}"}}
  capacity: {{cpu: "32", memory: 256Gi, pods: "{PODS_PER_NODE}"}}
  nodeInfo:
    architecture: amd64
    kubeletVersion: fake
    operatingSystem: linux
"#
        );
    }
    yaml
}

fn apply_stdin(cluster: &Cluster, manifest: &str) -> Result<()> {
    let mut child = cluster
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write_kubeconfig(path: &Path, pki: &pki::Pki, port: u16) -> Result<()> {
    let kubeconfig = format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: sluice-admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: sluice
  context:
    cluster: sluice
    user: sluice-admin
    namespace: default
current-context: sluice
"#,
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    fs::write(path, kubeconfig)?;
    Ok(())
}

/// A one-paragraph description of the cluster in `state_dir`.
pub fn status(state_dir: &Path) -> Result<String> {
    let running = running_components(state_dir);
    let mut out = String::new();
    if running.is_empty() {
        let _ = writeln!(out, "No cluster is running in {}", state_dir.display());
        return Ok(out);
    }
    let cluster = Cluster::load(state_dir)?;
    // The real node's components when it has one.
    let has_node = state_dir.join("node").exists();
    let node = crate::node::NODE_COMPONENTS.iter().filter(|_| has_node);
    for name in COMPONENTS.iter().chain(node) {
        let state = match running.iter().find(|(n, _)| n == name) {
            Some((_, pid)) => format!("running (pid {pid})"),
            None => "NOT RUNNING".to_owned(),
        };
        let _ = writeln!(out, "{name:<24} {state}");
    }
    let _ = writeln!(
        out,
        "{} kwok nodes; kube-controller-manager and kube-scheduler at {}",
        node_count(state_dir),
        api_qps(state_dir).map_or_else(
            || "their default API rates".to_owned(),
            |qps| format!("{qps} API requests/s")
        ),
    );
    let _ = writeln!(out, "\nexport KUBECONFIG={}", cluster.kubeconfig.display());
    for (key, value) in cluster.env() {
        let _ = writeln!(out, "export {key}={value}");
    }
    let _ = writeln!(out, "alias kubectl={}", cluster.kubectl.display());
    Ok(out)
}
