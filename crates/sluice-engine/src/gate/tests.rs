//! Fixtures shared by the gate's test modules: a gate spec (the API's defaults around a 99.9%
//! `events` SLI over 28 days), times, and measurements that leave a chosen share of the budget.

use k8s_openapi::jiff::Timestamp;
use sluice_api::gate::ErrorBudgetGateSpec;

use super::{Measurements, planned_windows};

pub(super) fn spec_json(extra: serde_json::Value) -> ErrorBudgetGateSpec {
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

pub(super) fn spec() -> ErrorBudgetGateSpec {
    spec_json(serde_json::json!({}))
}

pub(super) fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).expect("time")
}

/// The SLO-window error ratio that leaves `percent` of a 99.9% budget.
pub(super) fn ratio_for_budget(percent: f64) -> f64 {
    (1.0 - percent / 100.0) * 0.001
}

/// Measurements with the SLO window at `budget` percent left and every burn window at `burn`×.
pub(super) fn measured(budget: f64, burn: f64) -> Measurements {
    let mut m = Measurements::new();
    for window in planned_windows(&spec()) {
        m.insert(window, burn * 0.001);
    }
    m.insert("28d".to_owned(), ratio_for_budget(budget));
    m
}

pub(super) fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6)
}
