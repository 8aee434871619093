//! The baseline judge's statistics: is the canary worse than the stable version it would replace?
//!
//! Each judged metric is measured for both versions over the same window and compared with a test
//! that fits its kind: error ratios with a two-proportion z-test, latency histograms with a
//! Mann-Whitney U test on the binned samples. A metric counts against the canary only when the
//! change is statistically significant in its bad direction *and* larger than its tolerance, so a
//! large fleet's tiny but "significant" wobble does not fail a release. The weighted share of
//! passing metrics is the score.
//!
//! Pure arithmetic: no I/O, no clock. Unusable input (NaN, negative or zero counts, empty
//! histograms) gives [`Outcome::NoData`], never a panic.

mod classify;
mod format;
mod score;
mod stats;
#[cfg(test)]
mod tests;

pub use classify::{Classification, MetricPolicy, Outcome, classify_error_ratio, classify_latency};
pub use score::{Judgement, Metric, MetricData, MetricJudgement, ScoreThresholds, Verdict, judge};
pub use stats::{
    Bin, EventCounts, Histogram, PValues, ProportionTest, RankTest, mann_whitney_binned,
    two_proportion_test,
};

/// Relative change tolerated even when significant, unless a metric says otherwise.
pub const DEFAULT_TOLERANCE: f64 = 0.25;
/// Confidence level of the tests, unless a metric says otherwise.
pub const DEFAULT_CONFIDENCE_LEVEL: f64 = 0.98;
/// Fewest events (or samples) each version needs before a metric is judged.
pub const DEFAULT_MIN_SAMPLE_SIZE: f64 = 100.0;
/// A score at or above this is Successful.
pub const DEFAULT_PASS_SCORE: f64 = 95.0;
/// A score at or above this, but below the pass score, is Inconclusive.
pub const DEFAULT_MARGINAL_SCORE: f64 = 75.0;
