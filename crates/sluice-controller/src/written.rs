//! The controller's own last write to each Rollout and ReplicaSet, so that no reconcile acts on a
//! cached copy older than it.
//!
//! The caches are filled by watches, which may deliver the controller's own write after another
//! object's event has already woken the next reconcile. A decision taken on the older copy would
//! repeat a transition (a second run, a step completed twice) or undo one (an abort recorded a
//! moment ago, a ReplicaSet just scaled back up to full size). So each write's resourceVersion is
//! remembered, and a reconcile that finds the cache behind it waits for the watch to catch up.

use std::collections::HashMap;
use std::sync::Mutex;

/// The kinds whose writes are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Rollout,
    ReplicaSet,
}

/// The resourceVersion of the controller's last write to each object not yet seen in the cache.
#[derive(Default)]
pub struct Written {
    versions: Mutex<HashMap<(Kind, String, String), u64>>,
}

impl Written {
    /// Remembers the resourceVersion the API server gave the controller's write.
    pub fn wrote(&self, kind: Kind, namespace: &str, name: &str, resource_version: Option<&str>) {
        let Some(version) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        if let Ok(mut versions) = self.versions.lock() {
            let entry = versions
                .entry((kind, namespace.to_owned(), name.to_owned()))
                .or_insert(version);
            *entry = (*entry).max(version);
        }
    }

    /// Whether the cached copy, at `resource_version`, is older than the controller's last write. A
    /// copy that has caught up clears the record. resourceVersions are etcd revisions; one that is
    /// not a number is taken as current (nothing to compare it with).
    pub fn is_stale(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> bool {
        let Some(cached) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return false;
        };
        let Ok(mut versions) = self.versions.lock() else {
            return false;
        };
        let key = (kind, namespace.to_owned(), name.to_owned());
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

impl Written {
    /// Forgets the writes to an object the controller deleted (its cache copy goes with it).
    pub fn forget(&self, kind: Kind, namespace: &str, name: &str) {
        if let Ok(mut versions) = self.versions.lock() {
            versions.remove(&(kind, namespace.to_owned(), name.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_older_than_the_last_write_is_stale_until_the_cache_catches_up() {
        use Kind::{ReplicaSet, Rollout};
        let written = Written::default();
        assert!(!written.is_stale(Rollout, "a", "web", Some("10")));
        written.wrote(Rollout, "a", "web", Some("12"));
        written.wrote(Rollout, "a", "web", Some("11"));
        assert!(written.is_stale(Rollout, "a", "web", Some("10")));
        assert!(written.is_stale(Rollout, "a", "web", Some("11")));
        assert!(!written.is_stale(Rollout, "a", "api", Some("1")));
        // Kinds are apart: a ReplicaSet named like the Rollout is another object.
        assert!(!written.is_stale(ReplicaSet, "a", "web", Some("10")));
        assert!(!written.is_stale(Rollout, "a", "web", Some("12")));
        // Caught up: forgotten, so a later copy is never compared with an old write.
        assert!(!written.is_stale(Rollout, "a", "web", Some("5")));
        assert!(!written.is_stale(Rollout, "a", "web", None));
        written.wrote(ReplicaSet, "a", "web-abc", Some("20"));
        assert!(written.is_stale(ReplicaSet, "a", "web-abc", Some("19")));
        written.forget(ReplicaSet, "a", "web-abc");
        assert!(!written.is_stale(ReplicaSet, "a", "web-abc", Some("19")));
    }
}
