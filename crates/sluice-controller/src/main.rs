//! `sluice-controller`: the operator.
//!
//! Watches Rollouts (all namespaces, or one with `--namespace`), the ReplicaSets they own and the
//! Services and HTTPRoutes they name, and moves each release through the state machine in
//! sluice-engine. Serves `/healthz`, `/readyz` (once the first full list of Rollouts is in) and
//! `/metrics`; logs JSON with each Rollout's namespace and name.
//!
//! Several instances may run: only the holder of a Lease reconciles, the others wait to take over.
//! An instance that loses the Lease exits, so that it never writes beside a new leader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use sluice_api::analysis::AnalysisRun;
use sluice_api::{ErrorBudgetGate, Rollout};
use tracing_subscriber::EnvFilter;

mod analysis_run;
mod error;
mod gate;
mod http;
mod metrics;
mod release_gates;
mod rollout;
mod rollout_analysis;

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "sluice-controller";

#[derive(Parser)]
#[command(
    name = "sluice-controller",
    about = "Sluice's progressive-delivery operator"
)]
struct Args {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SLUICE_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format: json or text.
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Take part in leader election, so that only one instance reconciles. `false` for a single
    /// instance that always reconciles.
    #[arg(long, env = "SLUICE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
    /// Namespace of the Lease (default: `--namespace`, else the pod's namespace, else `default`).
    #[arg(long, env = "SLUICE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This instance's name in the election (default: the pod's name, so a restarted container takes
    /// its Lease back at once; else the host name and process id).
    #[arg(long, env = "SLUICE_IDENTITY")]
    identity: Option<String>,
    /// Seconds the leader's Lease stays valid without renewal: how long a crashed leader's place
    /// stays empty.
    #[arg(long, env = "SLUICE_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_duration_seconds: u64,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
    /// Every ErrorBudgetGate the controller watches, kept by a watch: a Rollout reconcile reads the
    /// gates selecting it from here, without an API call.
    pub gates: Store<ErrorBudgetGate>,
}

impl Context {
    /// Records an Event on `object` (its note cut to the API's 1000 characters). A failure is logged
    /// and otherwise ignored: an Event is a report, never a reason to fail a reconcile.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        message: &str,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(message.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, object).await {
            tracing::warn!(%err, reason, "could not record event");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if args.log_format == "text" {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    }

    sluice_analysis::prometheus::install_crypto_provider();
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (gates, gate_writer) = reflector::store::<ErrorBudgetGate>();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics::Metrics::default(),
        ready: AtomicBool::new(false),
        gates,
    });
    tokio::spawn(http::serve(args.http_addr, ctx.clone()));

    let lease = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let identity = args
            .identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(default_identity);
        let duration = args.lease_duration_seconds;
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).clamp(1, 5))
            .build()
            .await
            .with_context(|| {
                format!(
                    "setting up leader election with Lease {namespace}/{}",
                    args.lease_name
                )
            })?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting to become the leader");
        while !*leader.borrow_and_update() {
            leader
                .changed()
                .await
                .context("leader election stopped before this instance became the leader")?;
        }
        tracing::info!(%identity, "became the leader");
        Some((leader, task))
    } else {
        None
    };

    let run = run_controller(&args, client, ctx, gate_writer);
    match lease {
        None => run.await,
        Some((mut leader, task)) => {
            tokio::select! {
                () = run => {
                    // Shutting down: hand the Lease over at once instead of letting it expire.
                    drop(leader);
                    if let Ok(Err(err)) = task.await {
                        tracing::warn!(%err, "could not release the Lease");
                    }
                }
                () = async {
                    while leader.changed().await.is_ok() && *leader.borrow() {}
                } => {
                    tracing::error!("lost the leader Lease: exiting so that only the new leader writes");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs the Rollout controller until a termination signal.
async fn run_controller(
    args: &Args,
    client: Client,
    ctx: Arc<Context>,
    gate_writer: reflector::store::Writer<ErrorBudgetGate>,
) {
    let (rollouts, replica_sets, services, routes): (
        Api<Rollout>,
        Api<ReplicaSet>,
        Api<Service>,
        Api<DynamicObject>,
    ) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced_with(client.clone(), ns, &rollout::http_route_resource()),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all_with(client.clone(), &rollout::http_route_resource()),
        ),
    };
    // Without the Gateway API installed there is nothing to watch (and a watch would only fail).
    let watch_routes = match routes
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::info!("the Gateway API's HTTPRoute is not installed: routes are not watched");
            false
        }
        _ => true,
    };
    let runs: Api<AnalysisRun> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let rollouts_for_readiness = rollouts.clone();
    let gates_api: Api<ErrorBudgetGate> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // One watch of the gates fills the cache Rollout reconciles read, then passes each change on to
    // wake the Rollouts it bears on: the cache is always at least as new as the change.
    let (gate_changes, gate_changes_rx) = futures::channel::mpsc::channel::<ErrorBudgetGate>(256);
    let gate_watch = reflector::reflector(
        gate_writer,
        watcher(gates_api.clone(), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    tokio::spawn(async move {
        let mut gate_changes = gate_changes;
        let mut gate_watch = std::pin::pin!(gate_watch);
        while let Some(change) = gate_watch.next().await {
            match change {
                Ok(gate) => {
                    if futures::SinkExt::send(&mut gate_changes, gate)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(err) => tracing::warn!(%err, "watching ErrorBudgetGates failed; retrying"),
            }
        }
    });
    // A release must not start before the gates that may hold it are known.
    if ctx.gates.wait_until_ready().await.is_err() {
        tracing::error!("the ErrorBudgetGate watch stopped before its first full list");
        return;
    }
    tracing::info!(
        gates = ctx.gates.state().len(),
        "first full list of ErrorBudgetGates"
    );
    let controller = Controller::new(rollouts, watcher::Config::default());
    let store = controller.store();
    let by_service = store.clone();
    let gate_trigger = release_gates::GateTrigger::new(store.clone(), ctx.gates.clone());
    let controller = controller
        .owns(
            replica_sets,
            watcher::Config::default().labels(rollout::ROLLOUT_LABEL),
        )
        // A run's verdict moves its release at once (an abort within a second of the failing measurement).
        .owns(
            runs.clone(),
            watcher::Config::default().labels(rollout::ROLLOUT_LABEL),
        )
        // A Service or route that appears, disappears or is edited by someone else is looked at again
        // at once: an InvalidSpec clears, a weight changed by hand is put back.
        .watches(services, watcher::Config::default(), move |svc| {
            referencing(
                &by_service,
                &svc.namespace(),
                &svc.name_any(),
                |canary, name| {
                    canary.canary_service.as_deref() == Some(name)
                        || canary.stable_service.as_deref() == Some(name)
                },
            )
        })
        // A gate that freezes, opens or changes its selection wakes the Rollouts it selects (and
        // those it no longer selects) at once; routine evaluations that change nothing do not.
        .watches_stream(gate_changes_rx.map(Ok), move |gate| {
            gate_trigger.rollouts_to_reconcile(&gate)
        })
        .shutdown_on_signal();
    let controller = if watch_routes {
        controller.watches_with(
            routes,
            rollout::http_route_resource(),
            watcher::Config::default(),
            move |route| {
                referencing(
                    &store,
                    &route.namespace(),
                    &route.name_any(),
                    |canary, name| {
                        canary
                            .traffic_routing
                            .as_ref()
                            .is_some_and(|t| t.gateway_api.http_route == name)
                    },
                )
            },
        )
    } else {
        controller
    };
    // Ready once a full list of Rollouts has succeeded: the API server answers, the CRD is installed
    // and this process may read what it manages.
    let ready_ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            match rollouts_for_readiness
                .list(&kube::api::ListParams::default())
                .await
            {
                Ok(list) => {
                    ready_ctx.ready.store(true, Ordering::Relaxed);
                    tracing::info!(
                        rollouts = list.items.len(),
                        "first full list of Rollouts: ready"
                    );
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, "listing Rollouts failed; not ready yet");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    });
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("*"),
        "starting the Rollout controller"
    );
    let analysis_runs = Controller::new(runs, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            analysis_run::reconcile,
            analysis_run::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let gates = Controller::new(gates_api, watcher::Config::default())
        .shutdown_on_signal()
        .run(gate::reconcile, gate::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let rollouts = controller
        .run(rollout::reconcile, rollout::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    futures::join!(rollouts, analysis_runs, gates);
}

/// The Rollouts in `namespace` whose canary strategy names `name` as `matches` says.
fn referencing(
    store: &Store<Rollout>,
    namespace: &Option<String>,
    name: &str,
    matches: impl Fn(&sluice_api::rollout::CanaryStrategy, &str) -> bool,
) -> Vec<ObjectRef<Rollout>> {
    store
        .state()
        .iter()
        .filter(|r| r.namespace() == *namespace)
        .filter(|r| {
            r.spec
                .strategy
                .canary
                .as_ref()
                .is_some_and(|c| matches(c, name))
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}
