//! A real browser for the dashboard's tests: Debian's Chromium, driven by Playwright
//! (`playwright-core` from the npm registry, pinned in `tests/browser/package-lock.json`), which
//! never downloads a browser of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::prometheus::{apt_install, ensure_debian_program};

/// Chromium's path, installing Debian's `chromium` (and the fonts pages are drawn with) when
/// missing.
pub fn ensure_chromium() -> Result<PathBuf> {
    let chromium = ensure_debian_program("chromium", "chromium")?;
    let fonts = Path::new("/usr/share/fonts/truetype/liberation");
    if !fonts.exists() {
        let _lock = crate::cache::lock(&crate::cache_dir(), "fonts-liberation")?;
        if !fonts.exists() {
            apt_install(&["fonts-liberation"])?;
        }
    }
    Ok(chromium)
}

/// Installs the packages of `dir` (a `package.json` with its `package-lock.json`) with `npm ci`
/// unless `playwright-core` is already there at the version the lock pins. Callers queue on the
/// cache's `npm-ci` lock: `npm ci` empties `node_modules` first, which a second caller must not see.
pub fn ensure_playwright(dir: &Path) -> Result<()> {
    let pinned = version_in(
        &dir.join("package-lock.json"),
        "node_modules/playwright-core",
    )?;
    let installed = dir.join("node_modules/playwright-core/package.json");
    let is_installed = || -> Result<bool> {
        if !installed.exists() {
            return Ok(false);
        }
        let text = std::fs::read_to_string(&installed)?;
        let package: serde_json::Value = serde_json::from_str(&text)?;
        Ok(package["version"].as_str() == Some(pinned.as_str()))
    };
    let _lock = crate::cache::lock(&crate::cache_dir(), "npm-ci")?;
    if is_installed()? {
        return Ok(());
    }
    eprintln!(
        "Installing playwright-core {pinned} with npm ci in {}",
        dir.display()
    );
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .context("running npm (Node.js and npm are needed for the browser tests)")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    Ok(())
}

fn version_in(lock: &Path, package: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(lock).with_context(|| format!("reading {}", lock.display()))?;
    let parsed: serde_json::Value = serde_json::from_str(&text)?;
    parsed["packages"][package]["version"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{package} is not in {}", lock.display()))
}
