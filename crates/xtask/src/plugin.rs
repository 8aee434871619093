//! `cargo xtask plugin-release`: the kubectl plugin as a release archive and a krew manifest, so
//! it installs with `kubectl krew install --manifest sluice.yaml` (or from a krew index) as well as
//! with `cargo install`.
//!
//! The archive holds the binary the plugin's image holds (the `release-image` build) and the
//! licence; it is written with one owner, one time and sorted names, and gzip without a name or a
//! time, so two builds of one commit are byte for byte the same and the manifest's sha256 holds.
//! `--check` validates the manifest with krew's own validator and installs the archive with krew
//! (both built from krew's Go module) into a scratch krew root, then runs the installed plugin.
//!
//! Linux on amd64 only: this machine builds no other platform's binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// The plugin's name in krew (`kubectl sluice`).
const PLUGIN: &str = "sluice";
const BINARY: &str = "kubectl-sluice";
/// Where releases are published: the archive's URL in the manifest.
const RELEASES: &str = "https://github.com/sluice-dev/sluice/releases/download";
const HOMEPAGE: &str = "https://github.com/sluice-dev/sluice";

/// What `release` wrote.
pub struct Release {
    pub archive: PathBuf,
    pub manifest: PathBuf,
    pub sha256: String,
}

/// Builds the archive and the manifest into `target/plugin`; with `check`, validates and installs
/// them with krew.
pub fn run(root: &Path, check: bool) -> Result<()> {
    crate::image::build_binaries(root)?;
    let release = release(root)?;
    println!(
        "{}\n  sha256 {}\n{}",
        release.archive.display(),
        release.sha256,
        release.manifest.display()
    );
    if check {
        check_with_krew(&release)?;
    }
    Ok(())
}

/// Writes the archive of the already built binary and its krew manifest.
pub fn release(root: &Path) -> Result<Release> {
    let version = crate::image::workspace_version(root)?;
    let (_, created) = crate::image::git_revision(root)?;
    let out = root.join("target").join("plugin");
    let staging = out.join("staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    fs::copy(
        crate::image::binaries_dir().join(BINARY),
        staging.join(BINARY),
    )
    .context("the plugin's release binary (built by `cargo xtask image`)")?;
    fs::copy(root.join("LICENSE"), staging.join("LICENSE")).context("the LICENSE file")?;
    let name = format!("{BINARY}_v{version}_linux_amd64.tar.gz");
    let archive = out.join(&name);
    // Reproducible: sorted names, one owner and time, and gzip with neither name nor time (-n).
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "tar --sort=name --owner=0 --group=0 --numeric-owner --mode=go-w \
             --mtime=@\"$1\" -C \"$2\" -cf - kubectl-sluice LICENSE | gzip -n -9 > \"$3\"",
        )
        .args([
            "sh",
            &created.to_string(),
            &staging.display().to_string(),
            &archive.display().to_string(),
        ])
        .status()
        .context("running tar")?;
    ensure!(
        status.success(),
        "tar and gzip of {} failed",
        archive.display()
    );
    let _ = fs::remove_dir_all(&staging);
    let sha256 = sha256(&archive)?;
    let manifest = out.join(format!("{PLUGIN}.yaml"));
    fs::write(&manifest, krew_manifest(&version, &name, &sha256))?;
    fs::write(
        out.join(format!("{name}.sha256")),
        format!("{sha256}  {name}\n"),
    )?;
    Ok(Release {
        archive,
        manifest,
        sha256,
    })
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    ensure!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// krew's manifest (`krew.googlecontainertools.github.com/v1alpha2` Plugin).
fn krew_manifest(version: &str, archive: &str, sha256: &str) -> String {
    format!(
        r#"apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: {PLUGIN}
spec:
  version: v{version}
  homepage: {HOMEPAGE}
  shortDescription: Drive Sluice's canary and blue-green releases
  description: |
    Promote, abort, retry, pause, resume and undo Sluice's releases, see their
    status, history and analysis, take Argo Rollouts over without restarting pods,
    and serve a live dashboard of the releases in flight.
  platforms:
  - selector:
      matchLabels:
        os: linux
        arch: amd64
    uri: {RELEASES}/v{version}/{archive}
    sha256: {sha256}
    bin: {BINARY}
    files:
    - from: {BINARY}
      to: .
    - from: LICENSE
      to: .
"#
    )
}

/// krew's validator on the manifest (its checks of names, versions, selectors and files), then an
/// install of the archive with krew into a scratch root, and the installed plugin's version.
pub fn check_with_krew(release: &Release) -> Result<()> {
    let krew = sluice_testbed::binaries::ensure_krew()?;
    let validate = Command::new(&krew.validate)
        .args(["-skip-install", "-manifest"])
        .arg(&release.manifest)
        .output()
        .context("running validate-krew-manifest")?;
    if !validate.status.success() {
        bail!(
            "krew refuses {}:\n{}",
            release.manifest.display(),
            String::from_utf8_lossy(&validate.stderr)
        );
    }
    let root = release
        .manifest
        .parent()
        .context("the manifest's directory")?
        .join("krew-root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    // The archive stands for the URL (nothing is downloaded); krew checks its sha256.
    let install = Command::new(&krew.krew)
        .arg("install")
        .arg(format!("--manifest={}", release.manifest.display()))
        .arg(format!("--archive={}", release.archive.display()))
        .env("KREW_ROOT", &root)
        .env("KREW_OS", "linux")
        .env("KREW_ARCH", "amd64")
        .output()
        .context("running krew install")?;
    if !install.status.success() {
        bail!(
            "krew could not install {}:\n{}{}",
            release.archive.display(),
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
    }
    let installed = root.join("bin").join(BINARY);
    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", installed.display()))?;
    ensure!(
        version.status.success(),
        "the installed plugin does not run: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    println!(
        "krew: the manifest is valid and the archive installs ({})",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let _ = fs::remove_dir_all(&root);
    Ok(())
}
