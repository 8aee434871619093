//! Faults that disturb the whole cluster, so they run alone, after the rest of the suite
//! (`cargo xtask test` runs `isolated::` with one test thread): etcd paused, and the API server
//! restarted, mid-release.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::Api;
use serde_json::json;
use sluice_api::rollout::Rollout;
use sluice_e2e::{ControllerProcess, TestNamespace, client, eventually, install_crds};

use crate::canary::{apply, healthy_on, rollout, wait_status};
use crate::faults::replica_sets;

const WAIT: Duration = Duration::from_secs(60);

/// The pid file of one of the test cluster's components, if this testbed started it (not for an
/// existing cluster).
fn pid_file(component: &str) -> Option<std::path::PathBuf> {
    let state = sluice_e2e::kubeconfig_path().parent()?.to_path_buf();
    let file = state.join("pids").join(format!("{component}.pid"));
    file.exists().then_some(file)
}

/// The pid of the test cluster's etcd, if this testbed started it.
fn etcd_pid() -> Option<String> {
    let pid = std::fs::read_to_string(pid_file("etcd")?).ok()?;
    Some(pid.trim().to_owned())
}

fn signal(pid: &str, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// A canary (2 replicas, maxUnavailable 0) whose second revision's release has started.
struct ReleaseUnderWay {
    client: kube::Client,
    ns: TestNamespace,
    controller: ControllerProcess,
    api: Api<Rollout>,
    stable: String,
}

impl ReleaseUnderWay {
    async fn start(prefix: &str) -> Result<Self> {
        let client = client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let controller = ControllerProcess::start(&ns.name)?;
        let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
        let canary = json!({"maxSurge": 1, "maxUnavailable": 0,
            "steps": [{"setWeight": 50}, {"pause": {"duration": "3s"}}]});
        apply(
            &api,
            &rollout("web", 2, "registry.example/web:1.0.0", canary.clone()),
        )
        .await?;
        let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
            healthy_on(s, None)
        })
        .await?;
        let stable = first.stable_rs.clone().context("stable")?;
        apply(
            &api,
            &rollout("web", 2, "registry.example/web:2.0.0", canary),
        )
        .await?;
        wait_status(&api, "web", "the release to start", |s| {
            s.current_pod_hash.as_deref().is_some_and(|h| h != stable)
        })
        .await?;
        Ok(Self {
            client,
            ns,
            controller,
            api,
            stable,
        })
    }

    /// After `what` (begun at `since`): once the API server answers, the pods wanted are still at
    /// the Rollout's size, and the release finishes without an abort. A controller that gave up its
    /// leadership (it could not renew the Lease) is restarted, as its pod would be.
    async fn recovers(mut self, what: &str, since: std::time::Instant) -> Result<()> {
        let sets = eventually("the API server to answer again", WAIT, || async {
            Ok(replica_sets(&self.client, &self.ns.name).await.ok())
        })
        .await?;
        let back = since.elapsed();
        let exited = self.controller.try_exited()?;
        if exited {
            self.controller = ControllerProcess::start(&self.ns.name)?;
        }
        let wanted: i32 = sets.values().sum();
        println!(
            "{what}: answering again after {back:.1?}; the controller {}; pods wanted right after: {wanted} ({sets:?})",
            if exited {
                "exited and was restarted"
            } else {
                "kept running"
            }
        );
        ensure!(
            wanted >= 2,
            "fewer pods wanted than replicas after {what}: {sets:?}"
        );
        let stable = self.stable.as_str();
        let done = wait_status(
            &self.api,
            "web",
            &format!("the release to finish after {what}"),
            |s| healthy_on(s, None) && s.stable_rs.as_deref() != Some(stable),
        )
        .await?;
        ensure!(!done.abort, "the release was aborted: {:?}", done.message);
        Ok(())
    }
}

#[tokio::test]
async fn etcd_paused_for_ten_seconds_mid_release_keeps_stable_whole_and_the_release_finishes()
-> Result<()> {
    let Some(etcd) = etcd_pid() else {
        println!("skipped: the cluster's etcd was not started by this testbed");
        return Ok(());
    };
    let release = ReleaseUnderWay::start("etcd-pause").await?;
    // etcd stops answering for 10 s: every write fails or hangs, the Lease cannot be renewed.
    let paused = std::time::Instant::now();
    signal(&etcd, "-STOP")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(&etcd, "-CONT")?;
    release.recovers("etcd paused 10 s", paused).await
}

/// Restarts kube-apiserver as its supervisor would after a crash: kills it, and starts it again with
/// the same command line (read from /proc), in a process group of its own, its pid recorded for
/// `down`.
fn restart_apiserver(pid_file: &std::path::Path) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let pid = std::fs::read_to_string(pid_file)?.trim().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let (program, args) = argv.split_first().context("an empty command line")?;
    signal(&pid, "-KILL")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Gone, or a zombie nobody has reaped yet.
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "))
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "kube-apiserver did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The killed server's port may take a moment to be free again: wait until it can be bound.
    let port = args
        .iter()
        .find_map(|a| a.strip_prefix("--secure-port="))
        .context("no --secure-port")?
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_err() {
        ensure!(
            std::time::Instant::now() < deadline,
            "port {port} stayed in use"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = pid_file
        .parent()
        .and_then(std::path::Path::parent)
        .context("the state directory")?
        .join("logs")
        .join("kube-apiserver.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    std::fs::write(pid_file, child.id().to_string())?;
    Ok(())
}

#[tokio::test]
async fn the_api_server_restarted_mid_release_keeps_stable_whole_and_the_release_finishes()
-> Result<()> {
    let Some(apiserver) = pid_file("kube-apiserver") else {
        println!("skipped: the cluster's kube-apiserver was not started by this testbed");
        return Ok(());
    };
    let release = ReleaseUnderWay::start("apiserver-restart").await?;
    let restarted = std::time::Instant::now();
    tokio::task::spawn_blocking(move || restart_apiserver(&apiserver)).await??;
    release
        .recovers("kube-apiserver restarted", restarted)
        .await
}
