//! Applying the gates to a Rollout's release: which revision was admitted, the bypasses used, the
//! revisions that were stable (a rollback to one is never held), the `ReleaseHeld` condition and
//! the Rollout's Events, and what the release does at this reconcile.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::gate::{BudgetThresholds, ErrorBudgetGateSpec, ErrorBudgetGateStatus, GateState};
use sluice_api::rollout::{ErrorBudgetBypass, RolloutStatus};

use super::decision::{
    GatePolicy, ReleaseDecision, RevisionFacts, RevisionKind, combine, release_decision,
};
use super::state::evaluation_interval;
use super::{BYPASS_ANNOTATION, CONDITION_RELEASE_HELD, EVENT_RELEASE_BYPASSED};
use crate::conditions::{self, ConditionStatus};
use crate::duration;
use crate::events::Event;

/// Bypasses kept in a Rollout's `status.errorBudget.bypasses`, newest last.
pub const BYPASS_HISTORY_LIMIT: usize = 10;
/// Stable revisions remembered in `status.errorBudget.releasedRevisions`, newest last.
pub const RELEASED_HISTORY_LIMIT: usize = 10;
/// Rollout Event reason when gates start holding its release.
pub const EVENT_RELEASE_HELD: &str = "ReleaseHeld";
/// Rollout Event reason when no gate holds its release any more.
pub const EVENT_RELEASE_RESUMED: &str = "ReleaseResumed";

/// A gate selecting a Rollout, as the controller's cache holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct GateView {
    /// The gate's name.
    pub name: String,
    /// Its last evaluation (`None`: never evaluated, which counts as Unknown).
    pub status: Option<ErrorBudgetGateStatus>,
    /// Its thresholds, for the messages.
    pub thresholds: BudgetThresholds,
    /// Its policies.
    pub policy: GatePolicy,
    /// How often it is evaluated.
    pub interval: Duration,
}

/// Evaluation intervals after which a gate's last evaluation no longer counts: its state is then
/// Unknown (held, unless `onUnknown: Allow`). A gate whose evaluations keep failing (its writes
/// refused, its controller down) must not stay Open forever.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Gate reason when its last evaluation is too old to count.
pub const REASON_EVALUATION_STALE: &str = "EvaluationStale";

impl GateView {
    /// The view of gate `name` with `spec` and `status`.
    pub fn new(
        name: &str,
        spec: &ErrorBudgetGateSpec,
        status: Option<&ErrorBudgetGateStatus>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            status: status.cloned(),
            thresholds: spec.thresholds.clone(),
            policy: GatePolicy::from_spec(spec),
            interval: evaluation_interval(spec),
        }
    }

    /// When its last evaluation stops counting (`None`: never evaluated, or no time recorded). The
    /// controller wakes the Rollouts a gate selects when this passes (no change to the gate does).
    pub fn stale_at(&self) -> Option<Timestamp> {
        let last = self.status.as_ref()?.last_evaluation_time.as_ref()?.0;
        Some(duration::after(
            last,
            self.interval.saturating_mul(STALE_AFTER_INTERVALS),
        ))
    }

    /// Its status as a decision at `now` reads it: Unknown once its last evaluation is too old.
    fn status_at(&self, now: Timestamp) -> Option<ErrorBudgetGateStatus> {
        let mut status = self.status.clone()?;
        if let (Some(stale_at), Some(last)) = (self.stale_at(), &status.last_evaluation_time)
            && now >= stale_at
        {
            status.message = Some(format!(
                "not evaluated since {} (every {}s expected): its last figures no longer count",
                last.0,
                self.interval.as_secs()
            ));
            status.state = Some(GateState::Unknown);
            status.reason = Some(REASON_EVALUATION_STALE.to_owned());
        }
        Some(status)
    }
}

/// The gates selecting a Rollout and what its current revision carries: the input a release
/// decision needs besides the Rollout's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gating {
    /// The gates selecting the Rollout, in any order.
    pub gates: Vec<GateView>,
    /// The reason in the Rollout's [`BYPASS_ANNOTATION`], trimmed; `None` when absent or empty.
    pub bypass_reason: Option<String>,
    /// The current pod template carries [`CRITICAL_ANNOTATION`](super::CRITICAL_ANNOTATION): `"true"`.
    pub critical: bool,
    /// The circuit breaker holds new releases, with this message (no bypass lets one through).
    pub circuit_hold: Option<String>,
}

impl Gating {
    /// The bypass reason and critical mark from the Rollout's annotations and its pod template's.
    pub fn from_annotations(
        gates: Vec<GateView>,
        rollout_annotations: &BTreeMap<String, String>,
        template_annotations: &BTreeMap<String, String>,
    ) -> Self {
        let facts =
            |annotations| RevisionFacts::from_annotations(RevisionKind::NewRelease, annotations);
        Self {
            gates,
            bypass_reason: facts(rollout_annotations).bypass_reason,
            critical: facts(template_annotations).critical,
            circuit_hold: None,
        }
    }
}

/// The name a circuit breaker's hold goes by in `status.errorBudget.heldBy`.
pub const CIRCUIT_BREAKER: &str = "circuit-breaker";

/// What the gates mean for a release at this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gated {
    /// Go on.
    Go,
    /// The new revision waits: its release does not start (no pods, no traffic, no analysis).
    HoldNew {
        /// Why, for the status message.
        message: String,
    },
    /// The release in flight finishes the step it is on and goes no further.
    HoldInFlight {
        /// Why, for the status message.
        message: String,
    },
    /// Abort the release in flight (`inFlightReleases: Abort`).
    Abort {
        /// Why.
        message: String,
    },
}

impl Gated {
    /// The hold's message, if the release is held.
    pub fn held(&self) -> Option<&str> {
        match self {
            Self::HoldNew { message } | Self::HoldInFlight { message } => Some(message),
            Self::Go | Self::Abort { .. } => None,
        }
    }
}

/// Whether the release of `revision` has started as far as the gates are concerned: they let it
/// through (or no gate held it when it began). The controller starts no analysis before.
pub fn admitted(status: &RolloutStatus, revision: &str) -> bool {
    status
        .error_budget
        .as_ref()
        .and_then(|e| e.admitted_revision.as_deref())
        == Some(revision)
}

/// Forgets which revision was admitted, so that a retried release asks the gates again.
pub fn forget_admission(status: &mut RolloutStatus) {
    if let Some(e) = status.error_budget.as_mut() {
        e.admitted_revision = None;
    }
}

/// Applies the gates to the release of `current`, recording in `status` the admission, the
/// bypasses, the gates holding it and the `ReleaseHeld` condition, and pushing the Events to
/// publish. `releasing`: a release of `current` is under way and not aborted. Going back to a
/// revision that was stable before (an undo, a revert: one of `releasedRevisions`) is a rollback,
/// which no gate holds.
///
/// A bypass reason lets one revision through: once recorded for a revision, the same reason does not
/// let another through (a later revision needs a new reason). A release that started before this
/// status recorded admissions (`errorBudget` absent, past its first step) counts as in flight.
pub fn gate_release(
    status: &mut RolloutStatus,
    gating: &Gating,
    current: &str,
    releasing: bool,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) -> Gated {
    let legacy_in_flight =
        status.error_budget.is_none() && status.current_step_index.unwrap_or(0) > 0;
    remember_stable(status);
    let record = status.error_budget.get_or_insert_with(Default::default);
    let rollback = record.released_revisions.iter().any(|r| r == current);
    if !releasing || rollback {
        release_hold(status, gating, now, generation, events);
        return Gated::Go;
    }
    let kind = if record.admitted_revision.as_deref() == Some(current) || legacy_in_flight {
        RevisionKind::InFlight
    } else {
        RevisionKind::NewRelease
    };
    // One revision per bypass reason.
    let bypass_reason = gating.bypass_reason.clone().filter(|reason| {
        !record
            .bypasses
            .iter()
            .any(|b| !b.critical && b.reason == *reason && b.revision != current)
    });
    let facts = RevisionFacts {
        kind,
        bypass_reason: bypass_reason.clone(),
        critical: gating.critical,
    };
    let decisions: Vec<(String, ReleaseDecision)> = gating
        .gates
        .iter()
        .map(|g| {
            let status = g.status_at(now);
            let decision =
                release_decision(&g.name, status.as_ref(), &g.thresholds, &g.policy, &facts);
            (g.name.clone(), decision)
        })
        .collect();
    let mut decisions = decisions;
    if kind == RevisionKind::NewRelease
        && let Some(message) = &gating.circuit_hold
    {
        decisions.push((
            CIRCUIT_BREAKER.to_owned(),
            ReleaseDecision::Hold {
                reason: crate::breaker::REASON_CIRCUIT_OPEN.to_owned(),
                message: message.clone(),
            },
        ));
    }
    let mut holding: Vec<String> = decisions
        .iter()
        .filter(|(_, d)| matches!(d, ReleaseDecision::Hold { .. }))
        .map(|(name, _)| name.clone())
        .collect();
    holding.sort();
    match combine(decisions.into_iter().map(|(_, d)| d)) {
        ReleaseDecision::Allow => {
            record.admitted_revision = Some(current.to_owned());
            release_hold(status, gating, now, generation, events);
            Gated::Go
        }
        ReleaseDecision::AllowBypassed { reason } => {
            record.admitted_revision = Some(current.to_owned());
            if !record.bypasses.iter().any(|b| b.revision == current) {
                let (why, critical) = if gating.critical {
                    ("critical fix".to_owned(), true)
                } else {
                    (bypass_reason.unwrap_or_default(), false)
                };
                record.bypasses.push(ErrorBudgetBypass {
                    revision: current.to_owned(),
                    reason: why,
                    critical,
                    message: reason.clone(),
                    time: Time(now),
                });
                let excess = record.bypasses.len().saturating_sub(BYPASS_HISTORY_LIMIT);
                record.bypasses.drain(..excess);
                events.push(Event {
                    warning: true,
                    reason: EVENT_RELEASE_BYPASSED,
                    message: format!(
                        "revision {current} goes through holding error-budget gates: {reason}"
                    ),
                });
            }
            release_hold(status, gating, now, generation, events);
            Gated::Go
        }
        ReleaseDecision::Hold { reason, message } => {
            record.held_by = holding;
            let was_held = conditions::get(&status.conditions, CONDITION_RELEASE_HELD)
                .is_some_and(|c| c.status == "True");
            conditions::set(
                &mut status.conditions,
                CONDITION_RELEASE_HELD,
                ConditionStatus::True,
                &reason,
                &message,
                now,
                generation,
            );
            if !was_held {
                events.push(Event {
                    warning: true,
                    reason: EVENT_RELEASE_HELD,
                    message: format!("release of {current} held: {message}"),
                });
            }
            if kind == RevisionKind::NewRelease {
                Gated::HoldNew { message }
            } else {
                Gated::HoldInFlight { message }
            }
        }
        ReleaseDecision::Abort { message } => {
            release_hold(status, gating, now, generation, events);
            Gated::Abort {
                message: format!("error-budget gate: {message}"),
            }
        }
    }
}

/// After a decision: a release that ended (aborted, or its revision now stable) is held no more,
/// and a new stable revision is remembered as one a rollback may go back to. Returns true if the
/// release ended, so that the caller drops its hold too.
pub fn settle(
    status: &mut RolloutStatus,
    gating: &Gating,
    current: &str,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) -> bool {
    remember_stable(status);
    let ended = status.abort || status.stable_rs.as_deref() == Some(current);
    if ended {
        release_hold(status, gating, now, generation, events);
    }
    ended
}

fn remember_stable(status: &mut RolloutStatus) {
    let stable = status.stable_rs.clone();
    let record = status.error_budget.get_or_insert_with(Default::default);
    if let Some(stable) = stable
        && record.released_revisions.last() != Some(&stable)
    {
        record.released_revisions.retain(|r| *r != stable);
        record.released_revisions.push(stable);
        let excess = record
            .released_revisions
            .len()
            .saturating_sub(RELEASED_HISTORY_LIMIT);
        record.released_revisions.drain(..excess);
    }
}

/// No gate holds the release (any more): clears `heldBy` and sets `ReleaseHeld` False, with an Event
/// if it was True. Rollouts no gate ever selected get no condition.
fn release_hold(
    status: &mut RolloutStatus,
    gating: &Gating,
    now: Timestamp,
    generation: i64,
    events: &mut Vec<Event>,
) {
    if let Some(record) = status.error_budget.as_mut() {
        record.held_by.clear();
    }
    let was_held =
        conditions::get(&status.conditions, CONDITION_RELEASE_HELD).map(|c| c.status == "True");
    if was_held.is_none() && gating.gates.is_empty() {
        return;
    }
    let message = if gating.gates.is_empty() {
        "no ErrorBudgetGate selects this Rollout".to_owned()
    } else {
        let names: Vec<&str> = gating.gates.iter().map(|g| g.name.as_str()).collect();
        format!(
            "error-budget gates {} let the release go on",
            names.join(", ")
        )
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_RELEASE_HELD,
        ConditionStatus::False,
        "ReleaseAllowed",
        &message,
        now,
        generation,
    );
    if was_held == Some(true) {
        events.push(Event {
            warning: false,
            reason: EVENT_RELEASE_RESUMED,
            message: "no error-budget gate holds the release any more".to_owned(),
        });
    }
}

/// A promotion does not get past a holding gate (a bypass does): the request is refused with an
/// Event saying how to bypass. `promote --full` stays recorded and goes ahead once released.
pub(crate) fn refuse_promotion_while_held(
    events: &mut Vec<Event>,
    held: Option<&str>,
    promote: &mut bool,
    promote_full: bool,
) {
    let Some(held) = held else { return };
    if *promote || promote_full {
        *promote = false;
        events.push(Event {
            warning: true,
            reason: "PromotionHeld",
            message: format!(
                "promotion waits: an error-budget gate holds the release ({held}); the {} annotation with a reason lets this revision through",
                BYPASS_ANNOTATION
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::gate::{GateState, InFlightPolicy, UnknownPolicy};

    use super::*;
    use crate::gate::REASON_ERROR_BUDGET_EXHAUSTED;

    fn view(state: GateState, in_flight: InFlightPolicy) -> GateView {
        GateView {
            name: "checkout-slo".into(),
            status: Some(ErrorBudgetGateStatus {
                state: Some(state),
                budget_remaining_percent: Some(6.2),
                ..ErrorBudgetGateStatus::default()
            }),
            thresholds: BudgetThresholds::default(),
            policy: GatePolicy {
                on_unknown: UnknownPolicy::Hold,
                in_flight,
            },
            interval: std::time::Duration::from_secs(60),
        }
    }

    fn releasing(stable: &str) -> RolloutStatus {
        RolloutStatus {
            stable_rs: Some(stable.into()),
            ..RolloutStatus::default()
        }
    }

    fn gate_once(
        status: &mut RolloutStatus,
        gating: &Gating,
        current: &str,
    ) -> (Gated, Vec<Event>) {
        let mut events = Vec::new();
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let gated = gate_release(status, gating, current, true, now, 1, &mut events);
        (gated, events)
    }

    #[test]
    fn an_open_gate_not_evaluated_for_three_intervals_counts_as_unknown() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let evaluated = |seconds_ago: i64| {
            let mut gate = view(GateState::Open, InFlightPolicy::HoldAtNextStep);
            if let Some(status) = gate.status.as_mut() {
                status.last_evaluation_time = Some(Time(
                    Timestamp::from_second(1_800_000_000 - seconds_ago).expect("time"),
                ));
            }
            Gating {
                gates: vec![gate],
                ..Gating::default()
            }
        };
        // Evaluated a minute ago (every minute expected): it counts until three minutes have gone.
        let fresh = evaluated(60);
        let (gated, _) = gate_once(&mut releasing("v1"), &fresh, "v2");
        assert_eq!(gated, Gated::Go);
        assert_eq!(
            fresh.gates[0].stale_at(),
            Timestamp::from_second(1_800_000_120).ok()
        );
        // Ten minutes ago: the gate's controller has not managed to evaluate it; Open no longer
        // counts, and Unknown holds by default.
        let stale = evaluated(600);
        let mut status = releasing("v1");
        let (gated, events) = gate_once(&mut status, &stale, "v2");
        assert!(
            matches!(&gated, Gated::HoldNew { message } if message.contains("not evaluated since")),
            "{gated:?}"
        );
        assert_eq!(events.len(), 1);
        assert!(stale.gates[0].stale_at().is_some_and(|at| at <= now));
    }

    #[test]
    fn a_frozen_gate_holds_a_new_revision_and_says_when_it_resumes() {
        let gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::HoldAtNextStep)],
            ..Gating::default()
        };
        let mut status = releasing("v1");
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!(
            gated,
            Gated::HoldNew {
                message: "gate checkout-slo: 6.2% of budget left (freeze below 10%); releases resume above 15%".into()
            }
        );
        let held = conditions::get(&status.conditions, CONDITION_RELEASE_HELD).expect("condition");
        assert_eq!(
            (held.status.as_str(), held.reason.as_str()),
            ("True", REASON_ERROR_BUDGET_EXHAUSTED)
        );
        assert_eq!(
            status.error_budget.as_ref().map(|e| e.held_by.clone()),
            Some(vec!["checkout-slo".to_owned()])
        );
        assert_eq!(events.len(), 1);
        // Holding again says nothing new.
        let (_, events) = gate_once(&mut status, &gating, "v2");
        assert!(events.is_empty());
        assert!(!admitted(&status, "v2"));
    }

    #[test]
    fn a_release_admitted_before_the_freeze_is_held_in_flight_or_aborted_per_policy() {
        for (policy, expected) in [
            (InFlightPolicy::HoldAtNextStep, "hold"),
            (InFlightPolicy::Abort, "abort"),
            (InFlightPolicy::Continue, "go"),
        ] {
            let mut status = releasing("v1");
            let (gated, _) = gate_once(&mut status, &Gating::default(), "v2");
            assert_eq!(gated, Gated::Go);
            assert!(admitted(&status, "v2"));
            let gating = Gating {
                gates: vec![view(GateState::Frozen, policy)],
                ..Gating::default()
            };
            let (gated, _) = gate_once(&mut status, &gating, "v2");
            let kind = match gated {
                Gated::HoldInFlight { .. } => "hold",
                Gated::Abort { .. } => "abort",
                Gated::Go => "go",
                Gated::HoldNew { .. } => "new",
            };
            assert_eq!(kind, expected, "{policy:?}");
        }
    }

    #[test]
    fn a_bypass_reason_lets_one_revision_through_and_is_recorded() {
        let mut gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::HoldAtNextStep)],
            bypass_reason: Some("INC-1234 hotfix".into()),
            critical: false,
            circuit_hold: None,
        };
        let mut status = releasing("v1");
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!(gated, Gated::Go);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, EVENT_RELEASE_BYPASSED);
        let record = status.error_budget.clone().expect("record");
        assert_eq!(record.bypasses.len(), 1);
        assert_eq!(record.bypasses[0].revision, "v2");
        assert_eq!(record.bypasses[0].reason, "INC-1234 hotfix");
        // The same revision keeps going (one record); the next one needs a new reason.
        let (gated, events) = gate_once(&mut status, &gating, "v2");
        assert_eq!((gated, events.len()), (Gated::Go, 0));
        status.stable_rs = Some("v2".into());
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
        gating.bypass_reason = Some("INC-1235".into());
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert_eq!(gated, Gated::Go);
        assert_eq!(status.error_budget.map(|e| e.bypasses.len()), Some(2));
    }

    #[test]
    fn below_critical_only_a_revision_marked_critical_passes() {
        let mut gating = Gating {
            gates: vec![view(
                GateState::CriticalOnly,
                InFlightPolicy::HoldAtNextStep,
            )],
            bypass_reason: Some("please".into()),
            critical: false,
            circuit_hold: None,
        };
        let mut status = releasing("v1");
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
        gating.critical = true;
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert_eq!(gated, Gated::Go);
        let record = status.error_budget.expect("record");
        assert!(record.bypasses[0].critical);
    }

    #[test]
    fn going_back_to_a_revision_that_was_stable_is_never_held() {
        let gating = Gating {
            gates: vec![view(GateState::CriticalOnly, InFlightPolicy::Abort)],
            ..Gating::default()
        };
        let mut status = releasing("v1");
        let (_, _) = gate_once(&mut status, &Gating::default(), "v2");
        // v2 became stable; undo to v1 during the freeze.
        status.stable_rs = Some("v2".into());
        let (gated, _) = gate_once(&mut status, &gating, "v1");
        assert_eq!(gated, Gated::Go);
        // A never-released revision is held.
        let (gated, _) = gate_once(&mut status, &gating, "v3");
        assert!(matches!(gated, Gated::HoldNew { .. }));
    }

    #[test]
    fn a_retry_asks_the_gates_again() {
        let mut status = releasing("v1");
        let (_, _) = gate_once(&mut status, &Gating::default(), "v2");
        forget_admission(&mut status);
        let gating = Gating {
            gates: vec![view(GateState::Frozen, InFlightPolicy::Abort)],
            ..Gating::default()
        };
        let (gated, _) = gate_once(&mut status, &gating, "v2");
        assert!(matches!(gated, Gated::HoldNew { .. }), "{gated:?}");
    }
}
