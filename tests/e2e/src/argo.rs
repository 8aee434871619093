//! Argo Rollouts' own controller, run out of cluster for one test's namespace, as the benchmark's
//! peer runs it ([`crate::scale`]): tests that start a service under Argo Rollouts (and move it to
//! Sluice) use the real thing, not an imitation.
//!
//! The binary is built from Argo Rollouts' Go module by [`sluice_testbed::ensure_argo_rollouts`]
//! (cached per version; a cold build takes several minutes). Its CRDs (`argoproj.io`) are installed
//! in every test cluster beside Sluice's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{free_ports, http_get, kubeconfig_path, repo_root};

/// Builds Argo Rollouts' controller if it is not in the cache yet (off the test's runtime: a cold
/// build takes minutes) and finds its CRDs.
pub async fn build() -> Result<sluice_testbed::ArgoRollouts> {
    tokio::task::spawn_blocking(sluice_testbed::ensure_argo_rollouts)
        .await
        .context("the Argo Rollouts build task panicked")?
}

/// The command that runs `controller` (a `rollouts-controller` binary) out of cluster through
/// `kubeconfig`, for `namespace` only and without leader election, serving metrics and `/healthz`
/// on the given ports (on every interface: Argo's servers do not take an address).
pub fn controller_command(
    controller: &Path,
    namespace: &str,
    kubeconfig: &Path,
    metrics_port: u16,
    healthz_port: u16,
) -> Command {
    let mut command = Command::new(controller);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--namespaced",
            "--namespace",
            namespace,
            "--leader-elect=false",
        ])
        .args(["--metricsPort", &metrics_port.to_string()])
        .args(["--healthzPort", &healthz_port.to_string()])
        // Else it watches notification ConfigMaps and Secrets in `argo-rollouts`.
        .env("POD_NAMESPACE", namespace);
    command
}

/// Argo Rollouts' controller for one test's namespace; killed when dropped. It logs to
/// `target/e2e-logs/argo-rollouts-<namespace>.log`.
pub struct ArgoRolloutsController {
    child: Child,
    /// The namespace it manages.
    pub namespace: String,
    /// The Argo Rollouts version it was built from, e.g. `v1.10.1`.
    pub version: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Where it serves Prometheus metrics, e.g. `http://127.0.0.1:41234` (`/metrics`).
    pub metrics: String,
    /// Where it serves `/healthz`.
    pub healthz: String,
}

impl ArgoRolloutsController {
    /// Builds the controller if needed ([`build`]), starts it for `namespace` against the cluster
    /// under test, and waits until it answers `/healthz`.
    pub async fn start(namespace: &str) -> Result<Self> {
        let build = build().await?;
        let mut controller = Self::spawn(&build, namespace)?;
        controller.wait_healthy(Duration::from_secs(60)).await?;
        Ok(controller)
    }

    /// Starts `build`'s controller for `namespace` without waiting for it.
    pub fn spawn(build: &sluice_testbed::ArgoRollouts, namespace: &str) -> Result<Self> {
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs
            .canonicalize()
            .unwrap_or(logs)
            .join(format!("argo-rollouts-{namespace}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let [metrics, healthz] = free_ports::<2>()?;
        let child = controller_command(
            &build.controller,
            namespace,
            &kubeconfig_path(),
            metrics,
            healthz,
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", build.controller.display()))?;
        Ok(Self {
            child,
            namespace: namespace.to_owned(),
            version: build.version.clone(),
            log,
            metrics: format!("http://127.0.0.1:{metrics}"),
            healthz: format!("http://127.0.0.1:{healthz}"),
        })
    }

    /// Waits until it answers `/healthz`; fails at once if it exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Argo Rollouts' controller exited ({status}); see {}",
                    self.log.display()
                );
            }
            let last = match http_get(&self.healthz, "/healthz").await {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Argo Rollouts' controller did not answer {}/healthz within {timeout:?} ({last:#}); see {}",
                    self.healthz,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (on its own).
    pub fn try_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }
}

impl Drop for ArgoRolloutsController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
