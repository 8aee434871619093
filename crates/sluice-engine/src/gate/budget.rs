//! Budget and burn-rate math (SRE workbook): the error budget an objective leaves, the budget
//! remaining and the burn rate a measured error ratio gives, and which multi-window burn-rate
//! pairs fire.

use sluice_api::gate::{BurnRateAlert, BurnRateStatus};

use super::Measurements;

/// The error budget as a fraction (`1 - objective/100`); `None` unless the objective is in `[0, 100)`.
pub fn error_budget(objective_percent: f64) -> Option<f64> {
    if !(0.0..100.0).contains(&objective_percent) {
        return None;
    }
    let budget = 1.0 - objective_percent / 100.0;
    (budget > 0.0).then_some(budget)
}

/// A measured error ratio made safe: NaN gives `None` (no events), the rest is clamped to `[0, 1]`
/// (a ratio cannot leave it; Prometheus counter resets can make it look as if it did).
pub fn sanitize_ratio(error_ratio: f64) -> Option<f64> {
    (!error_ratio.is_nan()).then(|| error_ratio.clamp(0.0, 1.0))
}

/// Budget left over the SLO window, in percent: `(1 - error_ratio / budget) * 100`, negative when
/// overspent. `None` for a NaN ratio or an objective outside `[0, 100)`.
pub fn budget_remaining_percent(error_ratio: f64, objective_percent: f64) -> Option<f64> {
    Some((1.0 - burn_rate(error_ratio, objective_percent)?) * 100.0)
}

/// Burn rate: `error_ratio / budget`; 1 spends exactly the budget over the SLO window. `None` for a
/// NaN ratio or an objective outside `[0, 100)`.
pub fn burn_rate(error_ratio: f64, objective_percent: f64) -> Option<f64> {
    Some(sanitize_ratio(error_ratio)? / error_budget(objective_percent)?)
}

/// Whether a burn-rate pair fires: both windows known and both strictly above `factor`.
pub fn pair_fires(long_burn_rate: Option<f64>, short_burn_rate: Option<f64>, factor: f64) -> bool {
    matches!((long_burn_rate, short_burn_rate), (Some(l), Some(s)) if l > factor && s > factor)
}

/// The burn rates of each configured pair from the measurements. A window missing or without events
/// has no burn rate, and a pair without both rates does not fire.
pub fn evaluate_burn_rates(
    alerts: &[BurnRateAlert],
    objective_percent: f64,
    measurements: &Measurements,
) -> Vec<BurnRateStatus> {
    let rate = |window: &str| {
        measurements
            .get(window)
            .and_then(|ratio| burn_rate(*ratio, objective_percent))
    };
    alerts
        .iter()
        .map(|alert| {
            let long = rate(&alert.long_window);
            let short = rate(&alert.short_window);
            BurnRateStatus {
                long_window: alert.long_window.clone(),
                short_window: alert.short_window.clone(),
                factor: alert.factor,
                long_burn_rate: long,
                short_burn_rate: short,
                firing: pair_fires(long, short, alert.factor),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::default_burn_rate_alerts;
    use crate::gate::tests::close;

    #[test]
    fn budget_examples_by_hand() {
        // 99.9%: budget 0.001. 0.0009 spends 90% of it, 0.00095 spends 95%.
        assert!(close(budget_remaining_percent(0.0009, 99.9), 10.0));
        assert!(close(budget_remaining_percent(0.00095, 99.9), 5.0));
        assert!(close(budget_remaining_percent(0.0, 99.9), 100.0));
        assert!(close(budget_remaining_percent(0.001, 99.9), 0.0));
        // Twice the budget: overspent by 100%.
        assert!(close(budget_remaining_percent(0.002, 99.9), -100.0));
        // 99%: budget 0.01; 0.0025 spends a quarter.
        assert!(close(budget_remaining_percent(0.0025, 99.0), 75.0));
    }

    #[test]
    fn burn_rate_examples_by_hand() {
        assert!(close(burn_rate(0.0144, 99.9), 14.4));
        assert!(close(burn_rate(0.001, 99.9), 1.0));
        assert!(close(burn_rate(0.06, 99.0), 6.0));
    }

    #[test]
    fn odd_inputs_do_not_panic_and_are_bounded() {
        assert_eq!(budget_remaining_percent(f64::NAN, 99.9), None);
        assert_eq!(burn_rate(f64::NAN, 99.9), None);
        // Negative ratios clamp to 0, ratios above 1 (or infinite) to 1.
        assert!(close(budget_remaining_percent(-0.5, 99.9), 100.0));
        assert!(close(burn_rate(7.0, 99.9), 1000.0));
        assert!(close(burn_rate(f64::INFINITY, 99.9), 1000.0));
        assert!(close(burn_rate(f64::NEG_INFINITY, 99.9), 0.0));
        // Objectives outside [0, 100) have no budget.
        for objective in [100.0, 120.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(error_budget(objective), None, "{objective}");
            assert_eq!(budget_remaining_percent(0.001, objective), None);
        }
    }

    #[test]
    fn a_pair_fires_only_when_both_windows_exceed_the_factor() {
        assert!(pair_fires(Some(15.0), Some(20.0), 14.4));
        assert!(!pair_fires(Some(15.0), Some(10.0), 14.4), "short recovered");
        assert!(!pair_fires(Some(10.0), Some(20.0), 14.4), "long not yet");
        assert!(!pair_fires(Some(14.4), Some(14.4), 14.4), "strictly above");
        assert!(!pair_fires(None, Some(20.0), 14.4));
        assert!(!pair_fires(Some(20.0), None, 14.4));

        let mut m = Measurements::new();
        m.insert("1h".into(), 0.015); // 15×
        m.insert("5m".into(), 0.02); // 20×
        m.insert("6h".into(), 0.007); // 7×
        m.insert("30m".into(), 0.005); // 5×
        let rates = evaluate_burn_rates(&default_burn_rate_alerts(), 99.9, &m);
        assert_eq!(rates.len(), 2);
        assert!(rates[0].firing);
        assert!(close(rates[0].long_burn_rate, 15.0));
        assert!(!rates[1].firing, "30m at 5× is below 6×");
    }
}
