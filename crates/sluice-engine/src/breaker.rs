//! The circuit breaker (`spec.circuitBreaker`): after `failures` aborted releases in a row, new
//! releases wait; after the cooldown exactly one goes through, whose success closes the breaker and
//! whose failure opens it again for twice as long (up to `maxCooldown`). Rollbacks are never held
//! and count neither way; a reset closes it.
//!
//! The state is a fold over the ended releases of the Rollouts sharing the breaker (from their
//! release records), so it survives restarts and needs no state of its own beyond the last reset.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::release::{ReleaseOutcome, ReleaseProgress};
use sluice_api::rollout::{BreakerReset, CircuitBreaker, CircuitBreakerStatus, CircuitState};

use crate::events::Event;
use crate::release::{Plan, Snapshot, earliest, until};

/// Condition reason of a release the breaker holds.
pub const REASON_CIRCUIT_OPEN: &str = "CircuitOpen";

/// A release that ended, of a Rollout sharing the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedRelease {
    /// `<rollout>-<number>`.
    pub name: String,
    pub outcome: ReleaseOutcome,
    /// A rollback to a revision that was stable: counted neither way.
    pub rollback: bool,
    /// When the gates and the breaker let it start.
    pub admitted_at: Option<Timestamp>,
    pub ended_at: Timestamp,
    /// Why it ended.
    pub reason: String,
    /// The revision it released, and its images (`name=image`).
    pub revision: String,
    pub images: Vec<String>,
}

/// The ended releases that say something about a revision's quality (rollbacks and superseded
/// releases left out), newest first: what adaptive plans and the confidence score read.
pub fn counted_newest_first(history: &[EndedRelease]) -> Vec<&EndedRelease> {
    let mut counted: Vec<&EndedRelease> = history
        .iter()
        .filter(|r| !r.rollback && r.outcome != ReleaseOutcome::Superseded)
        .collect();
    counted.sort_by(|a, b| (b.ended_at, &b.name).cmp(&(a.ended_at, &a.name)));
    counted
}

impl EndedRelease {
    /// Release `name` as the breaker and adaptive plans count it, if it has ended.
    pub fn of(name: String, release: &ReleaseProgress) -> Option<Self> {
        Some(Self {
            name,
            outcome: release.outcome?,
            rollback: release.rollback,
            admitted_at: release.admitted_at.as_ref().map(|t| t.0),
            ended_at: release.ended_at.as_ref()?.0,
            reason: release.reason.clone().unwrap_or_default(),
            revision: release.revision.clone(),
            images: release.images.clone(),
        })
    }
}

/// A release in flight that the gates and the breaker let start, of a Rollout sharing the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmittedRelease {
    /// The Rollout's name.
    pub rollout: String,
    /// `<rollout>-<number>`.
    pub name: String,
    pub admitted_at: Timestamp,
}

/// What the breaker is decided from: the releases of every Rollout sharing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CircuitInputs {
    /// Ended releases, in any order.
    pub ended: Vec<EndedRelease>,
    /// Releases in flight that were let start.
    pub in_flight: Vec<AdmittedRelease>,
    /// The last reset of the breaker by any of them.
    pub reset_at: Option<Timestamp>,
}

/// The breaker's settings, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub failures: usize,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Config {
    /// The settings of `spec` (a duration that does not parse, refused at apply, counts as the
    /// default).
    pub fn of(spec: &CircuitBreaker) -> Self {
        let cooldown = crate::duration::parse(&spec.cooldown).unwrap_or(Duration::from_secs(3600));
        Self {
            failures: usize::try_from(spec.failures.max(1)).unwrap_or(1),
            cooldown,
            max_cooldown: crate::duration::parse(&spec.max_cooldown)
                .unwrap_or(Duration::from_secs(86_400))
                .max(cooldown),
        }
    }
}

/// The breaker's state at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// Releases go; `failures` failed in a row since the last success or reset.
    Closed { failures: Vec<String> },
    /// New releases wait until `half_open_at`.
    Open {
        failures: Vec<String>,
        opened_at: Timestamp,
        half_open_at: Timestamp,
    },
    /// One release goes through: `trial`, the first let start since `half_open_at` (none yet: the
    /// next one to start).
    HalfOpen {
        failures: Vec<String>,
        opened_at: Timestamp,
        half_open_at: Timestamp,
        trial: Option<AdmittedRelease>,
    },
}

fn plus(at: Timestamp, by: Duration) -> Timestamp {
    crate::duration::after(at, by)
}

/// The breaker at `now`, folded over the ended releases since the last reset.
pub fn evaluate(config: &Config, inputs: &CircuitInputs, now: Timestamp) -> Breaker {
    let mut ended: Vec<&EndedRelease> = inputs
        .ended
        .iter()
        .filter(|e| !e.rollback)
        .filter(|e| inputs.reset_at.is_none_or(|reset| e.ended_at > reset))
        .collect();
    // Release records keep whole seconds: of releases that ended in the same second, failures count
    // last (the breaker errs towards holding).
    let rank = |e: &EndedRelease| match e.outcome {
        ReleaseOutcome::Completed => 0,
        ReleaseOutcome::Superseded => 1,
        ReleaseOutcome::Aborted => 2,
    };
    ended.sort_by(|a, b| (a.ended_at, rank(a), &a.name).cmp(&(b.ended_at, rank(b), &b.name)));
    let mut failures: Vec<String> = Vec::new();
    // (opened at, cooldown)
    let mut open: Option<(Timestamp, Duration)> = None;
    for release in ended {
        match release.outcome {
            ReleaseOutcome::Completed => {
                failures.clear();
                open = None;
            }
            ReleaseOutcome::Superseded => {}
            ReleaseOutcome::Aborted => {
                failures.push(format!("{}: {}", release.name, release.reason));
                match open {
                    Some((at, cooldown)) => {
                        let half_open_at = plus(at, cooldown);
                        if release.admitted_at.is_some_and(|a| a >= half_open_at) {
                            // The release let through while half-open failed: open for longer.
                            open =
                                Some((release.ended_at, (cooldown * 2).min(config.max_cooldown)));
                        }
                    }
                    None if failures.len() >= config.failures => {
                        open = Some((release.ended_at, config.cooldown));
                    }
                    None => {}
                }
            }
        }
    }
    let Some((opened_at, cooldown)) = open else {
        return Breaker::Closed { failures };
    };
    let half_open_at = plus(opened_at, cooldown);
    if now < half_open_at {
        return Breaker::Open {
            failures,
            opened_at,
            half_open_at,
        };
    }
    let trial = inputs
        .in_flight
        .iter()
        .filter(|r| r.admitted_at >= half_open_at)
        .min_by(|a, b| (a.admitted_at, &a.name).cmp(&(b.admitted_at, &b.name)))
        .cloned();
    Breaker::HalfOpen {
        failures,
        opened_at,
        half_open_at,
        trial,
    }
}

impl Breaker {
    /// Why a new release of `rollout` must wait, if it must.
    pub fn hold(&self, rollout: &str) -> Option<String> {
        match self {
            Self::Closed { .. } => None,
            Self::Open {
                failures,
                half_open_at,
                ..
            } => Some(format!(
                "circuit breaker open after {} failed release(s) ({}); one release may go at {half_open_at}",
                failures.len(),
                failures.join("; ")
            )),
            Self::HalfOpen {
                trial: Some(trial), ..
            } if trial.rollout != rollout => Some(format!(
                "circuit breaker half-open: release {} is the one let through",
                trial.name
            )),
            Self::HalfOpen { .. } => None,
        }
    }

    fn state(&self) -> CircuitState {
        match self {
            Self::Closed { .. } => CircuitState::Closed,
            Self::Open { .. } => CircuitState::Open,
            Self::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// The breaker of the Rollout `s` is about, as the decision starts (a reset it asks for counted),
/// if it has one.
pub(crate) fn of(s: &Snapshot<'_>) -> Option<Breaker> {
    let spec = s.spec.circuit_breaker.as_ref()?;
    Some(evaluate(&Config::of(spec), &inputs(s), s.now))
}

/// The breaker's inputs as the snapshot gives them, with the reset a person asks for now.
fn inputs(s: &Snapshot<'_>) -> CircuitInputs {
    let mut inputs = s.circuit.clone();
    if s.actions.reset_breaker {
        inputs.reset_at = Some(inputs.reset_at.map_or(s.now, |r| r.max(s.now)));
    }
    inputs
}

/// Records the breaker in `status.circuitBreaker` (with the reset a person asked for), announces
/// its transitions and looks again when it turns half-open.
pub(crate) fn record(s: &Snapshot<'_>, plan: &mut Plan) {
    let Some(spec) = s.spec.circuit_breaker.as_ref() else {
        plan.status.circuit_breaker = None;
        return;
    };
    // As it stands after this decision: with the releases that ended in it.
    let mut inputs = inputs(s);
    for release in plan.ended_release.iter().chain(&plan.status.release) {
        let name = format!("{}-{}", s.name, release.number);
        if !inputs.ended.iter().any(|e| e.name == name)
            && let Some(ended) = EndedRelease::of(name, release)
        {
            inputs.ended.push(ended);
        }
    }
    let breaker = &evaluate(&Config::of(spec), &inputs, s.now);
    let first_event = plan.events.len();
    let previous = s.status.circuit_breaker.clone().unwrap_or_default();
    let mut next = CircuitBreakerStatus {
        state: breaker.state(),
        last_reset: previous.last_reset.clone(),
        ..CircuitBreakerStatus::default()
    };
    if s.actions.reset_breaker {
        let reason = s
            .request_reason
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or("no reason given")
            .to_owned();
        plan.events.push(Event {
            warning: true,
            reason: "CircuitBreakerReset",
            message: format!(
                "circuit breaker reset{}: {reason}",
                s.requester
                    .map(|by| format!(" by {by}"))
                    .unwrap_or_default()
            ),
        });
        next.last_reset = Some(BreakerReset {
            at: Time(s.now),
            by: s.requester.map(str::to_owned),
            reason,
        });
    }
    match breaker {
        Breaker::Closed { failures } => next.failures = failures.clone(),
        Breaker::Open {
            failures,
            opened_at,
            half_open_at,
        } => {
            next.failures = failures.clone();
            next.opened_at = Some(Time(*opened_at));
            next.half_open_at = Some(Time(*half_open_at));
            plan.requeue_after = earliest(plan.requeue_after, until(s.now, *half_open_at));
        }
        Breaker::HalfOpen {
            failures,
            opened_at,
            half_open_at,
            trial,
        } => {
            next.failures = failures.clone();
            next.opened_at = Some(Time(*opened_at));
            next.half_open_at = Some(Time(*half_open_at));
            next.trial = trial.as_ref().map(|t| t.name.clone());
        }
    }
    if next.state != previous.state {
        let (warning, reason, message) = match next.state {
            CircuitState::Open => (
                true,
                "CircuitOpened",
                format!(
                    "circuit breaker open: {} failed release(s) ({})",
                    next.failures.len(),
                    next.failures.join("; ")
                ),
            ),
            CircuitState::HalfOpen => (
                false,
                "CircuitHalfOpen",
                "circuit breaker half-open: the next release goes through".to_owned(),
            ),
            CircuitState::Closed => (false, "CircuitClosed", "circuit breaker closed".to_owned()),
        };
        plan.events.push(Event {
            warning,
            reason,
            message,
        });
    }
    plan.status.circuit_breaker = Some(next);
    let events: Vec<Event> = plan.events[first_event..].to_vec();
    crate::history::note(s, plan, &events);
}
