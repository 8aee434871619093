//! The score across metrics: each judged metric's measurements, weight and criticality, the
//! weighted share of passing metrics, and the verdict it gives against the pass and marginal
//! scores (a failing critical metric fails the canary whatever the score).

use super::classify::{
    Classification, MetricPolicy, Outcome, classify_error_ratio, classify_latency,
};
use super::format::{finite_or, significant};
use super::stats::{EventCounts, Histogram};
use super::{DEFAULT_MARGINAL_SCORE, DEFAULT_PASS_SCORE};

/// Both versions' measurements of one judged metric.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricData {
    /// Bad and all events.
    ErrorRatio {
        /// The canary's counts.
        canary: EventCounts,
        /// The stable version's counts.
        baseline: EventCounts,
    },
    /// Latency histograms.
    Latency {
        /// The canary's histogram.
        canary: Histogram,
        /// The stable version's histogram.
        baseline: Histogram,
    },
}

/// One judged metric: its measurements, how it is judged, and what it weighs.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Name, for messages.
    pub name: String,
    /// Both versions' measurements.
    pub data: MetricData,
    /// How it is classified.
    pub policy: MetricPolicy,
    /// Weight in the score; negative or non-finite weights count as 0.
    pub weight: f64,
    /// Whether its failure fails the judgement whatever the score.
    pub critical: bool,
}

impl Metric {
    /// A metric with the default policy, weight 1, not critical.
    pub fn new(name: impl Into<String>, data: MetricData) -> Self {
        Self {
            name: name.into(),
            data,
            policy: MetricPolicy::default(),
            weight: 1.0,
            critical: false,
        }
    }

    /// Classifies this metric.
    pub fn classify(&self) -> Classification {
        match &self.data {
            MetricData::ErrorRatio { canary, baseline } => {
                classify_error_ratio(*canary, *baseline, &self.policy)
            }
            MetricData::Latency { canary, baseline } => {
                classify_latency(canary, baseline, &self.policy)
            }
        }
    }
}

/// Where the score's verdicts begin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreThresholds {
    /// At or above this, Successful.
    pub pass_score: f64,
    /// At or above this (and below `pass_score`), Inconclusive; below, Failed.
    pub marginal_score: f64,
}

impl Default for ScoreThresholds {
    fn default() -> Self {
        Self {
            pass_score: DEFAULT_PASS_SCORE,
            marginal_score: DEFAULT_MARGINAL_SCORE,
        }
    }
}

/// The judge's verdict on the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The canary is no worse than the baseline.
    Successful,
    /// Not enough data, or a marginal score: a person decides.
    Inconclusive,
    /// The canary is worse.
    Failed,
}

/// One metric's part in a judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricJudgement {
    /// The metric's name.
    pub name: String,
    /// The weight it had in the score (0 for a negative or non-finite weight).
    pub weight: f64,
    /// Whether its failure fails the judgement.
    pub critical: bool,
    /// Its outcome and message.
    pub classification: Classification,
}

/// The judge's answer: a score from 0 to 100, a verdict, and each metric's part.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// 100 × weight of passing metrics / weight of metrics with data; 0 without enough data.
    pub score: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Each metric's outcome, in the order given.
    pub metrics: Vec<MetricJudgement>,
    /// One line for people.
    pub summary: String,
}

/// Judges the canary on all its metrics.
///
/// If half or more of the metrics (by count) have no data, the score is 0 and the verdict
/// Inconclusive. A critical metric that fails makes the verdict Failed whatever else holds,
/// including too little data elsewhere: a significant regression on it is evidence enough.
/// Otherwise the score decides against `thresholds` (non-finite thresholds fall back to the
/// defaults).
pub fn judge(metrics: &[Metric], thresholds: &ScoreThresholds) -> Judgement {
    let judged: Vec<MetricJudgement> = metrics
        .iter()
        .map(|metric| MetricJudgement {
            name: metric.name.clone(),
            weight: if metric.weight.is_finite() && metric.weight > 0.0 {
                metric.weight
            } else {
                0.0
            },
            critical: metric.critical,
            classification: metric.classify(),
        })
        .collect();
    let outcome = |m: &MetricJudgement| m.classification.outcome;
    let without_data = judged
        .iter()
        .filter(|m| outcome(m) == Outcome::NoData)
        .count();
    let weight_with_data: f64 = judged
        .iter()
        .filter(|m| outcome(m) != Outcome::NoData)
        .map(|m| m.weight)
        .sum();
    let weight_passing: f64 = judged
        .iter()
        .filter(|m| outcome(m) == Outcome::Pass)
        .map(|m| m.weight)
        .sum();
    let enough_data =
        !judged.is_empty() && without_data * 2 < judged.len() && weight_with_data > 0.0;
    let score = if enough_data {
        100.0 * weight_passing / weight_with_data
    } else {
        0.0
    };
    let failing: Vec<String> = judged
        .iter()
        .filter(|m| outcome(m).is_failure())
        .map(|m| format!("{} ({:?})", m.name, outcome(m)))
        .collect();
    let critical_failures: Vec<String> = judged
        .iter()
        .filter(|m| m.critical && outcome(m).is_failure())
        .map(|m| format!("{} is {:?}", m.name, outcome(m)))
        .collect();

    let pass_score = finite_or(thresholds.pass_score, DEFAULT_PASS_SCORE);
    let marginal_score = finite_or(thresholds.marginal_score, DEFAULT_MARGINAL_SCORE);
    let score_text = significant(score, 4);
    let (verdict, summary) = if !critical_failures.is_empty() {
        (
            Verdict::Failed,
            format!(
                "critical metric {}: Failed (score {score_text})",
                critical_failures.join(", ")
            ),
        )
    } else if !enough_data {
        (
            Verdict::Inconclusive,
            format!(
                "not enough data: {without_data} of {} metrics had too few samples or unusable data, score 0: Inconclusive",
                judged.len()
            ),
        )
    } else {
        let verdict = if score >= pass_score {
            Verdict::Successful
        } else if score >= marginal_score {
            Verdict::Inconclusive
        } else {
            Verdict::Failed
        };
        let mut summary = format!(
            "score {score_text} (pass at {}, marginal at {}): {verdict:?}",
            significant(pass_score, 4),
            significant(marginal_score, 4)
        );
        if !failing.is_empty() {
            summary.push_str(&format!("; failing: {}", failing.join(", ")));
        }
        if without_data > 0 {
            summary.push_str(&format!("; {without_data} without data"));
        }
        (verdict, summary)
    };
    Judgement {
        score,
        verdict,
        metrics: judged,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::tests::histogram;

    fn error_metric(name: &str, canary: (f64, f64), baseline: (f64, f64)) -> Metric {
        Metric::new(
            name,
            MetricData::ErrorRatio {
                canary: EventCounts::new(canary.0, canary.1),
                baseline: EventCounts::new(baseline.0, baseline.1),
            },
        )
    }

    fn passing(name: &str) -> Metric {
        error_metric(name, (20.0, 2000.0), (22.0, 2000.0))
    }

    fn failing(name: &str) -> Metric {
        error_metric(name, (100.0, 2000.0), (2.0, 2000.0))
    }

    fn without_data(name: &str) -> Metric {
        error_metric(name, (0.0, 10.0), (0.0, 10.0))
    }

    #[test]
    fn all_passing_is_successful() {
        let latency = Metric::new(
            "latency",
            MetricData::Latency {
                canary: histogram(&[0.0, 0.0, 300.0, 1500.0]),
                baseline: histogram(&[0.0, 0.0, 310.0, 1490.0]),
            },
        );
        let judgement = judge(&[passing("errors"), latency], &ScoreThresholds::default());
        assert_eq!(
            (judgement.score, judgement.verdict),
            (100.0, Verdict::Successful)
        );
        assert_eq!(
            judgement.summary,
            "score 100 (pass at 95, marginal at 75): Successful"
        );
        assert_eq!(judgement.metrics.len(), 2);
    }

    #[test]
    fn the_score_is_the_weighted_share_of_passing_metrics() {
        let heavy = Metric {
            weight: 3.0,
            ..passing("availability")
        };
        let judgement = judge(
            &[heavy.clone(), failing("errors")],
            &ScoreThresholds::default(),
        );
        assert_eq!(
            (judgement.score, judgement.verdict),
            (75.0, Verdict::Inconclusive)
        );
        assert_eq!(
            judgement.summary,
            "score 75 (pass at 95, marginal at 75): Inconclusive; failing: errors (High)"
        );
        // One metric without data of three: not half, so it only leaves the score.
        let judgement = judge(
            &[heavy, failing("errors"), without_data("quiet")],
            &ScoreThresholds::default(),
        );
        assert_eq!(judgement.score, 75.0);
        assert!(
            judgement.summary.ends_with("; 1 without data"),
            "{}",
            judgement.summary
        );
        let judgement = judge(&[passing("a"), failing("b")], &ScoreThresholds::default());
        assert_eq!(
            (judgement.score, judgement.verdict),
            (50.0, Verdict::Failed)
        );
    }

    #[test]
    fn a_failing_critical_metric_fails_whatever_the_score() {
        let critical = Metric {
            critical: true,
            ..failing("errors")
        };
        let mut metrics: Vec<Metric> = (0..30).map(|i| passing(&format!("m{i}"))).collect();
        metrics.push(critical.clone());
        let judgement = judge(&metrics, &ScoreThresholds::default());
        assert!(judgement.score > 96.0);
        assert_eq!(judgement.verdict, Verdict::Failed);
        assert!(
            judgement
                .summary
                .starts_with("critical metric errors is High: Failed")
        );
        // Even when the others have no data.
        let judgement = judge(&[critical, without_data("q")], &ScoreThresholds::default());
        assert_eq!((judgement.score, judgement.verdict), (0.0, Verdict::Failed));
    }

    #[test]
    fn half_the_metrics_without_data_is_inconclusive_with_score_zero() {
        let judgement = judge(
            &[passing("a"), without_data("b")],
            &ScoreThresholds::default(),
        );
        assert_eq!(
            (judgement.score, judgement.verdict),
            (0.0, Verdict::Inconclusive)
        );
        assert_eq!(
            judgement.summary,
            "not enough data: 1 of 2 metrics had too few samples or unusable data, score 0: Inconclusive"
        );
        let judgement = judge(&[], &ScoreThresholds::default());
        assert_eq!(
            (judgement.score, judgement.verdict),
            (0.0, Verdict::Inconclusive)
        );
        // Weights that cannot count leave nothing to score.
        let weightless = Metric {
            weight: f64::NAN,
            ..failing("a")
        };
        let judgement = judge(&[weightless], &ScoreThresholds::default());
        assert_eq!(
            (judgement.score, judgement.verdict),
            (0.0, Verdict::Inconclusive)
        );
    }
}
