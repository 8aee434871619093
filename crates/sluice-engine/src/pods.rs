//! The Rollout's pods as a decision sees them, and the role metadata each should carry
//! (`stableMetadata`/`canaryMetadata`, `activeMetadata`/`previewMetadata`).

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_api::common::PodMetadata;

use crate::Strategy;
use crate::release::Traffic;

/// A pod of one of the Rollout's ReplicaSets, as the controller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// The pod-template hash of its ReplicaSet.
    pub hash: String,
    /// When it was created.
    pub created: Timestamp,
    /// Since when its `Ready` condition is True (`None` while it is not ready).
    pub ready_since: Option<Timestamp>,
    /// Already being deleted.
    pub terminating: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl PodView {
    /// Ready for at least `min_ready_seconds`, as the ReplicaSet controller counts availability.
    pub fn available(&self, min_ready_seconds: i32, now: Timestamp) -> bool {
        self.ready_since.is_some_and(|since| {
            since
                .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
                .is_ok_and(|available_at| available_at <= now)
        })
    }

    /// When it becomes available, if it is ready and not yet.
    pub fn available_at(&self, min_ready_seconds: i32, now: Timestamp) -> Option<Timestamp> {
        let at = self
            .ready_since?
            .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .ok()?;
        (at > now).then_some(at)
    }
}

/// Labels and annotations to set (`Some`) or remove (`None`) on one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMetadataPatch {
    pub pod: String,
    pub labels: BTreeMap<String, Option<String>>,
    pub annotations: BTreeMap<String, Option<String>>,
}

/// The role metadata changes that make each pod carry the metadata of the role its version holds
/// (the first role wins where both name the same version, with no release in flight), and no other
/// role's.
pub(crate) fn role_metadata(
    strategy: Strategy<'_>,
    traffic: &Traffic,
    pods: &[PodView],
) -> Vec<PodMetadataPatch> {
    let (first, second): (Option<&PodMetadata>, Option<&PodMetadata>) = match strategy {
        Strategy::Canary(c) => (c.stable_metadata.as_ref(), c.canary_metadata.as_ref()),
        Strategy::BlueGreen(b) => (b.active_metadata.as_ref(), b.preview_metadata.as_ref()),
    };
    if first.is_none() && second.is_none() {
        return Vec::new();
    }
    let mut roles = vec![(traffic.stable_hash.as_str(), first)];
    if traffic.canary_hash != traffic.stable_hash {
        roles.push((traffic.canary_hash.as_str(), second));
    }
    let roles_of = |f: fn(&PodMetadata) -> &BTreeMap<String, String>| -> Vec<&String> {
        [first, second]
            .into_iter()
            .flatten()
            .flat_map(|m| f(m).keys())
            .collect()
    };
    let label_keys = roles_of(|m| &m.labels);
    let annotation_keys = roles_of(|m| &m.annotations);
    let changes = |keys: &[&String],
                   have: &BTreeMap<String, String>,
                   want: Option<&BTreeMap<String, String>>| {
        keys.iter()
            .filter_map(|key| {
                let wanted = want.and_then(|m| m.get(*key));
                (have.get(*key) != wanted).then(|| ((*key).clone(), wanted.cloned()))
            })
            .collect::<BTreeMap<_, _>>()
    };
    pods.iter()
        .filter(|pod| !pod.terminating)
        .filter_map(|pod| {
            let wanted = roles
                .iter()
                .find(|(hash, _)| *hash == pod.hash)
                .and_then(|(_, m)| *m);
            let patch = PodMetadataPatch {
                pod: pod.name.clone(),
                labels: changes(&label_keys, &pod.labels, wanted.map(|m| &m.labels)),
                annotations: changes(
                    &annotation_keys,
                    &pod.annotations,
                    wanted.map(|m| &m.annotations),
                ),
            };
            (!patch.labels.is_empty() || !patch.annotations.is_empty()).then_some(patch)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::rollout::CanaryStrategy;

    fn pod(name: &str, hash: &str, labels: &[(&str, &str)]) -> PodView {
        PodView {
            name: name.to_owned(),
            hash: hash.to_owned(),
            created: Timestamp::UNIX_EPOCH,
            ready_since: None,
            terminating: false,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    fn no_metadata() -> CanaryStrategy {
        serde_json::from_value(serde_json::json!({})).expect("an empty canary strategy")
    }

    fn role(value: &str) -> Option<PodMetadata> {
        Some(PodMetadata {
            labels: BTreeMap::from([("role".to_owned(), value.to_owned())]),
            annotations: BTreeMap::new(),
        })
    }

    #[test]
    fn each_version_carries_its_role_and_no_other() {
        let mut canary = no_metadata();
        canary.stable_metadata = role("stable");
        canary.canary_metadata = role("canary");
        let traffic = Traffic {
            canary_weight: 20,
            canary_hash: "new".to_owned(),
            stable_hash: "old".to_owned(),
            managed_routes: Vec::new(),
            leave_services: false,
        };
        let pods = [
            pod("a", "old", &[("role", "stable")]),
            pod("b", "new", &[]),
            pod("c", "older", &[("role", "canary")]),
        ];
        let patches = role_metadata(Strategy::Canary(&canary), &traffic, &pods);
        let by_pod: BTreeMap<&str, &BTreeMap<String, Option<String>>> = patches
            .iter()
            .map(|p| (p.pod.as_str(), &p.labels))
            .collect();
        // `a` already has its role: nothing to write.
        assert_eq!(by_pod.len(), 2);
        assert_eq!(by_pod["b"]["role"].as_deref(), Some("canary"));
        assert_eq!(by_pod["c"]["role"], None);
    }

    #[test]
    fn no_role_metadata_means_no_pod_writes() {
        let traffic = Traffic {
            canary_weight: 0,
            canary_hash: "old".to_owned(),
            stable_hash: "old".to_owned(),
            managed_routes: Vec::new(),
            leave_services: false,
        };
        let canary = no_metadata();
        let pods = [pod("a", "old", &[("role", "x")])];
        assert!(role_metadata(Strategy::Canary(&canary), &traffic, &pods).is_empty());
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut p = pod("a", "h", &[]);
        let now = Timestamp::from_second(100).expect("time");
        p.ready_since = Some(Timestamp::from_second(95).expect("time"));
        assert!(p.available(5, now));
        assert!(!p.available(10, now));
        assert_eq!(
            p.available_at(10, now),
            Some(Timestamp::from_second(105).expect("time"))
        );
        assert_eq!(p.available_at(5, now), None);
    }
}
