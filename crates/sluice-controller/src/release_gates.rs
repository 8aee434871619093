//! The ErrorBudgetGates' side of a Rollout reconcile: which gates select a Rollout (read from the
//! gates' watch cache, no API call), and which Rollouts to look at again when a gate changes.
//!
//! A gate's status changes on every evaluation (its times and figures); Rollouts are woken only when
//! something a release decision reads changes: the gate's spec, state, reason, the budget to a tenth
//! of a percent, the firing burn-rate alerts, or the Rollouts it selects.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

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
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        gate.metadata.generation,
        status.state,
        status.reason,
        status
            .budget_remaining_percent
            .map(|b| (b * 10.0).round() as i64),
        firing,
        status.message.as_ref().filter(|_| status.state.is_none()),
    )
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
        let previous = match &current {
            Some(gate) => seen.insert(key, (fingerprint(gate), selected.clone())),
            None => seen.remove(&key),
        };
        match previous {
            Some((old_print, old_selected))
                if current
                    .as_ref()
                    .is_some_and(|g| fingerprint(g) == old_print)
                    && old_selected == selected =>
            {
                Vec::new()
            }
            Some((_, old_selected)) => old_selected.union(&selected).cloned().collect(),
            None => selected.into_iter().collect(),
        }
    }
}
