//! The release record (`status.release`): each release's number, revision and images, the steps it
//! went through with the weights reached, every transition announced (with who asked for it), and
//! how it ended. Recorded in the same status write as the transitions themselves, so a crash loses
//! none; the controller mirrors it into a `Release` object that outlives the release.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_api::release::{
    PlanChoice, ReleaseOutcome, ReleaseProgress, STEPS_LIMIT, StepRecord, TIMELINE_HEAD,
    TIMELINE_LIMIT, TimelineEntry,
};

use sluice_api::rollout::CanaryStep;

use crate::canary::step_weight;
use crate::release::{Plan, Snapshot, observed};

/// Adds this decision to the release record: starts a release at a new revision (or a retry), ends
/// the one a new revision supersedes, and records the transitions, steps and end of the one in
/// flight.
pub(crate) fn decide(
    s: &Snapshot<'_>,
    strategy: crate::Strategy<'_>,
    plan: &mut Plan,
    choice: Option<&PlanChoice>,
) {
    let previous = s.status;
    let Some(current) = plan.status.current_pod_hash.clone() else {
        return;
    };
    let stable = plan.status.stable_rs.clone();
    let now = Time(s.now);
    let mut release = previous.release.clone();
    let new_revision = previous.current_pod_hash.as_deref() != Some(current.as_str());
    let retried = plan.events.iter().any(|e| e.reason == "RolloutRetried");
    if new_revision || retried {
        if let Some(old) = release.as_mut().filter(|r| r.outcome.is_none()) {
            let why = if stable.as_deref() == Some(current.as_str()) {
                format!("the template went back to stable {current}")
            } else {
                format!("superseded by revision {current}")
            };
            end(old, ReleaseOutcome::Superseded, why, &now);
        }
        let initial = previous.current_pod_hash.is_none();
        if retried || initial || stable.as_deref() != Some(current.as_str()) {
            let number = release.as_ref().map_or(0, |r| r.number) + 1;
            let replaced = release.replace(ReleaseProgress {
                number,
                revision: current.clone(),
                images: s.images.to_vec(),
                started_at: now.clone(),
                admitted_at: None,
                plan: choice.cloned(),
                rollback: previous
                    .error_budget
                    .as_ref()
                    .is_some_and(|e| e.released_revisions.contains(&current)),
                ended_at: None,
                outcome: None,
                aborted_by: None,
                reason: None,
                restored_at: None,
                steps: Vec::new(),
                timeline: Vec::new(),
                timeline_dropped: 0,
                confidence: Vec::new(),
            });
            if let Some(choice) = choice {
                plan.events.push(crate::events::Event {
                    warning: false,
                    reason: "PlanChosen",
                    message: format!("{:?} plan: {}", choice.profile, choice.reason),
                });
            }
            // Ended in this decision: its record is written before the status that forgets it.
            let was_in_flight = previous
                .release
                .as_ref()
                .is_some_and(|r| r.outcome.is_none());
            plan.ended_release = replaced.filter(|_| was_in_flight);
        }
    }
    let Some(record) = release.as_mut() else {
        return;
    };
    if record.outcome.is_none() {
        append(s, record, &plan.events);
        // Each confidence score of this release, once.
        if let Some(score) = plan
            .status
            .canary
            .as_ref()
            .and_then(|c| c.confidence.as_ref())
            .or_else(|| {
                plan.status
                    .blue_green
                    .as_ref()
                    .and_then(|b| b.confidence.as_ref())
            })
            .filter(|c| c.revision == record.revision)
            && !record.confidence.iter().any(|c| c.step == score.step)
        {
            record.confidence.push(score.clone());
        }
        if let crate::Strategy::Canary(canary) = strategy {
            track_steps(&canary.steps, plan, record, &now);
        }
        if record.admitted_at.is_none() && crate::gate::admitted(&plan.status, &record.revision) {
            record.admitted_at = Some(now.clone());
        }
        if plan.status.abort && !previous.abort {
            record.aborted_by = plan.aborted_by;
            let why = plan
                .events
                .iter()
                .find(|e| e.reason == "RolloutAborted")
                .map_or_else(|| "aborted".to_owned(), |e| e.message.clone());
            end(record, ReleaseOutcome::Aborted, why, &now);
        } else if stable.as_deref() == Some(record.revision.as_str()) {
            end(
                record,
                ReleaseOutcome::Completed,
                format!("revision {} is stable", record.revision),
                &now,
            );
        }
    }
    // After an abort: stable serves everything again once no traffic is left on the aborted
    // revision and stable is fully available.
    if record.outcome == Some(ReleaseOutcome::Aborted)
        && record.restored_at.is_none()
        && plan.traffic.canary_weight == 0
        && let Some(stable) = stable.as_deref()
        && observed(s, stable).available >= s.spec.replicas
    {
        record.restored_at = Some(now);
    }
    plan.status.release = release;
}

/// Adds `events` (announced after the release record was brought up to date) to the timeline of the
/// release in flight.
pub(crate) fn note(s: &Snapshot<'_>, plan: &mut Plan, events: &[crate::events::Event]) {
    if let Some(record) = plan.status.release.as_mut().filter(|r| r.outcome.is_none()) {
        append(s, record, events);
    }
}

/// Adds `events` to a release's timeline, with who asked for them (the request's maker), keeping
/// the timeline bounded: the first [`TIMELINE_HEAD`] entries and the newest.
fn append(s: &Snapshot<'_>, record: &mut ReleaseProgress, events: &[crate::events::Event]) {
    let by = s.request.and(s.requester).map(str::to_owned);
    for event in events {
        record.timeline.push(TimelineEntry {
            at: Time(s.now),
            reason: event.reason.to_owned(),
            message: event.message.clone(),
            by: by.clone(),
        });
        if record.timeline.len() > TIMELINE_LIMIT {
            record.timeline.remove(TIMELINE_HEAD);
            record.timeline_dropped += 1;
        }
    }
}

/// The canary step in force, and the highest weight put in force during it.
fn track_steps(steps: &[CanaryStep], plan: &Plan, record: &mut ReleaseProgress, now: &Time) {
    let Some(index) = plan.status.current_step_index else {
        return;
    };
    if usize::try_from(index).map_or(true, |i| i >= steps.len()) {
        close_step(record, now);
        return;
    }
    if record.steps.last().is_none_or(|step| step.index != index) {
        // The step left in this decision reached the weight in force, up to its own.
        if let Some(step) = record.steps.last_mut()
            && step.ended_at.is_none()
        {
            let own = usize::try_from(step.index).map_or(0, |i| step_weight(steps, i));
            step.weight = step.weight.max(plan.traffic.canary_weight.min(own));
        }
        close_step(record, now);
        if record.steps.len() >= STEPS_LIMIT {
            return;
        }
        record.steps.push(StepRecord {
            index,
            started_at: now.clone(),
            ended_at: None,
            weight: 0,
        });
    }
    if let Some(step) = record.steps.last_mut() {
        step.weight = step.weight.max(plan.traffic.canary_weight);
    }
}

fn close_step(record: &mut ReleaseProgress, now: &Time) {
    if let Some(step) = record.steps.last_mut()
        && step.ended_at.is_none()
    {
        step.ended_at = Some(now.clone());
    }
}

fn end(record: &mut ReleaseProgress, outcome: ReleaseOutcome, why: String, now: &Time) {
    close_step(record, now);
    record.outcome = Some(outcome);
    record.reason = Some(why);
    record.ended_at = Some(now.clone());
}
