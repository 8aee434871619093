//! NetworkPolicy enforcement on the real node ([`crate::node`]): kube-router's network-policy
//! controller, built from its Go module and run as a host process beside the kubelet.
//!
//! The node's CNI plugin (Debian's `bridge`) connects pods but enforces no NetworkPolicy, so
//! without this a policy is accepted by the API server and changes nothing. kube-router runs with
//! its firewall only (`--run-firewall=true --run-router=false --run-service-proxy=false`): the
//! bridge keeps the pods' addresses and routes, kube-proxy keeps the Services, and kube-router adds
//! iptables chains (`KUBE-ROUTER-*`, `KUBE-POD-FW-*`, `KUBE-NWPLCY-*`) and ipsets (`KUBE-SRC-*`,
//! `KUBE-DST-*`) in the filter table for the pods whose `status.hostIP` is the node's address.
//!
//! It needs the node's object (it reads its InternalIP), so it starts once the kubelet has
//! registered the node; it needs no `spec.podCIDR` (only its router does). It does not remove its
//! rules when it stops: [`stop`] and [`clean_up`] do.
//!
//! [`probe_image`] is the image tests use on both sides of a reachability check (`tests/probe`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::binaries::cache_dir;
use crate::node::{NODE_NAME, SERVICE_SUBNET};
use crate::prometheus::ensure_debian_program;

/// The component's name: its pid file (`pids/kube-router.pid`) and log (`logs/kube-router.log`).
pub const COMPONENT: &str = "kube-router";
/// The probe image ([`probe_image`]): `probe serve ADDR` and `probe get URL [TIMEOUT]`.
pub const PROBE_IMAGE: &str = "sluice.dev/testbed/probe:1";

/// The node's guard chain ([`crate::node`]), hooked again at the top of kube-router's own chains
/// by [`start`] (see [`hook_guard`]).
const GUARD_CHAIN: &str = "SLUICE-GUARD";
/// Prefixes of every filter chain kube-router's firewall creates (the top-level chains, the
/// per-pod chains, the per-policy chains and `KUBE-NWPLCY-DEFAULT`).
const CHAIN_PREFIXES: [&str; 3] = ["KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-"];
/// Prefixes of the ipsets it creates for policies' peers.
const IPSET_PREFIXES: [&str; 2] = ["KUBE-SRC-", "KUBE-DST-"];
/// The rule kube-router appends to its top-level chains at the end of every full sync: once it is
/// in `KUBE-ROUTER-FORWARD`, the first sync (every pod chain, every policy chain) is in place.
const SYNCED_MARKER: &str = "rule to explicitly ACCEPT traffic that comply to network policies";

/// kube-router's command line: the firewall alone, for the real node, on IPv4.
///
/// - `--hostname-override`: the node's name is not this machine's hostname (kube-router tries
///   `$NODE_NAME`, then the hostname, then this).
/// - `--service-cluster-ip-range`: the API server's; traffic to it is let through INPUT.
/// - `--health-port=0`: its health server listens on every interface and answers 200 from the
///   start, before any rule exists, so it says nothing [`start`] can use; off, it cannot collide.
///   `--metrics-port=0` (its default) keeps metrics off too.
pub fn args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--run-firewall=true".to_owned(),
        "--run-router=false".to_owned(),
        "--run-service-proxy=false".to_owned(),
        "--run-loadbalancer=false".to_owned(),
        format!("--hostname-override={NODE_NAME}"),
        format!("--service-cluster-ip-range={SERVICE_SUBNET}"),
        "--enable-ipv4=true".to_owned(),
        "--enable-ipv6=false".to_owned(),
        "--health-port=0".to_owned(),
        "--metrics-port=0".to_owned(),
        "--v=1".to_owned(),
    ]
}

/// Starts kube-router's network-policy controller for the real node as the testbed component
/// `kube-router` and waits until its first sync is in iptables, so that a NetworkPolicy created
/// from then on is enforced (within a second or so of its creation: tests should poll).
///
/// Call it after the kubelet has registered the node (it reads the node's address once, at
/// start) and while the control plane runs. A kube-router already running for `state_dir` is
/// stopped first, and rules left by an earlier one are removed, so the wait sees this one's sync.
pub fn start(state_dir: &Path, kube_router: &Path, kubeconfig: &Path) -> Result<()> {
    ensure_debian_program("iptables", "iptables")?;
    ensure_debian_program("ipset", "ipset")?;
    stop(state_dir)?;
    fs::create_dir_all(state_dir.join("logs"))?;
    fs::create_dir_all(state_dir.join("pids"))?;
    crate::cluster::spawn_component(state_dir, COMPONENT, kube_router, &args(kubeconfig))?;
    // Synced: its end-of-sync rule in `KUBE-ROUTER-FORWARD`, and the jump there from FORWARD.
    crate::cluster::wait_for(state_dir, COMPONENT, Duration::from_secs(90), || {
        Ok(is_synced())
    })?;
    hook_guard()
}

/// The pid of the running kube-router of `state_dir`, if any.
pub fn running(state_dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(state_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::cluster::is_alive(pid).then_some(pid)
}

fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join("pids").join(format!("{COMPONENT}.pid"))
}

fn is_synced() -> bool {
    let forward = iptables(&["-S", "FORWARD"]).unwrap_or_default();
    let chain = iptables(&["-S", "KUBE-ROUTER-FORWARD"]).unwrap_or_default();
    forward.contains("-j KUBE-ROUTER-FORWARD") && chain.contains(SYNCED_MARKER)
}

/// Makes the node's guard chain the first rule of `KUBE-ROUTER-FORWARD` and
/// `KUBE-ROUTER-OUTPUT`, when the node has one.
///
/// kube-router keeps its jumps at the top of FORWARD and OUTPUT (it moves them back on every
/// sync) and ends its chains with an ACCEPT of the traffic its policies allowed, which would
/// accept what a pod sends off the bridge before the guard could reject it. Jumped to from inside
/// kube-router's chains, the guard runs first again: kube-router rewrites its chains from
/// `iptables-save`, keeping rules it did not write, in order, and only appends its own.
pub fn hook_guard() -> Result<()> {
    if iptables(&["-S", GUARD_CHAIN]).is_err() {
        return Ok(());
    }
    for chain in ["KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"] {
        let rules = iptables(&["-S", chain])?;
        let hook = format!("-A {chain} -j {GUARD_CHAIN}");
        let first = rules.lines().find(|line| line.starts_with("-A "));
        if first != Some(hook.as_str()) {
            // A hook further down (kube-router appended before it) is removed first.
            while iptables(&["-D", chain, "-j", GUARD_CHAIN]).is_ok() {}
            iptables(&["-I", chain, "1", "-j", GUARD_CHAIN])?;
        }
    }
    Ok(())
}

/// Stops the kube-router of `state_dir` (SIGTERM to its process group, SIGKILL after 10 s), then
/// removes its rules and ipsets ([`clean_up`]): kube-router leaves them behind when it stops, and
/// they would keep enforcing the last policies it saw.
pub fn stop(state_dir: &Path) -> Result<()> {
    if let Some(pid) = running(state_dir) {
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::cluster::is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if crate::cluster::is_alive(pid) {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    let _ = fs::remove_file(pid_file(state_dir));
    clean_up()
}

/// Removes everything kube-router's firewall put in the machine's IPv4 and IPv6 filter tables
/// (the jumps from INPUT, FORWARD and OUTPUT, and every `KUBE-ROUTER-*`, `KUBE-POD-FW-*` and
/// `KUBE-NWPLCY-*` chain) and its `KUBE-SRC-*` and `KUBE-DST-*` ipsets. Safe to call when there is
/// nothing to remove. Call it with kube-router stopped, or it writes them again.
///
/// Done here rather than with `kube-router --cleanup-config`: in v2.1.0 that cleans the network
/// policies with an empty controller whose iptables handlers are unset, so it removes none of
/// them (and says it succeeded), then its service-proxy part tries to flush every IPVS service on
/// the machine and panics on a nil pointer (exit status 2).
pub fn clean_up() -> Result<()> {
    let mut failures = Vec::new();
    for program in ["iptables", "ip6tables"] {
        if let Err(error) = clean_up_chains(program) {
            failures.push(format!("{program}: {error:#}"));
        }
    }
    if let Err(error) = clean_up_ipsets() {
        failures.push(format!("ipset: {error:#}"));
    }
    if !failures.is_empty() {
        bail!(
            "removing kube-router's rules failed: {}",
            failures.join("; ")
        );
    }
    Ok(())
}

fn is_ours(chain: &str) -> bool {
    CHAIN_PREFIXES
        .iter()
        .any(|prefix| chain.starts_with(prefix))
}

fn clean_up_chains(program: &str) -> Result<()> {
    let Ok(saved) = crate::node::command(&format!("{program}-save"), &["-t", "filter"]) else {
        // No such family on this machine (or no iptables at all): nothing of ours can be there.
        return Ok(());
    };
    let chains: Vec<&str> = saved
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|chain| is_ours(chain))
        .collect();
    // First the jumps into our chains from chains that are not ours (INPUT, FORWARD, OUTPUT).
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some(words) = shlex::split(rule) else {
            continue;
        };
        let Some((chain, spec)) = words.split_first() else {
            continue;
        };
        let target = spec
            .iter()
            .position(|word| word == "-j" || word == "-g")
            .and_then(|at| spec.get(at + 1));
        if !is_ours(chain) && target.is_some_and(|target| is_ours(target)) {
            let mut args = vec!["-w", "-t", "filter", "-D", chain.as_str()];
            args.extend(spec.iter().map(String::as_str));
            crate::node::command(program, &args)?;
        }
    }
    // Then our chains: all emptied before any is deleted, as they jump to one another.
    for chain in &chains {
        crate::node::command(program, &["-w", "-t", "filter", "-F", chain])?;
    }
    for chain in &chains {
        crate::node::command(program, &["-w", "-t", "filter", "-X", chain])?;
    }
    Ok(())
}

fn clean_up_ipsets() -> Result<()> {
    let Ok(names) = crate::node::command("ipset", &["list", "-n"]) else {
        // No ipset installed: kube-router (which needs it) cannot have made any.
        return Ok(());
    };
    for name in names.lines().map(str::trim) {
        if IPSET_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
            crate::node::command("ipset", &["destroy", name])?;
        }
    }
    Ok(())
}

/// `iptables -w ARGS` (IPv4), failing with its error output.
fn iptables(args: &[&str]) -> Result<String> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    crate::node::command("iptables", &all)
}

/// The probe image ([`PROBE_IMAGE`]) as an OCI archive in the cache: `tests/probe` built static
/// and alone in a scratch image, run as `nobody` (65534). Its entrypoint is `/probe`, so a pod
/// gives the rest as its args (`["serve", ":8080"]`), and `kubectl exec POD -- /probe get URL 2s`
/// checks a path from a running pod. Load it with [`crate::node::load_image`] (pods then use
/// `imagePullPolicy: Never`).
pub fn probe_image() -> Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probe");
    let binary = crate::binaries::go_program("probe", &source)?;
    // The image's entry is named after the binary's, which changes with the program's sources.
    let key = binary
        .parent()
        .and_then(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .context("the probe binary's cache entry")?;
    let dir = crate::cache::fill_dir(
        &cache_dir(),
        &format!("images/{key}"),
        |dir| dir.join("probe.oci.tar").is_file(),
        |staging| {
            let archive = staging.join("probe.oci.tar");
            crate::node::build_scratch_image(
                &binary,
                "/probe",
                "65534:65534",
                &archive,
                PROBE_IMAGE,
            )
        },
    )?;
    Ok(dir.join("probe.oci.tar"))
}
