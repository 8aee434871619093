//! The ErrorBudgetGate reconciler: run the gate's fixed set of ratio queries (one per window,
//! however many Rollouts it selects) → sluice-engine's gate evaluation → status, Events, metrics →
//! look again after `evaluationInterval`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_analysis::QueryResult;
use sluice_api::ErrorBudgetGate;
use sluice_engine::gate::{self, Measurements};
use tracing::{info, instrument, warn};

use crate::error::Error;
use crate::metrics::GateLabels;
use crate::{Context, FIELD_MANAGER};

pub fn error_policy(gate: Arc<ErrorBudgetGate>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = gate.namespace().unwrap_or_default(), gate = gate.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// The error ratios of every planned window, or why they could not be had.
async fn measure(
    gate: &ErrorBudgetGate,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<Measurements, String>, Error> {
    let secrets = crate::analysis_run::SecretsIn {
        store: ctx.caches.secrets.as_ref(),
        namespace,
    };
    let connection = match crate::analysis_run::connection(
        &gate.spec.prometheus,
        secrets,
        &ctx.address_policy,
    ) {
        Ok(c) => c,
        Err(problem) => return Ok(Err(problem)),
    };
    let plan = match sluice_analysis::slo::query_plan(&gate.spec) {
        Ok(plan) => plan,
        Err(problem) => return Ok(Err(problem)),
    };
    let mut measurements = BTreeMap::new();
    let labels = GateLabels {
        namespace: namespace.to_owned(),
        gate: gate.name_any(),
    };
    for query in plan {
        ctx.metrics.gate_queries.get_or_create(&labels).inc();
        let ratio = match sluice_analysis::prometheus::query(&connection, &query.promql).await {
            // No series: no events in that window (NaN is how the engine reads "no events").
            Ok(QueryResult::Vector(values)) => values.first().copied().unwrap_or(f64::NAN),
            Ok(QueryResult::Scalar(value)) => value,
            // Prometheus answers numbers; JSON comes only from web metrics.
            Ok(QueryResult::Matrix(_) | QueryResult::Json(_)) => {
                return Ok(Err(format!(
                    "the query for window {} answered a range vector; it must answer one number",
                    query.window
                )));
            }
            Err(err) => return Ok(Err(err.to_string())),
        };
        measurements.insert(query.window, ratio);
    }
    Ok(Ok(measurements))
}

#[instrument(skip_all, fields(namespace = gate.namespace().unwrap_or_default(), gate = gate.name_any()))]
pub async fn reconcile(gate: Arc<ErrorBudgetGate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = gate
        .namespace()
        .ok_or_else(|| Error::NoNamespace(gate.name_any()))?;
    if gate.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Our own status patch wakes this reconciler too: evaluate only when due or when the spec changed.
    let now = Timestamp::now();
    if let Some(status) = &gate.status
        && status.observed_generation == gate.metadata.generation
        && let Some(next) = status.next_evaluation_time.as_ref()
        && next.0 > now
    {
        let wait = Duration::try_from(next.0.duration_since(now)).unwrap_or(Duration::ZERO);
        return Ok(Action::requeue(wait + Duration::from_millis(20)));
    }
    let measured = measure(&gate, &ctx, &namespace).await?;
    let evaluation = gate::evaluate(
        &gate.spec,
        gate.metadata.generation.unwrap_or(0),
        gate.status.as_ref(),
        measured.as_ref().map_err(String::as_str),
        now,
    );
    let status = &evaluation.status;
    let labels = GateLabels {
        namespace: namespace.clone(),
        gate: gate.name_any(),
    };
    ctx.metrics.gate_evaluations.get_or_create(&labels).inc();
    for burn in &status.burn_rates {
        for (window, rate) in [
            (&burn.long_window, burn.long_burn_rate),
            (&burn.short_window, burn.short_burn_rate),
        ] {
            if let Some(rate) = rate {
                ctx.metrics
                    .gate_burn_rate
                    .get_or_create(&crate::metrics::BurnRateLabels {
                        namespace: namespace.clone(),
                        gate: gate.name_any(),
                        window: window.clone(),
                    })
                    .set(rate);
            }
        }
    }
    if let Some(remaining) = status.budget_remaining_percent {
        ctx.metrics
            .gate_budget_remaining
            .get_or_create(&labels)
            .set(remaining);
    }
    ctx.metrics.gate_held.get_or_create(&labels).set(i64::from(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == gate::CONDITION_RELEASES_HELD && c.status == "True"),
    ));
    let patch =
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "status": status});
    Api::<ErrorBudgetGate>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &gate.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    for event in &evaluation.events {
        info!(reason = event.reason, note = %event.message, "gate transition");
        ctx.publish(
            &gate.object_ref(&()),
            event.warning,
            event.reason,
            "Evaluate",
            &event.message,
        );
    }
    Ok(Action::requeue(evaluation.requeue_after))
}
