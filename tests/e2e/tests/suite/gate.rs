//! ErrorBudgetGates evaluated by the real controller against a real Prometheus scraping the traffic
//! simulator: the budget, the burn rates and the state land in status.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_api::ErrorBudgetGate;
use sluice_api::gate::GateState;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, TrafficSim, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_gate_reports_the_budget_a_five_percent_error_rate_leaves() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "gate").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let _sim = TrafficSim::start(&ns.name)?;
    let prometheus =
        std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL")?;
    // A service failing 5% of its requests.
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let rollout = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "pay", "labels": {"slo": "pay"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "pay"}},
            "template": {"metadata": {"labels": {"app": "pay"}, "annotations": {"sim.sluice.dev/error-rate": "0.05"}},
                         "spec": {"containers": [{"name": "pay", "image": "registry.example/pay:1.0.0"}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}]}}
        }
    });
    rollouts
        .patch(
            "pay",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&rollout),
        )
        .await?;
    eventually("the service to run", WAIT, || async {
        let status = rollouts.get("pay").await?.status.unwrap_or_default();
        Ok((status.phase == Some(RolloutPhase::Healthy)).then_some(()))
    })
    .await?;
    let selector = format!("namespace=\"{}\"", ns.name);
    let gate = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "pay-slo"},
        "spec": {
            "selector": {"matchLabels": {"slo": "pay"}},
            "objective": 99.0,
            "window": "1h",
            "evaluationInterval": "2s",
            "sli": {"events": {
                "errorQuery": format!("sum(increase(sim_http_requests_total{{{selector},code=\"500\"}}[{{{{window}}}}]))"),
                "totalQuery": format!("sum(increase(sim_http_requests_total{{{selector}}}[{{{{window}}}}]))")
            }},
            "prometheus": {"address": prometheus}
        }
    });
    let gates: Api<ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
    gates
        .patch(
            "pay-slo",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&gate),
        )
        .await?;
    // A 5% error ratio against a 1% budget: 1 - 0.05/0.01 = -400% left, well below critical-only.
    let status = eventually("the gate to see the spent budget", WAIT, || async {
        let status = gates.get("pay-slo").await?.status.unwrap_or_default();
        // The first evaluations see only seconds of traffic; wait for the figure to settle.
        let settled = status
            .budget_remaining_percent
            .is_some_and(|remaining| (remaining - -400.0).abs() < 20.0);
        Ok((status.state == Some(GateState::CriticalOnly) && settled).then_some(status))
    })
    .await?;
    let remaining = status.budget_remaining_percent.context("budget")?;
    ensure!(
        (remaining - -400.0).abs() < 20.0,
        "remaining budget {remaining}%, expected about -400%"
    );
    ensure!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "ReleasesHeld" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    ensure!(
        status
            .history
            .iter()
            .any(|t| t.to == GateState::CriticalOnly),
        "{:?}",
        status.history
    );
    // Burn rate about 5 (0.05 / 0.01): the default fast-burn pairs (14.4, 6) do not fire.
    for burn in &status.burn_rates {
        ensure!(!burn.firing, "{burn:?}");
        if let Some(rate) = burn.short_burn_rate {
            ensure!((rate - 5.0).abs() < 1.0, "{burn:?}");
        }
    }
    Ok(())
}
