//! Fixtures shared by the judge's test modules: Prometheus' default latency buckets, histograms
//! built from per-bucket counts as Prometheus would return them, and approximate comparison.

use super::Histogram;

/// Prometheus' default bucket bounds, in seconds.
pub(super) const BOUNDS: [f64; 12] = [
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
pub(super) fn prometheus(bounds: &[f64], counts: &[f64]) -> Vec<(f64, f64)> {
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

pub(super) fn histogram(counts: &[f64]) -> Histogram {
    Histogram::from_cumulative(&prometheus(&BOUNDS, counts))
}

pub(super) fn close(actual: f64, expected: f64, within: f64) -> bool {
    (actual - expected).abs() <= within
}
