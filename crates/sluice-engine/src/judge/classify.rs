//! Classifying one metric: the policy it is judged by, and whether the canary is significantly and
//! intolerably worse than the baseline on it (High or Low), no worse (Pass), or cannot be told
//! (NoData), from error counts or latency histograms.

use sluice_api::analysis::ChangeDirection;

use super::format::{RoundedPercent, count, p_text, significant};
use super::stats::{
    EventCounts, Histogram, PValues, aligned_counts, mann_whitney_binned, two_proportion_test,
};
use super::{DEFAULT_CONFIDENCE_LEVEL, DEFAULT_MIN_SAMPLE_SIZE, DEFAULT_TOLERANCE};

/// How one metric is judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricPolicy {
    /// Which change counts against the canary.
    pub direction: ChangeDirection,
    /// Relative change tolerated even when significant, e.g. 0.25: the canary may be up to 1.25
    /// times the baseline, or down to 1/1.25 of it.
    pub tolerance: f64,
    /// Significant when the p-value is below `1 - confidence_level`; between 0.5 and 1, exclusive.
    pub confidence_level: f64,
    /// Fewest events (or samples) each version needs; below it the metric is NoData.
    pub min_sample_size: f64,
}

impl Default for MetricPolicy {
    fn default() -> Self {
        Self {
            direction: ChangeDirection::Increase,
            tolerance: DEFAULT_TOLERANCE,
            confidence_level: DEFAULT_CONFIDENCE_LEVEL,
            min_sample_size: DEFAULT_MIN_SAMPLE_SIZE,
        }
    }
}

impl MetricPolicy {
    /// Why the policy cannot be applied, if it cannot.
    fn problem(&self) -> Option<String> {
        if self.tolerance.is_nan() || self.tolerance < 0.0 {
            Some(format!("tolerance {} is not 0 or more", self.tolerance))
        } else if !(self.confidence_level > 0.5 && self.confidence_level < 1.0) {
            Some(format!(
                "confidence level {} is not between 0.5 and 1",
                self.confidence_level
            ))
        } else if self.min_sample_size.is_nan() || self.min_sample_size < 0.0 {
            Some(format!(
                "minimum sample size {} is not 0 or more",
                self.min_sample_size
            ))
        } else {
            None
        }
    }
}

/// What one metric says about the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No significant change beyond the tolerance in the bad direction.
    Pass,
    /// Significantly and intolerably higher than the baseline, and higher is bad.
    High,
    /// Significantly and intolerably lower than the baseline, and lower is bad.
    Low,
    /// Too few samples, or unusable input: no verdict.
    NoData,
}

impl Outcome {
    /// Whether this outcome counts against the canary.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::High | Outcome::Low)
    }
}

/// One metric's outcome and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// The outcome.
    pub outcome: Outcome,
    /// The numbers behind the outcome, for people.
    pub message: String,
    /// The p-value the decision used (one-sided for Increase or Decrease, two-sided for Either).
    pub p_value: Option<f64>,
    /// The canary relative to the baseline, e.g. 0.2 for 20% higher.
    pub relative_change: Option<f64>,
}

impl Classification {
    fn no_data(message: String) -> Self {
        Self {
            outcome: Outcome::NoData,
            message: format!("{message}: NoData"),
            p_value: None,
            relative_change: None,
        }
    }
}

/// A test's result, ready to decide on.
struct Evidence {
    /// Positive when the canary is higher.
    z: f64,
    p: PValues,
    /// ln(canary / baseline) of the effect size. Logarithms make the tolerance symmetric (1.25×
    /// up is as far as 1/1.25 down) and make swapping the versions negate it exactly.
    log_change: f64,
}

/// The outcome, the p-value used, and whether the change was significant but within tolerance.
fn decide(evidence: &Evidence, policy: &MetricPolicy) -> (Outcome, f64, bool) {
    let alpha = 1.0 - policy.confidence_level;
    let allowed = policy.tolerance.ln_1p();
    let log_change = if evidence.log_change.is_nan() {
        0.0
    } else {
        evidence.log_change
    };
    let higher = log_change > allowed;
    let lower = log_change < -allowed;
    let p = evidence.p;
    match policy.direction {
        ChangeDirection::Increase => {
            let significant = p.greater < alpha;
            let outcome = if significant && higher {
                Outcome::High
            } else {
                Outcome::Pass
            };
            (outcome, p.greater, significant && !higher)
        }
        ChangeDirection::Decrease => {
            let significant = p.less < alpha;
            let outcome = if significant && lower {
                Outcome::Low
            } else {
                Outcome::Pass
            };
            (outcome, p.less, significant && !lower)
        }
        ChangeDirection::Either => {
            let significant = p.two_sided < alpha;
            let outcome = if significant && evidence.z > 0.0 && higher {
                Outcome::High
            } else if significant && evidence.z < 0.0 && lower {
                Outcome::Low
            } else {
                Outcome::Pass
            };
            (
                outcome,
                p.two_sided,
                significant && outcome == Outcome::Pass,
            )
        }
    }
}

/// Classifies one metric from the canary's and the baseline's counts.
///
/// The relative change is canary ratio / baseline ratio - 1, with both ratios first raised to
/// at least one event in the smaller sample (`1 / min(totals)`): a ratio below that cannot be
/// told from it, and an error-free baseline would otherwise make any error an infinite change.
/// E.g. 0 of 2000 against 30 of 2000 is treated as 1 in 2000 against 30 in 2000, +2900%.
pub fn classify_error_ratio(
    canary: EventCounts,
    baseline: EventCounts,
    policy: &MetricPolicy,
) -> Classification {
    if let Some(problem) = policy.problem() {
        return Classification::no_data(format!("error ratio: {problem}"));
    }
    let (Some((_, canary_total)), Some((_, baseline_total))) = (canary.usable(), baseline.usable())
    else {
        return Classification::no_data(format!(
            "error ratio: counts not usable (canary {}/{}, baseline {}/{})",
            canary.errors, canary.total, baseline.errors, baseline.total
        ));
    };
    if canary_total < policy.min_sample_size || baseline_total < policy.min_sample_size {
        return Classification::no_data(format!(
            "error ratio: n={}/{} is below the minimum sample size {}",
            count(canary_total),
            count(baseline_total),
            count(policy.min_sample_size)
        ));
    }
    let Some(test) =
        two_proportion_test(canary.errors, canary.total, baseline.errors, baseline.total)
    else {
        return Classification::no_data("error ratio: counts not usable".to_string());
    };
    let floor = 1.0 / canary_total.min(baseline_total);
    let log_change = test.canary_ratio.max(floor).ln() - test.baseline_ratio.max(floor).ln();
    let evidence = Evidence {
        z: test.z,
        p: test.p,
        log_change,
    };
    let description = format!(
        "error ratio canary {}% vs baseline {}% (n={}/{})",
        significant(test.canary_ratio * 100.0, 3),
        significant(test.baseline_ratio * 100.0, 3),
        count(canary_total),
        count(baseline_total)
    );
    finish(description, &evidence, policy)
}

/// Classifies one metric from the canary's and the baseline's latency histograms.
///
/// Significance comes from the Mann-Whitney test on both histograms coarsened to the bucket
/// bounds they share. The relative change is the ratio of the estimated means
/// ([`Histogram::mean`]) minus 1: the mean, unlike the median, moves when only the slow tail
/// gets slower. The medians are reported in the message.
pub fn classify_latency(
    canary: &Histogram,
    baseline: &Histogram,
    policy: &MetricPolicy,
) -> Classification {
    if let Some(problem) = policy.problem() {
        return Classification::no_data(format!("latency: {problem}"));
    }
    let Some((canary_counts, baseline_counts)) = aligned_counts(canary, baseline) else {
        return Classification::no_data(
            "latency: the histograms share no finite bucket bound".to_string(),
        );
    };
    let canary_total: f64 = canary_counts.iter().sum();
    let baseline_total: f64 = baseline_counts.iter().sum();
    let enough = |total: f64| total.is_finite() && total > 0.0 && total >= policy.min_sample_size;
    if !(enough(canary_total) && enough(baseline_total)) {
        return Classification::no_data(format!(
            "latency: n={}/{} is below the minimum sample size {}",
            count(canary_total),
            count(baseline_total),
            count(policy.min_sample_size)
        ));
    }
    let (Some(test), Some(canary_mean), Some(baseline_mean)) = (
        mann_whitney_binned(&canary_counts, &baseline_counts),
        canary.mean(),
        baseline.mean(),
    ) else {
        return Classification::no_data("latency: histograms not usable".to_string());
    };
    let median = |histogram: &Histogram| {
        histogram
            .quantile(0.5)
            .map_or_else(|| "?".to_string(), |value| significant(value, 3))
    };
    let evidence = Evidence {
        z: test.z,
        p: test.p,
        log_change: canary_mean.ln() - baseline_mean.ln(),
    };
    let description = format!(
        "latency mean canary {} vs baseline {} (median {}/{}, n={}/{})",
        significant(canary_mean, 3),
        significant(baseline_mean, 3),
        median(canary),
        median(baseline),
        count(canary_total),
        count(baseline_total)
    );
    finish(description, &evidence, policy)
}

fn finish(description: String, evidence: &Evidence, policy: &MetricPolicy) -> Classification {
    let (outcome, p_value, tolerated) = decide(evidence, policy);
    let relative_change = evidence.log_change.exp() - 1.0;
    let change = if relative_change.is_nan() {
        "?".to_string()
    } else {
        format!("{:+}", RoundedPercent(relative_change))
    };
    let note = if tolerated {
        format!(
            " (significant, but within the {}% tolerance)",
            significant(policy.tolerance * 100.0, 3)
        )
    } else {
        String::new()
    };
    Classification {
        outcome,
        message: format!(
            "{description}, change {change}, z={:+.2}, {}: {outcome:?}{note}",
            evidence.z,
            p_text(p_value)
        ),
        p_value: Some(p_value),
        relative_change: (!relative_change.is_nan()).then_some(relative_change),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::judge::tests::{BOUNDS, close, histogram, prometheus};

    fn errors(canary: (f64, f64), baseline: (f64, f64), policy: &MetricPolicy) -> Classification {
        classify_error_ratio(
            EventCounts::new(canary.0, canary.1),
            EventCounts::new(baseline.0, baseline.1),
            policy,
        )
    }

    fn either() -> MetricPolicy {
        MetricPolicy {
            direction: ChangeDirection::Either,
            ..MetricPolicy::default()
        }
    }

    #[test]
    fn five_percent_errors_against_a_tenth_of_a_percent_is_high() {
        let result = errors((100.0, 2000.0), (2.0, 2000.0), &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::High, "{}", result.message);
        assert!(close(result.relative_change.expect("a change"), 49.0, 1e-9));
        assert_eq!(
            result.message,
            "error ratio canary 5% vs baseline 0.1% (n=2000/2000), change +4900%, z=+9.83, p=4e-23: High"
        );
    }

    #[test]
    fn one_percent_errors_against_one_point_one_is_pass() {
        let result = errors((20.0, 2000.0), (22.0, 2000.0), &either());
        assert_eq!(result.outcome, Outcome::Pass, "{}", result.message);
        assert!(result.p_value.expect("a p-value") > 0.5);
    }

    #[test]
    fn a_significant_change_within_the_tolerance_passes() {
        // 1.2% against 1.0% over a million requests each: z ≈ 13.6, but only +20%.
        let result = errors((12_000.0, 1e6), (10_000.0, 1e6), &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::Pass, "{}", result.message);
        assert!(result.p_value.expect("a p-value") < 1e-20);
        assert!(
            result.message.contains("within the 25% tolerance"),
            "{}",
            result.message
        );
        let strict = MetricPolicy {
            tolerance: 0.1,
            ..MetricPolicy::default()
        };
        assert_eq!(
            errors((12_000.0, 1e6), (10_000.0, 1e6), &strict).outcome,
            Outcome::High
        );
    }

    #[test]
    fn an_error_free_baseline_is_compared_at_one_error_in_the_smaller_sample() {
        let result = errors((30.0, 2000.0), (0.0, 2000.0), &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::High, "{}", result.message);
        // 30/2000 against 1/2000.
        assert!(close(result.relative_change.expect("a change"), 29.0, 1e-9));
    }

    #[test]
    fn only_the_bad_direction_counts() {
        let fewer = ((2.0, 2000.0), (100.0, 2000.0));
        let outcome = |direction| {
            let policy = MetricPolicy {
                direction,
                ..MetricPolicy::default()
            };
            errors(fewer.0, fewer.1, &policy).outcome
        };
        assert_eq!(outcome(ChangeDirection::Increase), Outcome::Pass);
        assert_eq!(outcome(ChangeDirection::Decrease), Outcome::Low);
        assert_eq!(outcome(ChangeDirection::Either), Outcome::Low);
    }

    #[test]
    fn too_few_requests_is_no_data() {
        let result = errors((10.0, 50.0), (0.0, 5000.0), &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::NoData);
        assert_eq!(
            result.message,
            "error ratio: n=50/5000 is below the minimum sample size 100: NoData"
        );
    }

    #[test]
    fn zero_nan_and_negative_counts_are_no_data() {
        let policy = MetricPolicy::default();
        for (canary, baseline) in [
            ((0.0, 0.0), (0.0, 0.0)),
            ((f64::NAN, 1000.0), (1.0, 1000.0)),
            ((1.0, f64::NAN), (1.0, 1000.0)),
            ((-5.0, 1000.0), (1.0, 1000.0)),
            ((1.0, -1000.0), (1.0, 1000.0)),
            ((1.0, 1000.0), (f64::INFINITY, 1000.0)),
        ] {
            assert_eq!(errors(canary, baseline, &policy).outcome, Outcome::NoData);
        }
    }

    #[test]
    fn an_invalid_policy_is_no_data() {
        for policy in [
            MetricPolicy {
                tolerance: f64::NAN,
                ..MetricPolicy::default()
            },
            MetricPolicy {
                confidence_level: 1.0,
                ..MetricPolicy::default()
            },
            MetricPolicy {
                min_sample_size: -1.0,
                ..MetricPolicy::default()
            },
        ] {
            assert_eq!(
                errors((100.0, 2000.0), (2.0, 2000.0), &policy).outcome,
                Outcome::NoData
            );
            let latency = histogram(&[0.0, 0.0, 300.0, 1500.0]);
            assert_eq!(
                classify_latency(&latency, &latency, &policy).outcome,
                Outcome::NoData
            );
        }
    }

    #[test]
    fn equal_latency_histograms_pass() {
        let version = histogram(&[0.0, 0.0, 300.0, 1500.0, 1100.0, 100.0]);
        let result = classify_latency(&version, &version.clone(), &either());
        assert_eq!(result.outcome, Outcome::Pass, "{}", result.message);
        assert_eq!(result.p_value, Some(1.0));
        assert_eq!(result.relative_change, Some(0.0));
    }

    #[test]
    fn a_canary_slower_by_a_bucket_is_high_though_both_are_well_under_500ms() {
        let baseline = histogram(&[0.0, 0.0, 300.0, 1500.0, 1100.0, 100.0]);
        let canary = histogram(&[0.0, 0.0, 0.0, 300.0, 1500.0, 1100.0, 100.0]);
        // A fixed threshold on p99 would pass both.
        assert!(close(
            baseline.quantile(0.99).expect("samples"),
            0.205,
            1e-12
        ));
        assert!(close(canary.quantile(0.99).expect("samples"), 0.425, 1e-12));
        let result = classify_latency(&canary, &baseline, &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::High, "{}", result.message);
        // Means 353.75/3000 against 161.5/3000.
        assert!(close(
            result.relative_change.expect("a change"),
            353.75 / 161.5 - 1.0,
            1e-9
        ));
        assert!(
            result.message.starts_with(
                "latency mean canary 0.118 vs baseline 0.0538 (median 0.09/0.045, n=3000/3000), change +119%"
            ),
            "{}",
            result.message
        );
        assert_eq!(
            classify_latency(&baseline, &canary, &either()).outcome,
            Outcome::Low
        );
    }

    #[test]
    fn latency_with_different_buckets_is_compared_on_the_shared_bounds() {
        let canary = Histogram::from_cumulative(&prometheus(
            &[0.1, 0.2, 0.5, f64::INFINITY],
            &[100.0, 100.0, 100.0, 0.0],
        ));
        let baseline = Histogram::from_cumulative(&prometheus(
            &[0.1, 0.25, 0.5, f64::INFINITY],
            &[100.0, 150.0, 50.0, 0.0],
        ));
        let (canary_counts, baseline_counts) =
            aligned_counts(&canary, &baseline).expect("shared bounds");
        assert_eq!(canary_counts, [100.0, 200.0, 0.0]);
        assert_eq!(baseline_counts, [100.0, 200.0, 0.0]);
        let disjoint =
            Histogram::from_cumulative(&prometheus(&[0.3, f64::INFINITY], &[300.0, 0.0]));
        let result = classify_latency(&canary, &disjoint, &MetricPolicy::default());
        assert_eq!(result.outcome, Outcome::NoData, "{}", result.message);
    }

    #[test]
    fn too_few_or_unusable_latency_samples_are_no_data() {
        let policy = MetricPolicy::default();
        let plenty = histogram(&[0.0, 0.0, 300.0, 1500.0]);
        let few = histogram(&[0.0, 0.0, 30.0, 50.0]);
        let zero = histogram(&[0.0; 12]);
        let nan = Histogram::from_cumulative(&[(0.1, f64::NAN), (f64::INFINITY, f64::NAN)]);
        let nan_bounds = Histogram::from_cumulative(&[(f64::NAN, 500.0)]);
        for other in [&few, &zero, &nan, &nan_bounds, &Histogram::default()] {
            assert_eq!(
                classify_latency(&plenty, other, &policy).outcome,
                Outcome::NoData
            );
            assert_eq!(
                classify_latency(other, &plenty, &policy).outcome,
                Outcome::NoData
            );
        }
        let result = classify_latency(&few, &plenty, &policy);
        assert_eq!(
            result.message,
            "latency: n=80/1800 is below the minimum sample size 100: NoData"
        );
    }

    fn flipped(outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::High => Outcome::Low,
            Outcome::Low => Outcome::High,
            other => other,
        }
    }

    fn latency_counts() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![Just(0.0), 0.0..2000.0], BOUNDS.len())
    }

    fn direction() -> impl Strategy<Value = ChangeDirection> {
        prop_oneof![
            Just(ChangeDirection::Increase),
            Just(ChangeDirection::Decrease),
            Just(ChangeDirection::Either)
        ]
    }

    proptest! {
        #[test]
        fn swapping_the_versions_flips_high_and_low(
            canary_errors in 0.0..300.0f64,
            canary_total in 0.0..3000.0f64,
            baseline_errors in 0.0..300.0f64,
            baseline_total in 0.0..3000.0f64,
            canary_latency in latency_counts(),
            baseline_latency in latency_counts(),
            tolerance in prop_oneof![Just(0.0), Just(0.25), 0.0..3.0],
        ) {
            let policy = MetricPolicy { tolerance, ..either() };
            let forward = errors((canary_errors, canary_total), (baseline_errors, baseline_total), &policy);
            let backward = errors((baseline_errors, baseline_total), (canary_errors, canary_total), &policy);
            prop_assert_eq!(backward.outcome, flipped(forward.outcome), "{}", forward.message);

            let (canary, baseline) = (histogram(&canary_latency), histogram(&baseline_latency));
            let forward = classify_latency(&canary, &baseline, &policy);
            let backward = classify_latency(&baseline, &canary, &policy);
            prop_assert_eq!(backward.outcome, flipped(forward.outcome), "{}", forward.message);
        }

        #[test]
        fn identical_versions_are_never_high_or_low(
            errors_seen in 0.0..300.0f64,
            total in 0.0..3000.0f64,
            latency in latency_counts(),
            direction in direction(),
            tolerance in prop_oneof![Just(0.0), 0.0..3.0],
        ) {
            let policy = MetricPolicy { direction, tolerance, ..MetricPolicy::default() };
            let result = errors((errors_seen, total), (errors_seen, total), &policy);
            prop_assert!(!result.outcome.is_failure(), "{}", result.message);
            let version = histogram(&latency);
            let result = classify_latency(&version, &version.clone(), &policy);
            prop_assert!(!result.outcome.is_failure(), "{}", result.message);
        }
    }
}
