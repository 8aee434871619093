//! `sluice-controller`: the operator.
//!
//! Watches Rollouts (all namespaces, or one with `--namespace`) and the ReplicaSets they own, and
//! moves each release through the state machine in sluice-engine. Serves `/healthz`, `/readyz` (once
//! the first full list of Rollouts is in) and `/metrics`; logs JSON with each Rollout's namespace and
//! name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use sluice_api::Rollout;
use tracing_subscriber::EnvFilter;

mod error;
mod http;
mod metrics;
mod rollout;

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
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
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

    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics::Metrics::default(),
        ready: AtomicBool::new(false),
    });
    tokio::spawn(http::serve(args.http_addr, ctx.clone()));

    let (rollouts, replica_sets): (Api<Rollout>, Api<ReplicaSet>) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let rollouts_for_readiness = rollouts.clone();
    let controller = Controller::new(rollouts, watcher::Config::default())
        .owns(
            replica_sets,
            watcher::Config::default().labels(rollout::ROLLOUT_LABEL),
        )
        .shutdown_on_signal();
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
    controller
        .run(rollout::reconcile, rollout::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    Ok(())
}
