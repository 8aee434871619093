//! The statistical tests: a two-proportion z-test for error ratios, and a Mann-Whitney U test for
//! latency histograms (binned samples, ties at mid-rank), with the histogram type that turns
//! Prometheus' cumulative buckets into per-bin counts.

use statrs::distribution::{ContinuousCDF, Normal};

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
    pub(super) fn usable(self) -> Option<(f64, f64)> {
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
pub(super) fn aligned_counts(
    canary: &Histogram,
    baseline: &Histogram,
) -> Option<(Vec<f64>, Vec<f64>)> {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::judge::tests::close;

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
    fn errors_above_the_total_are_capped() {
        let test = two_proportion_test(1001.0, 1000.0, 0.0, 1000.0).expect("usable counts");
        assert_eq!(test.canary_ratio, 1.0);
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

    fn bin_count() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), 0.0..10.0, 0.0..1e6]
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
    }
}
