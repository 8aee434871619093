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
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::channel::mpsc::UnboundedReceiver;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{DynamicObject, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use sluice_analysis::{AddressPolicy, AddressRule};
use sluice_api::analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;
use sluice_api::{ErrorBudgetGate, Release, Rollout};
use tracing_subscriber::EnvFilter;

use crate::cache::Reference;

mod analysis_run;
mod argo;
mod backoff;
mod cache;
mod circuit;
mod cluster_ranges;
mod error;
mod failpoints;
mod gate;
mod http;
mod job_metric;
mod lease;
mod metrics;
mod notify;
mod release_gates;
mod release_record;
mod rollout;
mod rollout_analysis;
mod template_status;
mod traffic;
mod webhook;
mod workload;
mod written;

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
    /// Rollouts reconciled at the same time, at most (one Rollout is never reconciled twice at once).
    #[arg(long, env = "SLUICE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Where metric providers and gates may send queries: a host (`prometheus.monitoring.svc`), a
    /// host pattern (`*.svc`) or an address range (`10.0.0.0/8`, `127.0.0.1`); repeat the flag, or
    /// separate rules with commas. Default: in-cluster Service names (`*.svc`,
    /// `*.svc.cluster.local`). Loopback and link-local addresses (cloud metadata endpoints) are
    /// refused unless a range names them; redirects are never followed.
    #[arg(long = "allow-provider-address", env = "SLUICE_ALLOW_PROVIDER_ADDRESS", value_delimiter = ',', value_parser = clap::value_parser!(AddressRule))]
    allow_provider_address: Vec<AddressRule>,
    /// The cluster's own address ranges (Service and pod ranges, `10.96.0.0/12`), which a name
    /// allowed only by an in-cluster pattern (`*.svc`) must resolve into; repeat the flag, or
    /// separate ranges with commas. Default: discovered from the ServiceCIDRs and the nodes' pod
    /// ranges (name the range of a network plugin that gives pods addresses of its own).
    /// Whether the operator may read Secrets (those labelled `sluice.dev/analysis-secret: "true"`,
    /// watched by that label): analysis arguments, provider credentials and notification sinks
    /// read from them. With `false` (the chart's `readSecrets`), a run or sink naming one is an
    /// Error saying so.
    #[arg(long, env = "SLUICE_READ_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    read_secrets: bool,
    #[arg(long = "cluster-address-range", env = "SLUICE_CLUSTER_ADDRESS_RANGE", value_delimiter = ',', value_parser = clap::value_parser!(ipnet::IpNet))]
    cluster_address_range: Vec<ipnet::IpNet>,
}

/// Parameters for the merge and JSON patches the controller makes, under its field manager, so that
/// `managedFields` show who set a Service's selector or a route's weights.
pub fn writer() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The owner reference of what a Rollout owns (its ReplicaSets, runs, release records, canary
/// Ingress): the Rollout as controller, and a foreground deletion of the Rollout waits for them, as
/// Kubernetes' own controllers and Argo Rollouts set it (which needs `update` on
/// `rollouts/finalizers` where `OwnerReferencesPermissionEnforcement` admits writes).
pub fn owned_by(
    rollout: &sluice_api::rollout::Rollout,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use kube::Resource;
    let mut owner = rollout.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
    /// Everything reconciles read, kept by watches: a settled Rollout's reconcile makes no request.
    pub caches: cache::Caches,
    /// How long each Rollout whose reconcile fails waits before the next try.
    pub backoffs: backoff::Backoffs,
    /// The controller's last write to each Rollout: no reconcile acts on an older cached copy.
    pub written: written::Written,
    /// What the release records this controller wrote say, as of its last write to each.
    pub records: release_record::Written,
    /// The locks of circuit breakers shared by several Rollouts.
    pub circuits: circuit::Locks,
    /// Where providers and gates may send queries, and webhooks their calls.
    pub address_policy: Arc<AddressPolicy>,
    /// The webhook calls being made, and their answers.
    pub webhooks: webhook::Caller,
    /// The notifications being sent.
    pub notifier: notify::Notifier,
    /// Events waiting to be recorded.
    events: Publisher,
    /// The overlaps with Argo Rollouts already announced by an Event, by Rollout uid and Argo
    /// Rollout name: each once while this instance runs.
    pub argo_overlaps: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Context {
    /// Drops what the controller keeps by Rollout once it is deleted: its backoff, its last writes,
    /// its release records as last written, its webhook calls and notification marks, its overlap
    /// with Argo Rollouts, so that Rollouts coming and going leave nothing behind.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        self.backoffs.succeeded("Rollout", namespace, name);
        self.backoffs
            .succeeded(rollout::takeover::TAKEOVER, namespace, name);
        self.written.forget(written::Kind::Rollout, namespace, name);
        self.records.forget_rollout(namespace, name);
        self.webhooks.forget_rollout(namespace, name);
        self.notifier.forget(namespace, name);
        if let Ok(mut overlaps) = self.argo_overlaps.lock() {
            overlaps.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    /// Records an Event on `object`; see [`Publisher::publish`].
    pub fn publish(
        &self,
        object: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        message: &str,
    ) {
        self.events
            .publish(object, warning, reason, action, message);
    }
}

/// Where Events go to be recorded.
#[derive(Clone)]
pub struct Publisher(tokio::sync::mpsc::UnboundedSender<(Event, ObjectReference)>);

impl Publisher {
    /// Records an Event on `object` (its note cut to the API's 1000 characters) in the background,
    /// after the Events recorded before it: an Event is a report, never a reason to fail or slow a
    /// reconcile. A failure is logged.
    pub fn publish(
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
        if self.0.send((event, object.clone())).is_err() {
            tracing::warn!(reason, "could not record event: the recorder stopped");
        }
    }
}

/// Records Events in the order they were published, one at a time, off the reconciles' path.
fn spawn_recorder(recorder: Recorder) -> Publisher {
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<(Event, ObjectReference)>();
    tokio::spawn(async move {
        while let Some((event, object)) = events.recv().await {
            if let Err(err) = recorder.publish(&event, &object).await {
                tracing::warn!(%err, reason = event.reason, "could not record event");
            }
        }
    });
    Publisher(sender)
}

fn main() -> anyhow::Result<()> {
    // First: started as an evaluator of conditions, this binary evaluates one and exits, before any
    // runtime or thread exists.
    sluice_analysis::evaluator::serve_if_asked();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
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

    let _failpoints = failpoints::setup()?;
    sluice_analysis::prometheus::install_crypto_provider();
    let metrics = metrics::Metrics::default();
    let renewals = lease::Renewals::new(&args.lease_name);
    let client = counted_client(&metrics, &renewals).await?;
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (mut caches, writers) = cache::Caches::new();
    if !args.read_secrets {
        caches.secrets = None;
    }
    let cluster_ranges = if args.cluster_address_range.is_empty() {
        let discovered = Arc::new(sluice_analysis::ClusterRanges::default());
        cluster_ranges::spawn_discovery(client.clone(), discovered.clone());
        discovered
    } else {
        Arc::new(sluice_analysis::ClusterRanges::fixed(
            args.cluster_address_range.clone(),
        ))
    };
    let address_policy = Arc::new(
        if args.allow_provider_address.is_empty() {
            AddressPolicy::default()
        } else {
            AddressPolicy::new(args.allow_provider_address.clone())
        }
        .with_cluster_ranges(cluster_ranges),
    );
    let (webhooks, answered) =
        webhook::Caller::new(address_policy.clone(), caches.rollouts.clone());
    let events = spawn_recorder(Recorder::new(client.clone(), reporter));
    let notifier = notify::Notifier::new(
        client.clone(),
        address_policy.clone(),
        &caches,
        events.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        events,
        notifier,
        metrics,
        ready: AtomicBool::new(false),
        caches,
        backoffs: backoff::Backoffs::default(),
        written: written::Written::default(),
        records: release_record::Written::default(),
        circuits: circuit::Locks::default(),
        address_policy,
        webhooks,
        argo_overlaps: Default::default(),
    });
    tracing::info!(policy = %ctx.address_policy, "providers may be queried at these addresses");
    tokio::spawn(http::serve(args.http_addr, ctx.clone()));

    // The caches fill whether or not this instance leads: a standby is Ready (so a disruption
    // budget lets the leader's pod go) and takes over with warm caches.
    let leading = Arc::new(AtomicBool::new(false));
    let Some(watched) = start_watches(&args, &client, &ctx, writers, &leading).await else {
        anyhow::bail!("a watch stopped before its first full list");
    };

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
        // Renewed `grace` seconds before it expires; given up (the process exits) halfway through
        // that margin, before a standby may take it over.
        let grace = (duration * 2 / 5).clamp(1, 5);
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace(grace)
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
        let deadline = Duration::from_secs(duration) - Duration::from_secs(grace) / 2;
        tokio::spawn(lease::stop_when_renewals_fail(
            renewals.clone(),
            std::time::Instant::now(),
            deadline,
        ));
        Some((leader, task))
    } else {
        None
    };

    leading.store(true, Ordering::Relaxed);
    let run = run_controllers(&args, ctx, watched, answered);
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

/// A client that counts every request it sends in `sluice_api_requests_total`, and each Rollout
/// reconcile's in `sluice_rollout_reconcile_api_requests`, and notes each renewal of the Lease.
async fn counted_client(
    metrics: &metrics::Metrics,
    renewals: &Arc<lease::Renewals>,
) -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API server (kubeconfig or in-cluster)")?;
    let requests = metrics.api_requests.clone();
    let open_reconciles = metrics.open_reconciles.clone();
    let count =
        tower::util::MapRequestLayer::new(move |request: ::http::Request<kube::client::Body>| {
            requests
                .get_or_create(&metrics::request_labels(request.method(), request.uri()))
                .inc();
            open_reconciles.count_current();
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&lease::NoteRenewals(renewals.clone()))
        .build())
}

/// An `Api` over all namespaces, or the one the controller is limited to.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The change streams of the watches, for the controllers they wake.
struct Watched {
    rollouts: UnboundedReceiver<Rollout>,
    /// Rollout changes, for the Rollouts sharing a circuit breaker with the one that changed.
    rollout_peers: UnboundedReceiver<Rollout>,
    gates_for_rollouts: UnboundedReceiver<ErrorBudgetGate>,
    gates: UnboundedReceiver<ErrorBudgetGate>,
    replica_sets: UnboundedReceiver<ReplicaSet>,
    pods: UnboundedReceiver<Pod>,
    runs_for_rollouts: UnboundedReceiver<AnalysisRun>,
    runs: UnboundedReceiver<AnalysisRun>,
    services: UnboundedReceiver<Service>,
    templates: UnboundedReceiver<AnalysisTemplate>,
    cluster_templates: UnboundedReceiver<ClusterAnalysisTemplate>,
    templates_to_check: UnboundedReceiver<AnalysisTemplate>,
    cluster_templates_to_check: UnboundedReceiver<ClusterAnalysisTemplate>,
    routes: Vec<(traffic::RouteKind, UnboundedReceiver<DynamicObject>)>,
    /// Argo Rollouts' Rollouts (none where Argo Rollouts is not installed).
    argo_rollouts: Option<UnboundedReceiver<DynamicObject>>,
    jobs: UnboundedReceiver<Job>,
    deployments: UnboundedReceiver<PartialObjectMeta<Deployment>>,
    namespaces: UnboundedReceiver<PartialObjectMeta<Namespace>>,
}

/// Starts one watch per kind, each filling its store, and waits for every store's first full list:
/// the instance is then ready, leader or not (a standby keeps its caches warm, to take over at once).
/// Changes are passed on to the controllers only once `leading` is set. `None` if a watch stopped
/// before its first full list.
async fn start_watches(
    args: &Args,
    client: &Client,
    ctx: &Arc<Context>,
    writers: cache::Writers,
    leading: &Arc<AtomicBool>,
) -> Option<Watched> {
    let namespace = args.namespace.as_deref();
    let owned = || watcher::Config::default().labels(sluice_api::names::ROLLOUT_LABEL);
    // A routing kind whose API is not installed (Istio, the Gateway API) is not watched: a watch
    // would only fail. A Rollout that names one is told its object does not exist.
    let mut route_kinds = Vec::new();
    for kind in traffic::RouteKind::ALL {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource()),
            None => Api::all_with(client.clone(), &kind.resource()),
        };
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(kind = ?kind, "not installed: not watched");
            }
            _ => route_kinds.push((kind, api)),
        }
    }

    // Argo Rollouts' Rollouts, where installed: what they run is never written (see `argo`).
    let argo_api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &argo::resource()),
        None => Api::all_with(client.clone(), &argo::resource()),
    };
    let argo_installed = match argo_api
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(err) => {
            // Readiness must not wait on a watch that cannot work (RBAC without argoproj.io).
            tracing::warn!(%err, "Argo Rollouts' Rollouts cannot be listed: conflicts with them are not checked");
            false
        }
    };

    // One watch per kind; each feeds its store and wakes the controllers that depend on it.
    let mut rollout_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<Rollout>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::keep_all,
            owner: None,
            references: Some((rollout::references, ctx.caches.rollout_references.clone())),
            subscribers: 2,
            leading: leading.clone(),
            on_delete: Some({
                let ctx = ctx.clone();
                Arc::new(move |rollout: &Rollout| {
                    let (namespace, name) =
                        (rollout.namespace().unwrap_or_default(), rollout.name_any());
                    ctx.metrics.forget_rollout(&namespace, &name);
                    ctx.forget_rollout(&namespace, &name);
                })
            }),
        },
        writers.rollouts,
    );
    let mut gate_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<ErrorBudgetGate>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::keep_all,
            owner: None,
            references: None,
            subscribers: 2,
            leading: leading.clone(),
            on_delete: Some({
                let ctx = ctx.clone();
                Arc::new(move |gate: &ErrorBudgetGate| ctx.metrics.forget_gate(gate))
            }),
        },
        writers.gates,
    );
    let replica_set_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<ReplicaSet>(client, namespace),
            config: owned(),
            trim: cache::trim_replica_set,
            owner: Some((cache::rollout_label, ctx.caches.replica_set_index.clone())),
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.replica_sets,
    );
    let pod_changes = cache::watch(
        cache::WatchSpec {
            // The pods of Sluice's ReplicaSets, which carry its pod-template-hash label.
            api: scoped::<Pod>(client, namespace),
            config: watcher::Config::default().labels(POD_TEMPLATE_HASH_LABEL),
            trim: cache::trim_pod,
            owner: Some((cache::controlling_replica_set, ctx.caches.pod_index.clone())),
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.pods,
    );
    let mut run_changes = cache::watch(
        cache::WatchSpec {
            // All runs: the AnalysisRun controller also measures runs that people create.
            api: scoped::<AnalysisRun>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::trim_run,
            owner: Some((cache::rollout_label, ctx.caches.run_index.clone())),
            references: None,
            subscribers: 2,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.runs,
    );
    let job_changes = cache::watch(
        cache::WatchSpec {
            // Only the Jobs of job metrics.
            api: scoped::<Job>(client, namespace),
            config: watcher::Config::default().labels(sluice_api::names::ANALYSIS_RUN_LABEL),
            trim: cache::trim_job,
            owner: None,
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.jobs,
    );
    // The release records: read by reconciles (the mirror, the circuit breaker, adaptive plans),
    // waking nothing.
    cache::watch(
        cache::WatchSpec {
            api: scoped::<Release>(client, namespace),
            config: owned(),
            trim: cache::trim_release,
            owner: Some((cache::rollout_label, ctx.caches.release_index.clone())),
            references: None,
            subscribers: 0,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.releases,
    );
    // Deployments by metadata only: a Rollout's workloadRef reads the one it names on demand.
    let deployment_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<PartialObjectMeta<Deployment>>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::trim_deployment,
            owner: None,
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: Some({
                let ctx = ctx.clone();
                Arc::new(move |deployment: &PartialObjectMeta<Deployment>| {
                    ctx.caches.workloads.forget(
                        &deployment.namespace().unwrap_or_default(),
                        &deployment.name_any(),
                    );
                })
            }),
        },
        writers.deployments,
    );
    // The notification sinks: only the ConfigMaps named `sluice-notifications`, waking nothing.
    cache::watch(
        cache::WatchSpec {
            api: scoped::<ConfigMap>(client, namespace),
            config: watcher::Config::default().fields(&format!(
                "metadata.name={}",
                sluice_api::notification::CONFIG_MAP
            )),
            trim: cache::keep_all,
            owner: None,
            references: None,
            subscribers: 0,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.notification_sinks,
    );
    // The Secrets open to analysis, by their label (no other Secret is listed or kept), waking
    // nothing: a run missing one retries on its own.
    if ctx.caches.secrets.is_some() {
        cache::watch(
            cache::WatchSpec {
                api: scoped::<Secret>(client, namespace),
                config: watcher::Config::default().labels(&format!(
                    "{}=true",
                    sluice_api::names::ANALYSIS_SECRET_LABEL
                )),
                trim: cache::trim_secret,
                owner: None,
                references: None,
                subscribers: 0,
                leading: leading.clone(),
                on_delete: None,
            },
            writers.secrets,
        );
    }
    // Namespaces by metadata (the one watched, or all): the label that requires image digests.
    let namespace_changes = cache::watch(
        cache::WatchSpec {
            api: Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            config: match namespace {
                Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
                None => watcher::Config::default(),
            },
            trim: cache::trim_namespace,
            owner: None,
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.namespaces,
    );
    let service_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<Service>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::trim_service,
            owner: None,
            references: None,
            subscribers: 1,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.services,
    );
    let mut template_changes = cache::watch(
        cache::WatchSpec {
            api: scoped::<AnalysisTemplate>(client, namespace),
            config: watcher::Config::default(),
            trim: cache::keep_all,
            owner: None,
            references: None,
            subscribers: 2,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.templates,
    )
    .into_iter();
    let mut cluster_template_changes = cache::watch(
        cache::WatchSpec {
            api: Api::<ClusterAnalysisTemplate>::all(client.clone()),
            config: watcher::Config::default(),
            trim: cache::keep_all,
            owner: None,
            references: None,
            subscribers: 2,
            leading: leading.clone(),
            on_delete: None,
        },
        writers.cluster_templates,
    )
    .into_iter();
    let mut route_changes = Vec::new();
    let mut route_stores = Vec::new();
    let mut argo_changes = Vec::new();
    if argo_installed {
        route_stores.push(writers.argo_rollouts.as_reader());
        // Read by reconciles; a change wakes only a Rollout taking that one over (its deletion is
        // what a takeover waits for).
        argo_changes.extend(cache::watch(
            cache::WatchSpec {
                api: argo_api,
                config: watcher::Config::default(),
                trim: argo::trim,
                owner: None,
                references: None,
                subscribers: 1,
                leading: leading.clone(),
                on_delete: None,
            },
            writers.argo_rollouts,
        ));
    } else {
        tracing::info!("Argo Rollouts is not installed: its Rollouts are not watched");
    }
    for (kind, writer) in writers.routes {
        let Some(api) = route_kinds
            .iter()
            .find_map(|(k, api)| (*k == kind).then(|| api.clone()))
        else {
            continue;
        };
        route_stores.push(writer.as_reader());
        let changes = cache::watch(
            cache::WatchSpec {
                api,
                config: watcher::Config::default(),
                trim: kind.trim(),
                owner: None,
                references: None,
                subscribers: 1,
                leading: leading.clone(),
                on_delete: None,
            },
            writer,
        );
        route_changes.extend(changes.into_iter().map(|c| (kind, c)));
    }

    // A release must not start before everything that decides it is known.
    let caches = &ctx.caches;
    let synced = futures::future::try_join_all([
        caches.rollouts.wait_until_ready().boxed(),
        caches.gates.wait_until_ready().boxed(),
        caches.replica_sets.wait_until_ready().boxed(),
        caches.pods.wait_until_ready().boxed(),
        caches.runs.wait_until_ready().boxed(),
        caches.jobs.wait_until_ready().boxed(),
        caches.services.wait_until_ready().boxed(),
        caches.templates.wait_until_ready().boxed(),
        caches.cluster_templates.wait_until_ready().boxed(),
        caches.deployments.wait_until_ready().boxed(),
        caches.releases.wait_until_ready().boxed(),
        caches.namespaces.wait_until_ready().boxed(),
    ])
    .await
    .and(match &caches.secrets {
        Some(secrets) => secrets.wait_until_ready().await,
        None => Ok(()),
    });
    if synced.is_err() {
        tracing::error!("a watch stopped before its first full list");
        return None;
    }
    let routes_synced =
        futures::future::try_join_all(route_stores.iter().map(|store| store.wait_until_ready()))
            .await;
    if routes_synced.is_err() {
        tracing::error!("a routing object watch stopped before its first full list");
        return None;
    }
    ctx.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        rollouts = caches.rollouts.state().len(),
        gates = caches.gates.state().len(),
        replica_sets = caches.replica_sets.state().len(),
        "first full list of everything the controller reads: ready"
    );

    Some(Watched {
        rollouts: rollout_changes.remove(0),
        rollout_peers: rollout_changes.remove(0),
        gates_for_rollouts: gate_changes.remove(0),
        gates: gate_changes.remove(0),
        replica_sets: replica_set_changes
            .into_iter()
            .next()
            .unwrap_or_else(closed),
        pods: pod_changes.into_iter().next().unwrap_or_else(closed),
        runs_for_rollouts: run_changes.remove(0),
        runs: run_changes.remove(0),
        services: service_changes.into_iter().next().unwrap_or_else(closed),
        templates: template_changes.next().unwrap_or_else(closed),
        templates_to_check: template_changes.next().unwrap_or_else(closed),
        cluster_templates: cluster_template_changes.next().unwrap_or_else(closed),
        cluster_templates_to_check: cluster_template_changes.next().unwrap_or_else(closed),
        routes: route_changes,
        argo_rollouts: argo_changes.into_iter().next(),
        jobs: job_changes.into_iter().next().unwrap_or_else(closed),
        deployments: deployment_changes.into_iter().next().unwrap_or_else(closed),
        namespaces: namespace_changes.into_iter().next().unwrap_or_else(closed),
    })
}

/// Runs the controllers until a termination signal: every object in the stores first, then each
/// change the watches pass on.
async fn run_controllers(
    args: &Args,
    ctx: Arc<Context>,
    watched: Watched,
    answered: futures::channel::mpsc::UnboundedReceiver<ObjectRef<Rollout>>,
) {
    let caches = &ctx.caches;
    let store = caches.rollouts.clone();
    let gate_trigger = release_gates::GateTrigger::new(store.clone(), caches.gates.clone());
    let references = &caches.rollout_references;
    let (by_service, by_template, by_cluster_template, by_workload) = (
        references.clone(),
        references.clone(),
        references.clone(),
        references.clone(),
    );
    let replica_sets = caches.replica_sets.clone();
    let peers_store = store.clone();
    let namespace_store = store.clone();
    let rollout_trigger = cache::as_trigger_from(&store, watched.rollouts)
        // The controller's own status writes do not wake it: a plan stands on its own.
        .predicate_filter(rollout::wakes, Default::default());
    let controller = Controller::for_stream(rollout_trigger, store)
        .with_config(controller::Config::default().concurrency(args.concurrency))
        // A webhook's answer (`spec.webhooks`) moves its release at once.
        .reconcile_on(answered)
        // A ReplicaSet's or a run's change moves its release at once (an abort within a second of
        // the failing measurement).
        .owns_stream(cache::as_trigger(watched.replica_sets))
        .owns_stream(cache::as_trigger(watched.runs_for_rollouts))
        // A pod that appears, becomes ready or goes wakes its ReplicaSet's Rollout: role metadata
        // for a new pod, the next evictions of a restart.
        .watches_stream(cache::as_trigger(watched.pods), move |pod: Pod| {
            let namespace = pod.namespace()?;
            let replica_set = cache::get(
                &replica_sets,
                &namespace,
                &cache::controlling_replica_set(&pod)?,
            )?;
            let rollout = cache::rollout_label(replica_set.as_ref())?;
            Some(ObjectRef::<Rollout>::new(&rollout).within(&namespace))
        })
        // A release that ends or is let through, or a reset, changes a shared circuit breaker: the
        // other Rollouts sharing it look again (a held release may go, or must wait).
        .watches_stream(
            cache::as_trigger(watched.rollout_peers)
                .predicate_filter(circuit::concerns_peers, Default::default()),
            move |rollout: Rollout| circuit::peers(&peers_store, &rollout),
        )
        // A Service, route or template that appears, disappears or is edited by someone else is
        // looked at again at once: an InvalidSpec clears, a weight changed by hand is put back.
        .watches_stream(cache::as_trigger(watched.services), move |svc: Service| {
            by_service.referrers(svc.namespace(), Reference::Service(svc.name_any()))
        })
        // The Deployment a Rollout takes its template from: a new template starts a release, a
        // resize is answered (scaleDown), its creation clears an InvalidSpec.
        .watches_stream(
            cache::as_trigger(watched.deployments),
            move |deployment: PartialObjectMeta<Deployment>| {
                by_workload.referrers(
                    deployment.namespace(),
                    Reference::Workload(deployment.name_any()),
                )
            },
        )
        // A namespace that starts or stops requiring image digests: its Rollouts look again.
        .watches_stream(
            cache::as_trigger(watched.namespaces),
            move |namespace: PartialObjectMeta<Namespace>| {
                let name = namespace.name_any();
                namespace_store
                    .state()
                    .iter()
                    .filter(|r| r.namespace().as_deref() == Some(name.as_str()))
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            cache::as_trigger(watched.templates),
            move |template: AnalysisTemplate| {
                by_template.referrers(
                    template.namespace(),
                    Reference::Template(template.name_any()),
                )
            },
        )
        .watches_stream(
            cache::as_trigger(watched.cluster_templates),
            move |template: ClusterAnalysisTemplate| {
                by_cluster_template.referrers(None, Reference::ClusterTemplate(template.name_any()))
            },
        )
        // A gate that freezes, opens, changes its selection or is no longer evaluated wakes the
        // Rollouts it selects (and those it no longer selects) at once; routine evaluations that
        // change nothing do not.
        .watches_stream(
            cache::as_trigger(futures::stream::select(
                watched.gates_for_rollouts,
                release_gates::staleness_changes(caches.gates.clone()),
            )),
            move |gate| gate_trigger.rollouts_to_reconcile(&gate),
        )
        .shutdown_on_signal();
    // A routing object edited by someone else wakes the Rollouts that name it: a weight changed by
    // hand is put back, an InvalidSpec clears.
    let mut controller = controller;
    // An Argo Rollout a Rollout takes over that changes or goes: the takeover looks again at once.
    if let Some(changes) = watched.argo_rollouts {
        let by_argo = references.clone();
        controller = controller.watches_stream_with(
            cache::as_trigger(changes),
            move |argo: DynamicObject| {
                by_argo.referrers(argo.namespace(), Reference::TakeoverFrom(argo.name_any()))
            },
            argo::resource(),
        );
    }
    for (kind, changes) in watched.routes {
        let by_route = references.clone();
        controller = controller.watches_stream_with(
            cache::as_trigger(changes),
            move |route: DynamicObject| {
                by_route.referrers(route.namespace(), Reference::Route(kind, route.name_any()))
            },
            kind.resource(),
        );
    }
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("*"),
        "starting the Rollout controller"
    );
    let analysis_runs = Controller::for_stream(
        cache::as_trigger_from(&caches.runs, watched.runs),
        caches.runs.clone(),
    )
    // A job metric's Job that completes or fails is read at once.
    .owns_stream(cache::as_trigger(watched.jobs))
    .shutdown_on_signal()
    .run(
        analysis_run::reconcile,
        analysis_run::error_policy,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    let gates = Controller::for_stream(
        cache::as_trigger_from(&caches.gates, watched.gates),
        caches.gates.clone(),
    )
    .shutdown_on_signal()
    .run(gate::reconcile, gate::error_policy, ctx.clone())
    .for_each(|_| futures::future::ready(()));
    // Each template's `Valid` condition: what a Rollout that names it would be told.
    let templates = Controller::for_stream(
        cache::as_trigger_from(&caches.templates, watched.templates_to_check),
        caches.templates.clone(),
    )
    .shutdown_on_signal()
    .run(
        template_status::reconcile_namespaced,
        template_status::error_policy,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    let cluster_templates = Controller::for_stream(
        cache::as_trigger_from(
            &caches.cluster_templates,
            watched.cluster_templates_to_check,
        ),
        caches.cluster_templates.clone(),
    )
    .shutdown_on_signal()
    .run(
        template_status::reconcile_cluster,
        template_status::error_policy,
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    let rollouts = controller
        .run(rollout::reconcile, rollout::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    futures::join!(rollouts, analysis_runs, gates, templates, cluster_templates);
}

/// A change stream that never yields (for a kind whose watch handed out none).
fn closed<K>() -> UnboundedReceiver<K> {
    futures::channel::mpsc::unbounded().1
}
