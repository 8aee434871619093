//! The query plan: the windows a gate measures and the PromQL, one error ratio per window, that the
//! controller runs for it (from `events` queries, Sloth or Pyrra recording rules). The number of
//! queries depends on the gate's spec only, never on how many Rollouts it selects.

use sluice_api::gate::{ErrorBudgetGateSpec, ServiceLevelIndicator};

use super::WINDOW_PLACEHOLDER;

/// One error ratio the controller must measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatioQuery {
    /// The window, as written in the spec; the key of the result in [`Measurements`](super::Measurements).
    pub window: String,
    /// PromQL answering a single error ratio (bad / all events) over `window`.
    pub promql: String,
}

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

/// The queries of one evaluation, one per [`planned_windows`] entry. `Err` when the SLI sets none
/// (or more than one) of `events`, `sloth`, `pyrra`.
pub fn query_plan(spec: &ErrorBudgetGateSpec) -> Result<Vec<RatioQuery>, String> {
    planned_windows(spec)
        .into_iter()
        .map(|window| {
            let promql = error_ratio_query(&spec.sli, &spec.window, &window)?;
            Ok(RatioQuery { window, promql })
        })
        .collect()
}

/// PromQL for the error ratio over `window`.
///
/// - `events`: `(errorQuery) / (totalQuery)` with every `{{window}}` replaced by `window`.
/// - `sloth`: `slo:sli_error:ratio_rate<window>{sloth_service="…",sloth_slo="…"}`. Sloth records
///   5m, 30m, 1h, 2h, 6h, 1d, 3d and the SLO period; other windows return no data (gate Unknown).
/// - `pyrra`: `<metric>:burnrate<window>{slo="…"}` (Pyrra's burnrate rules hold the error ratio).
///   Pyrra records no burnrate over the SLO window itself: that one is `1 - pyrra_availability{slo}`,
///   which Pyrra writes only with `--generic-rules`, over the window of the Pyrra SLO.
///
/// Recording rules are wrapped in `max(...)` so that several series (a Pyrra grouping, a rule
/// duplicated by two Prometheus replicas) answer one number, the most pessimistic.
pub fn error_ratio_query(
    sli: &ServiceLevelIndicator,
    slo_window: &str,
    window: &str,
) -> Result<String, String> {
    match (&sli.events, &sli.sloth, &sli.pyrra) {
        (Some(events), None, None) => Ok(format!(
            "({}) / ({})",
            events.error_query.replace(WINDOW_PLACEHOLDER, window),
            events.total_query.replace(WINDOW_PLACEHOLDER, window)
        )),
        (None, Some(sloth), None) => Ok(format!(
            "max(slo:sli_error:ratio_rate{window}{{sloth_service=\"{}\",sloth_slo=\"{}\"}})",
            escape_label(&sloth.service),
            escape_label(&sloth.slo)
        )),
        (None, None, Some(pyrra)) if window == slo_window => Ok(format!(
            "1 - max(pyrra_availability{{slo=\"{}\"}})",
            escape_label(&pyrra.slo)
        )),
        (None, None, Some(pyrra)) => Ok(format!(
            "max({}:burnrate{window}{{slo=\"{}\"}})",
            pyrra.metric,
            escape_label(&pyrra.slo)
        )),
        _ => Err("sli must set exactly one of events, sloth or pyrra".to_owned()),
    }
}

/// A PromQL label value, quoted with `"`.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
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

    #[test]
    fn events_queries_substitute_the_window() {
        let plan = query_plan(&spec()).expect("plan");
        assert_eq!(plan.len(), 5);
        assert_eq!(plan[0].window, "28d");
        assert_eq!(
            plan[0].promql,
            "(sum(increase(http_requests_total{job=\"checkout\",code=~\"5..\"}[28d]))) / \
             (sum(increase(http_requests_total{job=\"checkout\"}[28d])))"
        );
        assert!(plan[2].promql.contains("[5m]"));
        assert!(plan.iter().all(|q| !q.promql.contains("{{window}}")));
    }

    #[test]
    fn sloth_and_pyrra_read_their_recording_rules() {
        let sloth = spec_json(
            serde_json::json!({"window": "30d", "sli": {"sloth": {"service": "checkout", "slo": "requests-availability"}}}),
        );
        let plan = query_plan(&sloth).expect("plan");
        assert_eq!(
            plan[0].promql,
            "max(slo:sli_error:ratio_rate30d{sloth_service=\"checkout\",sloth_slo=\"requests-availability\"})"
        );
        assert_eq!(
            plan[2].promql,
            "max(slo:sli_error:ratio_rate5m{sloth_service=\"checkout\",sloth_slo=\"requests-availability\"})"
        );

        let pyrra = spec_json(
            serde_json::json!({"sli": {"pyrra": {"slo": "checkout-\"x\"", "metric": "http_requests"}}}),
        );
        let plan = query_plan(&pyrra).expect("plan");
        assert_eq!(
            plan[0].promql,
            "1 - max(pyrra_availability{slo=\"checkout-\\\"x\\\"\"})"
        );
        assert_eq!(
            plan[1].promql,
            "max(http_requests:burnrate1h{slo=\"checkout-\\\"x\\\"\"})"
        );

        let neither = spec_json(serde_json::json!({"sli": {}}));
        assert!(query_plan(&neither).is_err());
    }
}
