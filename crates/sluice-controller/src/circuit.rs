//! What the circuit breaker is decided from, read from the caches: the releases of the Rollouts
//! that share it (their release records and the release each status tracks) and their last reset.
//!
//! Rollouts sharing a breaker (`circuitBreaker.selector`) are decided one at a time, and not while
//! the cache holds an older copy of one of them than this controller last wrote: so a release one
//! of them lets through half-open is seen by the others before they decide, and exactly one goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use sluice_api::Rollout;
use sluice_api::release::ReleaseProgress;
use sluice_engine::breaker::{AdmittedRelease, CircuitInputs, EndedRelease};

use crate::Context;
use crate::cache;
use crate::written::Kind;

/// One lock per breaker shared by several Rollouts, by namespace and selector.
#[derive(Default)]
pub struct Locks {
    by_group: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The Rollouts a Rollout's breaker covers (itself first), and the lock their decisions take if
/// there are others.
pub struct Group {
    pub members: Vec<Arc<Rollout>>,
    pub lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// The group of `rollout` (as given: the copy being decided), in `namespace`.
pub fn group(ctx: &Context, rollout: &Rollout, namespace: &str) -> Group {
    let Some(breaker) = rollout.spec.circuit_breaker.as_ref() else {
        return Group {
            members: Vec::new(),
            lock: None,
        };
    };
    let mut members = vec![Arc::new(rollout.clone())];
    members.extend(peers_of(&ctx.caches.rollouts.state(), rollout));
    let lock = breaker.selector.as_ref().and_then(|selector| {
        let key = format!(
            "{namespace}/{}",
            serde_json::to_string(selector).unwrap_or_default()
        );
        ctx.circuits.by_group.lock().ok().map(|mut locks| {
            locks
                .entry(key)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        })
    });
    Group { members, lock }
}

/// The other Rollouts of `rollout`'s namespace that share its circuit breaker (its selector
/// matches them, and they have one too), among `rollouts`.
fn peers_of(rollouts: &[Arc<Rollout>], rollout: &Rollout) -> Vec<Arc<Rollout>> {
    let Some(Ok(matcher)) = rollout
        .spec
        .circuit_breaker
        .as_ref()
        .and_then(|b| b.selector.clone())
        .map(Selector::try_from)
    else {
        return Vec::new();
    };
    let (namespace, name) = (rollout.namespace(), rollout.name_any());
    rollouts
        .iter()
        .filter(|other| {
            other.namespace() == namespace
                && other.name_any() != name
                && other.spec.circuit_breaker.is_some()
                && matcher.matches(other.labels())
        })
        .cloned()
        .collect()
}

/// What of a Rollout sharing a circuit breaker its peers decide on: its selector, the number,
/// admission and outcome of its release, and its last reset (a weight or pod count wakes none of
/// them). `None` for a Rollout that shares no breaker.
pub fn concerns_peers(rollout: &Rollout) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let selector = rollout.spec.circuit_breaker.as_ref()?.selector.as_ref()?;
    let status = rollout.status.clone().unwrap_or_default();
    let release = status.release.as_ref();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        serde_json::to_string(selector).unwrap_or_default(),
        &rollout.metadata.labels,
        release.map(|r| r.number),
        release.map(|r| r.admitted_at.as_ref().map(|t| t.0.as_second())),
        release.map(|r| r.outcome.map(|o| format!("{o:?}"))),
        status
            .circuit_breaker
            .as_ref()
            .and_then(|b| b.last_reset.as_ref())
            .map(|r| r.at.0.as_second()),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The other Rollouts sharing `rollout`'s circuit breaker: those a change to it may concern.
pub fn peers(
    store: &kube::runtime::reflector::Store<Rollout>,
    rollout: &Rollout,
) -> Vec<kube::runtime::reflector::ObjectRef<Rollout>> {
    peers_of(&store.state(), rollout)
        .iter()
        .map(|other| kube::runtime::reflector::ObjectRef::from_obj(other.as_ref()))
        .collect()
}

/// Whether the cache holds an older copy of another member than this controller last wrote.
pub fn stale(ctx: &Context, group: &Group, namespace: &str) -> bool {
    group.members.iter().skip(1).any(|member| {
        ctx.written.is_stale(
            Kind::Rollout,
            namespace,
            &member.name_any(),
            member.metadata.resource_version.as_deref(),
        )
    })
}

/// The breaker's inputs: every member's ended releases (records, and the release its status
/// tracks), the releases in flight the gates let start, and the newest reset.
pub fn inputs(ctx: &Context, group: &Group, namespace: &str) -> CircuitInputs {
    let mut inputs = CircuitInputs::default();
    for member in &group.members {
        let (ended, in_flight) = releases_of(ctx, member, namespace);
        inputs.ended.extend(ended);
        inputs.in_flight.extend(in_flight);
        let reset = member
            .status
            .as_ref()
            .and_then(|s| s.circuit_breaker.as_ref())
            .and_then(|b| b.last_reset.as_ref())
            .map(|r| r.at.0);
        inputs.reset_at = inputs.reset_at.max(reset);
    }
    inputs
}

/// A Rollout's releases: those that ended (its records, and the release its status tracks), and
/// the one in flight if the gates let it start.
pub fn releases_of(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
) -> (Vec<EndedRelease>, Vec<AdmittedRelease>) {
    let name = rollout.name_any();
    let uid = rollout.uid().unwrap_or_default();
    let mut releases: Vec<ReleaseProgress> = cache::owned(
        &ctx.caches.releases,
        &ctx.caches.release_index,
        namespace,
        &name,
    )
    .iter()
    .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
    .map(|r| r.spec.release.clone())
    .collect();
    if let Some(current) = rollout.status.as_ref().and_then(|s| s.release.clone()) {
        releases.retain(|r| r.number != current.number);
        releases.push(current);
    }
    let (mut ended, mut in_flight) = (Vec::new(), Vec::new());
    for release in releases {
        let release_name = crate::release_record::name(&name, release.number);
        match EndedRelease::of(release_name.clone(), &release) {
            Some(done) => ended.push(done),
            None => {
                if let Some(admitted) = &release.admitted_at
                    && !release.rollback
                {
                    in_flight.push(AdmittedRelease {
                        rollout: name.clone(),
                        name: release_name,
                        admitted_at: admitted.0,
                    });
                }
            }
        }
    }
    (ended, in_flight)
}
