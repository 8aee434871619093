//! A node that runs real containers, beside kwok's fake ones: the kubelet and kube-proxy built from
//! the same Kubernetes module as the control plane, Debian's containerd and runc, Debian's CNI
//! plugins on a bridge of its own, and CoreDNS (built from its module with the plugins it needs,
//! `tests/coredns`) answering for `cluster.local` at the node's address, so pods reach Services by
//! name (`prometheus.monitoring.svc`) as they do in any cluster, and kube-router's network-policy
//! controller ([`crate::netpol`]), so NetworkPolicies hold there as they do in a cluster whose
//! network plugin enforces them. Pods that must run for real (the operator from its image, the
//! chart's dashboard) tolerate its taint and select its label; everything else stays on kwok.
//!
//! Images cannot be pulled here: they are loaded into containerd from OCI archives
//! ([`load_image`]), the pod sandbox ("pause") image included, which the testbed builds from
//! `tests/pause`.
//!
//! The pods' network leads nowhere but to each other and to this machine: their addresses come
//! from 198.18.0.0/24 (a range reserved for benchmarking networks, RFC 2544), the bridge does not
//! masquerade, and a chain of our own rejects anything a pod sends that would leave the bridge,
//! and anything this machine sends to the Service or kwok pod ranges that kube-proxy did not
//! rewrite to a local address. The API server and Prometheus listen on the bridge's address, which
//! the `kubernetes` Service and a `prometheus` Service in `monitoring` point at.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::binaries::{NodeBinaries, cache_dir, ensure_node_binaries, go_program};
use crate::prometheus::ensure_debian_program;

/// The real node's name.
pub const NODE_NAME: &str = "sluice-node";
/// The label that selects it (`true`) and the key of its `NoSchedule` taint.
pub const NODE_LABEL: &str = "sluice.dev/real-node";
/// The pods' bridge.
pub const BRIDGE: &str = "sluice0";
/// The pods' addresses.
pub const POD_SUBNET: &str = "198.18.0.0/24";
/// The bridge's own address: the node's address, where pods reach the API server and Prometheus.
pub const NODE_IP: &str = "198.18.0.1";
/// The Services' range (the API server's `--service-cluster-ip-range`).
pub const SERVICE_SUBNET: &str = "10.96.0.0/16";
/// kwok's pod range: no traffic may go there, no pod answers.
pub const KWOK_POD_SUBNET: &str = "10.244.0.0/16";
/// The pod sandbox image containerd starts first in every pod.
pub const PAUSE_IMAGE: &str = "sluice.dev/testbed/pause:1";
/// containerd's namespace for Kubernetes' images and containers.
const CONTAINERD_NAMESPACE: &str = "k8s.io";
/// The chain that keeps pod traffic on the bridge.
const GUARD_CHAIN: &str = "SLUICE-GUARD";

/// The node's processes, in start order; stopped in reverse, before the control plane.
pub const NODE_COMPONENTS: [&str; 5] = [
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
    crate::netpol::COMPONENT,
];

/// Names the state directory of the cluster that runs the machine's real node.
const CLAIM: &str = "/run/sluice-real-node";

/// Claims the machine's real node for the cluster in `state_dir`. There is one: one bridge, one
/// address, one set of `kubepods` cgroups, so a second cluster with a node would take the first
/// one's pods and network. Fails, saying whose it is, while another cluster's node runs.
pub(crate) fn claim(state_dir: &Path) -> Result<()> {
    let state_dir = fs::canonicalize(state_dir)?;
    if let Ok(owner) = fs::read_to_string(CLAIM) {
        let owner = PathBuf::from(owner.trim());
        let runs = crate::cluster::running_components(&owner)
            .iter()
            .any(|(name, _)| NODE_COMPONENTS.contains(name));
        if owner != state_dir && runs {
            bail!(
                "the machine's real node belongs to the cluster in {} (one per machine): stop it \
                 with `cargo xtask cluster down` there, or start this one without a node \
                 (SLUICE_CLUSTER_REAL_NODE=0)",
                owner.display()
            );
        }
    }
    fs::write(CLAIM, state_dir.display().to_string())?;
    Ok(())
}

/// Gives the real node up, if the cluster in `state_dir` holds it.
pub(crate) fn release(state_dir: &Path) {
    let owner = fs::read_to_string(CLAIM).unwrap_or_default();
    if fs::canonicalize(state_dir).is_ok_and(|dir| Path::new(owner.trim()) == dir) {
        let _ = fs::remove_file(CLAIM);
    }
}

/// Everything the real node runs: the kubelet and kube-proxy, Debian's containerd, runc and CNI
/// plugins, and the pause image's archive.
#[derive(Clone, Debug)]
pub struct NodeTools {
    pub kubernetes: NodeBinaries,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub pause_archive: PathBuf,
    pub coredns: PathBuf,
    pub kube_router: PathBuf,
    /// The image tests run on the node to check who reaches whom ([`crate::netpol::PROBE_IMAGE`]).
    pub probe_archive: PathBuf,
}

/// Builds or installs what the node runs (cached; safe for concurrent callers).
pub fn ensure_tools() -> Result<NodeTools> {
    let kubernetes = ensure_node_binaries()?;
    let containerd = ensure_debian_program("containerd", "containerd")?;
    let ctr = ensure_debian_program("ctr", "containerd")?;
    ensure_debian_program("runc", "runc")?;
    ensure_debian_program("conntrack", "conntrack")?;
    ensure_debian_program("iptables", "iptables")?;
    let cni_bin_dir = PathBuf::from("/usr/lib/cni");
    if !cni_bin_dir.join("bridge").is_file() {
        crate::prometheus::apt_install(&["containernetworking-plugins"])?;
    }
    let coredns = go_program(
        "coredns",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../coredns"),
    )?;
    Ok(NodeTools {
        coredns,
        kube_router: crate::binaries::ensure_kube_router()?,
        probe_archive: crate::netpol::probe_image()?,
        kubernetes,
        containerd,
        ctr,
        cni_bin_dir,
        pause_archive: pause_archive()?,
    })
}

/// The pause image as an OCI archive in the cache, built with buildah from `tests/pause`.
fn pause_archive() -> Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pause");
    let binary = go_program("pause", &source)?;
    let key = binary
        .parent()
        .and_then(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .context("the pause binary's cache entry")?;
    let dir = crate::cache::fill_dir(
        &cache_dir(),
        &format!("images/{key}"),
        |dir| dir.join("pause.oci.tar").is_file(),
        |staging| {
            let archive = staging.join("pause.oci.tar");
            build_scratch_image(&binary, "/pause", "65535:65535", &archive, PAUSE_IMAGE)
        },
    )?;
    Ok(dir.join("pause.oci.tar"))
}

/// Runs Debian's buildah (installed when missing) with its daemonless `vfs` storage and returns
/// what it printed, trimmed; a failure carries its error output.
pub fn buildah(args: &[&str]) -> Result<String> {
    let program = ensure_debian_program("buildah", "buildah")?;
    let program = program.display().to_string();
    let mut all = vec!["--storage-driver", "vfs"];
    all.extend_from_slice(args);
    Ok(command(&program, &all)?.trim().to_owned())
}

/// An image holding one static binary at `path`, run as `user`, committed as `reference` into the
/// OCI archive `archive`.
pub fn build_scratch_image(
    binary: &Path,
    path: &str,
    user: &str,
    archive: &Path,
    reference: &str,
) -> Result<()> {
    let run = buildah;
    let container = run(&["from", "--pull-never", "scratch"])?;
    let entrypoint = format!("[\"{path}\"]");
    let binary = binary.display().to_string();
    let target = format!("oci-archive:{}:{reference}", archive.display());
    let result = run(&["copy", "--chmod", "0755", &container, &binary, path])
        .and_then(|_| {
            run(&[
                "config",
                "--entrypoint",
                &entrypoint,
                "--user",
                user,
                &container,
            ])
        })
        .and_then(|_| {
            run(&[
                "commit",
                "--format",
                "oci",
                "--timestamp",
                "0",
                "--omit-history",
                &container,
                &target,
            ])
        });
    let _ = run(&["rm", &container]);
    result.map(|_| ())
}

/// Short-lived state that must live on a short path: a unix socket's path has at most 107 bytes,
/// and checkouts can be deep. One directory per state directory, named after its path.
pub fn runtime_dir(state_dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state_dir.hash(&mut hasher);
    PathBuf::from(format!("/run/sluice-{:08x}", hasher.finish() as u32))
}

/// The node's containerd socket (`ctr --address`).
pub fn containerd_socket(state_dir: &Path) -> PathBuf {
    runtime_dir(state_dir).join("containerd.sock")
}

/// containerd's configuration: its own root, state and socket; CRI with the pause image loaded
/// here, runc with cgroupfs (the machine has no systemd), and the CNI configuration of this node.
fn containerd_config(state_dir: &Path, tools: &NodeTools) -> String {
    let node = state_dir.join("node");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # The machine may not let a process lower its OOM score (the kubelet asks -998 for sandboxes).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = node.join("containerd").display(),
        state = runtime_dir(state_dir).join("containerd").display(),
        socket = containerd_socket(state_dir).display(),
        cni_bin = tools.cni_bin_dir.display(),
        cni_conf = node.join("cni").display(),
    )
}

/// The CNI configuration: a bridge with host-local addresses, a default route through the node
/// (Service addresses are rewritten there; anything else meets the guard), no masquerading.
fn cni_config(state_dir: &Path) -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "sluice",
  "plugins": [
    {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{NODE_IP}"}}]],
              "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{ipam}"}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"#,
        ipam = state_dir.join("node").join("cni-ipam").display(),
    )
}

/// The kubelet's configuration: cgroup v1 allowed (this machine mounts it), cgroupfs, no image
/// garbage collection (images cannot be pulled again), no evictions, the node's address.
fn kubelet_config(state_dir: &Path, ca: &Path, healthz_port: u16, port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: ["{NODE_IP}"]
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
enforceNodeAllocatable: []
cgroupsPerQOS: true
registerWithTaints:
- key: {NODE_LABEL}
  value: "true"
  effect: NoSchedule
serializeImagePulls: false
maxPods: 30
resolvConf: "{resolv}"
"#,
        socket = containerd_socket(state_dir).display(),
        ca = ca.display(),
        resolv = state_dir.join("node").join("resolv.conf").display(),
    )
}

fn kube_proxy_config(kubeconfig: &Path, healthz_port: u16, metrics_port: u16) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
clusterCIDR: {POD_SUBNET}
conntrack:
  maxPerCore: 0
  min: 0
nodePortAddresses: ["{NODE_IP}/32"]
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// Runs `program` with `args`, failing with its error output.
pub(crate) fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge with the node's address, forwarding and bridge netfilter on, and the guard chain.
pub fn setup_network() -> Result<()> {
    if command("ip", &["link", "show", BRIDGE]).is_err() {
        command("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let addresses = command("ip", &["-4", "addr", "show", "dev", BRIDGE])?;
    if !addresses.contains(&format!("{NODE_IP}/")) {
        command(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE],
        )?;
    }
    command("ip", &["link", "set", BRIDGE, "up"])?;
    for (key, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
    ] {
        fs::write(key, value).with_context(|| format!("writing {key}"))?;
    }
    guard()
}

/// (Re)writes the guard chain and makes it the first rule of FORWARD and OUTPUT.
fn guard() -> Result<()> {
    let iptables = |args: &[&str]| command("iptables", args);
    if iptables(&["-n", "-L", GUARD_CHAIN]).is_err() {
        iptables(&["-N", GUARD_CHAIN])?;
    }
    iptables(&["-F", GUARD_CHAIN])?;
    let rules: Vec<Vec<&str>> = vec![
        // Pod to pod, and answers to the API server or Prometheus, stay on the bridge.
        vec!["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],
        // Anything else a pod sends through this machine goes nowhere.
        vec!["-i", BRIDGE, "-j", "REJECT"],
        vec!["-o", BRIDGE, "!", "-s", POD_SUBNET, "-j", "REJECT"],
        // This machine's own traffic to a Service or kwok pod address that kube-proxy did not send
        // to the bridge or this machine: rejected, never routed out.
        vec!["-d", SERVICE_SUBNET, "-j", "REJECT"],
        vec!["-d", KWOK_POD_SUBNET, "-j", "REJECT"],
    ];
    for rule in rules {
        let mut args = vec!["-A", GUARD_CHAIN];
        args.extend(rule);
        iptables(&args)?;
    }
    for chain in ["FORWARD", "OUTPUT"] {
        if iptables(&["-C", chain, "-j", GUARD_CHAIN]).is_err() {
            iptables(&["-I", chain, "1", "-j", GUARD_CHAIN])?;
        }
    }
    Ok(())
}

/// Loads an image from an OCI archive into the node's containerd, under `reference`.
pub fn load_image(state_dir: &Path, archive: &Path, reference: &str) -> Result<()> {
    load_image_at(&containerd_socket(state_dir), archive, reference)
}

/// Loads an image from an OCI archive into the containerd at `socket` (a running cluster's
/// `SLUICE_E2E_CONTAINERD`), under `reference`. The archive's own name (its index's
/// `org.opencontainers.image.ref.name`) is imported as is, then tagged as `reference` if that
/// differs: `ctr images import --index-name` fails when the name already points at another
/// image, and a second tag of one archive is how tests make an upgrade.
pub fn load_image_at(socket: &Path, archive: &Path, reference: &str) -> Result<()> {
    let socket = socket.display().to_string();
    let archive_path = archive.display().to_string();
    let index: serde_json::Value = serde_json::from_str(&command(
        "tar",
        &[
            "--extract",
            "--to-stdout",
            "--file",
            &archive_path,
            "index.json",
        ],
    )?)
    .with_context(|| format!("{archive_path} has no OCI index"))?;
    let own = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .with_context(|| format!("{archive_path} names no image (ref.name)"))?
        .to_owned();
    let ctr = |args: &[&str]| -> Result<String> {
        let mut all = vec!["--address", &socket, "--namespace", CONTAINERD_NAMESPACE];
        all.extend_from_slice(args);
        command("ctr", &all)
    };
    ctr(&["images", "import", &archive_path])?;
    if own != reference {
        ctr(&["images", "tag", "--force", &own, reference])?;
    }
    Ok(())
}

/// Writes the node's configuration files and starts containerd, the kubelet and kube-proxy.
pub(crate) fn start(
    state_dir: &Path,
    tools: &NodeTools,
    kubeconfig: &Path,
    ca: &Path,
    ports: [u16; 4],
) -> Result<()> {
    let [kubelet_healthz, kubelet_port, proxy_healthz, proxy_metrics] = ports;
    let node = state_dir.join("node");
    for dir in ["cni", "cni-ipam", "containerd", "kubelet"] {
        fs::create_dir_all(node.join(dir))?;
    }
    fs::create_dir_all(runtime_dir(state_dir))?;
    setup_network()?;
    fs::write(
        node.join("cni").join("10-sluice.conflist"),
        cni_config(state_dir),
    )?;
    // Pods resolve the cluster's names only (CoreDNS below), none of this machine's networks.
    fs::write(node.join("resolv.conf"), "options ndots:5\n")?;
    let containerd_toml = node.join("containerd.toml");
    fs::write(&containerd_toml, containerd_config(state_dir, tools))?;
    crate::cluster::spawn_component(
        state_dir,
        "containerd",
        &tools.containerd,
        &[format!("--config={}", containerd_toml.display())],
    )?;
    let socket = containerd_socket(state_dir);
    crate::cluster::wait_for(state_dir, "containerd", Duration::from_secs(30), || {
        Ok(socket.exists())
    })?;
    load_image(state_dir, &tools.pause_archive, PAUSE_IMAGE)?;
    load_image(state_dir, &tools.probe_archive, crate::netpol::PROBE_IMAGE)?;

    let kubelet_yaml = node.join("kubelet.yaml");
    fs::write(
        &kubelet_yaml,
        kubelet_config(state_dir, ca, kubelet_healthz, kubelet_port),
    )?;
    crate::cluster::spawn_component(
        state_dir,
        "kubelet",
        &tools.kubernetes.kubelet,
        &[
            format!("--config={}", kubelet_yaml.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", node.join("kubelet").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--node-labels={NODE_LABEL}=true"),
            "--v=1".to_owned(),
        ],
    )?;
    let proxy_yaml = node.join("kube-proxy.yaml");
    fs::write(
        &proxy_yaml,
        kube_proxy_config(kubeconfig, proxy_healthz, proxy_metrics),
    )?;
    crate::cluster::spawn_component(
        state_dir,
        "kube-proxy",
        &tools.kubernetes.kube_proxy,
        &[format!("--config={}", proxy_yaml.display())],
    )?;
    let corefile = node.join("Corefile");
    fs::write(&corefile, corefile_text(kubeconfig))?;
    crate::cluster::spawn_component(
        state_dir,
        "coredns",
        &tools.coredns,
        &["-conf".to_owned(), corefile.display().to_string()],
    )?;
    // Ready when it answers for the API server's Service: its Kubernetes caches are synced. (A
    // question, not its `ready` plugin: that needs a port of its own, and a port picked free
    // beforehand can be taken meanwhile by one of the node's components that bind any port.)
    crate::cluster::wait_for(state_dir, "coredns", Duration::from_secs(60), || {
        resolves("kubernetes.default.svc.cluster.local")
    })?;
    Ok(())
}

/// Whether the node's DNS server answers `name` with at least one address (an A record).
fn resolves(name: &str) -> Result<bool> {
    // A DNS query (RFC 1035 4.1): id, flags (recursion desired), one question; then the name as
    // length-prefixed labels, type A, class IN.
    let mut query = vec![0x51, 0x1c, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = std::net::UdpSocket::bind((NODE_IP, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(&query, (NODE_IP, 53))?;
    let mut answer = [0u8; 512];
    let len = socket.recv(&mut answer)?;
    // The same id, a response without error (RCODE 0), and an answer.
    Ok(len >= 12
        && answer[..2] == query[..2]
        && answer[3] & 0x0f == 0
        && u16::from_be_bytes([answer[6], answer[7]]) > 0)
}

/// CoreDNS's configuration: the cluster's zones only, at the node's address (the kubelet's
/// `clusterDNS`), from the API server's Services and EndpointSlices. Other names are refused:
/// nothing is forwarded off the machine.
fn corefile_text(kubeconfig: &Path) -> String {
    format!(
        r#"cluster.local in-addr.arpa ip6.arpa {{
    bind {NODE_IP}
    errors
    kubernetes {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 30
}}
"#,
        kubeconfig = kubeconfig.display(),
    )
}

/// Kills every process of the node's pods (the kubelet's `kubepods` cgroup, in every hierarchy:
/// one real node per machine, so they are all this node's).
pub(crate) fn stop_containers() {
    fn kill_all(dir: &Path) {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    kill_all(&entry.path());
                }
            }
        }
    }
    for hierarchy in ["pids", "memory", "cpu", "unified"] {
        kill_all(&Path::new("/sys/fs/cgroup").join(hierarchy).join("kubepods"));
    }
}

/// The `kubernetes` Service's endpoint (the API server is told not to keep it) at the node's
/// address, and a `prometheus` Service in `monitoring` for the machine's Prometheus, so that pods
/// reach both by their Service names' addresses.
pub fn service_endpoints(apiserver_port: u16, prometheus_port: u16) -> String {
    format!(
        r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: sluice-testbed
addressType: IPv4
ports:
- name: https
  port: {apiserver_port}
  protocol: TCP
endpoints:
- addresses: ["{NODE_IP}"]
  conditions: {{ready: true}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: monitoring
---
apiVersion: v1
kind: Service
metadata:
  name: prometheus
  namespace: monitoring
spec:
  ports:
  - name: web
    port: 9090
    targetPort: {prometheus_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: prometheus
  namespace: monitoring
  labels:
    kubernetes.io/service-name: prometheus
    endpointslice.kubernetes.io/managed-by: sluice-testbed
addressType: IPv4
ports:
- name: web
  port: {prometheus_port}
  protocol: TCP
endpoints:
- addresses: ["{NODE_IP}"]
  conditions: {{ready: true}}
"#
    )
}

/// Stops every container the node started and removes what it left outside its state directory
/// (mounts, the short runtime directory). The processes themselves are stopped by `down`.
pub(crate) fn clean_up(state_dir: &Path) {
    // containerd's shims outlive containerd; each runs as its own process group, with the
    // containerd socket on its command line.
    let socket = containerd_socket(state_dir).display().to_string();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Every mount under the node's directories, deepest first.
    let roots = [state_dir.join("node"), runtime_dir(state_dir)];
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| roots.iter().any(|root| Path::new(point).starts_with(root)))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount")
            .args(["-l", point])
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(runtime_dir(state_dir));
}
