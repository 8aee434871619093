//! Builds the control-plane binaries from Go modules, at pinned versions, into a per-version cache.
//!
//! `k8s.io/kubernetes` cannot be built with a bare `go install`: its go.mod replaces the `k8s.io/*`
//! staging modules with local paths. So each build gets a small wrapper module that requires the
//! target module and carries over its replace directives, pointing the staging ones at the published
//! `k8s.io/<name> v0.<minor>.<patch>` modules instead.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// Kubernetes release the tests run against (the newest; the API targets 1.33 and later).
pub const KUBERNETES_VERSION: &str = "1.37.2";
/// etcd release, in the line Kubernetes 1.37 is tested with.
pub const ETCD_VERSION: &str = "3.6.16";
/// kwok release: fake nodes whose pods become Running and Ready without a kubelet.
pub const KWOK_VERSION: &str = "0.8.0";
/// Helm release used to render and check Sluice's chart.
pub const HELM_VERSION: &str = "3.22.0";
/// Gateway API release whose standard CRDs (HTTPRoute) are installed into test clusters.
pub const GATEWAY_API_VERSION: &str = "1.5.1";
/// Istio API release whose generated CRDs (VirtualService, DestinationRule) are installed into
/// test clusters.
pub const ISTIO_API_VERSION: &str = "1.32.0";
/// Argo Rollouts release built as a peer to benchmark against: the newest v1.10.x the local Go
/// builds. (v1.10.2 declares `go 1.26.10` in its go.mod, which a go1.26.8 toolchain with
/// `GOTOOLCHAIN=local` refuses; v1.10.1 declares `go 1.26.1`.)
pub const ARGO_ROLLOUTS_VERSION: &str = "1.10.1";

/// Paths of the built binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    pub helm: PathBuf,
}

/// The Argo Rollouts controller, built from its Go module, and its CRD manifests.
///
/// Run it out of cluster, scoped to one namespace, with
/// `rollouts-controller --kubeconfig <file> --namespaced --namespace <ns> --leader-elect=false
/// --metricsPort <port> --healthzPort <port>` and `POD_NAMESPACE=<ns>` in its environment (else it
/// watches notification ConfigMaps and Secrets in `argo-rollouts`). Its metrics and healthz servers
/// listen on all interfaces (`0.0.0.0`); the defaults are 8090 and 8080.
///
/// Argo's CRDs are in group `argoproj.io`, but their plural and short names (`rollouts`/`ro`,
/// `analysisruns`/`ar`, `analysistemplates`/`at`, `clusteranalysistemplates`/`cat`) are Sluice's
/// too: once both are installed, a bare `kubectl get ro` or `kubectl get rollouts` lists Argo's
/// (`argoproj.io` sorts first), so Sluice's commands use `rollouts.sluice.dev` or its own short
/// names (`sro`, `sar`, `sat`, `scat`). Every test cluster has them installed
/// ([`argo_rollouts_crds`]).
#[derive(Clone, Debug)]
pub struct ArgoRollouts {
    /// The `rollouts-controller` binary.
    pub controller: PathBuf,
    /// The module version it was built from, e.g. `v1.10.1`.
    pub version: String,
    /// `manifests/crds` of that version in the Go module cache (Rollout, AnalysisRun,
    /// AnalysisTemplate, ClusterAnalysisTemplate, Experiment). It also holds a
    /// `kustomization.yaml`, which makes `kubectl apply -f <dir>` fail; apply it with
    /// `kubectl apply --server-side -k <dir>` (or the `*-crd.yaml` files one by one).
    pub crds: PathBuf,
}

/// Where built binaries and downloads are cached: `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`,
/// else `~/.cache/sluice`. Outside the checkout, so a fresh clone reuses them.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("sluice")
}

/// One wrapper-module build producing one or more binaries.
struct GoBuild {
    /// Cache directory name, e.g. `kubernetes-v1.37.2`.
    name: String,
    module: &'static str,
    version: String,
    /// (package, binary name) pairs.
    packages: Vec<(&'static str, &'static str)>,
    ldflags: String,
    /// For k8s.io/kubernetes: the staging modules' published version (`v0.37.2`).
    staging_version: Option<String>,
}

impl GoBuild {
    fn dir(&self) -> PathBuf {
        cache_dir().join("bin").join(&self.name)
    }

    fn is_built(&self) -> bool {
        self.has_binaries(&self.dir())
    }

    fn has_binaries(&self, dir: &Path) -> bool {
        self.packages.iter().all(|(_, bin)| dir.join(bin).is_file())
    }

    /// Builds the binaries into the cache unless they are there, once however many callers ask
    /// at the same time ([`crate::cache::fill_dir`]).
    fn ensure(&self) -> Result<PathBuf> {
        crate::cache::fill_dir(
            &cache_dir(),
            &format!("bin/{}", self.name),
            |dir| self.has_binaries(dir),
            |staging| build_into(self, staging),
        )
        .with_context(|| format!("building {}", self.name))
    }
}

fn builds() -> Vec<GoBuild> {
    let k8s = format!("v{KUBERNETES_VERSION}");
    let (major, minor) = {
        let mut parts = KUBERNETES_VERSION.split('.');
        (parts.next().unwrap_or("1"), parts.next().unwrap_or("0"))
    };
    let version_flags = [
        ("k8s.io/component-base/version.gitVersion", k8s.as_str()),
        ("k8s.io/component-base/version.gitMajor", major),
        ("k8s.io/component-base/version.gitMinor", minor),
        ("k8s.io/component-base/version.gitTreeState", "clean"),
        ("k8s.io/client-go/pkg/version.gitVersion", k8s.as_str()),
        ("k8s.io/client-go/pkg/version.gitMajor", major),
        ("k8s.io/client-go/pkg/version.gitMinor", minor),
    ]
    .iter()
    .map(|(var, value)| format!(" -X {var}={value}"))
    .collect::<String>();
    vec![
        GoBuild {
            name: format!("kubernetes-{k8s}"),
            module: "k8s.io/kubernetes",
            version: k8s.clone(),
            packages: vec![
                ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
                (
                    "k8s.io/kubernetes/cmd/kube-controller-manager",
                    "kube-controller-manager",
                ),
                ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
                ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
            ],
            ldflags: format!("-s -w{version_flags}"),
            staging_version: Some(format!("v0.{}", &KUBERNETES_VERSION[2..])),
        },
        GoBuild {
            name: format!("etcd-v{ETCD_VERSION}"),
            module: "go.etcd.io/etcd/server/v3",
            version: format!("v{ETCD_VERSION}"),
            packages: vec![("go.etcd.io/etcd/server/v3", "etcd")],
            ldflags: "-s -w".to_owned(),
            staging_version: None,
        },
        GoBuild {
            name: format!("kwok-v{KWOK_VERSION}"),
            module: "sigs.k8s.io/kwok",
            version: format!("v{KWOK_VERSION}"),
            packages: vec![("sigs.k8s.io/kwok/cmd/kwok", "kwok")],
            ldflags: "-s -w".to_owned(),
            staging_version: None,
        },
        GoBuild {
            name: format!("helm-v{HELM_VERSION}"),
            module: "helm.sh/helm/v3",
            version: format!("v{HELM_VERSION}"),
            packages: vec![("helm.sh/helm/v3/cmd/helm", "helm")],
            ldflags: "-s -w".to_owned(),
            staging_version: None,
        },
    ]
}

/// The real node's Kubernetes binaries: the kubelet and kube-proxy, from the same module and
/// version as the control plane's (a build of its own, so that clusters without a real node never
/// wait for it; Go's build cache shares the packages both use).
fn node_build() -> GoBuild {
    let mut build = builds().swap_remove(0);
    build.name = format!("kubernetes-node-v{KUBERNETES_VERSION}");
    build.packages = vec![
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
    ];
    build
}

/// Paths of the real node's Kubernetes binaries.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
}

/// Builds the kubelet and kube-proxy unless they are in the cache.
pub fn ensure_node_binaries() -> Result<NodeBinaries> {
    let build = node_build();
    if !build.is_built() {
        check_go()?;
        eprintln!(
            "Building {} (kubelet, kube-proxy) from Go modules into {} (cached per version)",
            build.name,
            build.dir().display()
        );
    }
    let dir = build.ensure()?;
    Ok(NodeBinaries {
        kubelet: dir.join("kubelet"),
        kube_proxy: dir.join("kube-proxy"),
    })
}

fn argo_rollouts_build() -> GoBuild {
    let version = format!("v{ARGO_ROLLOUTS_VERSION}");
    GoBuild {
        name: format!("argo-rollouts-{version}"),
        module: ARGO_ROLLOUTS_MODULE,
        version,
        packages: vec![(
            "github.com/argoproj/argo-rollouts/cmd/rollouts-controller",
            "rollouts-controller",
        )],
        // Reported by `rollouts-controller --version` as `v1.10.1+unknown`.
        ldflags: format!(
            "-s -w -X {ARGO_ROLLOUTS_MODULE}/utils/version.version={ARGO_ROLLOUTS_VERSION}"
        ),
        // Its go.mod replaces module-to-module only (k8s.io/* pinned to published versions, and a
        // telegram-bot-api fork): `wrapper_go_mod` carries them all over as they are.
        staging_version: None,
    }
}

const ARGO_ROLLOUTS_MODULE: &str = "github.com/argoproj/argo-rollouts";

/// krew, kubectl's plugin manager: its manifest validator and the installer check the plugin's
/// release archive and manifest (`cargo xtask plugin-release --check`).
pub const KREW_VERSION: &str = "0.4.3";

/// The krew binaries.
#[derive(Clone, Debug)]
pub struct Krew {
    pub krew: PathBuf,
    pub validate: PathBuf,
}

/// Builds krew and its manifest validator unless they are in the cache.
pub fn ensure_krew() -> Result<Krew> {
    let version = format!("v{KREW_VERSION}");
    let build = GoBuild {
        name: format!("krew-{version}"),
        module: "sigs.k8s.io/krew",
        ldflags: format!("-s -w -X sigs.k8s.io/krew/internal/version.gitTag={version}"),
        version,
        packages: vec![
            ("sigs.k8s.io/krew/cmd/krew", "krew"),
            (
                "sigs.k8s.io/krew/cmd/validate-krew-manifest",
                "validate-krew-manifest",
            ),
        ],
        staging_version: None,
    };
    if !build.is_built() {
        check_go()?;
    }
    let dir = build.ensure()?;
    Ok(Krew {
        krew: dir.join("krew"),
        validate: dir.join("validate-krew-manifest"),
    })
}

/// kube-router, whose network-policy controller enforces NetworkPolicies on the real node
/// ([`crate::netpol`]). The Go module proxy serves only this one of the v2 line (later tags are
/// refused); its go.mod asks `go 1.21` and replaces nothing.
pub const KUBE_ROUTER_VERSION: &str = "2.1.0";
const KUBE_ROUTER_MODULE: &str = "github.com/cloudnativelabs/kube-router/v2";

fn kube_router_build() -> GoBuild {
    let version = format!("v{KUBE_ROUTER_VERSION}");
    GoBuild {
        name: format!("kube-router-{version}"),
        module: KUBE_ROUTER_MODULE,
        ldflags: format!("-s -w -X {KUBE_ROUTER_MODULE}/pkg/version.Version={version}"),
        version,
        packages: vec![(
            "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
            "kube-router",
        )],
        staging_version: None,
    }
}

/// Builds kube-router unless it is in the cache and returns its path.
pub fn ensure_kube_router() -> Result<PathBuf> {
    let build = kube_router_build();
    if !build.is_built() {
        check_go()?;
        eprintln!(
            "Building {} from its Go module into {} (cached per version)",
            build.name,
            build.dir().display()
        );
    }
    Ok(build.ensure()?.join("kube-router"))
}

/// How every package is compiled: without the builder's paths, and without debug information,
/// which the binaries drop anyway (`-ldflags -s -w`) and which takes about a tenth of a cold
/// build's compile time (kwok: 89 s against 100 s on two cores).
const COMPILE_FLAGS: [&str; 2] = ["-trimpath", "-gcflags=all=-dwarf=false"];

/// The Go environment for reproducible, offline-friendly builds with the local toolchain.
fn go_command(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    cmd
}

/// Builds whatever is missing from the cache and returns the binaries' paths.
pub fn ensure_binaries() -> Result<Binaries> {
    let all = builds();
    let missing: Vec<&GoBuild> = all.iter().filter(|b| !b.is_built()).collect();
    if !missing.is_empty() {
        check_go()?;
        eprintln!(
            "Building {} from Go modules into {} (cached per version; a cold build takes 10 to 30 minutes on 2 cores)",
            missing
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            cache_dir().join("bin").display()
        );
        for build in missing {
            build.ensure()?;
        }
    }
    let path = |build: usize, bin: &str| all[build].dir().join(bin);
    Ok(Binaries {
        kube_apiserver: path(0, "kube-apiserver"),
        kube_controller_manager: path(0, "kube-controller-manager"),
        kube_scheduler: path(0, "kube-scheduler"),
        kubectl: path(0, "kubectl"),
        etcd: path(1, "etcd"),
        kwok: path(2, "kwok"),
        helm: path(3, "helm"),
    })
}

/// Builds the Argo Rollouts controller (cached per version, like the control-plane binaries) and
/// locates its CRDs. Not part of [`ensure_binaries`]: only benchmarks that compare against Argo
/// Rollouts need it. The controller's embedded UI (`server/static`) needs no assets: the module
/// ships that directory with a `.gitkeep`, which the `static/*` embed pattern matches.
pub fn ensure_argo_rollouts() -> Result<ArgoRollouts> {
    let build = argo_rollouts_build();
    if !build.is_built() {
        check_go()?;
        eprintln!(
            "Building {} from its Go module into {} (cached per version; a cold build takes several minutes on 2 cores)",
            build.name,
            build.dir().display()
        );
        build.ensure()?;
    }
    Ok(ArgoRollouts {
        controller: build.dir().join("rollouts-controller"),
        crds: argo_rollouts_crds()?,
        version: build.version,
    })
}

/// Argo Rollouts' CRD manifests (`manifests/crds` of its pinned Go module, downloaded, not built):
/// every test cluster has them installed beside Sluice's, as a cluster moving from Argo Rollouts
/// would, so the suite and the demo prove that Sluice's commands never resolve to Argo's kinds.
pub fn argo_rollouts_crds() -> Result<PathBuf> {
    let build = argo_rollouts_build();
    let dir = module_source(&format!("{}-src", build.name), build.module, &build.version)?;
    let crds = dir.join("manifests").join("crds");
    if !crds.join("rollout-crd.yaml").is_file() {
        bail!("{} has no manifests/crds/rollout-crd.yaml", dir.display());
    }
    Ok(crds)
}

fn check_go() -> Result<()> {
    let out = Command::new("go").arg("version").output();
    match out {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!(
            "Go is needed to build the Kubernetes binaries; install Go 1.26 or later and retry"
        ),
    }
}

/// Downloads `module@version` and returns the path of its go.mod and its source directory.
fn download_module(work: &Path, module: &str, version: &str) -> Result<(PathBuf, PathBuf)> {
    let out = go_command(work)
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .stderr(Stdio::inherit())
        .output()
        .context("running go mod download")?;
    if !out.status.success() {
        bail!("go mod download {module}@{version} failed");
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |name: &str| {
        info[name]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("go mod download gave no {name} for {module}"))
    };
    Ok((field("GoMod")?, field("Dir")?))
}

/// Downloads `module@version` from a scratch module directory named `work_name` and returns its
/// (read-only) source directory in the module cache.
fn module_source(work_name: &str, module: &str, version: &str) -> Result<PathBuf> {
    // Go's module cache locks its own entries; the lock keeps two callers from rewriting the
    // scratch module's go.mod while the other's `go mod download` reads it.
    let _lock = crate::cache::lock(&cache_dir(), &format!("go-work-{work_name}"))?;
    let work = cache_dir().join("go-work").join(work_name);
    fs::create_dir_all(&work)?;
    fs::write(
        work.join("go.mod"),
        format!("module sluice.dev/testbed/{work_name}\n"),
    )?;
    let (_, dir) = download_module(&work, module, version)?;
    Ok(dir)
}

/// The wrapper module's go.mod: requires the module and carries over its replace directives.
fn wrapper_go_mod(build: &GoBuild, upstream_go_mod: &str) -> String {
    let go_directive = upstream_go_mod
        .lines()
        .find(|l| l.starts_with("go "))
        .unwrap_or("go 1.26.0");
    let mut replaces = Vec::new();
    let mut in_block = false;
    for line in upstream_go_mod.lines() {
        let line = line.trim();
        let directive = if in_block {
            if line == ")" {
                in_block = false;
                continue;
            }
            line
        } else if line == "replace (" {
            in_block = true;
            continue;
        } else if let Some(rest) = line.strip_prefix("replace ") {
            rest
        } else {
            continue;
        };
        let Some((from, to)) = directive.split_once("=>") else {
            continue;
        };
        let (from, to) = (from.trim(), to.trim());
        if to.starts_with("./staging/") {
            if let Some(version) = &build.staging_version {
                replaces.push(format!("\t{from} => {from} {version}"));
            }
        } else if !to.starts_with('.') {
            // Module-to-module pins are kept; paths inside the upstream repository are not reachable.
            replaces.push(format!("\t{from} => {to}"));
        }
    }
    let mut go_mod = format!(
        "// Generated by sluice-testbed: builds {}@{}.\nmodule sluice.dev/testbed/{}\n\n{go_directive}\n\nrequire {} {}\n",
        build.module, build.version, build.name, build.module, build.version
    );
    if !replaces.is_empty() {
        go_mod.push_str(&format!("\nreplace (\n{}\n)\n", replaces.join("\n")));
    }
    go_mod
}

/// Builds `build`'s binaries into `out`, in a wrapper module under the cache's `go-work` (the
/// caller holds the entry's lock, so no other build uses that module at the same time).
fn build_into(build: &GoBuild, out: &Path) -> Result<()> {
    let started = Instant::now();
    let work = cache_dir().join("go-work").join(&build.name);
    fs::create_dir_all(&work)?;
    // A module file is needed before `go mod download` runs inside the directory.
    fs::write(work.join("go.mod"), "module sluice.dev/testbed/bootstrap\n")?;
    let spinner = spinner(&format!("{}: resolving modules", build.name));
    let (upstream_go_mod, _) = download_module(&work, build.module, &build.version)?;
    let upstream = fs::read_to_string(&upstream_go_mod)?;
    fs::write(work.join("go.mod"), wrapper_go_mod(build, &upstream))?;
    let _ = fs::remove_file(work.join("go.sum"));
    let packages: Vec<&str> = build.packages.iter().map(|(p, _)| *p).collect();
    let deps = go_command(&work)
        .args([
            "list",
            "-deps",
            "-f",
            "{{if not .Standard}}{{.ImportPath}}{{end}}",
        ])
        .args(&packages)
        .stderr(Stdio::inherit())
        .output()
        .context("running go list")?;
    if !deps.status.success() {
        bail!("go list failed for {}", packages.join(" "));
    }
    let total = deps
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    spinner.finish_and_clear();

    // Go's own output place; the binaries then move (same file system) into `out` by their names.
    let go_out = work.join("out");
    let _ = fs::remove_dir_all(&go_out);
    fs::create_dir_all(&go_out)?;
    let bar = ProgressBar::new(total.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} packages {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(build.name.clone());
    bar.enable_steady_tick(Duration::from_millis(500));
    let mut child = go_command(&work)
        .args(["build", "-v"])
        .args(COMPILE_FLAGS)
        .args(["-ldflags", &build.ldflags, "-o"])
        .arg(format!("{}/", go_out.display()))
        .args(&packages)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running go build")?;
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            // `go build -v` names each package as it compiles it; anything else is a diagnostic.
            if line.contains(' ') || line.starts_with('#') {
                errors.push(line);
            } else {
                bar.inc(1);
                // Without a terminal (CI logs) the bar is hidden: report every tenth instead.
                let done = bar.position();
                if bar.is_hidden() && done * 10 / total.max(1) != (done - 1) * 10 / total.max(1) {
                    eprintln!(
                        "  {}: {done}/{total} packages compiled after {:.0?}",
                        build.name,
                        started.elapsed()
                    );
                }
                bar.set_message(line);
            }
        }
    }
    let status = child.wait()?;
    bar.finish_and_clear();
    if !status.success() {
        bail!("go build failed:\n{}", errors.join("\n"));
    }
    // `go build -o dir/` names a binary after its package's last path element (without a major-version suffix).
    for (package, bin) in &build.packages {
        let produced = package
            .split('/')
            .rev()
            .find(|part| !(part.starts_with('v') && part[1..].chars().all(|c| c.is_ascii_digit())))
            .unwrap_or(bin);
        fs::rename(go_out.join(produced), out.join(bin))
            .with_context(|| format!("moving {produced} into {}", out.display()))?;
    }
    eprintln!("  built {} in {:.0?}", build.name, started.elapsed());
    Ok(())
}

/// A small Go program of the repository's own (`source`, a main package with its go.mod and
/// go.sum), built into the cache under a name that changes with its sources, so an edit builds it
/// again and concurrent callers share one build.
pub fn go_program(name: &str, source: &Path) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<PathBuf> = fs::read_dir(source)
        .with_context(|| format!("reading {}", source.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "go" || ext == "mod" || ext == "sum")
        })
        .collect();
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        file.file_name().hash(&mut hasher);
        fs::read(file)?.hash(&mut hasher);
    }
    let dir = crate::cache::fill_dir(
        &cache_dir(),
        &format!("bin/{name}-{:016x}", hasher.finish()),
        |dir| dir.join(name).is_file(),
        |staging| {
            check_go()?;
            let status = go_command(source)
                // The checkout's go.mod and go.sum are read, never rewritten.
                .env("GOFLAGS", "-mod=readonly")
                .arg("build")
                .args(COMPILE_FLAGS)
                .args(["-ldflags", "-s -w", "-o"])
                .arg(staging.join(name))
                .arg(".")
                .status()
                .context("running go build")?;
            if !status.success() {
                bail!("go build of {} failed", source.display());
            }
            Ok(())
        },
    )?;
    Ok(dir.join(name))
}

/// The directory holding the Gateway API's standard CRDs (HTTPRoute and friends).
pub fn gateway_api_crds() -> Result<PathBuf> {
    let dir = module_source(
        "gateway-api",
        "sigs.k8s.io/gateway-api",
        &format!("v{GATEWAY_API_VERSION}"),
    )?;
    let crds = dir.join("config").join("crd").join("standard");
    if !crds.is_dir() {
        bail!("{} has no config/crd/standard", dir.display());
    }
    Ok(crds)
}

/// Istio's generated CRD file (VirtualService, DestinationRule and the rest), from its API module.
pub fn istio_crds() -> Result<PathBuf> {
    let dir = module_source(
        "istio-api",
        "istio.io/api",
        &format!("v{ISTIO_API_VERSION}"),
    )?;
    let crds = dir
        .join("kubernetes")
        .join("customresourcedefinitions.gen.yaml");
    if !crds.is_file() {
        bail!(
            "{} has no kubernetes/customresourcedefinitions.gen.yaml",
            dir.display()
        );
    }
    Ok(crds)
}

/// kwok's own "fast" stages, from its module: nodes become Ready and keep a lease; pods become
/// Running and Ready at once, complete, and are deleted.
pub fn kwok_stages() -> Result<String> {
    let dir = module_source(
        "kwok-stages",
        "sigs.k8s.io/kwok",
        &format!("v{KWOK_VERSION}"),
    )?;
    let stages = dir.join("kustomize").join("stage");
    let files = [
        "node/fast/node-initialize.yaml",
        "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
    ];
    let mut config = String::new();
    for file in files {
        let mut text = fs::read_to_string(stages.join(file))
            .with_context(|| format!("reading kwok stage {file}"))?;
        // Pods marked never-ready skip kwok's ready stage, and Job pods marked to fail its complete
        // stage: they get ours instead.
        if file.ends_with("pod-ready.yaml") {
            text = skip_annotated(&text, file, NEVER_READY_ANNOTATION)?;
        }
        if file.ends_with("pod-complete.yaml") {
            text = skip_annotated(&text, file, FAIL_ANNOTATION)?;
        }
        config.push_str("---\n");
        config.push_str(&text);
        config.push('\n');
    }
    config.push_str(NEVER_READY_STAGE);
    config.push_str(FAIL_STAGE);
    Ok(config)
}

/// Pod annotation that makes a Job's pod fail (exit code 1) where kwok would complete it.
pub const FAIL_ANNOTATION: &str = "kwok.sluice.dev/fail";

const FAIL_STAGE: &str = r#"---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.metadata.annotations["kwok.sluice.dev/fail"]'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values:
      - 'Job'
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            finishedAt: {{ $now | Quote }}
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
"#;

/// kwok's stage `text` (from `file`) with one more selector term: pods without `annotation`.
fn skip_annotated(text: &str, file: &str, annotation: &str) -> Result<String> {
    let anchor = "    - key: '.metadata.deletionTimestamp'\n      operator: 'DoesNotExist'\n";
    if !text.contains(anchor) {
        bail!("kwok's stage {file} changed shape; update kwok_stages()");
    }
    let extra = format!(
        "    - key: '.metadata.annotations[\"{annotation}\"]'\n      operator: 'DoesNotExist'\n"
    );
    Ok(text.replacen(anchor, &format!("{anchor}{extra}"), 1))
}

/// Pod annotation that keeps a pod Running but never Ready, as a crash-looping version's would be.
pub const NEVER_READY_ANNOTATION: &str = "kwok.sluice.dev/never-ready";

const NEVER_READY_STAGE: &str = r#"---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-running-never-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.metadata.annotations["kwok.sluice.dev/never-ready"]'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 3
        started: false
        state:
          waiting:
            reason: CrashLoopBackOff
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"#;

pub(crate) fn spinner(message: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_rewrites_staging_and_drops_local_paths() {
        let upstream = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tgithub.com/x/y => github.com/x/y v1.2.3\n)\nreplace go.etcd.io/etcd/api/v3 => ../api\n";
        let build = GoBuild {
            name: "kubernetes-v1.37.2".into(),
            module: "k8s.io/kubernetes",
            version: "v1.37.2".into(),
            packages: vec![],
            ldflags: String::new(),
            staging_version: Some("v0.37.2".into()),
        };
        let go_mod = wrapper_go_mod(&build, upstream);
        assert!(go_mod.contains("require k8s.io/kubernetes v1.37.2"));
        assert!(go_mod.contains("k8s.io/api => k8s.io/api v0.37.2"));
        assert!(go_mod.contains("github.com/x/y => github.com/x/y v1.2.3"));
        assert!(!go_mod.contains("../api"));
        assert!(go_mod.contains("\ngo 1.26.0\n"));
    }

    #[test]
    fn argo_rollouts_wrapper_keeps_module_pins() {
        let upstream = "module github.com/argoproj/argo-rollouts\n\ngo 1.26.1\n\nreplace (\n\tgithub.com/go-telegram-bot-api/telegram-bot-api/v5 => github.com/OvyFlash/telegram-bot-api/v5 v5.0.0-20240108230938-63e5c59035bf\n\tk8s.io/api => k8s.io/api v0.34.5\n)\n";
        let build = argo_rollouts_build();
        assert_eq!(
            build.name,
            format!("argo-rollouts-v{ARGO_ROLLOUTS_VERSION}")
        );
        let go_mod = wrapper_go_mod(&build, upstream);
        assert!(go_mod.contains(&format!(
            "require github.com/argoproj/argo-rollouts v{ARGO_ROLLOUTS_VERSION}"
        )));
        assert!(go_mod.contains("\tk8s.io/api => k8s.io/api v0.34.5\n"));
        assert!(go_mod.contains(
            "github.com/go-telegram-bot-api/telegram-bot-api/v5 => github.com/OvyFlash/telegram-bot-api/v5 v5.0.0-20240108230938-63e5c59035bf"
        ));
    }
}
