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

#[tokio::test]
async fn etcd_paused_for_ten_seconds_mid_release_keeps_stable_whole_and_the_release_finishes()
-> Result<()> {
    let Some(etcd) = etcd_pid() else {
        println!("skipped: the cluster's etcd was not started by this testbed");
        return Ok(());
    };
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "etcd-pause").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
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

    // etcd stops answering for 10 s: every write fails or hangs, the Lease cannot be renewed.
    signal(&etcd, "-STOP")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(&etcd, "-CONT")?;
    let sets = eventually("the API server to answer again", WAIT, || async {
        Ok(replica_sets(&client, &ns.name).await.ok())
    })
    .await?;
    // The controller gives up its leadership when it cannot renew the Lease; its pod would be
    // restarted, as it is here.
    let exited = controller.try_exited()?;
    if exited {
        controller = ControllerProcess::start(&ns.name)?;
    }
    let wanted: i32 = sets.values().sum();
    println!(
        "etcd paused 10 s: the controller {}; pods wanted right after: {wanted} ({sets:?})",
        if exited {
            "exited and was restarted"
        } else {
            "kept running"
        }
    );
    ensure!(
        wanted >= 2,
        "fewer pods wanted than replicas after the pause: {sets:?}"
    );
    let done = wait_status(&api, "web", "the release to finish after the pause", |s| {
        healthy_on(s, None) && s.stable_rs.as_deref() != Some(stable.as_str())
    })
    .await?;
    ensure!(!done.abort, "the release was aborted: {:?}", done.message);
    drop(controller);
    Ok(())
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
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "apiserver-restart").await?;
    let mut controller = ControllerProcess::start(&ns.name)?;
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

    let restarted = std::time::Instant::now();
    tokio::task::spawn_blocking(move || restart_apiserver(&apiserver)).await??;
    let sets = eventually("the API server to answer again", WAIT, || async {
        Ok(replica_sets(&client, &ns.name).await.ok())
    })
    .await?;
    let back = restarted.elapsed();
    let exited = controller.try_exited()?;
    if exited {
        controller = ControllerProcess::start(&ns.name)?;
    }
    let wanted: i32 = sets.values().sum();
    println!(
        "kube-apiserver restarted: answering again after {back:.1?}; the controller {}; pods wanted right after: {wanted} ({sets:?})",
        if exited {
            "exited and was restarted"
        } else {
            "kept running"
        }
    );
    ensure!(
        wanted >= 2,
        "fewer pods wanted than replicas after the restart: {sets:?}"
    );
    let done = wait_status(
        &api,
        "web",
        "the release to finish after the restart",
        |s| healthy_on(s, None) && s.stable_rs.as_deref() != Some(stable.as_str()),
    )
    .await?;
    ensure!(!done.abort, "the release was aborted: {:?}", done.message);
    drop(controller);
    Ok(())
}
