//! The ErrorBudgetGates' side of a Rollout reconcile: which gates select a Rollout (read from the
//! gates' watch cache, no API call), and which Rollouts to look at again when a gate changes.
//!
//! A gate's status changes on every evaluation (its times and figures); Rollouts are woken only when
//! something a release decision reads changes: the gate's spec, state, reason, the budget to a tenth
//! of a percent, the firing burn-rate alerts, the Rollouts it selects, or whether its last
//! evaluation still counts (a gate no longer evaluated is read as Unknown).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::jiff::Timestamp;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_api::ErrorBudgetGate;
use sluice_api::rollout::Rollout;
use sluice_engine::gate::{GateView, Gating};

/// Whether `gate` selects `rollout`: same namespace, labels match. A selector that cannot be parsed
/// selects nothing (the API server's schema rejects most such selectors at apply).
fn selects(gate: &ErrorBudgetGate, rollout: &Rollout) -> bool {
    if gate.namespace() != rollout.namespace() || gate.metadata.deletion_timestamp.is_some() {
        return false;
    }
    Selector::try_from(gate.spec.selector.clone())
        .is_ok_and(|selector| selector.matches(rollout.labels()))
}

/// The gates selecting `rollout`, and its bypass annotation and critical mark.
pub fn gating(gates: &Store<ErrorBudgetGate>, rollout: &Rollout) -> Gating {
    let mut views: Vec<GateView> = gates
        .state()
        .iter()
        .filter(|gate| selects(gate, rollout))
        .map(|gate| GateView::new(&gate.name_any(), &gate.spec, gate.status.as_ref()))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let template_annotations = rollout
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    Gating::from_annotations(views, rollout.annotations(), &template_annotations)
}

/// What a Rollout's release decision reads from a gate, to tell a change that matters from a routine
/// evaluation.
fn fingerprint(gate: &ErrorBudgetGate) -> String {
    let status = gate.status.clone().unwrap_or_default();
    let firing: Vec<(String, String)> = status
        .burn_rates
        .iter()
        .filter(|b| b.firing)
        .map(|b| (b.long_window.clone(), b.short_window.clone()))
        .collect();
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        gate.metadata.generation,
        status.state,
        status.reason,
        status
            .budget_remaining_percent
            .map(|b| (b * 10.0).round() as i64),
        firing,
        status.message.as_ref().filter(|_| status.state.is_none()),
        stale(gate, Timestamp::now()),
    )
}

/// Whether the gate's last evaluation no longer counts at `now` (the engine then reads it as
/// Unknown).
fn stale(gate: &ErrorBudgetGate, now: Timestamp) -> bool {
    GateView::new(&gate.name_any(), &gate.spec, gate.status.as_ref())
        .stale_at()
        .is_some_and(|at| at <= now)
}

/// How often to look for gates whose last evaluation stopped counting.
const STALENESS_CHECK: Duration = Duration::from_secs(1);

/// Gates whose last evaluation stopped counting (or counts again) since the last look: a gate that
/// is no longer evaluated sends no change, so the Rollouts it selects would never learn that its
/// last state no longer counts. Reads the gates' cache only.
pub fn staleness_changes(gates: Store<ErrorBudgetGate>) -> UnboundedReceiver<ErrorBudgetGate> {
    let (sender, changes) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        let mut known: HashMap<ObjectRef<ErrorBudgetGate>, bool> = HashMap::new();
        let mut tick = tokio::time::interval(STALENESS_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Timestamp::now();
            let mut present = HashSet::new();
            for gate in gates.state() {
                let key = ObjectRef::from_obj(gate.as_ref());
                let is_stale = stale(&gate, now);
                present.insert(key.clone());
                if known
                    .insert(key, is_stale)
                    .is_some_and(|was| was != is_stale)
                    && sender.unbounded_send(gate.as_ref().clone()).is_err()
                {
                    return;
                }
            }
            known.retain(|key, _| present.contains(key));
        }
    });
    changes
}

/// A gate's fingerprint when last seen, and the Rollouts it selected then.
type Seen = (String, HashSet<ObjectRef<Rollout>>);

/// Maps gate changes to the Rollouts to reconcile.
pub struct GateTrigger {
    rollouts: Store<Rollout>,
    gates: Store<ErrorBudgetGate>,
    /// Per gate: the fingerprint last seen and the Rollouts it selected then.
    seen: Mutex<HashMap<ObjectRef<ErrorBudgetGate>, Seen>>,
}

impl GateTrigger {
    pub fn new(rollouts: Store<Rollout>, gates: Store<ErrorBudgetGate>) -> Self {
        Self {
            rollouts,
            gates,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The Rollouts to look at again after `gate` was added, changed or deleted: those it selects
    /// now and those it selected before (a Rollout it no longer selects must drop its hold), unless
    /// nothing a release decision reads changed.
    pub fn rollouts_to_reconcile(&self, gate: &ErrorBudgetGate) -> Vec<ObjectRef<Rollout>> {
        let key = ObjectRef::from_obj(gate);
        // The cache is updated before the event is passed on: a gate missing from it was deleted.
        let current = self.gates.get(&key);
        let selected: HashSet<ObjectRef<Rollout>> = match &current {
            Some(gate) => self
                .rollouts
                .state()
                .iter()
                .filter(|r| selects(gate, r))
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect(),
            None => HashSet::new(),
        };
        let Ok(mut seen) = self.seen.lock() else {
            return selected.into_iter().collect();
        };
        let print = current.as_deref().map(fingerprint);
        let previous = match &print {
            Some(print) => seen.insert(key, (print.clone(), selected.clone())),
            None => seen.remove(&key),
        };
        match previous {
            Some((old_print, old_selected))
                if print.as_ref() == Some(&old_print) && old_selected == selected =>
            {
                Vec::new()
            }
            Some((_, old_selected)) => old_selected.union(&selected).cloned().collect(),
            None => selected.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;
    use serde_json::json;
    use sluice_api::gate::GateState;

    use super::*;

    fn gate(state: GateState, budget: f64) -> ErrorBudgetGate {
        let mut gate: ErrorBudgetGate = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate",
            "metadata": {"name": "slo", "namespace": "shop", "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"slo": "checkout"}},
                "objective": 99.9,
                "sli": {"events": {"errorQuery": "e[{{window}}]", "totalQuery": "t[{{window}}]"}},
                "prometheus": {"address": "http://prometheus:9090"}
            }
        }))
        .expect("gate");
        gate.status = Some(sluice_api::gate::ErrorBudgetGateStatus {
            state: Some(state),
            budget_remaining_percent: Some(budget),
            ..Default::default()
        });
        gate
    }

    fn rollout(name: &str, slo: &str) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "namespace": "shop", "labels": {"slo": slo}},
            "spec": {"selector": {"matchLabels": {"app": name}}, "strategy": {"canary": {}}}
        }))
        .expect("rollout")
    }

    fn apply<K>(writer: &mut Writer<K>, object: K)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&Event::Apply(object));
    }

    fn names(refs: &[ObjectRef<Rollout>]) -> Vec<String> {
        let mut names: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn only_changes_a_release_decision_reads_wake_the_selected_rollouts() {
        let (rollouts, mut rollout_writer) = reflector::store::<Rollout>();
        let (gates, mut gate_writer) = reflector::store::<ErrorBudgetGate>();
        apply(&mut rollout_writer, rollout("a", "checkout"));
        apply(&mut rollout_writer, rollout("b", "checkout"));
        apply(&mut rollout_writer, rollout("c", "search"));
        let trigger = GateTrigger::new(rollouts, gates.clone());

        let frozen = gate(GateState::Frozen, 6.02);
        apply(&mut gate_writer, frozen.clone());
        assert_eq!(names(&trigger.rollouts_to_reconcile(&frozen)), ["a", "b"]);
        // A routine evaluation: same state, budget within a tenth of a point.
        let again = gate(GateState::Frozen, 6.04);
        apply(&mut gate_writer, again.clone());
        assert!(trigger.rollouts_to_reconcile(&again).is_empty());
        // The budget moves: the hold message changes.
        let lower = gate(GateState::Frozen, 5.5);
        apply(&mut gate_writer, lower.clone());
        assert_eq!(names(&trigger.rollouts_to_reconcile(&lower)), ["a", "b"]);
        // `a` leaves the selection: it is woken too, to drop its hold.
        apply(&mut rollout_writer, rollout("a", "other"));
        assert_eq!(names(&trigger.rollouts_to_reconcile(&lower)), ["a", "b"]);
        assert!(trigger.rollouts_to_reconcile(&lower).is_empty());
        // Deleted: the Rollouts it selected are woken.
        gate_writer.apply_watcher_event(&Event::Delete(lower.clone()));
        assert_eq!(names(&trigger.rollouts_to_reconcile(&lower)), ["b"]);
        assert!(gating(&gates, &rollout("b", "checkout")).gates.is_empty());
    }

    #[test]
    fn gating_reads_the_bypass_from_the_rollout_and_the_critical_mark_from_its_template() {
        let (gates, mut gate_writer) = reflector::store::<ErrorBudgetGate>();
        apply(&mut gate_writer, gate(GateState::CriticalOnly, 2.0));
        let mut r = rollout("a", "checkout");
        r.metadata.annotations = Some(
            [(
                "sluice.dev/bypass-error-budget".to_owned(),
                " INC-1 ".to_owned(),
            )]
            .into(),
        );
        r.spec.template = Some(
            serde_json::from_value(
                json!({"metadata": {"annotations": {"sluice.dev/critical": "true"}}}),
            )
            .expect("template"),
        );
        let gating = gating(&gates, &r);
        assert_eq!(gating.gates.len(), 1);
        assert_eq!(gating.bypass_reason.as_deref(), Some("INC-1"));
        assert!(gating.critical);
        assert!(
            super::gating(&gates, &rollout("c", "search"))
                .gates
                .is_empty()
        );
    }
}
