//! The confidence score (`steps[].confidence`): a 0 to 100 score from weighted factors, each valued 0
//! to 100, and what it decides: go on by itself, wait for a person, or abort. [`score`] is a
//! weighted mean, so a better factor never lowers the score (property-tested); [`factors`] values
//! each factor from what the release has shown so far.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_api::analysis::AnalysisPhase;
use sluice_api::release::ReleaseOutcome;
use sluice_api::rollout::{
    ChecksPhase, CircuitState, ConfidenceDecision, ConfidenceFactor, ConfidenceScore,
    ConfidenceStep, ConfidenceWeights, RolloutStatus, TEST_COVERAGE_ANNOTATION,
};

use crate::release::Snapshot;

/// Ended releases the history factor reads, the newest.
pub const HISTORY_LOOKBACK: usize = 10;

/// The weighted mean of the factors' values, rounded: 0 to 100. A factor's value outside 0..=100
/// counts as the nearest bound; with no weight at all the score is 0.
pub fn score(factors: &[ConfidenceFactor]) -> i32 {
    let total: i64 = factors.iter().map(|f| i64::from(f.weight.max(0))).sum();
    if total == 0 {
        return 0;
    }
    let weighted: i64 = factors
        .iter()
        .map(|f| i64::from(f.weight.max(0)) * i64::from(f.value.clamp(0, 100)))
        .sum();
    // Rounded half up, in integers: the same inputs give the same score everywhere.
    i32::try_from((2 * weighted + total) / (2 * total)).unwrap_or(0)
}

/// What a score decides under `step`'s thresholds.
pub fn decision(score: i32, step: &ConfidenceStep) -> ConfidenceDecision {
    if score >= step.promote_at {
        ConfidenceDecision::Promote
    } else if score < step.abort_below {
        ConfidenceDecision::Abort
    } else {
        ConfidenceDecision::Review
    }
}

fn factor(name: &str, value: i32, weight: i32, note: String) -> ConfidenceFactor {
    ConfidenceFactor {
        name: name.to_owned(),
        value: value.clamp(0, 100),
        weight,
        note,
    }
}

/// Each factor's value for the release of `s.current_hash` as `status` has it, at canary weight
/// `exposed` (the most traffic it has served so far).
pub fn factors(
    s: &Snapshot<'_>,
    status: &RolloutStatus,
    weights: &ConfidenceWeights,
    exposed: i32,
) -> Vec<ConfidenceFactor> {
    let hash = s.current_hash;
    // Analysis: this revision's finished runs (pre-deployment checks apart).
    let finished: Vec<_> = s
        .runs
        .iter()
        .filter(|r| r.hash.as_deref() == Some(hash))
        .filter(|r| !matches!(r.slot, Some(crate::runs::RunSlot::Check(_)) | None))
        .filter_map(|r| r.phase.filter(|p| crate::analysis::is_completed(*p)))
        .collect();
    let analysis = if finished.is_empty() {
        factor(
            "analysis",
            0,
            weights.analysis,
            "no analysis of this revision has finished".to_owned(),
        )
    } else {
        let points: usize = finished
            .iter()
            .map(|p| match p {
                AnalysisPhase::Successful => 2,
                AnalysisPhase::Inconclusive => 1,
                _ => 0,
            })
            .sum();
        let passed = finished
            .iter()
            .filter(|p| **p == AnalysisPhase::Successful)
            .count();
        factor(
            "analysis",
            i32::try_from(points * 50 / finished.len()).unwrap_or(0),
            weights.analysis,
            format!("{passed} of {} finished runs succeeded", finished.len()),
        )
    };

    let checks = match status
        .pre_deployment_checks
        .as_ref()
        .filter(|c| c.revision == hash)
    {
        Some(record) if !record.checks.is_empty() => {
            let passed = record
                .checks
                .iter()
                .filter(|c| {
                    c.analysis_run
                        .as_ref()
                        .is_some_and(|r| r.status == "Successful")
                })
                .count();
            let total = record.checks.len();
            let value = if record.phase == ChecksPhase::Failed {
                0
            } else {
                i32::try_from(passed * 100 / total).unwrap_or(0)
            };
            factor(
                "checks",
                value,
                weights.checks,
                format!("{passed} of {total} pre-deployment checks passed"),
            )
        }
        _ => factor(
            "checks",
            50,
            weights.checks,
            "no pre-deployment checks".to_owned(),
        ),
    };

    let blast_radius = factor(
        "blastRadius",
        exposed.clamp(0, 50) * 2,
        weights.blast_radius,
        format!("the new version has served {exposed}% of traffic"),
    );

    let mut recent = crate::breaker::counted_newest_first(s.history);
    recent.truncate(HISTORY_LOOKBACK);
    let breaker = status.circuit_breaker.as_ref().map(|b| b.state);
    let history = if recent.is_empty() {
        (50, "no ended releases on record".to_owned())
    } else {
        let completed = recent
            .iter()
            .filter(|r| r.outcome == ReleaseOutcome::Completed)
            .count();
        (
            i32::try_from(completed * 100 / recent.len()).unwrap_or(0),
            format!(
                "{completed} of the last {} releases completed",
                recent.len()
            ),
        )
    };
    let history = match breaker {
        Some(CircuitState::Open) => factor(
            "history",
            0,
            weights.history,
            format!("{}; the circuit breaker is open", history.1),
        ),
        Some(CircuitState::HalfOpen) => factor(
            "history",
            history.0 / 2,
            weights.history,
            format!("{}; the circuit breaker is half-open", history.1),
        ),
        _ => factor("history", history.0, weights.history, history.1),
    };

    let stable_images = status.stable_rs.as_deref().and_then(|stable| {
        s.history
            .iter()
            .filter(|r| r.revision == stable && r.outcome == ReleaseOutcome::Completed)
            .max_by_key(|r| r.ended_at)
            .map(|r| r.images.as_slice())
    });
    let change_size = match stable_images {
        None => factor(
            "changeSize",
            50,
            weights.change_size,
            "stable's images are not on record".to_owned(),
        ),
        Some(stable) => {
            let changed = s.images.iter().filter(|i| !stable.contains(i)).count();
            let value = 100 - 25 * i32::try_from(changed.saturating_sub(1)).unwrap_or(4);
            factor(
                "changeSize",
                value,
                weights.change_size,
                format!("{changed} container image(s) changed since stable"),
            )
        }
    };

    let declared = s
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(TEST_COVERAGE_ANNOTATION))
        .and_then(|v| v.trim().trim_end_matches('%').parse::<f64>().ok())
        .filter(|v| v.is_finite());
    let test_coverage = match declared {
        Some(coverage) => factor(
            "testCoverage",
            // Bounded to 0..=100 before the conversion.
            coverage.clamp(0.0, 100.0).round() as i32,
            weights.test_coverage,
            format!("{coverage}% declared by {TEST_COVERAGE_ANNOTATION}"),
        ),
        None => factor(
            "testCoverage",
            0,
            weights.test_coverage,
            format!("not declared ({TEST_COVERAGE_ANNOTATION})"),
        ),
    };
    vec![
        analysis,
        checks,
        blast_radius,
        history,
        change_size,
        test_coverage,
    ]
}

/// Scores the release at step `index` now.
pub fn assess(
    s: &Snapshot<'_>,
    status: &RolloutStatus,
    step: &ConfidenceStep,
    index: i32,
    exposed: i32,
) -> ConfidenceScore {
    let factors = factors(s, status, &step.weights, exposed);
    let score = score(&factors);
    ConfidenceScore {
        step: index,
        revision: s.current_hash.to_owned(),
        score,
        decision: decision(score, step),
        factors,
        scored_at: Time(s.now),
    }
}

/// The breakdown, for messages and Events: `score 70 (analysis 100×35, checks 50×15, ...)`.
pub fn breakdown(score: &ConfidenceScore) -> String {
    let parts: Vec<String> = score
        .factors
        .iter()
        .map(|f| format!("{} {}×{} ({})", f.name, f.value, f.weight, f.note))
        .collect();
    format!("confidence {} of 100: {}", score.score, parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with(values: &[(i32, i32)]) -> Vec<ConfidenceFactor> {
        values
            .iter()
            .enumerate()
            .map(|(i, (value, weight))| factor(&format!("f{i}"), *value, *weight, String::new()))
            .collect()
    }

    fn step(promote_at: i32, abort_below: i32) -> ConfidenceStep {
        ConfidenceStep {
            promote_at,
            abort_below,
            weights: ConfidenceWeights::default(),
        }
    }

    #[test]
    fn the_score_is_the_weighted_mean_and_the_defaults_decide_at_80_and_60() {
        assert_eq!(score(&with(&[(100, 35), (50, 15), (0, 50)])), 43);
        assert_eq!(score(&with(&[(70, 1)])), 70);
        assert_eq!(score(&with(&[])), 0);
        let defaults = step(80, 60);
        assert_eq!(decision(80, &defaults), ConfidenceDecision::Promote);
        assert_eq!(decision(79, &defaults), ConfidenceDecision::Review);
        assert_eq!(decision(60, &defaults), ConfidenceDecision::Review);
        assert_eq!(decision(59, &defaults), ConfidenceDecision::Abort);
    }

    proptest! {
        /// A better factor never lowers the score, and the score stays within 0..=100.
        #[test]
        fn a_better_factor_never_lowers_the_score(
            values in proptest::collection::vec((0..=100i32, 0..=100i32), 1..8),
            which in any::<proptest::sample::Index>(),
            better in 0..=100i32,
        ) {
            let before = with(&values);
            let mut after = before.clone();
            let i = which.index(after.len());
            after[i].value = (after[i].value + better).min(100);
            let (a, b) = (score(&before), score(&after));
            prop_assert!(b >= a, "{a} -> {b}");
            prop_assert!((0..=100).contains(&a));
        }

        /// The thresholds partition the scores: promote at or above `promoteAt`, abort below
        /// `abortBelow`, review in between; and a higher score never decides worse.
        #[test]
        fn the_thresholds_partition_the_scores(
            promote_at in 0..=100i32, gap in 0..=100i32, s in 0..=100i32, more in 0..=100i32,
        ) {
            let abort_below = (promote_at - gap).max(0);
            let step = step(promote_at, abort_below);
            let rank = |d| match d {
                ConfidenceDecision::Abort => 0,
                ConfidenceDecision::Review => 1,
                ConfidenceDecision::Promote => 2,
            };
            let d = decision(s, &step);
            prop_assert_eq!(d == ConfidenceDecision::Promote, s >= promote_at);
            prop_assert_eq!(d == ConfidenceDecision::Abort, s < abort_below);
            prop_assert!(rank(decision((s + more).min(100), &step)) >= rank(d));
        }
    }
}
