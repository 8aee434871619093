//! The windows a gate measures: the error ratio of each is what an evaluation takes in (the PromQL
//! that measures them is `sluice-analysis`'s). Their number depends on the gate's spec only, never
//! on how many Rollouts it selects.

use sluice_api::gate::ErrorBudgetGateSpec;

/// The windows a gate measures: its SLO window first, then each distinct burn-rate window in the
/// order the alerts name them. Its length depends on the spec only, never on the Rollouts selected.
pub fn planned_windows(spec: &ErrorBudgetGateSpec) -> Vec<String> {
    let mut windows = vec![spec.window.clone()];
    for alert in &spec.burn_rate_alerts {
        for window in [&alert.long_window, &alert.short_window] {
            if !windows.contains(window) {
                windows.push(window.clone());
            }
        }
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::tests::{spec, spec_json};

    #[test]
    fn the_plan_is_the_slo_window_plus_each_distinct_burn_window() {
        assert_eq!(planned_windows(&spec()), ["28d", "1h", "5m", "6h", "30m"]);
        let shared = spec_json(serde_json::json!({"burnRateAlerts": [
            {"longWindow": "1h", "shortWindow": "5m", "factor": 14.4},
            {"longWindow": "6h", "shortWindow": "1h", "factor": 6.0},
            {"longWindow": "1h", "shortWindow": "5m", "factor": 10.0}
        ]}));
        assert_eq!(planned_windows(&shared), ["28d", "1h", "5m", "6h"]);
        let none = spec_json(serde_json::json!({"burnRateAlerts": []}));
        assert_eq!(planned_windows(&none), ["28d"]);
    }
}
