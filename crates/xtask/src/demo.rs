//! `cargo xtask demo`: a local control plane with Sluice's API and operator, narrated step by step: a
//! canary walking its steps with Gateway API weights, a promotion by hand, an abort that puts all
//! traffic back on stable, a manifest refused at apply time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_testbed::Cluster;

use crate::{cargo, dev_cluster_dir, run as run_step};

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

const NAMESPACE: &str = "sluice-demo";

fn heading(text: &str) {
    println!("\n{BOLD}▶ {text}{RESET}");
}

/// Runs kubectl, echoing the command line, and returns its output.
fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
    println!("{DIM}$ kubectl {}{RESET}", args.join(" "));
    // kubectl hands no flags of its own to plugins: they find the cluster through KUBECONFIG.
    let mut cmd = if args.first() == Some(&"sluice") {
        let mut cmd = with_plugin(Command::new(&cluster.kubectl));
        cmd.env("KUBECONFIG", &cluster.kubeconfig);
        cmd
    } else {
        cluster.kubectl()
    };
    let mut child = cmd
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

fn show(cluster: &Cluster, args: &[&str], max_lines: usize) -> Result<()> {
    let out = kubectl(cluster, args, None)?;
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    for line in text.lines().take(max_lines) {
        println!("  {line}");
    }
    if text.lines().count() > max_lines {
        println!("  {DIM}…{RESET}");
    }
    if !out.status.success() {
        bail!("kubectl {} failed", args.join(" "));
    }
    Ok(())
}

/// A Rollout with two mistakes a person might make; the API server refuses it.
const BAD_ROLLOUT: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata:
  name: typo
spec:
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec: {containers: [{name: app, image: "registry.example/app:1.0.0"}]}
  strategy:
    canary:
      steps:
      - setWeight: 150
      - pause: {duration: 5 minutes}
"#;

/// A canary with a Gateway API route, short pauses and a pause for a person.
const DEMO_ROLLOUT: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web-stable}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-canary}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: public-gateway}]
  rules:
  - backendRefs:
    - {name: web-stable, port: 80, weight: 100}
    - {name: web-canary, port: 80, weight: 0}
---
apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "registry.example/web:1.0.0"}]}
  strategy:
    canary:
      canaryService: web-canary
      stableService: web-stable
      trafficRouting: {gatewayAPI: {httpRoute: web}}
      scaleDownDelaySeconds: 5
      abortScaleDownDelaySeconds: 5
      steps:
      - setWeight: 20
      - pause: {duration: 4s}
      - setWeight: 50
      - pause: {}
"#;

/// A canary judged by Prometheus: the traffic simulator stands in for the service, and each step's
/// analysis reads its error ratio. `PROMETHEUS` is replaced by the cluster's address.
const DEMO_ANALYSIS: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: shop-error-rate}
spec:
  args: [{name: canary-hash}]
  metrics:
  - name: error-rate
    interval: 2s
    count: 3
    initialDelay: 3s
    inconclusiveLimit: 3
    successCondition: result[0] < 0.02
    failureCondition: result[0] >= 0.02
    provider:
      prometheus:
        address: PROMETHEUS
        query: |
          sum(rate(sim_http_requests_total{namespace="sluice-demo",pod_template_hash="{{args.canary-hash}}",code="500"}[10s]))
          / sum(rate(sim_http_requests_total{namespace="sluice-demo",pod_template_hash="{{args.canary-hash}}"}[10s]))
---
apiVersion: v1
kind: Service
metadata: {name: shop-stable}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop-canary}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: public-gateway}]
  rules:
  - backendRefs:
    - {name: shop-stable, port: 80, weight: 100}
    - {name: shop-canary, port: 80, weight: 0}
---
apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {name: shop}
spec:
  replicas: 4
  selector: {matchLabels: {app: shop}}
  template:
    metadata:
      labels: {app: shop}
      annotations: {sim.sluice.dev/error-rate: "0.001"}
    spec: {containers: [{name: shop, image: "registry.example/shop:1.0.0"}]}
  strategy:
    canary:
      canaryService: shop-canary
      stableService: shop-stable
      trafficRouting: {gatewayAPI: {httpRoute: shop}}
      abortScaleDownDelaySeconds: 5
      steps:
      - setWeight: 30
      - analysis:
          templates: [{templateName: shop-error-rate}]
          args: [{name: canary-hash, valueFrom: {podTemplateHashValue: Latest}}]
"#;

/// A blue-green Rollout that waits for a person before it switches.
const DEMO_BLUE_GREEN: &str = r#"apiVersion: v1
kind: Service
metadata: {name: pay-active}
spec: {selector: {app: pay}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pay-preview}
spec: {selector: {app: pay}, ports: [{port: 80}]}
---
apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {name: pay}
spec:
  replicas: 3
  selector: {matchLabels: {app: pay}}
  template:
    metadata: {labels: {app: pay}}
    spec: {containers: [{name: pay, image: "registry.example/pay:1.0.0"}]}
  strategy:
    blueGreen:
      activeService: pay-active
      previewService: pay-preview
      autoPromotionEnabled: false
      previewReplicaCount: 1
      scaleDownDelaySeconds: 5
"#;

/// A service failing 3% of its requests against a 99% objective, and the ErrorBudgetGate over it.
/// `PROMETHEUS` is replaced by the cluster's address.
const DEMO_GATE: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: ErrorBudgetGate
metadata: {name: cart-slo}
spec:
  selector: {matchLabels: {slo: cart}}
  objective: 99
  window: 10m
  evaluationInterval: 2s
  sli:
    events:
      errorQuery: sum(increase(sim_http_requests_total{namespace="sluice-demo",app="cart",code="500"}[{{window}}]))
      totalQuery: sum(increase(sim_http_requests_total{namespace="sluice-demo",app="cart"}[{{window}}]))
  prometheus: {address: PROMETHEUS}
"#;

const DEMO_GATED_ROLLOUT: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata:
  name: cart
  labels: {slo: cart}
spec:
  replicas: 3
  selector: {matchLabels: {app: cart}}
  template:
    metadata:
      labels: {app: cart}
      annotations: {sim.sluice.dev/error-rate: "0.03"}
    spec: {containers: [{name: cart, image: "registry.example/cart:1.0.0"}]}
  strategy:
    canary:
      steps:
      - setWeight: 50
      - pause: {duration: 2s}
"#;

/// A Rollout whose circuit breaker opens after three aborted releases in a row.
const DEMO_BREAKER: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata:
  name: search
spec:
  replicas: 2
  selector: {matchLabels: {app: search}}
  template:
    metadata: {labels: {app: search}}
    spec: {containers: [{name: search, image: "registry.example/search:1.0.0"}]}
  circuitBreaker: {failures: 3, cooldown: 10m}
  strategy:
    canary:
      steps:
      - setWeight: 50
      - pause: {}
"#;

/// A Rollout whose releases must pass pre-deployment checks: a critical smoke test (here a
/// Prometheus query standing for "the dependency is healthy", which reads 0: failing) and an
/// advisory scan. `PROMETHEUS` is replaced by the cluster's address.
const DEMO_CHECKS: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: ledger-dependency}
spec:
  metrics:
  - name: dependency-up
    count: 1
    successCondition: result[0] >= 1
    provider: {prometheus: {address: PROMETHEUS, query: "vector(0)"}}
---
apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {name: ledger}
spec:
  replicas: 2
  selector: {matchLabels: {app: ledger}}
  template:
    metadata: {labels: {app: ledger}}
    spec: {containers: [{name: ledger, image: "registry.example/ledger:1.0.0"}]}
  preDeploymentChecks:
  - name: dependency-up
    templates: [{templateName: ledger-dependency}]
  strategy:
    canary:
      steps: [{setWeight: 50}, {pause: {}}]
"#;

/// A Rollout with a confidence step weighted so that a passing analysis at 25% of traffic, after a
/// completed release and without declared test coverage, scores 70: a person decides.
/// `PROMETHEUS` is replaced by the cluster's address.
const DEMO_CONFIDENCE: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: billing-smoke}
spec:
  metrics:
  - name: smoke
    count: 1
    successCondition: result[0] >= 1
    provider: {prometheus: {address: PROMETHEUS, query: "vector(1)"}}
---
apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {name: billing}
spec:
  replicas: 4
  selector: {matchLabels: {app: billing}}
  template:
    metadata: {labels: {app: billing}}
    spec: {containers: [{name: billing, image: "registry.example/billing:1.0.0"}]}
  strategy:
    canary:
      steps:
      - setWeight: 25
      - analysis: {templates: [{templateName: billing-smoke}]}
      - confidence:
          weights: {analysis: 40, checks: 0, blastRadius: 20, history: 20, changeSize: 0, testCoverage: 20}
"#;

/// Starts the traffic simulator for the demo namespace and points Prometheus at it.
fn start_simulator(root: &Path, cluster: &Cluster) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(root.join("target").join("debug").join("sluice-traffic-sim"));
    cmd.args([
        "--namespace",
        NAMESPACE,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("KUBECONFIG", &cluster.kubeconfig);
    sluice_testbed::cluster::spawn_addon(&cluster.state_dir, "sluice-traffic-sim", cmd)?;
    std::fs::create_dir_all(&cluster.prometheus_targets)?;
    std::fs::write(
        cluster.prometheus_targets.join(format!("{NAMESPACE}.json")),
        format!(
            r#"[{{"targets":["127.0.0.1:{port}"],"labels":{{"sim_namespace":"{NAMESPACE}"}}}}]"#
        ),
    )?;
    Ok(())
}

/// Sets a Rollout's image and the error rate the simulator gives its pods.
fn release_with_errors(cluster: &Cluster, name: &str, image: &str, error_rate: &str) -> Result<()> {
    let patch = format!(
        r#"{{"spec":{{"template":{{"metadata":{{"annotations":{{"sim.sluice.dev/error-rate":"{error_rate}"}}}},"spec":{{"containers":[{{"name":"{name}","image":"{image}"}}]}}}}}}}}"#
    );
    show(
        cluster,
        &[
            "-n",
            NAMESPACE,
            "patch",
            "rollouts.sluice.dev",
            name,
            "--type=merge",
            &format!("-p={patch}"),
        ],
        3,
    )
}

/// `kubectl` with this build's `kubectl-sluice` first on PATH.
fn with_plugin(mut cmd: Command) -> Command {
    let plugin_dir = crate::workspace_root().join("target").join("debug");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(plugin_dir).chain(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd
}

/// One line of the Rollout's state: phase, step, weights in status and on the route.
fn rollout_line(cluster: &Cluster, name: &str) -> Result<(String, String)> {
    let get = |args: &[&str]| -> Result<String> {
        let out = cluster.kubectl().args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let fields = get(&[
        "get",
        "rollouts.sluice.dev",
        name,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.status.phase}|{.status.stepProgress}|{.status.blueGreen.activeSelector}|{.status.blueGreen.previewSelector}|{.status.canary.weights.canary.weight}|{.status.message}",
    ])?;
    let mut parts = fields.splitn(6, '|');
    let phase = parts.next().unwrap_or_default().to_owned();
    let step = parts.next().unwrap_or_default().to_owned();
    let active = parts.next().unwrap_or_default().to_owned();
    let preview = parts.next().unwrap_or_default().to_owned();
    let canary_weight = parts.next().unwrap_or_default().to_owned();
    let message = parts.next().unwrap_or_default().to_owned();
    let colour = match phase.as_str() {
        "Healthy" => GREEN,
        "Degraded" => RED,
        "Paused" => YELLOW,
        _ => "",
    };
    if !active.is_empty() {
        let line = format!(
            "{colour}{phase:<11}{RESET} active {active:<10} preview {preview:<10}  {DIM}{message}{RESET}"
        );
        return Ok((phase, line));
    }
    let routed = get(&[
        "get",
        "rollouts.sluice.dev",
        name,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.strategy.canary.trafficRouting.gatewayAPI.httpRoute}",
    ])?;
    if routed.is_empty() {
        let line = format!(
            "{colour}{phase:<11}{RESET} step {step:<5} canary weight {canary_weight:>3}%          {DIM}{message}{RESET}"
        );
        return Ok((phase, line));
    }
    let weights = get(&[
        "get",
        "httproute",
        name,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.rules[0].backendRefs[*].weight}",
    ])?;
    let mut w = weights.split_whitespace();
    let (stable, canary) = (w.next().unwrap_or("?"), w.next().unwrap_or("?"));
    let line = format!(
        "{colour}{phase:<11}{RESET} step {step:<5} route stable {stable:>3}% canary {canary:>3}%  {DIM}{message}{RESET}"
    );
    Ok((phase, line))
}

/// Prints the Rollout's state each time it changes, until `done` says so (or a minute passes).
fn follow(cluster: &Cluster, name: &str, done: impl Fn(&str, &str) -> bool) -> Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let (phase, line) = rollout_line(cluster, name)?;
        if line != last {
            println!(
                "  {DIM}{:>5.1}s{RESET}  {line}",
                started.elapsed().as_secs_f64()
            );
            last = line.clone();
        }
        if done(&phase, &line) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            bail!("the Rollout did not get there in 90 s: {line}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn set_image(cluster: &Cluster, name: &str, image: &str) -> Result<()> {
    show(
        cluster,
        &[
            "-n",
            NAMESPACE,
            "patch",
            "rollouts.sluice.dev",
            name,
            "--type=json",
            &format!(
                r#"-p=[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}}]"#
            ),
        ],
        3,
    )
}

fn start_operator(root: &Path, cluster: &Cluster) -> Result<PathBuf> {
    let mut cmd = Command::new(root.join("target").join("debug").join("sluice-controller"));
    cmd.args([
        "--namespace",
        NAMESPACE,
        "--log-format",
        "text",
        "--http-addr",
        "127.0.0.1:0",
        "--identity",
        "demo",
        // The local control plane's Prometheus listens on loopback.
        "--allow-provider-address",
        "127.0.0.1",
    ])
    .env("KUBECONFIG", &cluster.kubeconfig);
    sluice_testbed::cluster::spawn_addon(&cluster.state_dir, "sluice-controller", cmd)
}

/// Starts `kubectl sluice dashboard` for the demo's namespace (actions allowed: it listens on
/// loopback only) and returns its address, read from its first line.
fn start_dashboard(root: &Path, cluster: &Cluster) -> Result<String> {
    let mut cmd = Command::new(root.join("target").join("debug").join("kubectl-sluice"));
    cmd.args([
        "-n",
        NAMESPACE,
        "dashboard",
        "--address",
        "127.0.0.1:0",
        "--allow-actions",
    ])
    .env("KUBECONFIG", &cluster.kubeconfig);
    let log = sluice_testbed::cluster::spawn_addon(&cluster.state_dir, "sluice-dashboard", cmd)?;
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
        {
            return Ok(url.to_owned());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the dashboard did not start: see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens `url` in the desktop's browser when there is a desktop; prints it either way.
fn open_in_browser(url: &str) {
    println!(
        "  {GREEN}{BOLD}Dashboard: {url}{RESET}  {DIM}(every step below shows there live; promote and abort from the page){RESET}"
    );
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if desktop {
        let _ = Command::new("xdg-open")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

pub fn run(root: &Path) -> Result<()> {
    heading(
        "Starting a local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes, Prometheus)",
    );
    let cluster = sluice_testbed::up(&dev_cluster_dir(root))?;
    show(&cluster, &["get", "nodes", "-o", "wide"], 10)?;

    heading("Building the operator and the kubectl plugin");
    run_step(
        "cargo build -p sluice-controller -p kubectl-sluice",
        cargo().args([
            "build",
            "-p",
            "sluice-controller",
            "-p",
            "kubectl-sluice",
            "-p",
            "sluice-traffic-sim",
        ]),
    )?;

    heading("Installing Sluice's API with a plain `kubectl apply -f crds/`");
    show(&cluster, &["apply", "-f", "crds/"], 10)?;
    show(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        10,
    )?;

    heading("`kubectl explain` documents every field");
    show(
        &cluster,
        &[
            "explain",
            "rollouts.spec.strategy.canary.steps",
            "--api-version=sluice.dev/v1alpha1",
        ],
        24,
    )?;

    heading(&format!(
        "Starting the operator for namespace {NAMESPACE} (leader election on, JSON logs off for reading)"
    ));
    // A fresh namespace each run, so the story starts from the beginning.
    show(
        &cluster,
        &[
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
        3,
    )?;
    let ns = kubectl(&cluster, &["create", "namespace", NAMESPACE], None)?;
    if !ns.status.success() && !String::from_utf8_lossy(&ns.stderr).contains("AlreadyExists") {
        bail!(
            "creating namespace: {}",
            String::from_utf8_lossy(&ns.stderr)
        );
    }
    let log = start_operator(root, &cluster)?;
    println!("  {DIM}operator log: {}{RESET}", log.display());
    let dashboard = start_dashboard(root, &cluster)?;
    open_in_browser(&dashboard);

    heading(
        "A canary Rollout with a Gateway API HTTPRoute: its first revision goes straight to stable",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        DEMO_ROLLOUT,
    )?;
    follow(&cluster, "web", |phase, _| phase == "Healthy")?;

    heading(
        "A new image starts a release: 20% of traffic, a 4 s pause, 50%, then a pause for a person",
    );
    set_image(&cluster, "web", "registry.example/web:2.0.0")?;
    follow(&cluster, "web", |phase, line| {
        phase == "Paused" && line.contains("step 3/4")
    })?;
    show(
        &cluster,
        &["sluice", "get", "rollout", "web", "-n", NAMESPACE],
        30,
    )?;

    heading("A person promotes it: the canary takes all traffic and becomes stable");
    show(&cluster, &["sluice", "promote", "web", "-n", NAMESPACE], 3)?;
    follow(&cluster, "web", |phase, _| phase == "Healthy")?;

    heading("Another release is aborted at 50%: all traffic goes back to stable at once");
    set_image(&cluster, "web", "registry.example/web:3.0.0-bad")?;
    follow(&cluster, "web", |phase, line| {
        phase == "Paused" && line.contains("step 3/4")
    })?;
    let aborted_at = Instant::now();
    show(&cluster, &["sluice", "abort", "web", "-n", NAMESPACE], 3)?;
    follow(&cluster, "web", |phase, line| {
        phase == "Degraded" && line.contains("stable 100%")
    })?;
    println!(
        "  {GREEN}traffic back on stable {:.1} s after the abort was requested (polling every 0.25 s){RESET}",
        aborted_at.elapsed().as_secs_f64()
    );
    show(
        &cluster,
        &[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "involvedObject.name=web",
            "--sort-by=.metadata.creationTimestamp",
        ],
        14,
    )?;

    heading(
        "A canary judged by Prometheus: a traffic simulator serves each version's requests, and the analysis step reads the canary's error ratio",
    );
    start_simulator(root, &cluster)?;
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        &DEMO_ANALYSIS.replace("PROMETHEUS", &cluster.prometheus_url),
    )?;
    follow(&cluster, "shop", |phase, _| phase == "Healthy")?;
    println!("  {DIM}a good version: 0.1% errors{RESET}");
    release_with_errors(&cluster, "shop", "registry.example/shop:2.0.0", "0.001")?;
    let started = std::cell::Cell::new(false);
    follow(&cluster, "shop", |phase, _| {
        started.set(started.get() || phase != "Healthy");
        started.get() && phase == "Healthy"
    })?;
    show(
        &cluster,
        &["get", "analysisruns.sluice.dev", "-n", NAMESPACE],
        10,
    )?;
    println!("  {DIM}a bad version: 5% errors{RESET}");
    release_with_errors(&cluster, "shop", "registry.example/shop:3.0.0", "0.05")?;
    follow(&cluster, "shop", |phase, _| phase == "Degraded")?;
    show(
        &cluster,
        &["get", "analysisruns.sluice.dev", "-n", NAMESPACE],
        10,
    )?;

    heading(
        "A blue-green Rollout: the new version comes up behind the preview Service and takes all traffic in one switch",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        DEMO_BLUE_GREEN,
    )?;
    follow(&cluster, "pay", |phase, _| phase == "Healthy")?;
    set_image(&cluster, "pay", "registry.example/pay:2.0.0")?;
    follow(&cluster, "pay", |phase, _| phase == "Paused")?;
    show(
        &cluster,
        &["sluice", "get", "rollout", "pay", "-n", NAMESPACE],
        20,
    )?;
    show(&cluster, &["sluice", "promote", "pay", "-n", NAMESPACE], 3)?;
    follow(&cluster, "pay", |phase, _| phase == "Healthy")?;
    show(
        &cluster,
        &[
            "get",
            "service",
            "pay-active",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.selector}{\"\\n\"}",
        ],
        3,
    )?;

    heading(
        "An ErrorBudgetGate: a service failing 3% of its requests has spent its 1% budget, so its next release waits",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        DEMO_GATED_ROLLOUT,
    )?;
    follow(&cluster, "cart", |phase, _| phase == "Healthy")?;
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        &DEMO_GATE.replace("PROMETHEUS", &cluster.prometheus_url),
    )?;
    wait_for_gate(&cluster, "cart-slo")?;
    show(&cluster, &["get", "errorbudgetgates", "-n", NAMESPACE], 5)?;
    set_image(&cluster, "cart", "registry.example/cart:2.0.0")?;
    follow(&cluster, "cart", |phase, _| phase == "Paused")?;
    show(&cluster, &["get", "sro", "cart", "-n", NAMESPACE], 5)?;
    println!(
        "  {DIM}below 5% of budget only a revision marked critical passes; its pod template says so, and the pass is recorded{RESET}"
    );
    show(
        &cluster,
        &[
            "-n",
            NAMESPACE,
            "patch",
            "rollouts.sluice.dev",
            "cart",
            "--type=merge",
            r#"-p={"spec":{"template":{"metadata":{"annotations":{"sluice.dev/critical":"true"}}}}}"#,
        ],
        3,
    )?;
    let passed = std::cell::Cell::new(false);
    follow(&cluster, "cart", |phase, _| {
        passed.set(passed.get() || phase != "Paused");
        passed.get() && phase == "Healthy"
    })?;
    show(
        &cluster,
        &[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "involvedObject.name=cart",
            "--sort-by=.metadata.creationTimestamp",
        ],
        14,
    )?;

    heading(
        "A circuit breaker: three aborted releases in a row open it, the next release waits, and a person resets it with a reason",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        DEMO_BREAKER,
    )?;
    follow(&cluster, "search", |phase, _| phase == "Healthy")?;
    for version in 2..=4 {
        set_image(
            &cluster,
            "search",
            &format!("registry.example/search:{version}.0.0"),
        )?;
        follow(&cluster, "search", |phase, _| phase == "Paused")?;
        show(&cluster, &["sluice", "abort", "search", "-n", NAMESPACE], 3)?;
        follow(&cluster, "search", |phase, _| phase == "Degraded")?;
    }
    set_image(&cluster, "search", "registry.example/search:5.0.0")?;
    follow(&cluster, "search", |_, line| {
        line.contains("circuit breaker open")
    })?;
    show(
        &cluster,
        &["sluice", "breaker", "status", "search", "-n", NAMESPACE],
        12,
    )?;
    show(
        &cluster,
        &["sluice", "history", "search", "-n", NAMESPACE],
        8,
    )?;
    show(
        &cluster,
        &[
            "sluice",
            "breaker",
            "reset",
            "search",
            "--reason",
            "demo: the fault is fixed",
            "-n",
            NAMESPACE,
        ],
        3,
    )?;
    follow(&cluster, "search", |phase, line| {
        phase == "Paused" && !line.contains("circuit breaker")
    })?;

    heading(
        "Pre-deployment checks: a critical check fails, and the release stops before any pod of the new version",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        &DEMO_CHECKS.replace("PROMETHEUS", &cluster.prometheus_url),
    )?;
    follow(&cluster, "ledger", |phase, _| phase == "Healthy")?;
    set_image(&cluster, "ledger", "registry.example/ledger:2.0.0")?;
    follow(&cluster, "ledger", |phase, _| phase == "Degraded")?;
    show(
        &cluster,
        &["sluice", "get", "rollout", "ledger", "-n", NAMESPACE],
        16,
    )?;

    heading(
        "A confidence score of 70: the release pauses for a person (ConfidenceReview), who promotes it",
    );
    kubectl_ok(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        &DEMO_CONFIDENCE.replace("PROMETHEUS", &cluster.prometheus_url),
    )?;
    follow(&cluster, "billing", |phase, _| phase == "Healthy")?;
    set_image(&cluster, "billing", "registry.example/billing:2.0.0")?;
    follow(&cluster, "billing", |phase, line| {
        phase == "Paused" && line.contains("ConfidenceReview")
    })?;
    show(
        &cluster,
        &["sluice", "get", "rollout", "billing", "-n", NAMESPACE],
        24,
    )?;
    show(
        &cluster,
        &["sluice", "promote", "billing", "-n", NAMESPACE],
        3,
    )?;
    follow(&cluster, "billing", |phase, _| phase == "Healthy")?;

    heading("The samples in config/");
    show(&cluster, &["apply", "-n", NAMESPACE, "-f", "config/"], 20)?;
    show(&cluster, &["get", "sro", "-n", NAMESPACE], 10)?;

    heading("A manifest with mistakes is refused at apply time, naming each field");
    let out = kubectl(
        &cluster,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        Some(BAD_ROLLOUT),
    )?;
    if out.status.success() {
        bail!("the invalid Rollout was accepted");
    }
    for line in String::from_utf8_lossy(&out.stderr)
        .split("; ")
        .flat_map(|s| s.split(", spec"))
    {
        println!("  {RED}{}{RESET}", line.trim());
    }

    println!("\n{GREEN}{BOLD}The cluster and the operator keep running.{RESET} Use them with:");
    for (key, value) in cluster.env() {
        println!("  export {key}={value}");
    }
    println!("  export KUBECONFIG={}", cluster.kubeconfig.display());
    println!("  alias kubectl={}", cluster.kubectl.display());
    println!("  export PATH=$PWD/target/debug:$PATH   # for `kubectl sluice`");
    println!("  kubectl sluice get rollout web -n {NAMESPACE} --watch");
    println!("  {dashboard}   # the dashboard");
    println!("Stop both with `cargo xtask cluster down`.");
    Ok(())
}

/// Waits until gate `name` has been evaluated and holds releases.
fn wait_for_gate(cluster: &Cluster, name: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let out = cluster
            .kubectl()
            .args([
                "get",
                "errorbudgetgate",
                name,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.state}",
            ])
            .output()?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if matches!(state.as_str(), "Frozen" | "CriticalOnly") {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            bail!("gate {name} is still {state:?} after 90 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kubectl_ok(cluster: &Cluster, args: &[&str], stdin: &str) -> Result<()> {
    let out = kubectl(cluster, args, Some(stdin))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
