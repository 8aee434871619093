//! `cargo xtask image`: OCI images of the controller and of the kubectl plugin (which serves the
//! dashboard), built here with Debian's `buildah`, no daemon and no base image to pull.
//!
//! Each image holds one binary from the `image` profile (a release build with paths remapped, so
//! the bytes do not depend on where the checkout or the cargo home is) and the few files it needs
//! at run time, taken from this machine's Debian packages: the C library and libgcc (the binary is
//! linked dynamically, so glibc's name resolution works as usual), the CA bundle, and `passwd` /
//! `group` naming the non-root user it runs as. No shell, no package manager. Every file gets the
//! same time and owner, and the image's creation time is the commit's, so two builds of one commit
//! have one digest. Beside each archive: a CycloneDX SBOM of the crates linked in and the Debian
//! packages copied.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The user (and group) the images run as: distroless' `nonroot`.
pub const USER_ID: u32 = 65532;
/// Where the chart finds the images unless told otherwise (`image.registry` and the
/// `sluice-dev/` of `image.repository`).
pub const REGISTRY: &str = "ghcr.io/sluice-dev";
const SOURCE: &str = "https://github.com/sluice-dev/sluice";

/// One image: a binary of one package.
pub struct ImageSpec {
    /// The image's name under [`REGISTRY`] and its archive's file name.
    pub name: &'static str,
    pub package: &'static str,
    pub binary: &'static str,
    pub title: &'static str,
}

pub const IMAGES: [ImageSpec; 2] = [
    ImageSpec {
        name: "sluice-controller",
        package: "sluice-controller",
        binary: "sluice-controller",
        title: "Sluice controller",
    },
    ImageSpec {
        name: "kubectl-sluice",
        package: "kubectl-sluice",
        binary: "kubectl-sluice",
        title: "Sluice kubectl plugin and dashboard",
    },
];

/// What a build produced, per image.
pub struct Built {
    pub name: &'static str,
    /// `REGISTRY/name:version`, the name the archive carries.
    pub reference: String,
    pub archive: PathBuf,
    pub sbom: PathBuf,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// Bytes of the compressed layer, the config and the manifest, as a registry would hold them.
    pub size: u64,
}

/// Builds every image into `target/images` and prints what it built.
pub fn run(root: &Path, check_reproducible: bool) -> Result<()> {
    let built = build(root)?;
    print_built(&built);
    if check_reproducible {
        eprintln!("==> building the images again to compare digests");
        let again = build(root)?;
        for (first, second) in built.iter().zip(&again) {
            if first.digest != second.digest {
                bail!(
                    "{} is not reproducible: {} then {}",
                    first.name,
                    first.digest,
                    second.digest
                );
            }
            println!("{}: both builds {}", first.name, first.digest);
        }
    }
    Ok(())
}

pub fn print_built(built: &[Built]) {
    for image in built {
        println!(
            "{}\n  {:.1} MB, {}\n  {}\n  SBOM {}",
            image.reference,
            image.size as f64 / 1e6,
            image.digest,
            image.archive.display(),
            image.sbom.display()
        );
    }
}

/// Builds every image (the binaries first) and returns them.
pub fn build(root: &Path) -> Result<Vec<Built>> {
    build_binaries(root)?;
    let out = root.join("target").join("images");
    fs::create_dir_all(&out)?;
    let version = workspace_version(root)?;
    let (revision, created) = git_revision(root)?;
    let mut built = Vec::new();
    for spec in &IMAGES {
        let binary = binaries_dir().join(spec.binary);
        let rootfs = out.join(format!("{}.rootfs", spec.name));
        let debs = assemble_rootfs(&binary, spec.binary, &rootfs)?;
        let reference = format!("{REGISTRY}/{}:{version}", spec.name);
        let archive = out.join(format!("{}.oci.tar", spec.name));
        commit(
            spec, &rootfs, &archive, &reference, &version, &revision, created,
        )?;
        let (digest, size) = archive_digest(&archive)?;
        let sbom = out.join(format!("{}.cdx.json", spec.name));
        let document = sbom_document(root, spec, &version, &reference, &digest, &debs)?;
        fs::write(&sbom, serde_json::to_string_pretty(&document)? + "\n")?;
        let _ = fs::remove_dir_all(&rootfs);
        built.push(Built {
            name: spec.name,
            reference,
            archive,
            sbom,
            digest,
            size,
        });
    }
    Ok(built)
}

/// Where [`build_binaries`] puts them: a target directory of their own (their flags differ from
/// every other build's) in the testbed's cache, so a fresh clone rebuilds only Sluice's crates, not
/// their dependencies. Paths are remapped, so where the checkout is does not change the bytes.
fn target_dir() -> PathBuf {
    sluice_testbed::cache_dir().join("cargo-target-image")
}

pub(crate) fn binaries_dir() -> PathBuf {
    target_dir().join("release-image")
}

/// The release binaries, built with the `release-image` profile and paths remapped.
pub(crate) fn build_binaries(root: &Path) -> Result<()> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let rustflags = [
        format!("--remap-path-prefix={}=/sluice", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    let mut cmd = super::cargo();
    cmd.args(["build", "--locked", "--profile", "release-image"]);
    for spec in &IMAGES {
        cmd.args(["-p", spec.package, "--bin", spec.binary]);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CARGO_TARGET_DIR", target_dir());
    super::run("build the images' binaries (release)", &mut cmd)
}

/// A Debian package copied into an image: (name, version).
type Deb = (String, String);

/// Lays out the image's files under `rootfs` and returns the Debian packages they came from.
fn assemble_rootfs(binary: &Path, name: &str, rootfs: &Path) -> Result<Vec<Deb>> {
    let _ = fs::remove_dir_all(rootfs);
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    // The shared libraries the binary loads, by the paths its loader looks them up at.
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            files.insert(path.clone(), fs::canonicalize(&path)?);
        }
    }
    if files.is_empty() {
        bail!("ldd found no libraries for {}", binary.display());
    }
    let bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    if !bundle.is_file() {
        sluice_testbed::prometheus::apt_install(&["ca-certificates"])?;
    }
    files.insert(bundle.clone(), bundle.clone());
    let mut debs = Vec::new();
    for (inside, source) in &files {
        let dest = rootfs.join(inside.strip_prefix("/")?);
        fs::create_dir_all(dest.parent().context("a file at the root")?)?;
        fs::copy(source, &dest)
            .with_context(|| format!("copying {} into the image", source.display()))?;
        // The CA bundle is generated from the ca-certificates package's files when it installs.
        let deb = if inside == &bundle {
            package_version("ca-certificates")?
        } else {
            debian_package(source)
                .or_else(|_| debian_package(inside))
                .with_context(|| format!("finding the Debian package of {}", inside.display()))?
        };
        if !debs.contains(&deb) {
            debs.push(deb);
        }
    }
    debs.sort();
    let etc = rootfs.join("etc");
    fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER_ID}:{USER_ID}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    fs::write(
        etc.join("group"),
        format!("root:x:0:\nnonroot:x:{USER_ID}:\n"),
    )?;
    fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n")?;
    fs::create_dir_all(rootfs.join("tmp"))?;
    fs::create_dir_all(rootfs.join("home/nonroot"))?;
    let bin = rootfs.join("usr/local/bin");
    fs::create_dir_all(&bin)?;
    fs::copy(binary, bin.join(name))
        .with_context(|| format!("copying {} into the image", binary.display()))?;
    Ok(debs)
}

/// The Debian package (name, version) that installed `path`.
fn debian_package(path: &Path) -> Result<Deb> {
    let out = Command::new("dpkg-query").arg("-S").arg(path).output()?;
    if !out.status.success() {
        bail!("no package owns {}", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .next()
        .and_then(|l| l.split(':').next())
        .context("dpkg-query -S said nothing")?
        .trim()
        .to_owned();
    package_version(&package)
}

/// The installed version of Debian's `package`.
fn package_version(package: &str) -> Result<Deb> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}"])
        .arg(package)
        .output()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        bail!("Debian's {package} is not installed");
    }
    Ok((package.to_owned(), version))
}

/// Commits `rootfs` as an image with buildah into an OCI archive named `reference`.
fn commit(
    spec: &ImageSpec,
    rootfs: &Path,
    archive: &Path,
    reference: &str,
    version: &str,
    revision: &str,
    created: i64,
) -> Result<()> {
    let output = sluice_testbed::node::buildah;
    let container = output(&["from", "--pull-never", "scratch"])?;
    let result = (|| -> Result<()> {
        let rootfs_arg = format!("{}/", rootfs.display());
        output(&[
            "copy",
            "--chown",
            "0:0",
            "--chmod",
            "0755",
            &container,
            &rootfs_arg,
            "/",
        ])?;
        let user = format!("{USER_ID}:{USER_ID}");
        let entrypoint = format!("[\"/usr/local/bin/{}\"]", spec.binary);
        let created_at = jiff::Timestamp::from_second(created)?.to_string();
        let annotations = [
            ("org.opencontainers.image.title", spec.title.to_owned()),
            ("org.opencontainers.image.source", SOURCE.to_owned()),
            ("org.opencontainers.image.revision", revision.to_owned()),
            ("org.opencontainers.image.version", version.to_owned()),
            ("org.opencontainers.image.created", created_at),
            ("org.opencontainers.image.licenses", "Apache-2.0".to_owned()),
        ];
        let mut config: Vec<String> = vec![
            "config".into(),
            "--entrypoint".into(),
            entrypoint,
            "--cmd".into(),
            String::new(),
            "--user".into(),
            user,
            "--workingdir".into(),
            "/home/nonroot".into(),
            "--env".into(),
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".into(),
            "--created-by".into(),
            format!("cargo xtask image ({})", spec.name),
        ];
        for (key, value) in &annotations {
            config.extend([
                "--annotation".into(),
                format!("{key}={value}"),
                "--label".into(),
                format!("{key}={value}"),
            ]);
        }
        config.push(container.clone());
        output(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
        let _ = fs::remove_file(archive);
        output(&[
            "commit",
            "--format",
            "oci",
            "--timestamp",
            &created.to_string(),
            "--omit-history",
            &container,
            &format!("oci-archive:{}:{reference}", archive.display()),
        ])?;
        Ok(())
    })();
    let _ = output(&["rm", &container]);
    result
}

/// The digest of the manifest in `archive` and the bytes a registry would store.
fn archive_digest(archive: &Path) -> Result<(String, u64)> {
    let list = Command::new("tar")
        .args(["-xOf"])
        .arg(archive)
        .arg("index.json")
        .output()
        .context("reading the archive's index.json")?;
    if !list.status.success() {
        bail!("{} has no index.json", archive.display());
    }
    let index: Value = serde_json::from_slice(&list.stdout)?;
    let manifest = &index["manifests"][0];
    let digest = manifest["digest"]
        .as_str()
        .context("index.json names no manifest")?
        .to_owned();
    let manifest_bytes = Command::new("tar")
        .args(["-xOf"])
        .arg(archive)
        .arg(format!(
            "blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        ))
        .output()?;
    let parsed: Value =
        serde_json::from_slice(&manifest_bytes.stdout).context("reading the archive's manifest")?;
    let mut size = manifest_bytes.stdout.len() as u64;
    size += parsed["config"]["size"].as_u64().unwrap_or(0);
    for layer in parsed["layers"].as_array().into_iter().flatten() {
        size += layer["size"].as_u64().unwrap_or(0);
    }
    Ok((digest, size))
}

/// A CycloneDX 1.5 document: the image, the crates linked into its binary (normal dependencies for
/// this target), and the Debian packages whose files it holds.
fn sbom_document(
    root: &Path,
    spec: &ImageSpec,
    version: &str,
    reference: &str,
    digest: &str,
    debs: &[Deb],
) -> Result<Value> {
    let tree = super::cargo()
        .args([
            "tree",
            "--locked",
            "-p",
            spec.package,
            "-e",
            "normal",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--prefix",
            "none",
            "--format",
            "{p}\t{l}",
        ])
        .current_dir(root)
        .output()
        .context("running cargo tree")?;
    if !tree.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&tree.stderr)
        );
    }
    let mut crates: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in String::from_utf8_lossy(&tree.stdout).lines() {
        let (package, license) = line.split_once('\t').unwrap_or((line, ""));
        let mut words = package.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let version = version.trim_start_matches('v').to_owned();
        crates.insert((name.to_owned(), version), license.trim().to_owned());
    }
    let mut components: Vec<Value> = crates
        .iter()
        .map(|((name, version), license)| {
            let mut component = json!({
                "type": "library",
                "bom-ref": format!("pkg:cargo/{name}@{version}"),
                "name": name,
                "version": version,
                "purl": format!("pkg:cargo/{name}@{version}"),
            });
            if !license.is_empty() {
                component["licenses"] = json!([{"expression": license}]);
            }
            component
        })
        .collect();
    for (name, version) in debs {
        let purl = format!("pkg:deb/debian/{name}@{version}?arch=amd64");
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
        }));
    }
    let name = format!("{REGISTRY}/{}", spec.name);
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "cargo xtask image"}]},
            "component": {
                "type": "container",
                "bom-ref": reference,
                "name": name,
                "version": version,
                "hashes": [{"alg": "SHA-256", "content": digest.trim_start_matches("sha256:")}],
                "purl": format!("pkg:oci/{}@{}?repository_url={}", spec.name, digest.replace(':', "%3A"), name),
            },
        },
        "components": components,
    }))
}

pub(crate) fn workspace_version(root: &Path) -> Result<String> {
    let text = fs::read_to_string(root.join("Cargo.toml"))?;
    text.lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            let value = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .context("no version in [workspace.package]")
}

/// The checked-out commit and its time (seconds since the epoch).
pub(crate) fn git_revision(root: &Path) -> Result<(String, i64)> {
    let out = Command::new("git")
        .args(["log", "-1", "--format=%H %ct"])
        .current_dir(root)
        .output()
        .context("running git log")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|t| t.parse().ok())) {
        (Some(revision), Some(time)) if out.status.success() => Ok((revision.to_owned(), time)),
        _ => bail!("git log found no commit in {}", root.display()),
    }
}
