//! Requests, errors and latencies for one version, without randomness: fractional requests and
//! errors carry over from tick to tick, so over any stretch the counts are exact to within one, and
//! latencies walk the quantiles of a log-normal distribution in a low-discrepancy order.

use crate::version::Behaviour;

/// What one version served in one tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickRequests {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests answered 500.
    pub errors: u64,
    /// The latency of each request, in seconds.
    pub latencies_seconds: Vec<f64>,
}

/// The carried-over fractions of one version's load.
#[derive(Clone, Debug, Default)]
pub struct VersionLoad {
    pending_requests: f64,
    pending_errors: f64,
    served: u64,
}

/// Guards `floor` against sums like 2.9999999999 that are 3 in exact arithmetic.
pub(crate) const EPSILON: f64 = 1e-9;

impl VersionLoad {
    /// Serves `requests` (fractional: the rest carries over to the next tick) as `behaviour` says.
    pub fn advance(&mut self, requests: f64, behaviour: &Behaviour) -> TickRequests {
        self.pending_requests += requests.max(0.0);
        let count = (self.pending_requests + EPSILON).floor();
        self.pending_requests -= count;
        self.pending_errors += count * behaviour.error_rate;
        let errors = (self.pending_errors + EPSILON).floor().min(count);
        self.pending_errors -= errors;
        let count = count as u64;
        let latencies_seconds = (self.served..self.served + count)
            .map(|n| latency_seconds(behaviour, n))
            .collect();
        self.served += count;
        let errors = errors as u64;
        TickRequests {
            ok: count - errors,
            errors,
            latencies_seconds,
        }
    }
}

/// The latency of a version's `n`th request: the median times `exp(spread × z)`, where `z` walks the
/// standard normal's quantiles in golden-ratio steps, so any run of requests covers them evenly.
pub fn latency_seconds(behaviour: &Behaviour, n: u64) -> f64 {
    const GOLDEN_RATIO_FRACTION: f64 = 0.618_033_988_749_894_9;
    let quantile = (0.5 + n as f64 * GOLDEN_RATIO_FRACTION).fract();
    let z = standard_normal_quantile(quantile.clamp(1e-6, 1.0 - 1e-6));
    behaviour.latency_ms / 1000.0 * (behaviour.latency_spread * z).exp()
}

/// The inverse of the standard normal CDF, by Acklam's rational approximation (relative error
/// below 1.2e-9), for `p` in (0, 1).
pub fn standard_normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaviour(error_rate: f64, latency_ms: f64, latency_spread: f64) -> Behaviour {
        Behaviour {
            error_rate,
            latency_ms,
            latency_spread,
        }
    }

    #[test]
    fn fractional_requests_and_errors_carry_over() {
        let mut load = VersionLoad::default();
        let b = behaviour(0.05, 50.0, 0.3);
        let (mut ok, mut errors) = (0, 0);
        // 3.3 requests a tick for 1000 ticks: 3300 requests, 165 errors, exactly.
        for _ in 0..1000 {
            let tick = load.advance(3.3, &b);
            assert!(tick.ok + tick.errors <= 4);
            assert_eq!(tick.latencies_seconds.len() as u64, tick.ok + tick.errors);
            ok += tick.ok;
            errors += tick.errors;
        }
        assert_eq!((ok + errors, errors), (3300, 165));
    }

    #[test]
    fn every_request_fails_at_error_rate_one() {
        let mut load = VersionLoad::default();
        let tick = load.advance(10.0, &behaviour(1.0, 50.0, 0.3));
        assert_eq!((tick.ok, tick.errors), (0, 10));
    }

    #[test]
    fn latencies_follow_a_log_normal_around_the_median() {
        let b = behaviour(0.0, 100.0, 0.3);
        let mut latencies: Vec<f64> = (0..10_000).map(|n| latency_seconds(&b, n)).collect();
        latencies.sort_by(f64::total_cmp);
        let quantile = |q: f64| latencies[(q * latencies.len() as f64) as usize];
        assert!((quantile(0.5) - 0.1).abs() < 0.001);
        // The 84th percentile of a log-normal is the median times exp(σ).
        assert!((quantile(0.8413) / 0.1 - 0.3f64.exp()).abs() < 0.01);
        assert_eq!(latency_seconds(&behaviour(0.0, 100.0, 0.0), 7), 0.1);
    }

    #[test]
    fn normal_quantiles_are_accurate() {
        for (p, z) in [
            (0.5, 0.0),
            (0.841_344_746, 1.0),
            (0.977_249_868, 2.0),
            (0.001, -3.090_232_306),
        ] {
            assert!((standard_normal_quantile(p) - z).abs() < 1e-6, "{p}");
        }
    }
}
