//! The gate's state machine: from the measured error ratios to a state (Open, Warning, Frozen,
//! CriticalOnly, Unknown) with hysteresis, and the status, conditions and Events one evaluation
//! writes; plus the spec's policies with their defaults.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_api::gate::{
    BudgetThresholds, BurnRateStatus, ErrorBudgetGateSpec, ErrorBudgetGateStatus, GateState,
    GateTransition, InFlightPolicy, UnknownPolicy,
};

use super::budget::{budget_remaining_percent, error_budget, evaluate_burn_rates, sanitize_ratio};
use super::windows::planned_windows;
use super::{
    CONDITION_READY, CONDITION_RELEASES_HELD, DEFAULT_EVALUATION_INTERVAL, HISTORY_LIMIT,
    Measurements, REASON_BUDGET_CRITICAL, REASON_BUDGET_EXHAUSTED, REASON_BUDGET_HEALTHY,
    REASON_BUDGET_LOW, REASON_BUDGET_RECOVERING, REASON_FAST_BURN, REASON_INVALID_SPEC,
    REASON_NO_DATA, REASON_PROMETHEUS_UNREACHABLE,
};
use crate::conditions::{self, ConditionStatus};
use crate::duration;

/// An Event to publish on the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateEvent {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason, e.g. `GateFrozen`.
    pub reason: &'static str,
    /// What changed, with the figures.
    pub message: String,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct GateEvaluation {
    /// The status to write.
    pub status: ErrorBudgetGateStatus,
    /// Events to publish: one per state transition, none otherwise.
    pub events: Vec<GateEvent>,
    /// Evaluate again after this long.
    pub requeue_after: Duration,
}

/// Whether a gate in `state` holds new releases (without bypass or critical marker).
pub fn holds_releases(state: GateState, on_unknown: UnknownPolicy) -> bool {
    match state {
        GateState::Frozen | GateState::CriticalOnly => true,
        GateState::Unknown => on_unknown == UnknownPolicy::Hold,
        GateState::Open | GateState::Warning => false,
    }
}

/// The spec's `onUnknown`, `Hold` by default.
pub fn on_unknown(spec: &ErrorBudgetGateSpec) -> UnknownPolicy {
    spec.on_unknown.unwrap_or(UnknownPolicy::Hold)
}

/// The spec's `inFlightReleases`, `HoldAtNextStep` by default.
pub fn in_flight_policy(spec: &ErrorBudgetGateSpec) -> InFlightPolicy {
    spec.in_flight_releases
        .unwrap_or(InFlightPolicy::HoldAtNextStep)
}

/// The spec's evaluation interval; [`DEFAULT_EVALUATION_INTERVAL`] when unparsable or zero.
pub fn evaluation_interval(spec: &ErrorBudgetGateSpec) -> Duration {
    duration::parse(&spec.evaluation_interval)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_EVALUATION_INTERVAL)
}

/// The last state the gate had from figures (not Unknown): the previous state, or, if that is
/// Unknown, the state it left to become Unknown. Hysteresis carries over an outage this way.
pub fn last_known_state(previous: Option<&ErrorBudgetGateStatus>) -> Option<GateState> {
    let previous = previous?;
    match previous.state? {
        GateState::Unknown => previous
            .history
            .iter()
            .rev()
            .find(|t| t.to == GateState::Unknown)
            .and_then(|t| t.from)
            .filter(|s| *s != GateState::Unknown),
        state => Some(state),
    }
}

/// The state from the figures, with hysteresis: a gate that held releases (Frozen or CriticalOnly)
/// opens only once the budget is strictly above `unfreezeAbove`. Returns the state and its reason.
pub fn next_state(
    budget_percent: f64,
    fast_burn: bool,
    last_known: Option<GateState>,
    thresholds: &BudgetThresholds,
) -> (GateState, &'static str) {
    let was_held = matches!(
        last_known,
        Some(GateState::Frozen | GateState::CriticalOnly)
    );
    if budget_percent < thresholds.critical_only_below {
        (GateState::CriticalOnly, REASON_BUDGET_CRITICAL)
    } else if budget_percent < thresholds.freeze_below {
        (GateState::Frozen, REASON_BUDGET_EXHAUSTED)
    } else if fast_burn {
        (GateState::Frozen, REASON_FAST_BURN)
    } else if was_held && budget_percent <= thresholds.unfreeze_above {
        (GateState::Frozen, REASON_BUDGET_RECOVERING)
    } else if budget_percent < thresholds.warn_below {
        (GateState::Warning, REASON_BUDGET_LOW)
    } else {
        (GateState::Open, REASON_BUDGET_HEALTHY)
    }
}

/// Evaluates a gate from the measured ratios (`Err` carries why Prometheus could not be queried).
///
/// Unknown when the measurements failed, a planned window is missing, the SLO window had no events,
/// or the spec cannot be evaluated; the figures of the last good evaluation are then kept. A state
/// change sets `since`, appends to the bounded history and emits one Event; the same inputs at the
/// same time give the same status and no event.
pub fn evaluate(
    spec: &ErrorBudgetGateSpec,
    generation: i64,
    previous: Option<&ErrorBudgetGateStatus>,
    measurements: Result<&Measurements, &str>,
    now: Timestamp,
) -> GateEvaluation {
    let mut status = previous.cloned().unwrap_or_default();
    let interval = evaluation_interval(spec);
    let verdict = judge(spec, measurements);
    let (state, reason, message) = match verdict {
        Verdict::Unknown { reason, message } => (GateState::Unknown, reason, message),
        Verdict::Measured {
            error_ratio,
            budget,
            burn_rates,
        } => {
            let fast_burn = burn_rates.iter().any(|b| b.firing);
            let (state, reason) = next_state(
                budget,
                fast_burn,
                last_known_state(previous),
                &spec.thresholds,
            );
            let message = state_message(spec, state, reason, budget, &burn_rates);
            status.error_ratio = Some(error_ratio);
            // Thousandths of a point: far finer than any threshold, and readable in `kubectl get`.
            status.budget_remaining_percent = Some((budget * 1000.0).round() / 1000.0);
            status.burn_rates = burn_rates;
            (state, reason, message)
        }
    };

    let mut events = Vec::new();
    let from = previous.and_then(|p| p.state);
    if from != Some(state) || status.since.is_none() {
        status.since = Some(Time(now));
    }
    if from != Some(state) {
        status.history.push(GateTransition {
            from,
            to: state,
            at: Time(now),
            reason: format!("{reason}: {message}"),
        });
        let excess = status.history.len().saturating_sub(HISTORY_LIMIT);
        status.history.drain(..excess);
        events.push(GateEvent {
            warning: matches!(
                state,
                GateState::Frozen | GateState::CriticalOnly | GateState::Unknown
            ),
            reason: event_reason(state),
            message: format!("{} → {state:?}: {message}", state_word(from)),
        });
    }

    status.observed_generation = Some(generation);
    status.state = Some(state);
    status.reason = Some(reason.to_owned());
    status.message = Some(message.clone());
    status.last_evaluation_time = Some(Time(now));
    status.next_evaluation_time = Some(Time(add(now, interval)));

    let ready = state != GateState::Unknown;
    conditions::set(
        &mut status.conditions,
        CONDITION_READY,
        ConditionStatus::from(ready),
        reason,
        &message,
        now,
        generation,
    );
    // kstatus: an evaluated gate is never mid-way; one whose spec cannot be evaluated is stuck until
    // a person fixes it.
    conditions::set(
        &mut status.conditions,
        "Reconciling",
        ConditionStatus::False,
        "Evaluated",
        &message,
        now,
        generation,
    );
    let stalled = reason == REASON_INVALID_SPEC;
    conditions::set(
        &mut status.conditions,
        "Stalled",
        ConditionStatus::from(stalled),
        if stalled {
            REASON_INVALID_SPEC
        } else {
            "Evaluated"
        },
        &message,
        now,
        generation,
    );
    let held = holds_releases(state, on_unknown(spec));
    let held_message = if held {
        message.clone()
    } else {
        format!("releases pass: {message}")
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_RELEASES_HELD,
        ConditionStatus::from(held),
        reason,
        &held_message,
        now,
        generation,
    );

    GateEvaluation {
        status,
        events,
        requeue_after: interval,
    }
}

enum Verdict {
    Unknown {
        reason: &'static str,
        message: String,
    },
    Measured {
        error_ratio: f64,
        budget: f64,
        burn_rates: Vec<BurnRateStatus>,
    },
}

fn judge(spec: &ErrorBudgetGateSpec, measurements: Result<&Measurements, &str>) -> Verdict {
    if error_budget(spec.objective).is_none() {
        return Verdict::Unknown {
            reason: REASON_INVALID_SPEC,
            message: format!(
                "objective {} is not strictly between 0 and 100",
                spec.objective
            ),
        };
    }
    if let Err(message) = spec.sli.source() {
        return Verdict::Unknown {
            reason: REASON_INVALID_SPEC,
            message,
        };
    }
    let measurements = match measurements {
        Ok(m) => m,
        Err(why) => {
            return Verdict::Unknown {
                reason: REASON_PROMETHEUS_UNREACHABLE,
                message: format!("Prometheus could not be queried: {why}"),
            };
        }
    };
    let missing: Vec<String> = planned_windows(spec)
        .into_iter()
        .filter(|w| !measurements.contains_key(w))
        .collect();
    if !missing.is_empty() {
        return Verdict::Unknown {
            reason: REASON_NO_DATA,
            message: format!("no data for window(s) {}", missing.join(", ")),
        };
    }
    let slo_ratio = measurements
        .get(&spec.window)
        .and_then(|r| sanitize_ratio(*r));
    let (Some(error_ratio), Some(budget)) = (
        slo_ratio,
        slo_ratio.and_then(|r| budget_remaining_percent(r, spec.objective)),
    ) else {
        return Verdict::Unknown {
            reason: REASON_NO_DATA,
            message: format!("no events over the SLO window {}", spec.window),
        };
    };
    Verdict::Measured {
        error_ratio,
        budget,
        burn_rates: evaluate_burn_rates(&spec.burn_rate_alerts, spec.objective, measurements),
    }
}

fn state_message(
    spec: &ErrorBudgetGateSpec,
    state: GateState,
    reason: &str,
    budget: f64,
    burn_rates: &[BurnRateStatus],
) -> String {
    let t = &spec.thresholds;
    let left = format!(
        "{budget:.1}% of budget left over {} (objective {}%)",
        spec.window, spec.objective
    );
    match (state, reason) {
        (GateState::CriticalOnly, _) => format!(
            "{left}: only critical fixes pass below {}%; releases resume above {}%",
            t.critical_only_below, t.unfreeze_above
        ),
        (GateState::Frozen, REASON_FAST_BURN) => format!(
            "error budget burning fast ({}), {left}; releases resume when the burn stops",
            firing_summary(burn_rates)
        ),
        (GateState::Frozen, REASON_BUDGET_RECOVERING) => format!(
            "{left}, recovering: releases resume above {}%",
            t.unfreeze_above
        ),
        (GateState::Frozen, _) => format!(
            "{left} (freeze below {}%); releases resume above {}%",
            t.freeze_below, t.unfreeze_above
        ),
        (GateState::Warning, _) => format!("{left} (warning below {}%)", t.warn_below),
        _ => left,
    }
}

/// `14.4× over 1h and 20.1× over 5m (above 14.4×)` for each firing pair.
pub(super) fn firing_summary(burn_rates: &[BurnRateStatus]) -> String {
    let parts: Vec<String> = burn_rates
        .iter()
        .filter(|b| b.firing)
        .map(|b| {
            format!(
                "{:.1}× over {} and {:.1}× over {} (above {}×)",
                b.long_burn_rate.unwrap_or(f64::NAN),
                b.long_window,
                b.short_burn_rate.unwrap_or(f64::NAN),
                b.short_window,
                b.factor
            )
        })
        .collect();
    parts.join("; ")
}

fn event_reason(state: GateState) -> &'static str {
    match state {
        GateState::Open => "GateOpen",
        GateState::Warning => "GateWarning",
        GateState::Frozen => "GateFrozen",
        GateState::CriticalOnly => "GateCriticalOnly",
        GateState::Unknown => "GateUnknown",
    }
}

fn state_word(state: Option<GateState>) -> String {
    state.map_or_else(|| "(new)".to_owned(), |s| format!("{s:?}"))
}

fn add(at: Timestamp, by: Duration) -> Timestamp {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by).ok())
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::gate::default_burn_rate_alerts;
    use crate::gate::tests::{at, close, measured, ratio_for_budget, spec, spec_json};

    /// Evaluates a series of budgets (no burn) one minute apart, returning every evaluation.
    fn run(spec: &ErrorBudgetGateSpec, budgets: &[f64]) -> Vec<GateEvaluation> {
        let mut status: Option<ErrorBudgetGateStatus> = None;
        let mut out = Vec::new();
        for (i, budget) in budgets.iter().enumerate() {
            let now = at(i64::try_from(i).expect("index") * 60);
            let e = evaluate(spec, 1, status.as_ref(), Ok(&measured(*budget, 0.5)), now);
            status = Some(e.status.clone());
            out.push(e);
        }
        out
    }

    fn states(evaluations: &[GateEvaluation]) -> Vec<GateState> {
        evaluations
            .iter()
            .map(|e| e.status.state.expect("state"))
            .collect()
    }

    use GateState::{CriticalOnly, Frozen, Open, Unknown, Warning};

    #[test]
    fn the_api_defaults_are_the_workbook_pairs() {
        assert_eq!(spec().burn_rate_alerts, default_burn_rate_alerts());
        assert_eq!(spec().thresholds, BudgetThresholds::default());
        assert_eq!(evaluation_interval(&spec()), Duration::from_secs(60));
        assert_eq!(on_unknown(&spec()), UnknownPolicy::Hold);
        assert_eq!(in_flight_policy(&spec()), InFlightPolicy::HoldAtNextStep);
    }

    #[test]
    fn hysteresis_open_warning_frozen_and_back_above_unfreeze() {
        let e = run(&spec(), &[50.0, 20.0, 9.9, 12.0, 14.9, 15.0, 15.1, 30.0]);
        assert_eq!(
            states(&e),
            [Open, Warning, Frozen, Frozen, Frozen, Frozen, Warning, Open]
        );
        let reasons: Vec<&str> = e
            .iter()
            .map(|e| e.status.reason.as_deref().expect("reason"))
            .collect();
        assert_eq!(
            reasons,
            [
                REASON_BUDGET_HEALTHY,
                REASON_BUDGET_LOW,
                REASON_BUDGET_EXHAUSTED,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_RECOVERING,
                REASON_BUDGET_LOW,
                REASON_BUDGET_HEALTHY
            ]
        );
        // Events exactly on transitions: first state, Warning, Frozen, Warning, Open.
        let counts: Vec<usize> = e.iter().map(|e| e.events.len()).collect();
        assert_eq!(counts, [1, 1, 1, 0, 0, 0, 1, 1]);
        assert!(e[2].events[0].warning);
        assert_eq!(e[2].events[0].reason, "GateFrozen");
        // `since` moves only on transitions.
        assert_eq!(e[4].status.since, Some(Time(at(120))));
        assert_eq!(e[6].status.since, Some(Time(at(360))));
        let last = &e[7].status;
        assert_eq!(last.history.len(), 5);
        assert_eq!(last.history[2].from, Some(Warning));
        assert_eq!(last.history[2].to, Frozen);
        assert!(
            last.history[2]
                .reason
                .starts_with("BudgetExhausted: 9.9% of budget left")
        );
    }

    #[test]
    fn a_new_gate_between_freeze_and_unfreeze_is_not_frozen() {
        assert_eq!(states(&run(&spec(), &[12.0])), [Warning]);
    }

    #[test]
    fn critical_only_below_critical_threshold_and_back_through_frozen() {
        let e = run(&spec(), &[30.0, 4.0, -20.0, 7.0, 14.0, 16.0]);
        assert_eq!(
            states(&e),
            [Open, CriticalOnly, CriticalOnly, Frozen, Frozen, Warning]
        );
        assert!(close(e[2].status.budget_remaining_percent, -20.0));
    }

    #[test]
    fn a_fast_burn_freezes_with_budget_left_and_the_short_window_ends_it() {
        let spec = spec();
        let mut m = measured(60.0, 0.5);
        m.insert("1h".into(), 0.015);
        m.insert("5m".into(), 0.03);
        let first = evaluate(&spec, 1, None, Ok(&m), at(0));
        assert_eq!(first.status.state, Some(Frozen));
        assert_eq!(first.status.reason.as_deref(), Some(REASON_FAST_BURN));
        assert!(
            first
                .status
                .message
                .as_deref()
                .expect("message")
                .contains("15.0× over 1h and 30.0× over 5m"),
            "{:?}",
            first.status.message
        );
        assert!(first.status.burn_rates[0].firing);
        // Only the long window still burns: the pair stops firing, budget is ample, the gate opens.
        m.insert("5m".into(), 0.0);
        let second = evaluate(&spec, 1, Some(&first.status), Ok(&m), at(60));
        assert_eq!(second.status.state, Some(Open));
        assert_eq!(second.events.len(), 1);
    }

    #[test]
    fn unknown_when_prometheus_fails_or_data_is_missing_and_hysteresis_survives_it() {
        let spec = spec();
        let frozen = evaluate(&spec, 1, None, Ok(&measured(8.0, 0.5)), at(0));
        let down = evaluate(
            &spec,
            1,
            Some(&frozen.status),
            Err("connection refused"),
            at(60),
        );
        assert_eq!(down.status.state, Some(Unknown));
        assert_eq!(
            down.status.reason.as_deref(),
            Some(REASON_PROMETHEUS_UNREACHABLE)
        );
        assert_eq!(down.events.len(), 1);
        assert!(down.events[0].warning);
        // Last figures are kept, Ready is False, releases are held (onUnknown defaults to Hold).
        assert!(close(down.status.budget_remaining_percent, 8.0));
        let ready = conditions::get(&down.status.conditions, CONDITION_READY).expect("ready");
        assert_eq!(ready.status, "False");
        let held = conditions::get(&down.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "True");
        // Back at 12%: between freeze and unfreeze, the gate was frozen before the outage.
        let back = evaluate(
            &spec,
            1,
            Some(&down.status),
            Ok(&measured(12.0, 0.5)),
            at(120),
        );
        assert_eq!(back.status.state, Some(Frozen));

        let mut partial = measured(50.0, 0.5);
        partial.remove("30m");
        let missing = evaluate(&spec, 1, None, Ok(&partial), at(0));
        assert_eq!(missing.status.state, Some(Unknown));
        assert_eq!(missing.status.reason.as_deref(), Some(REASON_NO_DATA));
        assert!(
            missing
                .status
                .message
                .as_deref()
                .expect("m")
                .contains("30m")
        );

        let mut silent = measured(50.0, 0.5);
        silent.insert("28d".into(), f64::NAN);
        let nodata = evaluate(&spec, 1, None, Ok(&silent), at(0));
        assert_eq!(nodata.status.reason.as_deref(), Some(REASON_NO_DATA));

        // NaN on a short window is a quiet window: the gate is evaluated, the pair does not fire.
        let mut quiet = measured(50.0, 20.0);
        quiet.insert("5m".into(), f64::NAN);
        quiet.insert("30m".into(), f64::NAN);
        let e = evaluate(&spec, 1, None, Ok(&quiet), at(0));
        assert_eq!(e.status.state, Some(Open));

        let allow = spec_json(serde_json::json!({"onUnknown": "Allow"}));
        let e = evaluate(&allow, 1, None, Err("timeout"), at(0));
        let held = conditions::get(&e.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "False");
    }

    #[test]
    fn an_invalid_objective_is_unknown_not_a_panic() {
        let mut bad = spec();
        bad.objective = 100.0;
        let e = evaluate(&bad, 1, None, Ok(&measured(50.0, 0.5)), at(0));
        assert_eq!(e.status.state, Some(Unknown));
        assert_eq!(e.status.reason.as_deref(), Some(REASON_INVALID_SPEC));
    }

    #[test]
    fn status_times_conditions_and_requeue() {
        let spec = spec_json(serde_json::json!({"evaluationInterval": "30s"}));
        let e = evaluate(&spec, 7, None, Ok(&measured(50.0, 0.5)), at(0));
        assert_eq!(e.requeue_after, Duration::from_secs(30));
        assert_eq!(e.status.next_evaluation_time, Some(Time(at(30))));
        assert_eq!(e.status.last_evaluation_time, Some(Time(at(0))));
        assert_eq!(e.status.observed_generation, Some(7));
        assert!(close(e.status.error_ratio, ratio_for_budget(50.0)));
        assert_eq!(e.status.burn_rates.len(), 2);
        let ready = conditions::get(&e.status.conditions, CONDITION_READY).expect("ready");
        assert_eq!(ready.status, "True");
        let held = conditions::get(&e.status.conditions, CONDITION_RELEASES_HELD).expect("held");
        assert_eq!(held.status, "False");
    }

    #[test]
    fn history_is_bounded_to_the_newest_transitions() {
        let budgets: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 50.0 } else { 20.0 })
            .collect();
        let e = run(&spec(), &budgets);
        let history = &e[29].status.history;
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history.last().expect("last").at, Time(at(29 * 60)));
        assert_eq!(history[0].at, Time(at(10 * 60)));
        assert!(e.iter().all(|e| e.events.len() == 1));
    }

    proptest! {
        /// Once frozen, a budget that stays strictly between freezeBelow and unfreezeAbove keeps the
        /// gate Frozen, with no event after the freeze.
        #[test]
        fn oscillating_between_the_thresholds_never_unfreezes(
            series in proptest::collection::vec(10.0001f64..14.9999, 1..40)
        ) {
            let mut budgets = vec![50.0, 9.0];
            budgets.extend(series);
            let e = run(&spec(), &budgets);
            for later in &e[2..] {
                prop_assert_eq!(later.status.state, Some(Frozen));
                prop_assert!(later.events.is_empty());
            }
        }

        /// The other side of hysteresis: a gate that is not held stays Warning (never Frozen) while
        /// the budget moves between the thresholds.
        #[test]
        fn an_open_gate_in_the_band_never_freezes(
            series in proptest::collection::vec(10.0001f64..14.9999, 1..40)
        ) {
            let mut budgets = vec![50.0];
            budgets.extend(series);
            let e = run(&spec(), &budgets);
            for later in &e[1..] {
                prop_assert_eq!(later.status.state, Some(Warning));
            }
        }

        /// The same inputs at the same time change nothing and emit nothing.
        #[test]
        fn evaluating_twice_is_idempotent(
            budgets in proptest::collection::vec(-50.0f64..100.0, 0..10),
            last in -50.0f64..100.0,
            long in 0.0f64..0.05,
            short in 0.0f64..0.05,
            fail in any::<bool>(),
        ) {
            let spec = spec();
            let history = run(&spec, &budgets);
            let previous = history.last().map(|e| e.status.clone());
            let mut m = measured(last, 0.5);
            m.insert("1h".into(), long);
            m.insert("5m".into(), short);
            let input = if fail { Err("down") } else { Ok(&m) };
            let now = at(100_000);
            let once = evaluate(&spec, 1, previous.as_ref(), input, now);
            let twice = evaluate(&spec, 1, Some(&once.status), input, now);
            prop_assert_eq!(&twice.status, &once.status);
            prop_assert!(twice.events.is_empty());
        }
    }
}
