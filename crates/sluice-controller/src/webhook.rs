//! The webhook caller: makes the calls a Rollout's plan wants (`spec.webhooks`) outside the
//! reconcile, one task per call, and hands their latest answers to the next snapshot.
//!
//! A plan lists the calls it wants; [`Caller::want`] starts those not yet being made and gives up
//! those no plan wants any more. A `pre-rollout` or `post-rollout` call is made once, again after
//! 1, 2, 4 ... seconds while it fails (`retries`), and its outcome wakes the Rollout; a
//! `confirm-*` or `rollback` call is asked every [`POLL_INTERVAL`] until it answers 2xx, and wakes
//! the Rollout whenever its answer changes. Answers live here only until the engine has recorded
//! what they settle in status: a restart asks the pending calls again and never repeats a
//! recorded one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::channel::mpsc;
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_analysis::AddressPolicy;
use sluice_analysis::hook::{CallOutcome, Post, post};
use sluice_api::rollout::{Rollout, Webhook};
use sluice_engine::release::{HookAnswer, HookCall};

/// How often a `confirm-rollout`, `confirm-promotion` or `rollback` webhook is asked again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
/// How long one call may take when the webhook does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a call may take (the schema refuses more).
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Retries of a failed `pre-rollout` or `post-rollout` call when the webhook does not say.
pub const DEFAULT_RETRIES: usize = 2;

/// A Rollout, by namespace and name.
type RolloutKey = (String, String);

/// A call: the webhook's name, the revision, the document's phase, the release's attempt and a hash
/// of the webhook's spec (a URL or timeout fixed while a call polls makes a new call).
type CallKey = (String, String, &'static str, i32, u64);

/// A hash of a webhook's spec, as written.
fn spec_hash(hook: &Webhook) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(hook)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

struct Running {
    task: tokio::task::AbortHandle,
    answer: Option<CallOutcome>,
}

/// The calls being made, by Rollout.
#[derive(Clone)]
pub struct Caller {
    calls: Arc<Mutex<HashMap<RolloutKey, BTreeMap<CallKey, Running>>>>,
    wake: mpsc::UnboundedSender<ObjectRef<Rollout>>,
    policy: Arc<AddressPolicy>,
    rollouts: Store<Rollout>,
}

impl Caller {
    /// A caller reaching what `policy` allows; the stream wakes the Rollouts whose answers came.
    pub fn new(
        policy: Arc<AddressPolicy>,
        rollouts: Store<Rollout>,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectRef<Rollout>>) {
        let (wake, woken) = mpsc::unbounded();
        let caller = Self {
            calls: Arc::default(),
            wake,
            policy,
            rollouts,
        };
        (caller, woken)
    }

    /// The latest answers of the Rollout's calls, for its snapshot.
    pub fn answers(&self, namespace: &str, name: &str) -> Vec<HookAnswer> {
        let Ok(calls) = self.calls.lock() else {
            return Vec::new();
        };
        let key = (namespace.to_owned(), name.to_owned());
        calls
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|((hook, revision, phase, attempt, _), running)| {
                running.answer.as_ref().map(|answer| HookAnswer {
                    name: hook.clone(),
                    revision: revision.clone(),
                    phase: (*phase).to_owned(),
                    attempt: *attempt,
                    ok: answer.ok,
                    message: answer.message.clone(),
                })
            })
            .collect()
    }

    /// Makes the calls `wanted` for the Rollout (those not being made already start now) and gives
    /// up the others.
    pub fn want(&self, rollout: &Rollout, namespace: &str, wanted: &[HookCall]) {
        let name = rollout.metadata.name.clone().unwrap_or_default();
        let key = (namespace.to_owned(), name);
        let Ok(mut calls) = self.calls.lock() else {
            return;
        };
        if wanted.is_empty() && !calls.contains_key(&key) {
            return;
        }
        let running = calls.entry(key.clone()).or_default();
        let current = |name: &str| {
            rollout
                .spec
                .webhooks
                .iter()
                .find(|h| h.name == name)
                .map(spec_hash)
        };
        running.retain(|(hook, revision, phase, attempt, hash), call| {
            let keep = current(hook) == Some(*hash)
                && wanted.iter().any(|w| {
                    &w.name == hook
                        && &w.revision == revision
                        && w.phase == *phase
                        && w.attempt == *attempt
                });
            if !keep {
                call.task.abort();
            }
            keep
        });
        for call in wanted {
            let Some(hook) = rollout.spec.webhooks.iter().find(|h| h.name == call.name) else {
                continue;
            };
            let call_key = (
                call.name.clone(),
                call.revision.clone(),
                call.phase,
                call.attempt,
                spec_hash(hook),
            );
            if running.contains_key(&call_key) {
                continue;
            }
            let document = document(rollout, namespace, hook, call);
            let task = tokio::spawn(self.clone().call(
                key.clone(),
                call_key.clone(),
                hook.clone(),
                document,
            ));
            running.insert(
                call_key,
                Running {
                    task: task.abort_handle(),
                    answer: None,
                },
            );
        }
        if running.is_empty() {
            calls.remove(&key);
        }
    }

    /// Records an answer; true if it differs from the last one.
    fn record(&self, rollout: &RolloutKey, call: &CallKey, answer: CallOutcome) -> bool {
        let Ok(mut calls) = self.calls.lock() else {
            return false;
        };
        let Some(running) = calls.get_mut(rollout).and_then(|c| c.get_mut(call)) else {
            return false;
        };
        let changed = running.answer.as_ref() != Some(&answer);
        running.answer = Some(answer);
        changed
    }

    /// Gives up the calls of a deleted Rollout.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        self.forget(&(namespace.to_owned(), name.to_owned()));
    }

    /// Gives up the Rollout's calls: it is gone.
    fn forget(&self, rollout: &RolloutKey) {
        if let Ok(mut calls) = self.calls.lock()
            && let Some(running) = calls.remove(rollout)
        {
            for call in running.values() {
                call.task.abort();
            }
        }
    }

    fn wake(&self, (namespace, name): &RolloutKey) {
        let _ = self
            .wake
            .unbounded_send(ObjectRef::new(name).within(namespace));
    }

    async fn call(
        self,
        rollout: RolloutKey,
        key: CallKey,
        hook: Webhook,
        document: serde_json::Value,
    ) {
        let timeout = hook
            .timeout
            .as_deref()
            .and_then(sluice_engine::duration::parse)
            .unwrap_or(DEFAULT_TIMEOUT)
            .min(MAX_TIMEOUT);
        // The same key on each retry of this call, so that the receiver may tell a retry from a
        // new call.
        let headers = [(
            "Idempotency-Key".to_owned(),
            document["idempotencyKey"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )];
        let request = Post {
            headers: &headers,
            ..Post::json(&hook.url, &document, timeout)
        };
        let once = || async {
            let outcome = post(&self.policy, &request).await;
            if outcome.ok {
                Ok(outcome)
            } else {
                Err(outcome)
            }
        };
        if !hook.type_.polled() {
            let retries = hook
                .retries
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT_RETRIES);
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(30))
                .with_max_times(retries);
            let outcome = once
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .notify(|failed: &CallOutcome, after: Duration| {
                    tracing::info!(
                        webhook = hook.name,
                        outcome = failed.message,
                        ?after,
                        "webhook call failed; calling again"
                    );
                })
                .await
                .unwrap_or_else(|failed| failed);
            self.record(&rollout, &key, outcome);
            self.wake(&rollout);
            return;
        }
        loop {
            let (namespace, name) = &rollout;
            if self
                .rollouts
                .get(&ObjectRef::new(name).within(namespace))
                .is_none()
            {
                self.forget(&rollout);
                return;
            }
            let outcome = once().await.unwrap_or_else(|failed| failed);
            let ok = outcome.ok;
            if self.record(&rollout, &key, outcome) {
                self.wake(&rollout);
            }
            if ok {
                // Confirmed (or a rollback asked for): the engine records it and stops asking.
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The JSON document a webhook is sent (Flagger's, with the webhook's name and the revision's
/// images added).
fn document(
    rollout: &Rollout,
    namespace: &str,
    hook: &Webhook,
    call: &HookCall,
) -> serde_json::Value {
    let images: Vec<String> = rollout
        .spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .map(|spec| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .filter_map(|c| c.image.clone())
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "name": rollout.metadata.name,
        "namespace": namespace,
        "phase": call.phase,
        "checksum": call.revision,
        "type": hook.type_.as_str(),
        "webhook": hook.name,
        "images": images,
        "metadata": hook.metadata,
        // One per call, the same on its retries: the Rollout, the webhook, the revision, the phase
        // and the release's attempt.
        "idempotencyKey": format!(
            "{}-{}-{}-{}-{}",
            rollout.metadata.uid.as_deref().unwrap_or_default(),
            hook.name,
            call.revision,
            call.phase,
            call.attempt
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> Webhook {
        serde_json::from_value(serde_json::json!({
            "name": "smoke", "type": "pre-rollout", "url": url
        }))
        .expect("webhook")
    }

    /// A webhook fixed while its call runs is a new call; each call's document carries a key that
    /// its retries repeat and another call does not.
    #[test]
    fn calls_are_keyed_by_the_hooks_spec_and_documents_carry_an_idempotency_key() {
        let before = hook("http://smoke.tests.svc/run");
        let fixed = hook("http://smoke.tests.svc/run-fixed");
        assert_ne!(spec_hash(&before), spec_hash(&fixed));
        assert_eq!(spec_hash(&before), spec_hash(&before.clone()));
        let rollout: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "uid": "u-1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"canary": {"steps": []}}}
        }))
        .expect("rollout");
        let call = |attempt| HookCall {
            name: "smoke".to_owned(),
            revision: "abc".to_owned(),
            phase: "pre-rollout",
            attempt,
        };
        let first = document(&rollout, "tests", &before, &call(0));
        assert_eq!(first["idempotencyKey"], "u-1-smoke-abc-pre-rollout-0");
        assert_eq!(
            document(&rollout, "tests", &before, &call(0))["idempotencyKey"],
            first["idempotencyKey"]
        );
        assert_ne!(
            document(&rollout, "tests", &before, &call(1))["idempotencyKey"],
            first["idempotencyKey"]
        );
    }
}
