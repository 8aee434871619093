//! The objects the page shows, kept from the watches, and the changes sent to every page.
//!
//! One watch per kind serves every browser: a page gets the whole board when it connects, then
//! each change as it happens. An object whose view did not change is not sent again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::view::{Kind, view};

/// Gate evaluations kept per gate for its burn-down (a day at one a minute and a half).
const GATE_SAMPLES: usize = 1000;
/// Changes a slow page may fall behind by before it is sent the whole board again.
const CHANGES_BUFFERED: usize = 1024;

/// An object's identity.
pub type Key = (Kind, String, String);

/// A change, as the page is sent it: the SSE event's name and its JSON data.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub event: &'static str,
    pub data: Arc<str>,
}

pub struct Board {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    /// The evaluations of each gate this dashboard saw (gates keep only their last in status).
    gate_samples: BTreeMap<Key, VecDeque<Value>>,
    /// Kinds listed in full at least once.
    listed: BTreeSet<Kind>,
    /// Objects seen in the list in progress, per kind: the others were deleted while unwatched.
    relisting: BTreeMap<Kind, BTreeSet<Key>>,
    /// Why a kind's watch is failing (forbidden, no such resource), until it works again.
    problems: BTreeMap<Kind, String>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        }
    }
}

fn key(kind: Kind, object: &Value) -> Option<Key> {
    let metadata = &object["metadata"];
    Some((
        kind,
        metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        metadata["name"].as_str()?.to_owned(),
    ))
}

fn entry(key: &Key, view: Option<&Value>) -> Value {
    json!({"kind": key.0.as_str(), "namespace": key.1, "name": key.2, "view": view})
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a board still worth showing.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every change from now on; subscribe before reading the board so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The whole board: every object's view.
    pub fn snapshot(&self) -> Value {
        let inner = self.lock();
        let objects: Vec<Value> = inner
            .objects
            .iter()
            .map(|(key, view)| entry(key, Some(view)))
            .collect();
        let problems: BTreeMap<&str, &String> = inner
            .problems
            .iter()
            .map(|(kind, message)| (kind.as_str(), message))
            .collect();
        json!({"objects": objects, "problems": problems})
    }

    /// The watch of `kind` failed (it retries with a backoff); the page shows why.
    pub fn watch_failed(&self, kind: Kind, message: String) {
        let mut inner = self.lock();
        if inner.problems.get(&kind) != Some(&message) {
            self.send(
                "problem",
                json!({"kind": kind.as_str(), "message": message}),
            );
            inner.problems.insert(kind, message);
        }
    }

    /// The watch of `kind` works (again).
    pub fn watch_works(&self, kind: Kind) {
        let mut inner = self.lock();
        if inner.problems.remove(&kind).is_some() {
            self.send("problem", json!({"kind": kind.as_str(), "message": null}));
        }
    }

    /// Whether every kind has been listed in full once.
    pub fn ready(&self) -> bool {
        self.lock().listed.len() == Kind::ALL.len()
    }

    /// A list of `kind` starts (the first, or after the watch lost its place).
    pub fn list_started(&self, kind: Kind) {
        self.lock().relisting.insert(kind, BTreeSet::new());
    }

    /// The list of `kind` ended: what it did not have is gone.
    pub fn list_done(&self, kind: Kind) {
        let mut inner = self.lock();
        let seen = inner.relisting.remove(&kind).unwrap_or_default();
        let gone: Vec<Key> = inner
            .objects
            .keys()
            .filter(|key| key.0 == kind && !seen.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            inner.objects.remove(&key);
            inner.gate_samples.remove(&key);
            self.send("delete", entry(&key, None));
        }
        inner.listed.insert(kind);
    }

    /// `object` (as the API server has it) was listed, added or changed.
    pub fn apply(&self, kind: Kind, object: &Value) {
        let Some(key) = key(kind, object) else {
            return;
        };
        let mut view = view(kind, object);
        let mut inner = self.lock();
        if let Some(seen) = inner.relisting.get_mut(&kind) {
            seen.insert(key.clone());
        }
        if kind == Kind::ErrorBudgetGate {
            let samples = inner.gate_samples.entry(key.clone()).or_default();
            record_gate_sample(samples, &view["status"]);
            view["samples"] = Value::Array(samples.iter().cloned().collect());
        }
        if inner.objects.get(&key) == Some(&view) {
            return;
        }
        self.send("upsert", entry(&key, Some(&view)));
        inner.objects.insert(key, view);
    }

    /// `object` was deleted.
    pub fn delete(&self, kind: Kind, object: &Value) {
        let Some(key) = key(kind, object) else {
            return;
        };
        let mut inner = self.lock();
        inner.gate_samples.remove(&key);
        if inner.objects.remove(&key).is_some() {
            self.send("delete", entry(&key, None));
        }
    }

    fn send(&self, event: &'static str, data: Value) {
        // No page listening is not an error.
        let _ = self.changes.send(Change {
            event,
            data: Arc::from(data.to_string()),
        });
    }
}

/// Adds the gate's last evaluation to its samples, unless it is the one already recorded.
fn record_gate_sample(samples: &mut VecDeque<Value>, status: &Value) {
    let Some(at) = status["lastEvaluationTime"].as_str() else {
        return;
    };
    if samples.back().is_some_and(|last| last["at"] == at) {
        return;
    }
    let burn_rates: Vec<Value> = status["burnRates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rate| {
            json!({"longWindow": rate["longWindow"], "long": rate["longBurnRate"],
                   "short": rate["shortBurnRate"], "factor": rate["factor"]})
        })
        .collect();
    samples.push_back(json!({
        "at": at,
        "budgetRemainingPercent": status["budgetRemainingPercent"],
        "burnRates": burn_rates,
    }));
    while samples.len() > GATE_SAMPLES {
        samples.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "shop", "resourceVersion": phase.len().to_string()},
               "spec": {}, "status": {"phase": phase}})
    }

    fn drain(changes: &mut broadcast::Receiver<Change>) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        while let Ok(change) = changes.try_recv() {
            out.push((
                change.event,
                serde_json::from_str(&change.data).unwrap_or_default(),
            ));
        }
        out
    }

    #[test]
    fn a_change_is_sent_once_and_an_unchanged_view_not_at_all() {
        let board = Board::default();
        let mut changes = board.subscribe();
        board.list_started(Kind::Rollout);
        board.apply(Kind::Rollout, &rollout("web", "Progressing"));
        board.list_done(Kind::Rollout);
        board.apply(Kind::Rollout, &rollout("web", "Progressing"));
        board.apply(Kind::Rollout, &rollout("web", "Healthy"));
        let sent = drain(&mut changes);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1].1["view"]["status"]["phase"], "Healthy");
        assert_eq!(
            board.snapshot()["objects"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn a_relist_removes_what_was_deleted_while_unwatched_and_the_board_is_ready_after_every_kind() {
        let board = Board::default();
        for kind in Kind::ALL {
            board.list_started(kind);
            assert!(!board.ready());
            board.list_done(kind);
        }
        assert!(board.ready());
        board.apply(Kind::Rollout, &rollout("web", "Healthy"));
        board.apply(Kind::Rollout, &rollout("api", "Healthy"));
        let mut changes = board.subscribe();
        board.list_started(Kind::Rollout);
        board.apply(Kind::Rollout, &rollout("api", "Healthy"));
        board.list_done(Kind::Rollout);
        let sent = drain(&mut changes);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "delete");
        assert_eq!(sent[0].1["name"], "web");
    }

    #[test]
    fn a_gate_keeps_each_evaluation_once_for_its_burn_down() {
        let board = Board::default();
        let gate = |at: &str, budget: f64| {
            json!({"metadata": {"name": "slo", "namespace": "shop"}, "spec": {},
                   "status": {"lastEvaluationTime": at, "budgetRemainingPercent": budget,
                              "burnRates": [{"longWindow": "1h", "longBurnRate": 2.0, "factor": 14.4}]}})
        };
        board.apply(Kind::ErrorBudgetGate, &gate("2026-01-01T00:00:00Z", 80.0));
        board.apply(Kind::ErrorBudgetGate, &gate("2026-01-01T00:00:00Z", 80.0));
        board.apply(Kind::ErrorBudgetGate, &gate("2026-01-01T00:01:00Z", 79.5));
        let snapshot = board.snapshot();
        let samples = &snapshot["objects"][0]["view"]["samples"];
        assert_eq!(samples.as_array().map(Vec::len), Some(2), "{samples}");
        assert_eq!(samples[1]["budgetRemainingPercent"], 79.5);
        assert_eq!(samples[0]["burnRates"][0]["long"], 2.0);
        board.delete(Kind::ErrorBudgetGate, &gate("", 0.0));
        assert_eq!(board.snapshot()["objects"], json!([]));
    }
}
