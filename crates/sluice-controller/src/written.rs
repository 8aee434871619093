//! The controller's own last write to each Rollout, so that no reconcile acts on a cached copy older
//! than it.
//!
//! The Rollouts' cache is filled by a watch, which may deliver the controller's own status write
//! after a ReplicaSet's or a run's event has already woken the next reconcile. A decision taken on
//! the older copy would repeat a transition (a second run, a step completed twice) or undo one (an
//! abort recorded a moment ago). So each write's resourceVersion is remembered, and a reconcile that
//! finds the cache behind it waits for the watch to catch up.

use std::collections::HashMap;
use std::sync::Mutex;

/// The resourceVersion of the controller's last write to each Rollout not yet seen in the cache.
#[derive(Default)]
pub struct Written {
    versions: Mutex<HashMap<(String, String), u64>>,
}

impl Written {
    /// Remembers the resourceVersion the API server gave the controller's write.
    pub fn wrote(&self, namespace: &str, name: &str, resource_version: Option<&str>) {
        let Some(version) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        if let Ok(mut versions) = self.versions.lock() {
            let entry = versions
                .entry((namespace.to_owned(), name.to_owned()))
                .or_insert(version);
            *entry = (*entry).max(version);
        }
    }

    /// Whether the cached copy, at `resource_version`, is older than the controller's last write. A
    /// copy that has caught up clears the record. resourceVersions are etcd revisions; one that is
    /// not a number is taken as current (nothing to compare it with).
    pub fn is_stale(&self, namespace: &str, name: &str, resource_version: Option<&str>) -> bool {
        let Some(cached) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return false;
        };
        let Ok(mut versions) = self.versions.lock() else {
            return false;
        };
        let key = (namespace.to_owned(), name.to_owned());
        match versions.get(&key) {
            Some(written) if cached < *written => true,
            Some(_) => {
                versions.remove(&key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_older_than_the_last_write_is_stale_until_the_cache_catches_up() {
        let written = Written::default();
        assert!(!written.is_stale("a", "web", Some("10")));
        written.wrote("a", "web", Some("12"));
        written.wrote("a", "web", Some("11"));
        assert!(written.is_stale("a", "web", Some("10")));
        assert!(written.is_stale("a", "web", Some("11")));
        assert!(!written.is_stale("a", "api", Some("1")));
        assert!(!written.is_stale("a", "web", Some("12")));
        // Caught up: forgotten, so a later copy is never compared with an old write.
        assert!(!written.is_stale("a", "web", Some("5")));
        assert!(!written.is_stale("a", "web", None));
    }
}
