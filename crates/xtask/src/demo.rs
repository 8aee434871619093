//! `cargo xtask demo`: a local control plane with Sluice's API installed and the samples applied,
//! narrated step by step.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use sluice_testbed::Cluster;

use crate::dev_cluster_dir;

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

fn heading(text: &str) {
    println!("\n{BOLD}▶ {text}{RESET}");
}

/// Runs kubectl, echoing the command line, and returns its output.
fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
    println!("{DIM}$ kubectl {}{RESET}", args.join(" "));
    let mut child = cluster
        .kubectl()
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

pub fn run(root: &Path) -> Result<()> {
    heading(
        "Starting a local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes, Prometheus)",
    );
    let cluster = sluice_testbed::up(&dev_cluster_dir(root))?;
    show(&cluster, &["get", "nodes", "-o", "wide"], 10)?;

    heading("Installing Sluice's API with a plain `kubectl apply -f crds/`");
    show(&cluster, &["apply", "-f", "crds/"], 10)?;
    show(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            "crds/",
        ],
        10,
    )?;

    heading("`kubectl explain` documents every field");
    show(
        &cluster,
        &["explain", "rollout.spec.strategy.canary.steps"],
        40,
    )?;

    heading("Applying the samples in config/");
    let namespace = "sluice-demo";
    let ns = kubectl(&cluster, &["create", "namespace", namespace], None)?;
    if !ns.status.success() && !String::from_utf8_lossy(&ns.stderr).contains("AlreadyExists") {
        bail!(
            "creating namespace: {}",
            String::from_utf8_lossy(&ns.stderr)
        );
    }
    show(&cluster, &["apply", "-n", namespace, "-f", "config/"], 20)?;
    show(&cluster, &["get", "sluice", "-n", namespace], 30)?;
    println!(
        "  {DIM}(no controller runs in this build yet, so the Rollouts have no status){RESET}"
    );

    heading("A manifest with mistakes is refused at apply time, naming each field");
    let out = kubectl(
        &cluster,
        &["apply", "-n", namespace, "-f", "-"],
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

    heading("A HorizontalPodAutoscaler can scale a Rollout (scale subresource)");
    show(
        &cluster,
        &["scale", "-n", namespace, "rollout/checkout", "--replicas=5"],
        5,
    )?;
    show(
        &cluster,
        &[
            "get",
            "rollout",
            "checkout",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.replicas}{\"\\n\"}",
        ],
        5,
    )?;

    println!("\n{GREEN}{BOLD}The cluster keeps running.{RESET} Use it with:");
    for (key, value) in cluster.env() {
        println!("  export {key}={value}");
    }
    println!("  export KUBECONFIG={}", cluster.kubeconfig.display());
    println!("  alias kubectl={}", cluster.kubectl.display());
    println!("Stop it with `cargo xtask cluster down`.");
    Ok(())
}
