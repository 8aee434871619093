//! A real Prometheus server for tests, from Debian's package.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Finds `prometheus` on PATH, installing Debian's package when it is missing and we may.
pub fn ensure_installed() -> Result<PathBuf> {
    ensure_debian_program("prometheus", "prometheus")
}

/// Finds `program` on PATH, installing Debian's `package` (which provides it) when it is missing
/// and we may: the tests' tools come from the project's own scripts, never from a hand install.
pub fn ensure_debian_program(program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_on_path(program) {
        return Ok(path);
    }
    // Tests ask for their programs at the same time; dpkg takes one install at a time, so the
    // callers queue on the cache's `apt` lock and look again once they hold it.
    let _lock = crate::cache::lock(&crate::cache_dir(), "apt")?;
    if let Some(path) = find_on_path(program) {
        return Ok(path);
    }
    install_packages(&[package])?;
    find_on_path(program)
        .with_context(|| format!("{program} is still not on PATH after installing {package}"))
}

/// Installs Debian's `packages` (without their recommendations), when we may: as root with apt-get.
/// One install at a time through the testbed (the cache's `apt` lock), and apt-get waits for
/// dpkg's own lock rather than failing when something else on the machine holds it.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let _lock = crate::cache::lock(&crate::cache_dir(), "apt")?;
    install_packages(packages)
}

fn install_packages(packages: &[&str]) -> Result<()> {
    let names = packages.join(" ");
    let is_root = nix::unistd::Uid::effective().is_root();
    if !is_root || find_on_path("apt-get").is_none() {
        bail!("install Debian's packages {names} (apt-get install {names}) and retry");
    }
    eprintln!("Installing Debian's {names}");
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-qq"])?;
    let mut install = vec![
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
    ];
    install.extend_from_slice(packages);
    run(&install)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The configuration a test cluster's Prometheus starts with: it scrapes itself every 5 seconds, and
/// every second the traffic simulators named in `targets_dir/*.json` (file-based discovery: a test
/// adds one by writing a file). Tests add other targets by rewriting the file and POSTing to
/// `/-/reload`.
pub fn default_config(port: u16, targets_dir: &Path) -> String {
    format!(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\nscrape_configs:\n- job_name: prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{port}']\n\
         - job_name: sluice-sim\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  file_sd_configs:\n  - files: ['{}/*.json']\n    refresh_interval: 5s\n",
        targets_dir.display()
    )
}

/// Where file-based discovery finds the traffic simulators' targets.
pub fn targets_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("prometheus").join("targets")
}

/// Starts Prometheus on `port` with its data and configuration under `state_dir/prometheus`.
pub(crate) fn start(state_dir: &Path, binary: &Path, host: &str, port: u16) -> Result<()> {
    let dir = state_dir.join("prometheus");
    fs::create_dir_all(dir.join("data"))?;
    let targets = targets_dir(state_dir);
    fs::create_dir_all(&targets)?;
    let config = dir.join("prometheus.yml");
    fs::write(&config, default_config(port, &targets))?;
    crate::cluster::spawn_component(
        state_dir,
        "prometheus",
        binary,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={host}:{port}"),
            "--web.enable-lifecycle".to_owned(),
            "--web.enable-admin-api".to_owned(),
        ],
    )
}
