//! `sluice-traffic-sim`: simulated HTTP traffic to one namespace's pods, as Prometheus metrics.
//!
//! Watches the namespace's Pods, Services and HTTPRoutes; every tick, each app (pods' `app` label)
//! receives `--rps` × tick worth of requests, split between its versions (pod-template hashes:
//! `sluice.dev/pod-template-hash`, else Argo Rollouts' `rollouts-pod-template-hash`) as its route
//! (through the Ready pods each Service's selector matches) or its Ready pod counts say, and each
//! version answers them as its pods' `sim.sluice.dev/*` annotations say; what the route sends to a
//! Service selecting no Ready pod fails with a 503. Serves `GET /metrics` and `GET /healthz`, and
//! prints `listening on ADDR` on stdout once bound.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sluice_traffic_sim::metrics::CONTENT_TYPE;
use sluice_traffic_sim::split::{route_backends, route_mirrors};
use sluice_traffic_sim::version::APP_LABEL;
use sluice_traffic_sim::{ServiceTarget, Simulator, mirror_shares, split_traffic, versions};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sluice-traffic-sim",
    about = "Simulated per-version HTTP traffic to a namespace's pods, served as Prometheus metrics"
)]
struct Args {
    /// The namespace whose pods, Services and HTTPRoutes to watch.
    #[arg(long)]
    namespace: String,
    /// Address to serve /metrics and /healthz on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Requests per second each app receives, split between its versions.
    #[arg(long, default_value_t = 200.0)]
    rps: f64,
    /// Milliseconds between two batches of requests.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rps.is_finite() && args.rps >= 0.0,
        "--rps must be a non-negative number"
    );
    // Stdout carries only the address line a test waits for; logs go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let simulator = Arc::new(Mutex::new(Simulator::new(&args.namespace, args.rps)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(simulator.clone());
    let mut server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::try_default().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    // Only pods that can belong to a version: those of an app. Which hash label they carry
    // (Sluice's or Argo Rollouts') a selector cannot say, so `versions` picks.
    let pods = reflect(
        pods,
        reflector::store::Writer::default(),
        watcher::Config::default().labels(APP_LABEL),
    );
    let services = reflect(
        Api::<Service>::namespaced(client.clone(), &args.namespace),
        reflector::store::Writer::default(),
        watcher::Config::default(),
    );
    let routes = watch_routes(&client, &args.namespace).await;
    // No traffic before every store holds a full list: a route seen ahead of the pods behind it
    // would count requests as failed that no real gateway would have failed.
    pods.wait_until_ready()
        .await
        .context("the pod watch stopped")?;
    services
        .wait_until_ready()
        .await
        .context("the Service watch stopped")?;
    if let Some(routes) = &routes {
        routes
            .wait_until_ready()
            .await
            .context("the HTTPRoute watch stopped")?;
    }
    tracing::info!(namespace = %args.namespace, rps = args.rps, %addr, "simulating traffic");

    let tick = Duration::from_millis(args.tick_ms);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut empty_before = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            result = tokio::signal::ctrl_c() => {
                result?;
                break;
            }
            served = &mut server => {
                anyhow::bail!("the HTTP server stopped: {served:?}");
            }
        }
        // Requests follow the time that really passed, so a late tick does not lose any.
        let now = tokio::time::Instant::now();
        let elapsed = now - last;
        last = now;
        let pod_list = pods.state();
        let versions = versions(pod_list.iter().map(|p| p.as_ref()));
        let targets: BTreeMap<String, ServiceTarget> = services
            .state()
            .iter()
            .filter_map(|svc| Some((svc.metadata.name.clone()?, ServiceTarget::of(svc)?)))
            .collect();
        let route_list = routes
            .as_ref()
            .map(|routes| routes.state())
            .unwrap_or_default();
        let backends: Vec<_> = route_list
            .iter()
            .flat_map(|route| route_backends(route))
            .collect();
        let mirrors: Vec<_> = route_list
            .iter()
            .flat_map(|route| route_mirrors(route))
            .collect();
        let split = split_traffic(&versions, &targets, &backends);
        if split.empty_services != empty_before {
            // What a test that counted failed requests wants to know: when, and what the pods were.
            let ready: Vec<String> = versions
                .iter()
                .map(|(key, version)| format!("{}/{}: {}", key.app, key.hash, version.ready_pods))
                .collect();
            tracing::info!(
                empty = ?split.empty_services,
                ?ready,
                "routed Services selecting no Ready pod (their requests fail with 503) changed"
            );
            empty_before = split.empty_services.clone();
        }
        let mirrored = mirror_shares(&versions, &targets, &mirrors);
        match simulator.lock() {
            Ok(mut simulator) => {
                simulator.step(&versions, &split.shares, &mirrored, elapsed);
                simulator.fail_unserved(&split.unserved, elapsed);
            }
            Err(_) => anyhow::bail!("a metrics request panicked while holding the simulator"),
        }
    }
    Ok(())
}

async fn metrics(State(simulator): State<Arc<Mutex<Simulator>>>) -> impl IntoResponse {
    let text = match simulator.lock() {
        Ok(simulator) => simulator.metrics().encode(),
        Err(_) => Err(std::fmt::Error),
    };
    match text {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Keeps a store of `api`'s objects up to date in a background task.
fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = writer.as_reader();
    let events = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(log_errors(events));
    store
}

async fn log_errors<T>(events: impl Stream<Item = Result<T, watcher::Error>>) {
    events
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(%err, "watch failed; retrying");
            }
        })
        .await;
}

/// Watches the namespace's HTTPRoutes, unless the Gateway API is not installed.
async fn watch_routes(client: &Client, namespace: &str) -> Option<Store<DynamicObject>> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    if let Err(kube::Error::Api(status)) = routes.list(&ListParams::default().limit(1)).await
        && status.code == 404
    {
        tracing::info!("the Gateway API's HTTPRoute is not installed: splitting by pod count");
        return None;
    }
    Some(reflect(
        routes,
        reflector::store::Writer::new(resource),
        watcher::Config::default(),
    ))
}
