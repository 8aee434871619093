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

use sluice_api::analysis::ChangeDirection;
use statrs::distribution::{ContinuousCDF, Normal};

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

// ---------------------------------------------------------------------------------------------
// Statistical tests
// ---------------------------------------------------------------------------------------------

/// P-values of one comparison; "greater" means the canary's values are higher than the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PValues {
    /// Evidence of a change either way.
    pub two_sided: f64,
    /// Evidence that the canary is higher.
    pub greater: f64,
    /// Evidence that the canary is lower.
    pub less: f64,
}

impl PValues {
    /// No evidence either way: what a degenerate statistic (zero variance) gives.
    pub const NO_EVIDENCE: Self = Self {
        two_sided: 1.0,
        greater: 1.0,
        less: 1.0,
    };

    /// From a standard-normal statistic, positive when the canary is higher.
    fn from_z(z: f64) -> Self {
        if z.is_nan() {
            return Self::NO_EVIDENCE;
        }
        let normal = Normal::standard();
        Self {
            two_sided: (2.0 * normal.sf(z.abs())).min(1.0),
            greater: normal.sf(z),
            less: normal.cdf(z),
        }
    }
}

/// Bad and all events of one version over the window, as `increase()` returns them (may be fractional).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventCounts {
    /// Bad events, e.g. 5xx responses.
    pub errors: f64,
    /// All events.
    pub total: f64,
}

impl EventCounts {
    /// Counts of bad and all events.
    pub fn new(errors: f64, total: f64) -> Self {
        Self { errors, total }
    }

    /// `(errors, total)` when they can be compared: finite, not negative, some events. Errors are
    /// capped at the total because `increase()` extrapolates each series on its own and can
    /// overshoot by a little.
    fn usable(self) -> Option<(f64, f64)> {
        let finite = self.errors.is_finite() && self.total.is_finite();
        (finite && self.errors >= 0.0 && self.total > 0.0)
            .then(|| (self.errors.min(self.total), self.total))
    }
}

/// A two-proportion z-test of the canary's error ratio against the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProportionTest {
    /// The canary's errors over its total.
    pub canary_ratio: f64,
    /// The baseline's errors over its total.
    pub baseline_ratio: f64,
    /// Positive when the canary's ratio is higher.
    pub z: f64,
    /// P-values of the difference.
    pub p: PValues,
}

/// Two-proportion z-test with the pooled proportion. `None` when either version's counts are
/// unusable (NaN, infinite, negative, or no events).
///
/// When the pooled proportion is 0 or 1 both versions had exactly the same ratio (no errors at
/// all, or nothing but errors), so there is no difference to find: z = 0 and every p-value is 1.
pub fn two_proportion_test(
    canary_errors: f64,
    canary_total: f64,
    baseline_errors: f64,
    baseline_total: f64,
) -> Option<ProportionTest> {
    let (canary_errors, canary_total) = EventCounts::new(canary_errors, canary_total).usable()?;
    let (baseline_errors, baseline_total) =
        EventCounts::new(baseline_errors, baseline_total).usable()?;
    let canary_ratio = canary_errors / canary_total;
    let baseline_ratio = baseline_errors / baseline_total;
    let pooled = (canary_errors + baseline_errors) / (canary_total + baseline_total);
    let variance = pooled * (1.0 - pooled) * (1.0 / canary_total + 1.0 / baseline_total);
    let (z, p) = if variance.is_finite() && variance > 0.0 {
        let z = (canary_ratio - baseline_ratio) / variance.sqrt();
        (z, PValues::from_z(z))
    } else {
        (0.0, PValues::NO_EVIDENCE)
    };
    Some(ProportionTest {
        canary_ratio,
        baseline_ratio,
        z,
        p,
    })
}

/// One bin of a latency histogram: the samples above the previous bin's bound and at most `le`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    /// Upper bound, inclusive; `f64::INFINITY` for the last bucket.
    pub le: f64,
    /// Samples in this bin alone (not cumulative); never negative.
    pub count: f64,
}

/// A latency histogram with per-bin counts, sorted by upper bound.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    bins: Vec<Bin>,
}

impl Histogram {
    /// From Prometheus' `sum by (le) (increase(..._bucket[w]))`: `(le, cumulative count)` pairs in
    /// any order. Pairs with a NaN or `-Inf` bound, or a non-finite count, are dropped; repeated
    /// bounds keep the larger count. Each bin is the rise of the running maximum of the cumulative
    /// counts, so a bucket that dips below the one before it (its counter reset or was extrapolated
    /// differently) adds 0 instead of a negative count.
    pub fn from_cumulative(buckets: &[(f64, f64)]) -> Self {
        let mut cumulative: Vec<(f64, f64)> = buckets
            .iter()
            .copied()
            .filter(|&(le, count)| !le.is_nan() && le != f64::NEG_INFINITY && count.is_finite())
            .map(|(le, count)| (le, count.max(0.0)))
            .collect();
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        cumulative.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = earlier.1.max(later.1);
            }
            same
        });
        let mut highest = 0.0_f64;
        let bins = cumulative
            .into_iter()
            .map(|(le, count)| {
                let bin = Bin {
                    le,
                    count: (count - highest).max(0.0),
                };
                highest = highest.max(count);
                bin
            })
            .collect();
        Self { bins }
    }

    /// The bins, sorted by upper bound.
    pub fn bins(&self) -> &[Bin] {
        &self.bins
    }

    /// Number of samples.
    pub fn total(&self) -> f64 {
        self.bins.iter().map(|bin| bin.count).sum()
    }

    /// Lower bound of bin `index`: the previous bound, or 0 below the first (latencies are not
    /// negative).
    fn lower_bound(&self, index: usize) -> f64 {
        match index.checked_sub(1).and_then(|i| self.bins.get(i)) {
            Some(previous) => previous.le,
            None => self.bins.get(index).map_or(0.0, |bin| bin.le.min(0.0)),
        }
    }

    /// Estimated mean: each sample counted at its bin's midpoint, and samples in the `+Inf` bin
    /// at the last finite bound (an underestimate, but the only bound known). `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        let total = self.total();
        if !(total.is_finite() && total > 0.0) {
            return None;
        }
        let weighted: f64 = self
            .bins
            .iter()
            .enumerate()
            .map(|(index, bin)| {
                let lower = self.lower_bound(index);
                let midpoint = if bin.le.is_finite() {
                    (lower + bin.le) / 2.0
                } else {
                    lower
                };
                bin.count * midpoint
            })
            .sum();
        let mean = weighted / total;
        mean.is_finite().then_some(mean)
    }

    /// Estimated `q`-quantile (0 to 1), interpolated linearly within its bin as Prometheus'
    /// `histogram_quantile` does; in the `+Inf` bin it is the last finite bound. `None` when empty
    /// or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if !((0.0..=1.0).contains(&q) && total.is_finite() && total > 0.0) {
            return None;
        }
        let rank = q * total;
        let mut below = 0.0;
        for (index, bin) in self.bins.iter().enumerate() {
            if bin.count > 0.0 && below + bin.count >= rank {
                let lower = self.lower_bound(index);
                if !bin.le.is_finite() {
                    return Some(lower);
                }
                let within = ((rank - below) / bin.count).clamp(0.0, 1.0);
                return Some(lower + (bin.le - lower) * within);
            }
            below += bin.count;
        }
        None
    }

    /// Per-bin counts on the given finite bounds (sorted), plus one last bin for everything above
    /// the highest: both versions' histograms coarsened onto the bounds they share.
    fn counts_on(&self, bounds: &[f64]) -> Vec<f64> {
        let mut counts = vec![0.0; bounds.len() + 1];
        for bin in &self.bins {
            let index = bounds.partition_point(|&bound| bound < bin.le);
            if let Some(slot) = counts.get_mut(index) {
                *slot += bin.count;
            }
        }
        counts
    }
}

/// Both histograms' counts on the finite bounds they share (a version may have changed its
/// buckets), with one bin above the highest. `None` when they share no finite bound.
fn aligned_counts(canary: &Histogram, baseline: &Histogram) -> Option<(Vec<f64>, Vec<f64>)> {
    let shared: Vec<f64> = canary
        .bins
        .iter()
        .map(|bin| bin.le)
        .filter(|le| le.is_finite() && baseline.bins.iter().any(|other| other.le == *le))
        .collect();
    if shared.is_empty() {
        return None;
    }
    Some((canary.counts_on(&shared), baseline.counts_on(&shared)))
}

/// A Mann-Whitney U test of the canary's samples against the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankTest {
    /// The canary's U: (canary, baseline) pairs where the canary's sample is higher, ties counting half.
    pub u: f64,
    /// Positive when the canary tends to be higher.
    pub z: f64,
    /// P-values; `greater` is "the canary is stochastically greater".
    pub p: PValues,
}

/// Mann-Whitney U test on binned samples: `canary[k]` and `baseline[k]` are the counts in bin `k`,
/// bins in increasing order, and all samples in one bin are ties (mid-ranks). Uses the normal
/// approximation with the tie correction and no continuity correction (the judge needs at least
/// `min_sample_size` samples, where it no longer matters). Negative or non-finite counts count as
/// 0. `None` when the slices differ in length or either version has no samples.
pub fn mann_whitney_binned(canary: &[f64], baseline: &[f64]) -> Option<RankTest> {
    if canary.len() != baseline.len() {
        return None;
    }
    let clean = |count: f64| {
        if count.is_finite() && count > 0.0 {
            count
        } else {
            0.0
        }
    };
    let (mut canary_below, mut baseline_below) = (0.0, 0.0);
    // Pairs where the canary's sample is higher, and where the baseline's is. Counting them apart
    // (rather than summing ranks) works for fractional counts and makes swapping the versions
    // negate the statistic exactly.
    let (mut canary_higher, mut baseline_higher) = (0.0, 0.0);
    let mut ties = 0.0;
    for (&canary_count, &baseline_count) in canary.iter().zip(baseline) {
        let (canary_count, baseline_count) = (clean(canary_count), clean(baseline_count));
        canary_higher += canary_count * baseline_below;
        baseline_higher += baseline_count * canary_below;
        let tied = canary_count + baseline_count;
        ties += tied * tied * tied - tied;
        canary_below += canary_count;
        baseline_below += baseline_count;
    }
    let (n_canary, n_baseline) = (canary_below, baseline_below);
    if !(n_canary > 0.0 && n_baseline > 0.0) {
        return None;
    }
    let n = n_canary + n_baseline;
    // U1 - U2, so U1 - n1·n2/2 is half of it.
    let difference = canary_higher - baseline_higher;
    // U lies in [0, n1·n2]; with counts near a million the subtraction above can land a hair
    // outside it in floating point.
    let u = (n_canary * n_baseline / 2.0 + difference / 2.0).clamp(0.0, n_canary * n_baseline);
    let tie_share = if n > 1.0 { ties / (n * (n - 1.0)) } else { 0.0 };
    let variance = n_canary * n_baseline / 12.0 * ((n + 1.0) - tie_share);
    let (z, p) = if variance.is_finite() && variance > 0.0 {
        let z = difference / 2.0 / variance.sqrt();
        (z, PValues::from_z(z))
    } else {
        // Every sample in one bin: nothing to tell apart.
        (0.0, PValues::NO_EVIDENCE)
    };
    Some(RankTest { u, z, p })
}

// ---------------------------------------------------------------------------------------------
// One metric
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Score across metrics
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

fn finite_or(value: f64, default: f64) -> f64 {
    if value.is_finite() { value } else { default }
}

/// `value` with `digits` significant digits, trailing zeros trimmed.
fn significant(value: f64, digits: i32) -> String {
    if !value.is_finite() || value == 0.0 {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from((digits - 1 - magnitude).clamp(0, 15)).unwrap_or(0);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A relative change as a percentage with 3 significant digits; `{:+}` adds the sign.
struct RoundedPercent(f64);

impl std::fmt::Display for RoundedPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = self.0 * 100.0;
        if f.sign_plus() && percent >= 0.0 {
            f.write_str("+")?;
        }
        write!(f, "{}%", significant(percent, 3))
    }
}

/// A count, fractional ones rounded.
fn count(value: f64) -> String {
    format!("{value:.0}")
}

/// `p=…`, small values in scientific notation; 0 is what the normal tail underflows to.
fn p_text(p: f64) -> String {
    if p == 0.0 {
        "p<1e-300".to_string()
    } else if p < 0.001 {
        format!("p={p:.0e}")
    } else {
        format!("p={}", significant(p, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Prometheus' default bucket bounds, in seconds.
    const BOUNDS: [f64; 12] = [
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        f64::INFINITY,
    ];

    /// A histogram as Prometheus would return it: cumulative, highest bound first.
    fn prometheus(bounds: &[f64], counts: &[f64]) -> Vec<(f64, f64)> {
        let mut running = 0.0;
        let mut cumulative: Vec<(f64, f64)> = bounds
            .iter()
            .zip(counts)
            .map(|(&le, &count)| {
                running += count;
                (le, running)
            })
            .collect();
        cumulative.reverse();
        cumulative
    }

    fn histogram(counts: &[f64]) -> Histogram {
        Histogram::from_cumulative(&prometheus(&BOUNDS, counts))
    }

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

    fn close(actual: f64, expected: f64, within: f64) -> bool {
        (actual - expected).abs() <= within
    }

    #[test]
    fn two_proportion_test_matches_a_hand_computation() {
        // pooled 102/4000; se = sqrt(0.0255 · 0.9745 · 2/2000); z = 0.049 / se
        let test = two_proportion_test(100.0, 2000.0, 2.0, 2000.0).expect("usable counts");
        assert!(close(test.z, 9.829_582, 1e-5), "{test:?}");
        assert!(close(test.p.greater, 4.198e-23, 1e-25), "{test:?}");
        assert!(test.p.less > 0.999_999);
        assert!(close(test.p.two_sided, 2.0 * test.p.greater, 1e-30));
    }

    #[test]
    fn no_variance_in_the_pooled_ratio_is_no_evidence() {
        for (canary, baseline) in [
            ((0.0, 1000.0), (0.0, 500.0)),
            ((300.0, 300.0), (50.0, 50.0)),
        ] {
            let test = two_proportion_test(canary.0, canary.1, baseline.0, baseline.1)
                .expect("usable counts");
            assert_eq!((test.z, test.p), (0.0, PValues::NO_EVIDENCE));
        }
    }

    #[test]
    fn unusable_counts_give_no_test() {
        assert_eq!(two_proportion_test(f64::NAN, 100.0, 1.0, 100.0), None);
        assert_eq!(two_proportion_test(1.0, 0.0, 1.0, 100.0), None);
        assert_eq!(two_proportion_test(-1.0, 100.0, 1.0, 100.0), None);
        assert_eq!(two_proportion_test(1.0, 100.0, 1.0, f64::INFINITY), None);
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
    fn errors_above_the_total_are_capped() {
        let test = two_proportion_test(1001.0, 1000.0, 0.0, 1000.0).expect("usable counts");
        assert_eq!(test.canary_ratio, 1.0);
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
    fn cumulative_buckets_become_sorted_bin_counts() {
        // Unsorted, and the 0.25 bucket dips below the 0.1 one.
        let histogram = Histogram::from_cumulative(&[
            (f64::INFINITY, 10.0),
            (0.1, 4.0),
            (0.5, 9.0),
            (0.25, 3.0),
        ]);
        let bins: Vec<(f64, f64)> = histogram.bins().iter().map(|b| (b.le, b.count)).collect();
        assert_eq!(
            bins,
            [(0.1, 4.0), (0.25, 0.0), (0.5, 5.0), (f64::INFINITY, 1.0)]
        );
        assert_eq!(histogram.total(), 10.0);
        // Midpoints 0.05 and 0.375; the +Inf bin at 0.5.
        assert!(close(histogram.mean().expect("samples"), 0.2575, 1e-12));
        assert!(close(histogram.quantile(0.5).expect("samples"), 0.3, 1e-12));
        assert_eq!(histogram.quantile(1.0), Some(0.5));
    }

    #[test]
    fn unusable_buckets_are_dropped() {
        let histogram = Histogram::from_cumulative(&[
            (f64::NAN, 5.0),
            (0.1, f64::NAN),
            (0.2, -3.0),
            (f64::NEG_INFINITY, 1.0),
            (0.5, 7.0),
            (0.5, 6.0),
        ]);
        let bins: Vec<(f64, f64)> = histogram.bins().iter().map(|b| (b.le, b.count)).collect();
        assert_eq!(bins, [(0.2, 0.0), (0.5, 7.0)]);
        assert_eq!(Histogram::from_cumulative(&[]).mean(), None);
        assert_eq!(Histogram::from_cumulative(&[]).quantile(0.5), None);
        assert_eq!(histogram.quantile(f64::NAN), None);
    }

    #[test]
    fn mann_whitney_matches_hand_computations() {
        // Canary {2, 4} against baseline {1, 3}: U = 3, var = 2·2/12·5, z = 1/sqrt(5/3).
        let test = mann_whitney_binned(&[0.0, 1.0, 0.0, 1.0], &[1.0, 0.0, 1.0, 0.0])
            .expect("samples in both");
        assert_eq!(test.u, 3.0);
        assert!(close(test.z, 0.774_596_7, 1e-6));
        assert!(close(test.p.two_sided, 0.438_578_0, 1e-6));
        // Two ties of two: U = 4, tie term 12/(4·3) = 1, var = 4/12·(5-1), z = sqrt(3).
        let test = mann_whitney_binned(&[0.0, 2.0], &[2.0, 0.0]).expect("samples in both");
        assert_eq!(test.u, 4.0);
        assert!(close(test.z, 3.0_f64.sqrt(), 1e-12));
        assert!(close(test.p.two_sided, 0.083_264_5, 1e-6));
        assert!(close(test.p.greater, 0.041_632_3, 1e-6));
        // Everything in one bin: nothing to tell apart.
        let test = mann_whitney_binned(&[0.0, 5.0], &[0.0, 9.0]).expect("samples in both");
        assert_eq!((test.u, test.z, test.p), (22.5, 0.0, PValues::NO_EVIDENCE));
        assert_eq!(mann_whitney_binned(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(mann_whitney_binned(&[0.0, 0.0], &[1.0, 2.0]), None);
        assert_eq!(mann_whitney_binned(&[], &[]), None);
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

    fn flipped(outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::High => Outcome::Low,
            Outcome::Low => Outcome::High,
            other => other,
        }
    }

    fn bin_count() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), 0.0..10.0, 0.0..1e6]
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
        fn mann_whitney_p_values_are_probabilities(
            bins in prop::collection::vec((bin_count(), bin_count()), 0..16)
        ) {
            let (canary, baseline): (Vec<f64>, Vec<f64>) = bins.into_iter().unzip();
            if let Some(test) = mann_whitney_binned(&canary, &baseline) {
                for p in [test.p.two_sided, test.p.greater, test.p.less] {
                    prop_assert!((0.0..=1.0).contains(&p), "{test:?}");
                }
                prop_assert!(test.z.is_finite() && test.u >= -1e-6, "{test:?}");
            }
        }

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
