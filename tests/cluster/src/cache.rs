//! Filling the testbed's cache safely when several callers ask at once.
//!
//! The tests run in parallel threads, and several processes (the suite, the demo, a benchmark) may
//! share one cache. Every fill follows one rule: take the entry's lock file, look again (another
//! caller may have filled it while this one waited), build into a staging directory of this
//! caller's own, and move it into place with one `rename`, so an entry is either absent or whole.
//! One caller builds; the others wait on the lock and then use what it built. Lock files are kept
//! (deleting one while a caller waits on it would let two callers build at once).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

/// Holds `root/locks/NAME.lock` exclusively until dropped (the OS releases it when the file
/// closes, also when the process dies).
pub struct CacheLock {
    _file: File,
}

/// Takes the lock named `name` under `root`, waiting for whoever holds it. Locks are per open file,
/// so two threads of one process exclude each other as two processes do.
pub fn lock(root: &Path, name: &str) -> Result<CacheLock> {
    let dir = root.join("locks");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(CacheLock { _file: file })
}

/// Makes sure the directory `root/NAME` exists and `is_whole` says it is complete, building it once
/// with `build` into an empty staging directory when it is not. Returns `root/NAME`.
///
/// Concurrent callers for the same name see one build and the same directory; a failed build
/// leaves nothing behind, so the next caller builds again.
pub fn fill_dir(
    root: &Path,
    name: &str,
    is_whole: impl Fn(&Path) -> bool,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let target = root.join(name);
    // The common case, a warm cache, takes no lock.
    if is_whole(&target) {
        return Ok(target);
    }
    let lock_name = name.replace('/', "_");
    let _lock = lock(root, &lock_name)?;
    if is_whole(&target) {
        return Ok(target);
    }
    let staging = staging_dir(root, &lock_name)?;
    let built = build(&staging).and_then(|()| {
        if !is_whole(&staging) {
            bail!(
                "the build of {name} finished without producing everything expected in {}",
                staging.display()
            );
        }
        // Only a partial entry left by an older, non-atomic fill can be here; we hold the lock.
        if target.exists() {
            fs::remove_dir_all(&target)
                .with_context(|| format!("removing the incomplete {}", target.display()))?;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&staging, &target).with_context(|| {
            format!(
                "moving {} into place as {}",
                staging.display(),
                target.display()
            )
        })
    });
    if built.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    built?;
    Ok(target)
}

/// A fresh, empty directory under `root/staging` that no other caller uses: named after the
/// entry, this process and a counter. On the same file system as the entries, so `rename` is
/// atomic.
fn staging_dir(root: &Path, name: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = root.join("staging").join(format!(
        "{name}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of a process that died with the same pid.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-cache-test-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn has_binary(dir: &Path) -> bool {
        dir.join("tool").is_file()
    }

    #[test]
    fn concurrent_callers_on_an_empty_cache_see_one_build_and_the_same_binary() -> Result<()> {
        let root = scratch("concurrent");
        let builds = Arc::new(AtomicU64::new(0));
        let callers = 8;
        let start = Arc::new(Barrier::new(callers));
        let threads: Vec<_> = (0..callers)
            .map(|_| {
                let (root, builds, start) = (root.clone(), builds.clone(), start.clone());
                std::thread::spawn(move || -> Result<(PathBuf, Vec<u8>)> {
                    start.wait();
                    let dir = fill_dir(&root, "bin/tool-v1", has_binary, |staging| {
                        let n = builds.fetch_add(1, Ordering::SeqCst);
                        // Written in two parts with a pause, as a slow build's output would be:
                        // a caller that read it early would see half a binary.
                        fs::write(staging.join("tool"), format!("build {n} part 1\n"))?;
                        std::thread::sleep(Duration::from_millis(300));
                        let mut text = fs::read_to_string(staging.join("tool"))?;
                        text.push_str("part 2\n");
                        fs::write(staging.join("tool"), text)?;
                        Ok(())
                    })?;
                    let binary = fs::read(dir.join("tool"))?;
                    Ok((dir, binary))
                })
            })
            .collect();
        let mut seen = Vec::new();
        for thread in threads {
            match thread.join() {
                Ok(result) => seen.push(result?),
                Err(_) => bail!("a caller panicked"),
            }
        }
        assert_eq!(
            builds.load(Ordering::SeqCst),
            1,
            "one build for every caller"
        );
        let (first_dir, first_binary) = &seen[0];
        assert_eq!(first_binary, b"build 0 part 1\npart 2\n");
        for (dir, binary) in &seen {
            assert_eq!(dir, first_dir);
            assert_eq!(binary, first_binary);
        }
        // Nothing is left in staging.
        assert_eq!(fs::read_dir(root.join("staging"))?.count(), 0);
        fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn a_failed_build_leaves_nothing_and_the_next_caller_builds_again() -> Result<()> {
        let root = scratch("failed");
        let failed = fill_dir(&root, "tool-v1", has_binary, |staging| {
            fs::write(staging.join("tool"), "half")?;
            bail!("the compiler ran out of memory")
        });
        assert!(failed.is_err());
        assert!(!root.join("tool-v1").exists());
        // A build that claims success without its output is refused too.
        let empty = fill_dir(&root, "tool-v1", has_binary, |_| Ok(()));
        assert!(empty.is_err());
        assert!(!root.join("tool-v1").exists());
        let dir = fill_dir(&root, "tool-v1", has_binary, |staging| {
            Ok(fs::write(staging.join("tool"), "whole")?)
        })?;
        assert_eq!(fs::read_to_string(dir.join("tool"))?, "whole");
        assert_eq!(fs::read_dir(root.join("staging"))?.count(), 0);
        fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn an_incomplete_entry_from_an_older_fill_is_replaced() -> Result<()> {
        let root = scratch("partial");
        fs::create_dir_all(root.join("tool-v1"))?;
        fs::write(root.join("tool-v1/other"), "left over")?;
        let dir = fill_dir(&root, "tool-v1", has_binary, |staging| {
            Ok(fs::write(staging.join("tool"), "whole")?)
        })?;
        assert!(dir.join("tool").is_file());
        assert!(!dir.join("other").exists());
        fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn a_lock_excludes_another_holder_until_dropped() -> Result<()> {
        let root = scratch("lock");
        let held = lock(&root, "apt")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let root = root.clone();
            std::thread::spawn(move || -> Result<()> {
                let _second = lock(&root, "apt")?;
                let _ = tx.send(());
                Ok(())
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the second holder waits"
        );
        drop(held);
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        match waiter.join() {
            Ok(result) => result?,
            Err(_) => bail!("the waiter panicked"),
        }
        fs::remove_dir_all(&root)?;
        Ok(())
    }
}
