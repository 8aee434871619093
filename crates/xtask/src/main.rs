//! Developer tasks for Sluice: `cargo xtask <task>`.
//!
//! - `test`: the whole suite, exactly what CI runs (format, lints, CRD drift, unit tests, and the
//!   end-to-end tests on a real local control plane).
//! - `demo`: a local control plane with Sluice's API installed and the samples applied.
//! - `image`: OCI images of the controller and the plugin, built with buildah (`target/images`).
//! - `plugin-release`: the plugin's release archive and krew manifest (`target/plugin`).
//! - `crdgen`: regenerate `crds/` from the API types (`--check` fails on drift).
//! - `cluster up|down|status|build`: the local control plane on its own.
//! - `bench abort|analysis`: figures for how fast an abort, or a failed analysis, puts traffic back
//!   on stable; `bench scale`: time to all Healthy, memory, CPU and API requests with many Rollouts
//!   (`--peer argo-rollouts`: the same for Argo Rollouts, compared, on a cluster of its own).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sluice_testbed::Cluster;

mod demo;
#[cfg(test)]
mod docs_commands;
mod fuzz;
mod image;
mod plugin;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole test suite as CI does: fmt, clippy, CRD drift, unit tests, end-to-end tests.
    Test {
        /// Leave the test cluster running afterwards (its state stays in target/sluice-cluster-test).
        #[arg(long)]
        keep_cluster: bool,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Bring up a local control plane, install Sluice's CRDs and apply the samples in config/.
    Demo,
    /// Generate crds/*.yaml from the API types.
    Crdgen {
        /// Fail instead of writing when the committed files differ from the generated ones.
        #[arg(long)]
        check: bool,
    },
    /// Run a benchmark on the local control plane (started if needed) and print its figures.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Fuzz every parser a tenant's text reaches (tests/fuzz), each target for a bounded time, and
    /// print the executions of each. `cargo xtask test` runs them for SLUICE_FUZZ_SECONDS (10) each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Build the OCI images of the controller and of the kubectl plugin (its dashboard) with
    /// Debian's buildah into target/images, each with a CycloneDX SBOM beside it.
    Image {
        /// Build them twice and fail unless both builds have the same digests.
        #[arg(long)]
        check_reproducible: bool,
    },
    /// The kubectl plugin's release archive and krew manifest (target/plugin), from the release
    /// build the plugin's image holds.
    PluginRelease {
        /// Validate the manifest with krew's validator and install the archive with krew.
        #[arg(long)]
        check: bool,
    },
    /// Manage the local control plane used by the demo and for development.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// From an abort request to traffic back on stable and stable fully available, with and without
    /// a Gateway API route: median and p99 over `--count` aborts.
    Abort {
        /// How many releases to abort in each mode.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Blue-green: from a promote to the active Service on the new version, and from an abort to
    /// the active Service back on the old one.
    Bluegreen {
        /// How many releases to promote and abort.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// From a failed AnalysisRun being recorded to traffic back on stable and stable fully
    /// available, with and without a Gateway API route.
    Analysis {
        /// How many releases to fail in each mode.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Many Rollouts in one namespace: controller start to all Healthy, its peak and steady RSS, its
    /// CPU and API requests while idle, and a mass image update to all Healthy again. The cluster
    /// gets a kwok node per 100 pods and high API rates for kube-controller-manager and
    /// kube-scheduler, so that they are not what is measured.
    Scale {
        /// How many Rollouts.
        #[arg(long)]
        rollouts: usize,
        /// `spec.replicas` of each (pods run on kwok's fake nodes).
        #[arg(long, default_value_t = 0)]
        replicas: u32,
        /// The bound of each wait, in seconds; when it runs out what was reached is printed.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Run the same scenario against this controller too, after Sluice's, on the same cluster
        /// (one at a time, fresh namespaces), and print a comparison. Its CRDs take Sluice's short
        /// names, so this uses a cluster of its own, in target/sluice-cluster-bench, left running.
        #[arg(long, value_enum)]
        peer: Option<Peer>,
    },
}

/// A controller `bench scale --peer` compares Sluice's with.
#[derive(Clone, Copy, ValueEnum)]
enum Peer {
    /// Argo Rollouts, built from its Go module (the version pinned in tests/cluster).
    ArgoRollouts,
}

/// The API rate (requests per second, burst twice that) `bench scale` gives kube-controller-manager
/// and kube-scheduler, unless `SLUICE_CLUSTER_API_QPS` says otherwise.
const SCALE_API_QPS: u32 = 500;

#[derive(Subcommand)]
enum ClusterAction {
    /// Build (or find in the cache) the Kubernetes, etcd and kwok binaries.
    Build,
    /// Start the cluster (idempotent) and print how to use it.
    Up,
    /// Stop the cluster and delete its state.
    Down {
        /// The benchmark cluster (`bench scale --peer`, target/sluice-cluster-bench) instead.
        #[arg(long)]
        bench: bool,
    },
    /// Show what is running.
    Status {
        /// The benchmark cluster (`bench scale --peer`, target/sluice-cluster-bench) instead.
        #[arg(long)]
        bench: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Test {
            keep_cluster,
            no_lint,
        } => test(&root, keep_cluster, no_lint),
        Task::Demo => demo::run(&root),
        Task::Crdgen { check } => crdgen(&root, check),
        Task::Bench { which } => bench(&root, which),
        Task::Image { check_reproducible } => image::run(&root, check_reproducible),
        Task::PluginRelease { check } => plugin::run(&root, check),
        Task::Fuzz { seconds, target } => {
            fuzz::run(&root, seconds, target.as_deref(), fuzz::Build::Optimized)
        }
        Task::Cluster { action } => match action {
            ClusterAction::Build => {
                let bins = sluice_testbed::ensure_binaries()?;
                println!("{bins:#?}");
                Ok(())
            }
            ClusterAction::Up => {
                sluice_testbed::up(&dev_cluster_dir(&root))?;
                print!("{}", sluice_testbed::status(&dev_cluster_dir(&root))?);
                Ok(())
            }
            ClusterAction::Down { bench } => sluice_testbed::down(&cluster_dir(&root, bench)),
            ClusterAction::Status { bench } => {
                print!("{}", sluice_testbed::status(&cluster_dir(&root, bench))?);
                Ok(())
            }
        },
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cluster for the demo and development.
pub(crate) fn dev_cluster_dir(root: &Path) -> PathBuf {
    root.join("target").join("sluice-cluster")
}

/// The cluster of `bench scale --peer`, whose peer's CRDs (Argo Rollouts' take the short names
/// `ro` and `rollouts`) must stay out of the development and test clusters.
fn bench_cluster_dir(root: &Path) -> PathBuf {
    root.join("target").join("sluice-cluster-bench")
}

/// The benchmark cluster if `bench`, else the development one.
fn cluster_dir(root: &Path, bench: bool) -> PathBuf {
    if bench {
        bench_cluster_dir(root)
    } else {
        dev_cluster_dir(root)
    }
}

/// The test suite's own cluster, so that `test` never tears down a developer's cluster.
fn test_cluster_dir(root: &Path) -> PathBuf {
    root.join("target").join("sluice-cluster-test")
}

/// Where generated CRDs go: `crds/` for `kubectl apply -f crds/`, and the Helm chart's copy, which
/// its `crds.install` toggle renders. The admission policies go to `crds/` with their bindings and
/// to the chart's `files/policies/` alone (the chart writes bindings from its values).
fn crdgen(root: &Path, check: bool) -> Result<()> {
    let crds = sluice_api::crdgen::generate()?;
    let (policies, chart_policies) = sluice_api::crdgen::generate_policies()?;
    let all: Vec<_> = crds.iter().chain(&policies).cloned().collect();
    let outputs = [
        ("crds", all),
        ("charts/sluice/files/crds", crds),
        ("charts/sluice/files/policies", chart_policies),
    ];
    for (dir_name, generated) in outputs {
        let dir = root.join(dir_name);
        let mut drifted = Vec::new();
        for crd in &generated {
            let path = dir.join(&crd.file_name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != crd.yaml {
                drifted.push(crd.file_name.clone());
                if !check {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&path, &crd.yaml)?;
                }
            }
        }
        let expected: Vec<&str> = generated.iter().map(|c| c.file_name.as_str()).collect();
        if dir.is_dir() {
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.ends_with(".yaml") && !expected.contains(&name.as_str()) {
                    drifted.push(name.clone());
                    if !check {
                        std::fs::remove_file(dir.join(&name))?;
                    }
                }
            }
        }
        match (check, drifted.is_empty()) {
            (_, true) => println!("{dir_name}/ is up to date ({} files)", generated.len()),
            (true, false) => bail!(
                "{dir_name}/ differs from the API types in: {}. Run `cargo xtask crdgen` and commit the result",
                drifted.join(", ")
            ),
            (false, false) => println!("updated {dir_name}/: {}", drifted.join(", ")),
        }
    }
    Ok(())
}

/// Builds the controller and the benchmark in release mode and runs the benchmark against the
/// development cluster (`bench scale --peer`: the benchmark cluster), started if it is not running.
fn bench(root: &Path, which: Bench) -> Result<()> {
    let peer = match which {
        Bench::Scale { peer, .. } => peer,
        _ => None,
    };
    if let Some(Peer::ArgoRollouts) = peer {
        // Built (or found in the cache) before the cluster starts, so a failed build costs no start.
        let argo = sluice_testbed::ensure_argo_rollouts()?;
        eprintln!(
            "Argo Rollouts {}: {} (CRDs in {})",
            argo.version,
            argo.controller.display(),
            argo.crds.display()
        );
    }
    let cluster_dir = if peer.is_some() {
        bench_cluster_dir(root)
    } else {
        dev_cluster_dir(root)
    };
    let mut options = sluice_testbed::Options::from_env()?;
    if let Bench::Scale {
        rollouts, replicas, ..
    } = which
    {
        // A node per 100 pods (kwok's take 110), beside the usual ones.
        let pods = rollouts.saturating_mul(replicas as usize);
        options.nodes = options
            .nodes
            .max(sluice_testbed::cluster::NODE_COUNT + pods.div_ceil(100));
        options.api_qps = options.api_qps.or(Some(SCALE_API_QPS));
    }
    let cluster = sluice_testbed::up_with(&cluster_dir, &options)?;
    run(
        "build the controller and the benchmark (release)",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sluice-controller",
            "-p",
            "sluice-e2e",
            "--bin",
            "sluice-controller",
            "--bin",
            "sluice-bench",
        ]),
    )?;
    let release = root.join("target").join("release");
    let args = match which {
        Bench::Abort { count } => vec!["abort".to_owned(), "--count".to_owned(), count.to_string()],
        Bench::Bluegreen { count } => vec![
            "bluegreen".to_owned(),
            "--count".to_owned(),
            count.to_string(),
        ],
        Bench::Analysis { count } => vec![
            "analysis".to_owned(),
            "--count".to_owned(),
            count.to_string(),
        ],
        Bench::Scale {
            rollouts,
            replicas,
            timeout,
            peer,
        } => {
            let mut args = vec![
                "scale".to_owned(),
                "--rollouts".to_owned(),
                rollouts.to_string(),
                "--replicas".to_owned(),
                replicas.to_string(),
                "--timeout".to_owned(),
                timeout.to_string(),
            ];
            if let Some(Peer::ArgoRollouts) = peer {
                args.extend(["--peer".to_owned(), "argo-rollouts".to_owned()]);
            }
            args
        }
    };
    let result = run(
        "sluice-bench",
        Command::new(release.join("sluice-bench"))
            .args(&args)
            .envs(cluster.env())
            .env("SLUICE_E2E_CONTROLLER", release.join("sluice-controller")),
    );
    if peer.is_some() {
        eprintln!(
            "\nThe benchmark cluster (with Argo Rollouts' CRDs) is still running in {}; \
             `cargo xtask cluster status --bench` shows it, `cargo xtask cluster down --bench` stops it.",
            cluster_dir.display()
        );
    }
    result
}

/// Runs a command, failing with its description if it fails.
fn run(description: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {description}");
    let status = cmd
        .status()
        .with_context(|| format!("starting: {description}"))?;
    if !status.success() {
        bail!("failed: {description}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Makes sure rustfmt and clippy are installed (a new machine may have neither).
fn ensure_rust_components() -> Result<()> {
    let missing: Vec<&str> = [("rustfmt", "fmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(_, sub)| {
            !cargo()
                .args([sub, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(component, _)| component)
        .collect();
    if !missing.is_empty() {
        run(
            &format!("rustup component add {}", missing.join(" ")),
            Command::new("rustup")
                .args(["component", "add"])
                .args(&missing),
        )?;
    }
    Ok(())
}

fn test(root: &Path, keep_cluster: bool, no_lint: bool) -> Result<()> {
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let started = Instant::now();
        let result = f();
        timings.push((name, started.elapsed()));
        result
    };
    // The Go builds, Debian packages and npm packages the end-to-end tests need are filled beside
    // the Rust phases below: on a new machine they take a good part of half an hour, much of it
    // waiting on downloads or on one-threaded links, which the Rust builds fill in.
    let external = std::env::var_os("SLUICE_E2E_KUBECONFIG").is_some();
    let fill_root = root.to_owned();
    // (A failing phase ends the process with the fill half done: fills are all-or-nothing.)
    let mut filling = Some(std::thread::spawn(move || -> Result<Filled> {
        let started = Instant::now();
        if !external {
            sluice_testbed::ensure_binaries()?;
            sluice_testbed::prometheus::ensure_installed()?;
            sluice_testbed::node::ensure_tools()?;
        }
        fill_test_tools(&fill_root)?;
        let filled_in = started.elapsed();
        // The images the chart installs on the real node, from this checkout (a release build in
        // a target directory of its own, so it runs beside the other builds).
        let started = Instant::now();
        let images = if external {
            Vec::new()
        } else {
            image::build(&fill_root)?
        };
        // The plugin's release archive (the image's binary) and krew manifest, checked by krew.
        if !external {
            plugin::check_with_krew(&plugin::release(&fill_root)?)?;
        }
        Ok(Filled {
            filled_in,
            images,
            images_in: started.elapsed(),
        })
    }));
    if !no_lint {
        timed("rust components", &mut ensure_rust_components)?;
        timed("fmt", &mut || {
            run(
                "cargo fmt --check",
                cargo().args(["fmt", "--all", "--", "--check"]),
            )
        })?;
        timed("clippy", &mut || {
            // The e2e suite is not among `--all-targets` (`test = false`), and naming it beside
            // them selects it alone: a second pass, which reuses the first's checks.
            for targets in [&["--all-targets"][..], &["--test", "suite"]] {
                run(
                    "cargo clippy -D warnings",
                    cargo().args(["clippy", "--workspace"]).args(targets).args([
                        "--features",
                        "sluice-controller/failpoints",
                        "--locked",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                )?;
            }
            Ok(())
        })?;
    }
    timed("crd drift", &mut || crdgen(root, true))?;
    // Every Rust build below selects the whole workspace with the same features (the fault tests'
    // failpoints, nothing without `FAILPOINTS` set), so each reuses what the one before built; the
    // e2e suite is left out of `cargo test` by its manifest (`test = false`) and named to run.
    let workspace = |verb: &str| {
        let mut cmd = cargo();
        cmd.args([
            verb,
            "--workspace",
            "--locked",
            "--features",
            "sluice-controller/failpoints",
        ]);
        cmd
    };
    timed("unit tests", &mut || {
        run("unit tests", &mut workspace("test"))
    })?;
    // A bounded budget per target here; `cargo xtask fuzz --seconds N` hunts longer.
    let fuzz_seconds = std::env::var("SLUICE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    timed("fuzz", &mut || {
        fuzz::run(root, fuzz_seconds, None, fuzz::Build::Quick)
    })?;
    // Build the e2e tests before the cluster starts, so a compile error costs no cluster start-up.
    timed("e2e build", &mut || {
        // The controller, the kubectl plugin and the traffic simulator the suite runs.
        run(
            "build the controller and the kubectl plugin",
            workspace("build").arg("--all-targets"),
        )?;
        run(
            "build e2e tests",
            workspace("test").args(["--test", "suite", "--no-run"]),
        )
    })?;

    // Every cache the end-to-end tests read is filled before they start, so that their time is
    // the tests' own (the fills are safe from parallel tests too: each is built once under a lock).
    let mut filled = None;
    timed("test tools (wait)", &mut || {
        if let Some(filling) = filling.take() {
            filled = Some(
                filling
                    .join()
                    .map_err(|_| anyhow::anyhow!("filling the testbed's caches panicked"))??,
            );
        }
        Ok(())
    })?;
    let filled = filled.context("the testbed's caches were not filled")?;
    let state_dir = test_cluster_dir(root);
    let mut env: Vec<(&'static str, String)> = Vec::new();
    if external {
        eprintln!("==> using the cluster in SLUICE_E2E_KUBECONFIG");
    } else {
        let mut cluster: Option<Cluster> = None;
        let up = timed("cluster up", &mut || {
            eprintln!("==> starting a local control plane with a real node");
            let mut options = sluice_testbed::Options::from_env()?;
            // The chart's tests run the operator from its image: on by default here.
            options.real_node |= std::env::var_os("SLUICE_CLUSTER_REAL_NODE").is_none();
            cluster = Some(sluice_testbed::up_with(&state_dir, &options)?);
            Ok(())
        });
        if let Err(err) = &up {
            // What started is stopped (the node's containers and rules too), its logs kept.
            keep_logs(root, &state_dir, err);
            let _ = sluice_testbed::down(&state_dir);
        }
        up?;
        if let Some(cluster) = cluster {
            env = cluster.env();
        }
        if !filled.images.is_empty() {
            image::print_built(&filled.images);
            env.push((
                "SLUICE_E2E_IMAGES",
                root.join("target").join("images").display().to_string(),
            ));
        }
    }
    let e2e = timed("e2e tests", &mut || {
        let mut cmd = workspace("test");
        cmd.args(["--test", "suite", "--", "--skip", "isolated::"])
            .envs(env.iter().map(|(k, v)| (*k, v)));
        run("end-to-end tests", &mut cmd)?;
        // Tests that disturb the whole cluster (etcd paused) run alone, after the others.
        let mut alone = workspace("test");
        alone
            .args(["--test", "suite", "--"])
            .args(["isolated::", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (*k, v)));
        run(
            "end-to-end tests that need the cluster to themselves",
            &mut alone,
        )
    });
    if !external && !keep_cluster {
        if let Err(err) = &e2e {
            keep_logs(root, &state_dir, err);
        }
        sluice_testbed::down(&state_dir)?;
    }
    eprintln!("\nTimings:");
    for (name, took) in &timings {
        eprintln!("  {name:<18} {:>7.1}s", took.as_secs_f64());
    }
    eprintln!(
        "  ({:.1}s filling the testbed's caches: Go builds, Debian and npm packages, and {:.1}s \
         building the images, beside the Rust phases)",
        filled.filled_in.as_secs_f64(),
        filled.images_in.as_secs_f64()
    );
    e2e
}

/// What was filled beside the Rust phases of `test`.
struct Filled {
    /// Time spent on the testbed's caches (Go builds, Debian and npm packages).
    filled_in: Duration,
    /// The operator's and the plugin's images (none with an existing cluster).
    images: Vec<image::Built>,
    images_in: Duration,
}

/// The tools single end-to-end tests use beyond the cluster: Argo Rollouts' controller (takeover
/// and peer tests), Debian's Chromium with Playwright (dashboard), Lua (Argo CD health checks) and
/// the kstatus checker (Flux).
fn fill_test_tools(root: &Path) -> Result<()> {
    sluice_testbed::ensure_argo_rollouts()?;
    sluice_testbed::browser::ensure_chromium()?;
    sluice_testbed::browser::ensure_playwright(&root.join("tests/browser"))?;
    sluice_testbed::prometheus::ensure_debian_program("lua5.4", "lua5.4")?;
    sluice_testbed::binaries::go_program("kstatus", &root.join("tests/kstatus"))?;
    Ok(())
}

/// Copies the components' logs somewhere that survives `down`, so a failed run can be diagnosed.
fn keep_logs(root: &Path, state_dir: &Path, err: &anyhow::Error) {
    let dest = root.join("target").join("sluice-cluster-test-logs");
    let _ = std::fs::remove_dir_all(&dest);
    if std::fs::create_dir_all(&dest).is_ok() {
        if let Ok(entries) = std::fs::read_dir(state_dir.join("logs")) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), dest.join(entry.file_name()));
            }
        }
        eprintln!("{err}; component logs kept in {}", dest.display());
    }
}
