//! The Rollout side: what one gate, or several folded together, lets a revision do (go ahead,
//! go ahead on a bypass or critical marker, wait, or abort), from the gate's state and policies
//! and the facts about the revision.

use std::collections::BTreeMap;

use sluice_api::gate::{
    BudgetThresholds, ErrorBudgetGateSpec, ErrorBudgetGateStatus, GateState, InFlightPolicy,
    UnknownPolicy,
};

use super::state::{firing_summary, holds_releases, in_flight_policy, on_unknown};
use super::{
    BYPASS_ANNOTATION, CRITICAL_ANNOTATION, REASON_ERROR_BUDGET_BURNING,
    REASON_ERROR_BUDGET_CRITICAL_ONLY, REASON_ERROR_BUDGET_EXHAUSTED, REASON_ERROR_BUDGET_UNKNOWN,
    REASON_FAST_BURN,
};

/// What the revision a Rollout wants to run is, relative to its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionKind {
    /// A new revision whose release has not started yet.
    NewRelease,
    /// A release already under way (past its first step).
    InFlight,
    /// Going back to the stable template: an abort, a rollback, an undo. Never held.
    Rollback,
}

/// The facts about a revision a gate's decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionFacts {
    /// New, in flight, or back to stable.
    pub kind: RevisionKind,
    /// The reason in [`BYPASS_ANNOTATION`], trimmed; `None` when absent or empty. The controller
    /// passes it only while the bypass has not been used by another revision (one revision each).
    pub bypass_reason: Option<String>,
    /// [`CRITICAL_ANNOTATION`] is `"true"`.
    pub critical: bool,
}

impl RevisionFacts {
    /// The facts from the Rollout's annotations.
    pub fn from_annotations(kind: RevisionKind, annotations: &BTreeMap<String, String>) -> Self {
        Self {
            kind,
            bypass_reason: annotations
                .get(BYPASS_ANNOTATION)
                .map(|r| r.trim())
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            critical: annotations
                .get(CRITICAL_ANNOTATION)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }
    }
}

/// The gate's policies that bear on a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatePolicy {
    /// What an Unknown gate does.
    pub on_unknown: UnknownPolicy,
    /// What a holding gate does to a release in flight.
    pub in_flight: InFlightPolicy,
}

impl GatePolicy {
    /// The policies of `spec`, with the API's defaults (`Hold`, `HoldAtNextStep`).
    pub fn from_spec(spec: &ErrorBudgetGateSpec) -> Self {
        Self {
            on_unknown: on_unknown(spec),
            in_flight: in_flight_policy(spec),
        }
    }
}

/// What a revision may do, from one gate or several folded with [`combine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// Go ahead.
    Allow,
    /// Go ahead although a gate holds: record `reason` in status and an Event
    /// ([`EVENT_RELEASE_BYPASSED`](super::EVENT_RELEASE_BYPASSED)).
    AllowBypassed {
        /// Why, e.g. the bypass annotation's reason.
        reason: String,
    },
    /// Wait (a new release does not start; one in flight stops at its next step boundary), with
    /// condition [`CONDITION_RELEASE_HELD`](super::CONDITION_RELEASE_HELD).
    Hold {
        /// The condition's CamelCase reason, e.g. [`REASON_ERROR_BUDGET_EXHAUSTED`].
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// Abort the release in flight; traffic returns to stable.
    Abort {
        /// Why.
        message: String,
    },
}

impl ReleaseDecision {
    fn severity(&self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::AllowBypassed { .. } => 1,
            Self::Hold { .. } => 2,
            Self::Abort { .. } => 3,
        }
    }
}

/// Whether gate `gate_name` lets `revision` go ahead.
///
/// Rollbacks always pass. Open and Warning gates pass everything. A Frozen gate holds unless the
/// revision carries a bypass or the critical marker; a CriticalOnly gate only passes revisions
/// marked critical (a bypass alone is not enough below `criticalOnlyBelow`). An Unknown gate (or one
/// never evaluated) follows `onUnknown`, like Frozen when it holds. A release in flight follows
/// `inFlightReleases` (never aborted for an Unknown gate: an outage of Prometheus says nothing of
/// the release).
pub fn release_decision(
    gate_name: &str,
    gate_status: Option<&ErrorBudgetGateStatus>,
    thresholds: &BudgetThresholds,
    policy: &GatePolicy,
    revision: &RevisionFacts,
) -> ReleaseDecision {
    if revision.kind == RevisionKind::Rollback {
        return ReleaseDecision::Allow;
    }
    let state = gate_status
        .and_then(|s| s.state)
        .unwrap_or(GateState::Unknown);
    if !holds_releases(state, policy.on_unknown) {
        return ReleaseDecision::Allow;
    }
    let (reason, message) = hold_reason(gate_name, gate_status, state, thresholds);
    let bypassed_by_critical = revision.critical.then(|| {
        format!("revision marked critical ({CRITICAL_ANNOTATION}) passes gate {gate_name}")
    });
    let bypassed_by_annotation = revision
        .bypass_reason
        .as_ref()
        .map(|why| format!("{BYPASS_ANNOTATION} on gate {gate_name}: {why}"));
    let bypass = match state {
        GateState::CriticalOnly => bypassed_by_critical,
        _ => bypassed_by_critical.or(bypassed_by_annotation),
    };
    if let Some(reason) = bypass {
        return ReleaseDecision::AllowBypassed { reason };
    }
    let message = if state == GateState::CriticalOnly && revision.bypass_reason.is_some() {
        format!("{message} (a bypass needs {CRITICAL_ANNOTATION}: \"true\" below this threshold)")
    } else {
        message
    };
    match (revision.kind, policy.in_flight, state) {
        (RevisionKind::InFlight, InFlightPolicy::Continue, _) => ReleaseDecision::Allow,
        (RevisionKind::InFlight, InFlightPolicy::Abort, s) if s != GateState::Unknown => {
            ReleaseDecision::Abort { message }
        }
        _ => ReleaseDecision::Hold {
            reason: reason.to_owned(),
            message,
        },
    }
}

fn hold_reason(
    gate_name: &str,
    status: Option<&ErrorBudgetGateStatus>,
    state: GateState,
    t: &BudgetThresholds,
) -> (&'static str, String) {
    let budget = status
        .and_then(|s| s.budget_remaining_percent)
        .map_or_else(|| "unknown".to_owned(), |b| format!("{b:.1}%"));
    let gate_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    match state {
        GateState::CriticalOnly => (
            REASON_ERROR_BUDGET_CRITICAL_ONLY,
            format!(
                "gate {gate_name}: {budget} of budget left (only critical fixes below {}%); releases resume above {}%",
                t.critical_only_below, t.unfreeze_above
            ),
        ),
        GateState::Frozen if gate_reason == REASON_FAST_BURN => (
            REASON_ERROR_BUDGET_BURNING,
            format!(
                "gate {gate_name}: error budget burning fast ({}); releases resume when the burn stops",
                status.map_or_else(String::new, |s| firing_summary(&s.burn_rates))
            ),
        ),
        GateState::Unknown => (
            REASON_ERROR_BUDGET_UNKNOWN,
            format!(
                "gate {gate_name}: error budget unknown ({}); releases wait until it can be evaluated",
                status
                    .and_then(|s| s.message.as_deref())
                    .unwrap_or("not evaluated yet")
            ),
        ),
        _ => (
            REASON_ERROR_BUDGET_EXHAUSTED,
            format!(
                "gate {gate_name}: {budget} of budget left (freeze below {}%); releases resume above {}%",
                t.freeze_below, t.unfreeze_above
            ),
        ),
    }
}

/// Folds the decisions of several gates selecting one Rollout: the most restrictive kind wins
/// (Abort > Hold > AllowBypassed > Allow), and its messages (or bypass reasons) are joined with
/// `; `. A Hold keeps the first holding gate's reason. No decisions at all is Allow.
pub fn combine(decisions: impl IntoIterator<Item = ReleaseDecision>) -> ReleaseDecision {
    let decisions: Vec<ReleaseDecision> = decisions.into_iter().collect();
    let Some(worst) = decisions.iter().map(ReleaseDecision::severity).max() else {
        return ReleaseDecision::Allow;
    };
    let mut reason = None;
    let mut texts = Vec::new();
    for decision in decisions.into_iter().filter(|d| d.severity() == worst) {
        match decision {
            ReleaseDecision::Allow => {}
            ReleaseDecision::AllowBypassed { reason: r } => texts.push(r),
            ReleaseDecision::Hold { reason: r, message } => {
                reason.get_or_insert(r);
                texts.push(message);
            }
            ReleaseDecision::Abort { message } => texts.push(message),
        }
    }
    let text = texts.join("; ");
    match worst {
        0 => ReleaseDecision::Allow,
        1 => ReleaseDecision::AllowBypassed { reason: text },
        2 => ReleaseDecision::Hold {
            reason: reason.unwrap_or_else(|| REASON_ERROR_BUDGET_EXHAUSTED.to_owned()),
            message: text,
        },
        _ => ReleaseDecision::Abort { message: text },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::gate::tests::{at, measured, spec};
    use crate::gate::{Measurements, evaluate, planned_windows};

    fn status_at(budget: f64) -> ErrorBudgetGateStatus {
        evaluate(&spec(), 1, None, Ok(&measured(budget, 0.5)), at(0)).status
    }

    fn facts(kind: RevisionKind, annotations: &[(&str, &str)]) -> RevisionFacts {
        let annotations = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RevisionFacts::from_annotations(kind, &annotations)
    }

    fn decide(
        status: Option<&ErrorBudgetGateStatus>,
        policy: GatePolicy,
        f: &RevisionFacts,
    ) -> ReleaseDecision {
        release_decision(
            "checkout-slo",
            status,
            &BudgetThresholds::default(),
            &policy,
            f,
        )
    }

    fn default_policy() -> GatePolicy {
        GatePolicy::from_spec(&spec())
    }

    #[test]
    fn a_frozen_gate_holds_a_new_release_with_the_figures() {
        let frozen = status_at(6.2);
        let d = decide(
            Some(&frozen),
            default_policy(),
            &facts(RevisionKind::NewRelease, &[]),
        );
        assert_eq!(
            d,
            ReleaseDecision::Hold {
                reason: REASON_ERROR_BUDGET_EXHAUSTED.to_owned(),
                message: "gate checkout-slo: 6.2% of budget left (freeze below 10%); releases resume above 15%".to_owned()
            }
        );
        let open = status_at(60.0);
        let warning = status_at(20.0);
        for s in [&open, &warning] {
            assert_eq!(
                decide(
                    Some(s),
                    default_policy(),
                    &facts(RevisionKind::NewRelease, &[])
                ),
                ReleaseDecision::Allow
            );
        }
    }

    #[test]
    fn rollbacks_are_never_held() {
        for status in [status_at(6.2), status_at(2.0), status_at(-50.0)] {
            for on_unknown in [UnknownPolicy::Hold, UnknownPolicy::Allow] {
                for in_flight in [
                    InFlightPolicy::Abort,
                    InFlightPolicy::HoldAtNextStep,
                    InFlightPolicy::Continue,
                ] {
                    let policy = GatePolicy {
                        on_unknown,
                        in_flight,
                    };
                    let f = facts(RevisionKind::Rollback, &[]);
                    assert_eq!(decide(Some(&status), policy, &f), ReleaseDecision::Allow);
                    assert_eq!(decide(None, policy, &f), ReleaseDecision::Allow);
                }
            }
        }
    }

    #[test]
    fn a_bypass_with_a_reason_passes_a_frozen_gate_but_not_critical_only() {
        let frozen = status_at(6.2);
        let bypass = facts(
            RevisionKind::NewRelease,
            &[(BYPASS_ANNOTATION, " INC-42 hotfix ")],
        );
        assert_eq!(bypass.bypass_reason.as_deref(), Some("INC-42 hotfix"));
        match decide(Some(&frozen), default_policy(), &bypass) {
            ReleaseDecision::AllowBypassed { reason } => {
                assert!(reason.contains("INC-42 hotfix"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let empty = facts(RevisionKind::NewRelease, &[(BYPASS_ANNOTATION, "  ")]);
        assert!(matches!(
            decide(Some(&frozen), default_policy(), &empty),
            ReleaseDecision::Hold { .. }
        ));

        let critical_only = status_at(3.0);
        match decide(Some(&critical_only), default_policy(), &bypass) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_CRITICAL_ONLY);
                assert!(message.contains(CRITICAL_ANNOTATION), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn critical_only_passes_only_revisions_marked_critical() {
        let critical_only = status_at(3.0);
        let plain = facts(RevisionKind::NewRelease, &[(CRITICAL_ANNOTATION, "false")]);
        assert!(matches!(
            decide(Some(&critical_only), default_policy(), &plain),
            ReleaseDecision::Hold { .. }
        ));
        let critical = facts(RevisionKind::NewRelease, &[(CRITICAL_ANNOTATION, "true")]);
        assert!(critical.critical);
        assert!(matches!(
            decide(Some(&critical_only), default_policy(), &critical),
            ReleaseDecision::AllowBypassed { .. }
        ));
        // A critical fix passes a Frozen gate too: CriticalOnly is never laxer than Frozen.
        assert!(matches!(
            decide(Some(&status_at(8.0)), default_policy(), &critical),
            ReleaseDecision::AllowBypassed { .. }
        ));
    }

    #[test]
    fn in_flight_releases_follow_the_policy() {
        let frozen = status_at(6.2);
        let in_flight = facts(RevisionKind::InFlight, &[]);
        let policy = |in_flight| GatePolicy {
            on_unknown: UnknownPolicy::Hold,
            in_flight,
        };
        assert!(matches!(
            decide(
                Some(&frozen),
                policy(InFlightPolicy::HoldAtNextStep),
                &in_flight
            ),
            ReleaseDecision::Hold { .. }
        ));
        assert!(matches!(
            decide(Some(&frozen), policy(InFlightPolicy::Abort), &in_flight),
            ReleaseDecision::Abort { .. }
        ));
        assert_eq!(
            decide(Some(&frozen), policy(InFlightPolicy::Continue), &in_flight),
            ReleaseDecision::Allow
        );
        // An outage does not abort a release; it holds it.
        let unknown = evaluate(&spec(), 1, None, Err("down"), at(0)).status;
        assert!(matches!(
            decide(Some(&unknown), policy(InFlightPolicy::Abort), &in_flight),
            ReleaseDecision::Hold { .. }
        ));
    }

    #[test]
    fn unknown_follows_on_unknown_and_a_never_evaluated_gate_is_unknown() {
        let unknown = evaluate(&spec(), 1, None, Err("down"), at(0)).status;
        let new = facts(RevisionKind::NewRelease, &[]);
        let hold = GatePolicy {
            on_unknown: UnknownPolicy::Hold,
            in_flight: InFlightPolicy::HoldAtNextStep,
        };
        let allow = GatePolicy {
            on_unknown: UnknownPolicy::Allow,
            ..hold
        };
        match decide(Some(&unknown), hold, &new) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_UNKNOWN);
                assert!(message.contains("down"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(Some(&unknown), allow, &new), ReleaseDecision::Allow);
        assert!(matches!(
            decide(None, hold, &new),
            ReleaseDecision::Hold { .. }
        ));
        assert_eq!(decide(None, allow, &new), ReleaseDecision::Allow);
    }

    #[test]
    fn a_fast_burn_hold_says_so() {
        let mut m = measured(60.0, 0.5);
        m.insert("1h".into(), 0.015);
        m.insert("5m".into(), 0.03);
        let burning = evaluate(&spec(), 1, None, Ok(&m), at(0)).status;
        match decide(
            Some(&burning),
            default_policy(),
            &facts(RevisionKind::NewRelease, &[]),
        ) {
            ReleaseDecision::Hold { reason, message } => {
                assert_eq!(reason, REASON_ERROR_BUDGET_BURNING);
                assert!(message.contains("15.0× over 1h"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn combine_keeps_the_most_restrictive_with_all_reasons() {
        let hold = |r: &str, m: &str| ReleaseDecision::Hold {
            reason: r.into(),
            message: m.into(),
        };
        assert_eq!(combine([]), ReleaseDecision::Allow);
        assert_eq!(
            combine([ReleaseDecision::Allow, ReleaseDecision::Allow]),
            ReleaseDecision::Allow
        );
        assert_eq!(
            combine([
                ReleaseDecision::Allow,
                hold(REASON_ERROR_BUDGET_EXHAUSTED, "gate a"),
                ReleaseDecision::AllowBypassed { reason: "x".into() },
                hold(REASON_ERROR_BUDGET_BURNING, "gate b"),
            ]),
            hold(REASON_ERROR_BUDGET_EXHAUSTED, "gate a; gate b")
        );
        assert_eq!(
            combine([
                hold("R", "gate a"),
                ReleaseDecision::Abort {
                    message: "gate c".into()
                }
            ]),
            ReleaseDecision::Abort {
                message: "gate c".into()
            }
        );
        assert_eq!(
            combine([
                ReleaseDecision::AllowBypassed { reason: "a".into() },
                ReleaseDecision::Allow,
                ReleaseDecision::AllowBypassed { reason: "b".into() },
            ]),
            ReleaseDecision::AllowBypassed {
                reason: "a; b".into()
            }
        );
    }

    proptest! {
        /// Any numbers at all: no panic, and the result is a state.
        #[test]
        fn evaluate_never_panics(
            objective in prop_oneof![Just(f64::NAN), Just(100.0), -10.0f64..110.0],
            ratios in proptest::collection::vec(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -2.0f64..2.0], 5),
        ) {
            let mut spec = spec();
            spec.objective = objective;
            let m: Measurements = planned_windows(&spec).into_iter().zip(ratios).collect();
            let e = evaluate(&spec, 1, None, Ok(&m), at(0));
            prop_assert!(e.status.state.is_some());
            let d = release_decision("g", Some(&e.status), &spec.thresholds, &GatePolicy::from_spec(&spec), &facts(RevisionKind::NewRelease, &[]));
            prop_assert!(d.severity() <= 3);
        }
    }
}
