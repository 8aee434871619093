//! Status conditions (metav1.Condition), updated so that `lastTransitionTime` moves only when the
//! status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use sluice_api::rollout::RolloutPhase;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// Sets condition `type_`, keeping its transition time when its status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: i64,
) {
    let status = status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
                existing.status = status.to_owned();
            }
            existing.reason = reason.to_owned();
            existing.message = message.to_owned();
            existing.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: Time(now),
            observed_generation: Some(generation),
        }),
    }
}

/// Gives each condition whose status is the same as before this decision its earlier transition
/// time back: a decision may set a condition more than once on its way (True, then False past a
/// deadline), and only a change from the persisted status is a transition.
pub fn keep_transition_times(previous: &[Condition], next: &mut [Condition]) {
    for condition in next {
        if let Some(before) = get(previous, &condition.type_)
            && before.status == condition.status
        {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
}

/// The condition of type `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// What a Rollout's conditions are computed from, whatever its strategy.
pub struct ReleaseState<'a> {
    pub phase: RolloutPhase,
    pub paused: bool,
    /// Released and fully available, nothing left to do.
    pub converged: bool,
    /// Stuck until a person acts (aborted).
    pub stalled: bool,
    /// Whether the serving version (stable, or active) is fully available, and a sentence saying so.
    pub available: (bool, String),
    pub message: &'a str,
    pub now: Timestamp,
    pub generation: i64,
}

/// Sets Progressing, Available, Paused and Completed, and kstatus' Ready (when converged),
/// Reconciling (while work remains) and Stalled (when it cannot go on alone).
pub fn set_release(conditions: &mut Vec<Condition>, state: &ReleaseState<'_>) {
    let (progress_status, progress_reason) = match state.phase {
        RolloutPhase::Degraded => (ConditionStatus::False, "RolloutAborted"),
        RolloutPhase::Paused => (ConditionStatus::Unknown, "RolloutPaused"),
        RolloutPhase::Progressing => (ConditionStatus::True, "ReplicaSetUpdated"),
        RolloutPhase::Healthy => (ConditionStatus::True, "NewReplicaSetAvailable"),
    };
    let (available, available_message) = (&state.available.0, &state.available.1);
    let pick = |flag: bool, yes: &'static str, no: &'static str| if flag { yes } else { no };
    let ready_reason = if state.converged {
        "Healthy"
    } else {
        progress_reason
    };
    let rows: [(&str, ConditionStatus, &str, &str); 7] = [
        (
            "Progressing",
            progress_status,
            progress_reason,
            state.message,
        ),
        (
            "Available",
            ConditionStatus::from(*available),
            pick(*available, "AvailableReplicas", "MissingReplicas"),
            available_message,
        ),
        (
            "Paused",
            ConditionStatus::from(state.paused),
            pick(state.paused, "RolloutPaused", "RolloutResumed"),
            state.message,
        ),
        (
            "Completed",
            ConditionStatus::from(state.converged),
            pick(state.converged, "RolloutCompleted", "RolloutInProgress"),
            state.message,
        ),
        (
            "Ready",
            ConditionStatus::from(state.converged),
            ready_reason,
            state.message,
        ),
        (
            "Reconciling",
            ConditionStatus::from(!state.converged && !state.stalled && !state.paused),
            progress_reason,
            state.message,
        ),
        (
            "Stalled",
            ConditionStatus::from(state.stalled),
            pick(state.stalled, "RolloutAborted", "NotStalled"),
            state.message,
        ),
    ];
    for (type_, status, reason, message) in rows {
        set(
            conditions,
            type_,
            status,
            reason,
            message,
            state.now,
            state.generation,
        );
    }
}
