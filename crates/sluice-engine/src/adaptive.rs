//! Adaptive step plans (`strategy.canary.adaptive`): each release's steps are chosen from the
//! Rollout's recent releases, derived from the user's own steps.
//!
//! - Cautious (after an abort among the newest `lookback` ended releases): before each raise of the
//!   weight, a step to the midway weight (so the first weight is halved), followed by the timed
//!   pause that follows the raise, if any; every timed pause twice as long.
//! - Standard: the user's steps.
//! - Fast (after `fastAfter` completed releases in a row): only the first and the last `setWeight`
//!   are kept, without the timed pauses right after the dropped ones; every timed pause half as long
//!   (at least 1 s). Analysis steps, pauses until promoted, scale and route steps are always kept.
//!
//! The plan is chosen when a release starts and recorded with it, so the release keeps it to its
//! end whatever happens meanwhile. Rollbacks and superseded releases are not counted.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_api::names::PLAN_ANNOTATION;
use sluice_api::release::{PlanChoice, PlanProfile, ReleaseOutcome};
use sluice_api::rollout::{AdaptivePlans, CanaryStep, CanaryStrategy, PauseStep};

use crate::breaker::EndedRelease;
use crate::duration::from_int_or_string;

/// A profile's name as the pin annotation writes it.
pub fn parse_profile(text: &str) -> Option<PlanProfile> {
    match text.trim().to_ascii_lowercase().as_str() {
        "cautious" => Some(PlanProfile::Cautious),
        "standard" => Some(PlanProfile::Standard),
        "fast" => Some(PlanProfile::Fast),
        _ => None,
    }
}

/// The plan for a release starting now: the pin, else what the Rollout's recent releases say.
/// `history`: its ended releases, in any order.
pub fn choose(adaptive: &AdaptivePlans, history: &[EndedRelease], pin: Option<&str>) -> PlanChoice {
    if let Some(profile) = pin.and_then(parse_profile) {
        return PlanChoice {
            profile,
            reason: format!("pinned by the {PLAN_ANNOTATION} annotation"),
        };
    }
    let recent = crate::breaker::counted_newest_first(history);
    let lookback = usize::try_from(adaptive.lookback).unwrap_or(5);
    if let Some(failed) = recent
        .iter()
        .take(lookback)
        .find(|r| r.outcome == ReleaseOutcome::Aborted)
    {
        return PlanChoice {
            profile: PlanProfile::Cautious,
            reason: format!(
                "release {} was aborted, among the last {lookback}: {}",
                failed.name, failed.reason
            ),
        };
    }
    let fast_after = usize::try_from(adaptive.fast_after).unwrap_or(10);
    if recent.len() >= fast_after
        && recent
            .iter()
            .take(fast_after)
            .all(|r| r.outcome == ReleaseOutcome::Completed)
    {
        return PlanChoice {
            profile: PlanProfile::Fast,
            reason: format!("the last {fast_after} releases completed"),
        };
    }
    PlanChoice {
        profile: PlanProfile::Standard,
        reason: format!(
            "no release aborted among the last {lookback}, {} completed in a row of the {fast_after} a fast plan needs",
            recent
                .iter()
                .take_while(|r| r.outcome == ReleaseOutcome::Completed)
                .count()
        ),
    }
}

/// The plan of the release `s` decides: the one the current revision's release started with (in
/// flight or ended: a settled Rollout keeps the steps that brought it there), or, for a release
/// starting now, the one its recent releases or its pin call for.
pub(crate) fn plan_for(s: &crate::release::Snapshot<'_>, adaptive: &AdaptivePlans) -> PlanChoice {
    let continuing = s.status.release.as_ref().filter(|r| {
        r.revision == s.current_hash
            && s.status.current_pod_hash.as_deref() == Some(s.current_hash)
            && !s.actions.retry
    });
    match continuing.and_then(|r| r.plan.clone()) {
        Some(plan) => plan,
        None => choose(adaptive, s.history, s.plan_pin),
    }
}

/// The canary strategy with the profile's steps (and a background analysis starting at the same
/// step of them).
pub fn adapt(canary: &CanaryStrategy, profile: PlanProfile) -> CanaryStrategy {
    let (steps, index_of) = match profile {
        PlanProfile::Standard => return canary.clone(),
        PlanProfile::Cautious => cautious(&canary.steps),
        PlanProfile::Fast => fast(&canary.steps),
    };
    let mut adapted = canary.clone();
    adapted.steps = steps;
    if let Some(background) = adapted.analysis.as_mut()
        && let Some(start) = background.starting_step
    {
        let user = usize::try_from(start).unwrap_or(0);
        let mapped = index_of.get(user).copied().unwrap_or(adapted.steps.len());
        background.starting_step = Some(i32::try_from(mapped).unwrap_or(i32::MAX));
    }
    adapted
}

fn timed(step: &CanaryStep) -> Option<Duration> {
    step.pause
        .as_ref()?
        .duration
        .as_ref()
        .and_then(from_int_or_string)
}

fn pause_of(duration: Duration) -> CanaryStep {
    CanaryStep {
        set_weight: None,
        pause: Some(PauseStep {
            duration: Some(IntOrString::String(format!(
                "{}s",
                duration.as_secs().max(1)
            ))),
        }),
        set_canary_scale: None,
        analysis: None,
        set_header_route: None,
        set_mirror_route: None,
        confidence: None,
    }
}

fn weight_of(weight: i32) -> CanaryStep {
    CanaryStep {
        set_weight: Some(weight),
        pause: None,
        set_canary_scale: None,
        analysis: None,
        set_header_route: None,
        set_mirror_route: None,
        confidence: None,
    }
}

/// The cautious steps, and where each user step landed.
fn cautious(steps: &[CanaryStep]) -> (Vec<CanaryStep>, Vec<usize>) {
    let mut out = Vec::new();
    let mut index_of = Vec::with_capacity(steps.len());
    let mut previous = 0;
    for (i, step) in steps.iter().enumerate() {
        if let Some(weight) = step.set_weight {
            let midway = previous + (weight - previous) / 2;
            if weight > previous && midway > previous {
                out.push(weight_of(midway));
                if let Some(pause) = steps.get(i + 1).and_then(timed) {
                    out.push(pause_of(pause * 2));
                }
            }
            previous = weight;
            index_of.push(out.len());
            out.push(step.clone());
        } else if let Some(pause) = timed(step) {
            index_of.push(out.len());
            out.push(pause_of(pause * 2));
        } else {
            index_of.push(out.len());
            out.push(step.clone());
        }
    }
    (out, index_of)
}

/// The fast steps, and where each user step landed (a dropped one: where the next kept one is).
fn fast(steps: &[CanaryStep]) -> (Vec<CanaryStep>, Vec<usize>) {
    let weights: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.set_weight.is_some())
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (weights.first().copied(), weights.last().copied());
    let mut out = Vec::new();
    let mut index_of = Vec::with_capacity(steps.len());
    let mut after_dropped = false;
    for (i, step) in steps.iter().enumerate() {
        index_of.push(out.len());
        if step.set_weight.is_some() && Some(i) != first && Some(i) != last {
            after_dropped = true;
            continue;
        }
        if let Some(pause) = timed(step) {
            if !after_dropped {
                out.push(pause_of(pause / 2));
            }
            continue;
        }
        after_dropped = false;
        out.push(step.clone());
    }
    (out, index_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(json: serde_json::Value) -> Vec<CanaryStep> {
        serde_json::from_value(json).expect("steps")
    }

    fn describe(steps: &[CanaryStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match (s.set_weight, timed(s), &s.pause, &s.analysis) {
                (Some(w), ..) => format!("w{w}"),
                (_, Some(d), ..) => format!("p{}", d.as_secs()),
                (_, _, Some(_), _) => "hold".to_owned(),
                (_, _, _, Some(_)) => "analysis".to_owned(),
                _ => "other".to_owned(),
            })
            .collect()
    }

    fn user() -> Vec<CanaryStep> {
        steps(serde_json::json!([
            {"setWeight": 20}, {"pause": {"duration": "60s"}},
            {"setWeight": 50}, {"pause": {}},
            {"analysis": {"templates": [{"templateName": "t"}]}},
            {"setWeight": 80}, {"pause": {"duration": 30}}
        ]))
    }

    #[test]
    fn cautious_adds_a_midway_weight_before_each_raise_and_doubles_timed_pauses() {
        let (out, index_of) = cautious(&user());
        assert_eq!(
            describe(&out),
            [
                "w10", "p120", "w20", "p120", "w35", "w50", "hold", "analysis", "w65", "p60",
                "w80", "p60"
            ]
        );
        assert_eq!(index_of, [2, 3, 5, 6, 7, 10, 11]);
    }

    #[test]
    fn fast_keeps_the_first_and_last_weight_and_halves_timed_pauses() {
        let (out, index_of) = fast(&user());
        assert_eq!(
            describe(&out),
            ["w20", "p30", "hold", "analysis", "w80", "p15"]
        );
        assert_eq!(index_of, [0, 1, 2, 2, 3, 4, 5]);
    }

    fn ended(name: &str, outcome: ReleaseOutcome, second: i64) -> EndedRelease {
        EndedRelease {
            revision: String::new(),
            images: Vec::new(),
            name: name.to_owned(),
            outcome,
            rollback: false,
            admitted_at: None,
            ended_at: k8s_openapi::jiff::Timestamp::from_second(second).expect("time"),
            reason: "analysis failed".to_owned(),
        }
    }

    #[test]
    fn the_plan_follows_recent_releases_unless_pinned() {
        let adaptive = AdaptivePlans {
            lookback: 3,
            fast_after: 4,
        };
        let mut history: Vec<EndedRelease> = (1..=4)
            .map(|i| ended(&format!("web-{i}"), ReleaseOutcome::Completed, i))
            .collect();
        assert_eq!(choose(&adaptive, &history, None).profile, PlanProfile::Fast);
        history.push(ended("web-5", ReleaseOutcome::Aborted, 5));
        let cautious = choose(&adaptive, &history, None);
        assert_eq!(cautious.profile, PlanProfile::Cautious);
        assert!(cautious.reason.contains("web-5"), "{}", cautious.reason);
        for i in 6..=8 {
            history.push(ended(&format!("web-{i}"), ReleaseOutcome::Completed, i));
        }
        assert_eq!(
            choose(&adaptive, &history, None).profile,
            PlanProfile::Standard
        );
        assert_eq!(
            choose(&adaptive, &history, Some("cautious")).profile,
            PlanProfile::Cautious
        );
    }
}
