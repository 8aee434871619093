//! ErrorBudgetGates evaluated by the real controller against a real Prometheus: one scraping the
//! traffic simulator, and Prometheus servers of each test's own holding 30 days of synthetic SLI
//! history backfilled with promtool, with live events added while the test runs to move the budget.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::ErrorBudgetGate;
use sluice_api::gate::{ErrorBudgetGateStatus, GateState};
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, SloHistory, SloPrometheus, Stretch, TestNamespace,
    TrafficSim, client, eventually, install_crds, kubectl,
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

// ---------------------------------------------------------------------------------------------
// Thirty days of history
// ---------------------------------------------------------------------------------------------

/// Minutes of history: just under 30 days, so a `30d` window holds all of it.
const HISTORY_MINUTES: u32 = 30 * 24 * 60 - 10;
const OBJECTIVE: f64 = 99.9;
const RPM: u64 = 1000;

/// The budget left, in percent, for `bad` of `total` events against [`OBJECTIVE`].
fn remaining_percent(bad: u64, total: u64) -> f64 {
    let budget = 1.0 - OBJECTIVE / 100.0;
    100.0 * (1.0 - (bad as f64 / total as f64) / budget)
}

/// A steady history whose budget left is about `remaining` percent.
fn history_leaving(service: &str, remaining: f64) -> SloHistory {
    let budget = 1.0 - OBJECTIVE / 100.0;
    SloHistory::new(
        service,
        vec![Stretch {
            minutes: HISTORY_MINUTES,
            requests_per_minute: RPM,
            error_ratio: budget * (1.0 - remaining / 100.0),
        }],
    )
}

/// Good events to add to `history` (plus what was already added) so that the budget left is `target` percent.
fn good_events_for(history: &SloHistory, target: f64) -> u64 {
    let (bad, total) = history.totals();
    let budget = 1.0 - OBJECTIVE / 100.0;
    let needed_total = bad as f64 / (budget * (1.0 - target / 100.0));
    (needed_total - total as f64).max(0.0).round() as u64
}

/// One test's namespace, controller and Prometheus with history, and the gate `slo` on it.
struct World {
    client: Client,
    ns: TestNamespace,
    controller: ControllerProcess,
    prometheus: SloPrometheus,
    history: SloHistory,
    rollouts: Api<Rollout>,
    gates: Api<ErrorBudgetGate>,
    /// Good events added live so far.
    live_good: std::sync::atomic::AtomicU64,
}

impl World {
    async fn start(prefix: &str, history: SloHistory) -> Result<Self> {
        let client = client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let started = Instant::now();
        let prometheus = SloPrometheus::start(&history).await?;
        eprintln!(
            "[{prefix}] Prometheus with {} minutes of history ready in {:.1?}",
            history.minutes(),
            started.elapsed()
        );
        // Live counters are scraped at 0 first, so that events added later count in full.
        prometheus.wait_scraped().await?;
        let controller = ControllerProcess::start(&ns.name)?;
        let gate = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "slo"},
            "spec": {
                "selector": {"matchLabels": {"slo": "checkout"}},
                "objective": OBJECTIVE,
                "window": "30d",
                "evaluationInterval": "2s",
                "sli": {"events": {"errorQuery": prometheus.error_query(), "totalQuery": prometheus.total_query()}},
                "prometheus": {"address": prometheus.url}
            }
        });
        let gates: Api<ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
        gates
            .patch(
                "slo",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&gate),
            )
            .await?;
        Ok(Self {
            rollouts: Api::namespaced(client.clone(), &ns.name),
            gates,
            client,
            ns,
            controller,
            prometheus,
            history,
            live_good: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A world whose gate is Frozen, with a steady history leaving `remaining` percent of budget.
    async fn frozen(prefix: &str, remaining: f64) -> Result<Self> {
        let world = Self::start(prefix, history_leaving("checkout", remaining)).await?;
        world
            .wait_gate("the gate to freeze", |s| s.state == Some(GateState::Frozen))
            .await?;
        Ok(world)
    }

    /// Applies Rollout `name` on `image` and waits until that image is stable.
    async fn released(&self, name: &str, image: &str, replicas: i32) -> Result<()> {
        self.apply_rollout(name, image, replicas).await?;
        self.wait_healthy_on(name, image).await
    }

    async fn gate_status(&self) -> Result<ErrorBudgetGateStatus> {
        Ok(self.gates.get("slo").await?.status.unwrap_or_default())
    }

    /// Waits until the gate's state and budget satisfy `ok`.
    async fn wait_gate(
        &self,
        what: &str,
        ok: impl Fn(&ErrorBudgetGateStatus) -> bool,
    ) -> Result<ErrorBudgetGateStatus> {
        eventually(what, WAIT, || async {
            let status = self.gate_status().await?;
            Ok(ok(&status).then_some(status))
        })
        .await
        .with_context(|| format!("gate status: {:?}", self.gates_status_line()))
    }

    fn gates_status_line(&self) -> String {
        kubectl(&["get", "ebg", "-n", &self.ns.name, "-o", "wide"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Applies Rollout `name` selected by the gate, running `image`, with a two-step canary.
    async fn apply_rollout(&self, name: &str, image: &str, replicas: i32) -> Result<()> {
        let rollout = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "labels": {"slo": "checkout"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]}}
            }
        });
        self.rollouts
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&rollout),
            )
            .await?;
        Ok(())
    }

    async fn set_annotation(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.rollouts
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn wait_healthy_on(&self, name: &str, image: &str) -> Result<()> {
        eventually(
            &format!("{name} to be Healthy on {image}"),
            WAIT,
            || async {
                let rollout = self.rollouts.get(name).await?;
                let on_image = rollout
                    .spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .is_some_and(|s| {
                        s.containers
                            .iter()
                            .any(|c| c.image.as_deref() == Some(image))
                    });
                let status = rollout.status.unwrap_or_default();
                let done = on_image
                    && status.observed_generation == rollout.metadata.generation
                    && status.phase == Some(RolloutPhase::Healthy)
                    && status.stable_rs == status.current_pod_hash;
                Ok(done.then_some(()))
            },
        )
        .await
    }

    /// The Rollout's `ReleaseHeld` condition once it is `want` ("True" or "False").
    async fn wait_held(&self, name: &str, want: &str) -> Result<Condition> {
        eventually(
            &format!("{name}'s ReleaseHeld to be {want}"),
            WAIT,
            || async {
                let status = self.rollouts.get(name).await?.status.unwrap_or_default();
                Ok(held_condition(&status.conditions).filter(|c| c.status == want))
            },
        )
        .await
    }

    /// ReplicaSets of Rollout `name`: hash → spec.replicas.
    async fn replica_sets(&self, name: &str) -> Result<BTreeMap<String, i32>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        Ok(api
            .list(&ListParams::default().labels(&format!("sluice.dev/rollout={name}")))
            .await?
            .items
            .iter()
            .map(|rs| {
                (
                    rs.labels()
                        .get("rollouts-pod-template-hash")
                        .cloned()
                        .unwrap_or_default(),
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                )
            })
            .collect())
    }

    /// The messages of the Events with `reason`, once there is one (Events are recorded just after
    /// the status that reports the same change), or none after a few seconds.
    async fn events(&self, reason: &str) -> Result<Vec<String>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.message.unwrap_or_default())
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adds good events until the budget left is about `target` percent, and waits for Prometheus to have them.
    async fn recover_to(&self, target: f64) -> Result<()> {
        let wanted = good_events_for(&self.history, target);
        let already = self.live_good.load(std::sync::atomic::Ordering::SeqCst);
        let more = wanted.saturating_sub(already);
        self.live_good
            .fetch_add(more, std::sync::atomic::Ordering::SeqCst);
        self.prometheus.add_live(more, 0);
        self.prometheus.wait_scraped().await
    }
}

fn held_condition(conditions: &[Condition]) -> Option<Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == "ReleaseHeld")
        .cloned()
}

#[tokio::test]
async fn the_budget_left_over_thirty_days_matches_the_hand_computed_value() -> Result<()> {
    // 0.05% errors, a 3-hour incident at 3% on day 12, and 2% for 20 minutes on day 25.
    let budget = 1.0 - OBJECTIVE / 100.0;
    let stretches = vec![
        Stretch {
            minutes: 12 * 1440,
            requests_per_minute: RPM,
            error_ratio: 0.0005,
        },
        Stretch {
            minutes: 180,
            requests_per_minute: 2 * RPM,
            error_ratio: 0.03,
        },
        Stretch {
            minutes: 13 * 1440 - 180,
            requests_per_minute: RPM,
            error_ratio: 0.0005,
        },
        Stretch {
            minutes: 20,
            requests_per_minute: RPM,
            error_ratio: 0.02,
        },
        Stretch {
            minutes: HISTORY_MINUTES - 25 * 1440 - 20,
            requests_per_minute: RPM / 2,
            error_ratio: 0.0003,
        },
    ];
    let history = SloHistory::new("checkout", stretches);
    let (bad, total) = history.totals();
    let expected = remaining_percent(bad, total);
    let world = World::start("gate-math", history).await?;
    let status = world
        .wait_gate("the gate's first evaluation", |s| {
            s.budget_remaining_percent.is_some()
        })
        .await?;
    let measured = status.budget_remaining_percent.context("budget")?;
    eprintln!(
        "budget math: {bad} bad of {total} events, objective {OBJECTIVE}% (budget {budget:.4}): hand-computed {expected:.4}% left, gate reports {measured:.4}% (difference {:.4} points)",
        (measured - expected).abs()
    );
    ensure!(
        (measured - expected).abs() < 0.1,
        "gate reports {measured}% left, hand-computed {expected}%"
    );
    let state = if expected < 25.0 {
        GateState::Warning
    } else {
        GateState::Open
    };
    ensure!(status.state == Some(state), "{status:?}");
    // The burn rate over the last hour: 0.03% errors against a 0.1% budget.
    let (bad_hour, total_hour) = world.history.totals_last(60);
    let hour_rate = (bad_hour as f64 / total_hour as f64) / budget;
    let reported = status
        .burn_rates
        .iter()
        .find(|b| b.long_window == "1h")
        .and_then(|b| b.long_burn_rate)
        .context("1h burn rate")?;
    eprintln!("burn rate over 1h: hand-computed {hour_rate:.3}, gate reports {reported:.3}");
    ensure!(
        (reported - hour_rate).abs() < 0.05,
        "1h burn rate {reported}, expected {hour_rate}"
    );
    Ok(())
}

#[tokio::test]
async fn a_frozen_gate_holds_a_new_image_without_flapping_until_the_budget_is_above_fifteen_percent()
-> Result<()> {
    let world = World::frozen("gate-freeze", 6.0).await?;
    world
        .released("checkout", "registry.example/checkout:1.0", 2)
        .await?;
    let before = world.replica_sets("checkout").await?;

    world
        .apply_rollout("checkout", "registry.example/checkout:2.0", 2)
        .await?;
    let held = world.wait_held("checkout", "True").await?;
    ensure!(held.reason == "ErrorBudgetExhausted", "{held:?}");
    ensure!(
        held.message
            .contains("of budget left (freeze below 10%); releases resume above 15%"),
        "{}",
        held.message
    );
    let rollout = world.rollouts.get("checkout").await?;
    let status = rollout.status.clone().unwrap_or_default();
    ensure!(status.phase == Some(RolloutPhase::Paused), "{status:?}");
    let get = kubectl(&["get", "sro", "checkout", "-n", &world.ns.name])?;
    let table = String::from_utf8_lossy(&get.stdout);
    eprintln!("{table}");
    ensure!(
        table.contains("Paused") && table.contains("releases resume above 15%"),
        "{table}"
    );
    // The held revision has no pods; stable is whole.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = world.replica_sets("checkout").await?;
    ensure!(
        after
            .iter()
            .all(|(hash, n)| before.contains_key(hash) || *n == 0),
        "a held revision got pods: {after:?} (before {before:?})"
    );
    ensure!(
        before.values().all(|n| *n == 2) && after.values().sum::<i32>() == 2,
        "{after:?}"
    );
    ensure!(
        !world.events("ReleaseHeld").await?.is_empty(),
        "no ReleaseHeld event"
    );

    // Between 10% and 15% the gate stays Frozen: it recovers, it does not open.
    world.recover_to(12.5).await?;
    let recovering = world
        .wait_gate("the budget to move between 10% and 15%", |s| {
            s.budget_remaining_percent
                .is_some_and(|b| (11.0..14.0).contains(&b))
        })
        .await?;
    let transitions = recovering.history.len();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = world.gate_status().await?;
        ensure!(
            status.state == Some(GateState::Frozen),
            "the gate left Frozen at {:?}% ({status:?})",
            status.budget_remaining_percent
        );
        ensure!(
            status.history.len() == transitions,
            "the gate changed state: {:?}",
            status.history
        );
        let rollout = world
            .rollouts
            .get("checkout")
            .await?
            .status
            .unwrap_or_default();
        let now_held = held_condition(&rollout.conditions).context("condition")?;
        ensure!(
            now_held.status == "True" && now_held.last_transition_time == held.last_transition_time,
            "the hold toggled: {now_held:?}"
        );
    }
    eprintln!(
        "between thresholds: budget {:?}%, state Frozen ({:?}) for 10 s, the Rollout still held",
        recovering.budget_remaining_percent, recovering.reason
    );

    // Above 15% the gate opens (to Warning, below 25%) and the release starts.
    world.recover_to(20.0).await?;
    let opened = world
        .wait_gate("the gate to open", |s| {
            matches!(s.state, Some(GateState::Warning | GateState::Open))
        })
        .await?;
    let seen_open = Instant::now();
    world.wait_held("checkout", "False").await?;
    let resumed = seen_open.elapsed();
    eprintln!(
        "gate opened at {:?}% ({:?}); the held Rollout resumed {resumed:.1?} after the open state was seen",
        opened.budget_remaining_percent, opened.state
    );
    world
        .wait_healthy_on("checkout", "registry.example/checkout:2.0")
        .await?;
    ensure!(
        !world.events("ReleaseResumed").await?.is_empty(),
        "no ReleaseResumed event"
    );
    Ok(())
}

#[tokio::test]
async fn a_fast_burn_freezes_with_most_of_the_budget_left() -> Result<()> {
    // 0.02% errors for 30 days, then 2% (a burn rate of 20) for the last 70 minutes.
    let stretches = vec![
        Stretch {
            minutes: HISTORY_MINUTES - 70,
            requests_per_minute: RPM,
            error_ratio: 0.0002,
        },
        Stretch {
            minutes: 70,
            requests_per_minute: RPM,
            error_ratio: 0.02,
        },
    ];
    let world = World::start("gate-burn", SloHistory::new("checkout", stretches)).await?;
    let status = world
        .wait_gate("the fast burn to freeze the gate", |s| {
            s.state == Some(GateState::Frozen)
        })
        .await?;
    let left = status.budget_remaining_percent.context("budget")?;
    ensure!(left > 70.0, "budget {left}% left");
    ensure!(status.reason.as_deref() == Some("FastBurn"), "{status:?}");
    let firing: Vec<_> = status.burn_rates.iter().filter(|b| b.firing).collect();
    ensure!(
        firing.len() == 1 && firing[0].long_window == "1h",
        "{:?}",
        status.burn_rates
    );
    eprintln!(
        "fast burn: {left:.1}% left, burn rates {:?}",
        status.burn_rates
    );
    world
        .released("checkout", "registry.example/checkout:1.0", 1)
        .await?;
    world
        .apply_rollout("checkout", "registry.example/checkout:2.0", 1)
        .await?;
    let held = world.wait_held("checkout", "True").await?;
    ensure!(held.reason == "ErrorBudgetBurning", "{held:?}");
    ensure!(held.message.contains("burning fast"), "{}", held.message);
    Ok(())
}

#[tokio::test]
async fn a_bypass_lets_one_revision_through_audited_and_a_rollback_proceeds_during_the_freeze()
-> Result<()> {
    let world = World::frozen("gate-bypass", 7.0).await?;
    world
        .released("checkout", "registry.example/checkout:1.0", 2)
        .await?;
    let v1 = world
        .rollouts
        .get("checkout")
        .await?
        .status
        .unwrap_or_default()
        .stable_rs;

    // A fix goes through with a reason, recorded in status and an Event.
    world
        .set_annotation(
            "checkout",
            "sluice.dev/bypass-error-budget",
            "INC-4711: payment outage fix",
        )
        .await?;
    world
        .released("checkout", "registry.example/checkout:1.1", 2)
        .await?;
    let status = world
        .rollouts
        .get("checkout")
        .await?
        .status
        .unwrap_or_default();
    let bypasses = status.error_budget.clone().unwrap_or_default().bypasses;
    ensure!(bypasses.len() == 1, "{bypasses:?}");
    ensure!(
        Some(&bypasses[0].revision) == status.stable_rs.as_ref()
            && bypasses[0].reason == "INC-4711: payment outage fix"
            && bypasses[0].message.contains("gate slo"),
        "{bypasses:?}"
    );
    let audited = world.events("ErrorBudgetBypassed").await?;
    ensure!(
        audited.iter().any(|m| m.contains("INC-4711")),
        "{audited:?}"
    );

    // The annotation left in place does not let the next revision through.
    world
        .apply_rollout("checkout", "registry.example/checkout:1.2", 2)
        .await?;
    let held = world.wait_held("checkout", "True").await?;
    ensure!(held.reason == "ErrorBudgetExhausted", "{held:?}");

    // Going back to 1.0, which was stable, is a rollback: it proceeds during the freeze.
    world
        .released("checkout", "registry.example/checkout:1.0", 2)
        .await?;
    let status = world
        .rollouts
        .get("checkout")
        .await?
        .status
        .unwrap_or_default();
    ensure!(status.stable_rs == v1, "{status:?}");
    ensure!(
        held_condition(&status.conditions).is_some_and(|c| c.status == "False"),
        "{:?}",
        status.conditions
    );
    Ok(())
}

#[tokio::test]
async fn one_gate_holds_and_releases_fifty_rollouts_with_a_fixed_number_of_queries() -> Result<()> {
    const COUNT: usize = 50;
    let world = World::frozen("gate-fifty", 6.0).await?;
    let names: Vec<String> = (0..COUNT).map(|i| format!("svc-{i:02}")).collect();
    for name in &names {
        world
            .apply_rollout(name, "registry.example/svc:1.0", 1)
            .await?;
    }
    for name in &names {
        world
            .wait_healthy_on(name, "registry.example/svc:1.0")
            .await?;
    }
    let changed = Instant::now();
    for name in &names {
        world
            .apply_rollout(name, "registry.example/svc:2.0", 1)
            .await?;
    }
    for name in &names {
        world.wait_held(name, "True").await?;
    }
    let all_held = changed.elapsed();

    // Routine evaluations of a gate that stays Frozen do not wake the Rollouts.
    let reconciles_before =
        metric(&world.controller, "sluice_rollout_reconciles_total", "").await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let reconciles_quiet =
        metric(&world.controller, "sluice_rollout_reconciles_total", "").await? - reconciles_before;

    world.recover_to(20.0).await?;
    world
        .wait_gate("the gate to open", |s| {
            matches!(s.state, Some(GateState::Warning | GateState::Open))
        })
        .await?;
    let opened = Instant::now();
    for name in &names {
        world.wait_held(name, "False").await?;
    }
    let all_released = opened.elapsed();
    for name in &names {
        world
            .wait_healthy_on(name, "registry.example/svc:2.0")
            .await?;
    }
    let all_done = opened.elapsed();

    let gate = "gate=\"slo\"";
    // The two counters are read one after the other while evaluations go on: take a reading with
    // no evaluation under way between them (the evaluation count the same before and after).
    let (mut queries, mut evaluations) = (0.0, 0.0);
    for _ in 0..20 {
        let before = metric(&world.controller, "sluice_gate_evaluations_total", gate).await?;
        queries = metric(&world.controller, "sluice_gate_queries_total", gate).await?;
        evaluations = metric(&world.controller, "sluice_gate_evaluations_total", gate).await?;
        if before == evaluations && (queries / evaluations).fract() == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "{COUNT} Rollouts on one gate: all held {all_held:.1?} after their images changed; {reconciles_quiet} Rollout reconciles during 10 s (5 evaluations) of an unchanged frozen gate; all released {all_released:.1?} and all completed {all_done:.1?} after the gate was seen open; {queries} queries in {evaluations} evaluations ({:.1} per evaluation)",
        queries / evaluations
    );
    // 30d, and 1h/5m and 6h/30m for the two default burn-rate alerts.
    ensure!(
        (queries / evaluations - 5.0).abs() < f64::EPSILON,
        "{queries} queries in {evaluations} evaluations"
    );
    ensure!(
        reconciles_quiet < COUNT as f64,
        "{reconciles_quiet} reconciles while nothing changed"
    );
    Ok(())
}

/// The value of `name{labels...}` on the controller's /metrics (summed over matching series).
async fn metric(controller: &ControllerProcess, name: &str, labels: &str) -> Result<f64> {
    let body = sluice_e2e::http_get(&controller.http, "/metrics").await?;
    let mut sum = 0.0;
    for line in body.lines().filter(|l| l.starts_with(name)) {
        let (series, value) = line.rsplit_once(' ').context("metric line")?;
        let matches =
            series == name || (series.starts_with(&format!("{name}{{")) && series.contains(labels));
        if matches {
            sum += value.parse::<f64>().context("metric value")?;
        }
    }
    Ok(sum)
}
