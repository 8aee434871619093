//! An ErrorBudgetGate's queries: the PromQL, one error ratio per window the engine's gate logic
//! needs ([`planned_windows`]), from `events` queries, Sloth or Pyrra recording rules. The number of
//! queries depends on the gate's spec only, never on how many Rollouts it selects.

use sluice_api::gate::{ErrorBudgetGateSpec, ServiceLevelIndicator, SliSource};
use sluice_engine::gate::{WINDOW_PLACEHOLDER, planned_windows};

/// One error ratio the controller must measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatioQuery {
    /// The window, as written in the spec; the key of the result in the engine's
    /// [`Measurements`](sluice_engine::gate::Measurements).
    pub window: String,
    /// PromQL answering a single error ratio (bad / all events) over `window`.
    pub promql: String,
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
    Ok(match sli.source()? {
        SliSource::Events(events) => format!(
            "({}) / ({})",
            events.error_query.replace(WINDOW_PLACEHOLDER, window),
            events.total_query.replace(WINDOW_PLACEHOLDER, window)
        ),
        SliSource::Sloth(sloth) => format!(
            "max(slo:sli_error:ratio_rate{window}{{sloth_service=\"{}\",sloth_slo=\"{}\"}})",
            escape_label(&sloth.service),
            escape_label(&sloth.slo)
        ),
        SliSource::Pyrra(pyrra) if window == slo_window => format!(
            "1 - max(pyrra_availability{{slo=\"{}\"}})",
            escape_label(&pyrra.slo)
        ),
        SliSource::Pyrra(pyrra) => format!(
            "max({}:burnrate{window}{{slo=\"{}\"}})",
            pyrra.metric,
            escape_label(&pyrra.slo)
        ),
    })
}

/// A PromQL label value, quoted with `"`.
fn escape_label(value: &str) -> String {
    crate::promql::escape_double_quoted(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::gate::ErrorBudgetGateSpec;

    fn spec_json(extra: serde_json::Value) -> ErrorBudgetGateSpec {
        let mut base = serde_json::json!({
            "selector": {"matchLabels": {"app": "checkout"}},
            "objective": 99.9,
            "window": "28d",
            "sli": {"events": {
                "errorQuery": "sum(increase(http_requests_total{job=\"checkout\",code=~\"5..\"}[{{window}}]))",
                "totalQuery": "sum(increase(http_requests_total{job=\"checkout\"}[{{window}}]))"
            }},
            "prometheus": {"address": "http://prometheus:9090"}
        });
        if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        serde_json::from_value(base).expect("spec")
    }

    fn spec() -> ErrorBudgetGateSpec {
        spec_json(serde_json::json!({}))
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
