//! `cargo xtask fuzz`: the fuzz targets in `tests/fuzz` (every parser a tenant's text reaches), each
//! for a bounded time with cargo-fuzz on stable Rust (libFuzzer's coverage guidance, no sanitizer).
//! cargo-fuzz is built once per version into the cache, like the cluster's Go binaries. Each target
//! starts from its committed seeds (`tests/fuzz/seeds/TARGET`, regression inputs included) and a
//! corpus kept in `target/fuzz-corpus/TARGET`; a crash, a hang (over 10 s for one input) or memory
//! beyond 1 GiB fails the run, with the input saved under `tests/fuzz/artifacts/TARGET`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The cargo-fuzz release built and used.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target, in the order they run.
pub const TARGETS: [&str; 5] = ["duration", "condition", "substitute", "answer", "manifest"];

/// One target's figures.
struct Figures {
    target: &'static str,
    runs: u64,
    seconds: u64,
    corpus: usize,
}

/// How the targets are built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Optimized: many more executions a second, for long hunts (`cargo xtask fuzz`).
    Optimized,
    /// Unoptimized (`cargo fuzz --dev`): compiles in a fraction of the time, for the short bounded
    /// run of `cargo xtask test`, where a cold machine would spend longer compiling than fuzzing.
    Quick,
}

/// Runs every target (or `only`) for `seconds` each and prints the executions of each.
pub fn run(root: &Path, seconds: u64, only: Option<&str>, build: Build) -> Result<()> {
    let cargo_fuzz = ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("tests/fuzz");
    let targets: Vec<&'static str> = TARGETS
        .into_iter()
        .filter(|t| only.is_none_or(|o| o == *t))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target {only:?}; the targets are {TARGETS:?}");
    }
    let mut figures = Vec::new();
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        for dir in [&corpus, &seeds, &artifacts] {
            std::fs::create_dir_all(dir)?;
        }
        eprintln!("==> fuzz {target} for {seconds} s");
        let mut command = Command::new(&cargo_fuzz);
        command.args(["fuzz", "run", target, "--sanitizer", "none"]);
        if build == Build::Quick {
            command.arg("--dev");
        }
        let output = command
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            // The fuzz builds' target directory lives in the testbed's cache, so a fresh clone
            // (every CI run) rebuilds Sluice's crates only, not their dependencies.
            .args(["--target-dir"])
            .arg(sluice_testbed::cache_dir().join("cargo-target-fuzz"))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-rss_limit_mb=1024", "-max_len=65536"])
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .arg(&seeds)
            .current_dir(root)
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed: the input is in {} (fix the cause, then keep the \
                 input as a regression seed in {})",
                artifacts.display(),
                seeds.display()
            );
        }
        // libFuzzer ends with "Done N runs in S second(s)".
        let (runs, took) = log
            .lines()
            .rev()
            .find_map(|l| {
                let rest = l.strip_prefix("Done ")?;
                let (runs, rest) = rest.split_once(" runs in ")?;
                let secs = rest.split_whitespace().next()?;
                Some((runs.parse().ok()?, secs.parse().ok()?))
            })
            .unwrap_or((0, seconds));
        figures.push(Figures {
            target,
            runs,
            seconds: took,
            corpus: std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
        });
    }
    println!(
        "\n{:<12} {:>12} {:>8} {:>10} {:>8}",
        "target", "executions", "seconds", "exec/s", "corpus"
    );
    for f in &figures {
        println!(
            "{:<12} {:>12} {:>8} {:>10} {:>8}",
            f.target,
            f.runs,
            f.seconds,
            f.runs / f.seconds.max(1),
            f.corpus
        );
    }
    Ok(())
}

/// cargo-fuzz from the cache, built there the first time (once, however many callers ask).
fn ensure_cargo_fuzz() -> Result<std::path::PathBuf> {
    let binary = |root: &Path| root.join("bin").join("cargo-fuzz");
    let root = sluice_testbed::cache::fill_dir(
        &sluice_testbed::cache_dir(),
        &format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"),
        |root| binary(root).is_file(),
        |staging| {
            super::run(
                &format!("build cargo-fuzz {CARGO_FUZZ_VERSION} (once, into the cache)"),
                super::cargo()
                    .args([
                        "install",
                        "cargo-fuzz",
                        "--locked",
                        "--version",
                        CARGO_FUZZ_VERSION,
                        // It only starts cargo: unoptimized and without debug info it builds in
                        // about half the time (18 s against 33 s on two idle cores).
                        "--debug",
                        "--root",
                    ])
                    .env("CARGO_PROFILE_DEV_DEBUG", "false")
                    .arg(staging),
            )
        },
    )?;
    Ok(binary(&root))
}
