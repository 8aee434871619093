//! `kubectl sluice dashboard`: a web page of every Rollout, its release, analysis, gates, breaker
//! and history, live.
//!
//! One watch per kind feeds a board of trimmed views ([`state::Board`]); every page gets the board
//! when it connects and then each change as a server-sent event, so no browser costs the API server
//! a request. The page (HTML, CSS and plain JavaScript, no build step) is served from the binary and
//! needs nothing from the network. Actions (promote, abort, retry, pause, resume, restart) are off
//! unless started with `--allow-actions`; they write the same request annotation as the plugin's
//! commands, with the identity of the dashboard's credentials, so the API server's RBAC decides.

mod state;
mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::analysis::AnalysisRun;
use sluice_api::gate::ErrorBudgetGate;
use sluice_api::names::{ACTION_ANNOTATION, ROLLOUT_LABEL, RolloutAction};
use sluice_api::release::Release;
use sluice_api::rollout::Rollout;
use tokio::sync::broadcast::error::RecvError;

use state::Board;
use view::Kind;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
/// The header an action must carry: the token the page was served with (a page of another site
/// cannot read it, so cannot act through a browser that has this page open).
const TOKEN_HEADER: &str = "x-sluice-token";
/// The actions the page offers (a breaker reset needs a reason: `kubectl sluice breaker reset`).
const PAGE_ACTIONS: [RolloutAction; 7] = [
    RolloutAction::Promote,
    RolloutAction::PromoteFull,
    RolloutAction::Abort,
    RolloutAction::Retry,
    RolloutAction::Pause,
    RolloutAction::Resume,
    RolloutAction::Restart,
];

/// How the dashboard is served.
pub struct Options {
    /// Where to listen.
    pub address: SocketAddr,
    /// Only this namespace; `None` for all.
    pub namespace: Option<String>,
    /// Offer promote, abort, retry, pause, resume and restart on the page.
    pub allow_actions: bool,
    /// Host names the page may be reached by besides localhost (an Ingress's, say).
    pub allowed_hosts: Vec<String>,
}

struct App {
    board: Board,
    client: Client,
    options: Options,
    /// The page, with its configuration in place.
    index: String,
    /// What actions must carry in [`TOKEN_HEADER`].
    token: String,
    /// Who the actions are recorded as asked by (the dashboard's credentials).
    requester: Option<String>,
}

pub async fn run(client: Client, options: Options) -> Result<ExitCode> {
    let token = if options.allow_actions {
        new_token()?
    } else {
        String::new()
    };
    let requester = if options.allow_actions {
        crate::requester(client.clone()).await
    } else {
        None
    };
    let scope = match &options.namespace {
        Some(namespace) => format!("namespace {namespace}"),
        None => "all namespaces".to_owned(),
    };
    let config = json!({"actions": options.allow_actions, "token": token, "scope": scope,
                        "version": env!("CARGO_PKG_VERSION")});
    // `</` cannot end the script element the configuration sits in.
    let index = INDEX.replace(
        "__SLUICE_CONFIG__",
        &config.to_string().replace("</", "<\\/"),
    );
    let listener = tokio::net::TcpListener::bind(options.address)
        .await
        .with_context(|| format!("listening on {}", options.address))?;
    let address = listener.local_addr()?;
    let app = Arc::new(App {
        board: Board::default(),
        client,
        options,
        index,
        token,
        requester,
    });
    for kind in Kind::ALL {
        tokio::spawn(watch(app.clone(), kind));
    }
    let router = Router::new()
        .route("/", get(page))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/app.css", get(|| asset("text/css; charset=utf-8", STYLE)))
        .route("/api/state", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/rollouts/{namespace}/{name}/{action}", post(act))
        .layer(middleware::from_fn_with_state(
            Arc::new(allowed_hosts(address, &app.options.allowed_hosts)),
            guard_host,
        ))
        // Probes reach a pod by its IP: they say nothing about the cluster, so any Host may ask.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(middleware::map_response(security_headers))
        .with_state(app.clone());
    let access = if app.options.allow_actions {
        "actions allowed"
    } else {
        "read-only; --allow-actions to act from the page"
    };
    // The first line says where: scripts (and the e2e tests) read the address from it.
    println!("Sluice dashboard: http://{address}/ ({scope}, {access})");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tokio::select! {
        served = axum::serve(listener, router) => served.context("serving the dashboard")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// A random token for actions.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("no randomness for a token: {err}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Rollout => ApiResource::erase::<Rollout>(&()),
        Kind::AnalysisRun => ApiResource::erase::<AnalysisRun>(&()),
        Kind::ErrorBudgetGate => ApiResource::erase::<ErrorBudgetGate>(&()),
        Kind::Release => ApiResource::erase::<Release>(&()),
        Kind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
    }
}

/// Keeps the board's objects of `kind` up to date, for as long as the dashboard runs.
async fn watch(app: Arc<App>, kind: Kind) {
    let resource = resource(kind);
    let api: Api<DynamicObject> = match &app.options.namespace {
        Some(namespace) => Api::namespaced_with(app.client.clone(), namespace, &resource),
        None => Api::all_with(app.client.clone(), &resource),
    };
    let config = match kind {
        // Only a Rollout's ReplicaSets.
        Kind::ReplicaSet => watcher::Config::default().labels(ROLLOUT_LABEL),
        _ => watcher::Config::default(),
    };
    let mut events = watcher(api, config).default_backoff().boxed();
    let board = &app.board;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                let message = format!("watching {}s: {err}", kind.as_str());
                eprintln!("{message}");
                board.watch_failed(kind, message);
                continue;
            }
        };
        board.watch_works(kind);
        let json = |object: &DynamicObject| serde_json::to_value(object).unwrap_or_default();
        match event {
            watcher::Event::Init => board.list_started(kind),
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                board.apply(kind, &json(&object))
            }
            watcher::Event::InitDone => board.list_done(kind),
            watcher::Event::Delete(object) => board.delete(kind, &json(&object)),
        }
    }
}

/// The names a request's Host may carry: localhost's, the address listened on (unless it is every
/// address) and the ones allowed on the command line.
fn allowed_hosts(address: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !address.ip().is_unspecified() {
        hosts.push(match address {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        });
    }
    hosts.extend(extra.iter().map(|host| host.to_ascii_lowercase()));
    hosts
}

/// Refuses a request whose Host is not one the dashboard is reached by: a page of another site that
/// points its own name at this address (DNS rebinding, through a port-forward too) must not read
/// the board or the actions' token.
async fn guard_host(
    State(allowed): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = host_name(&host);
    if !allowed.iter().any(|allowed| allowed == name) {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "the dashboard answers to {} (--allowed-host adds more), not {host:?}",
                allowed.join(", ")
            ),
        )
            .into_response();
    }
    next.run(request).await
}

/// What the browser may do with the page: load its own script, style and events only, and never
/// show it inside another site's frame (where a click could be someone else's, clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Adds the page's security headers to every response.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The name in a Host header, without its port (`[::1]:3100` is `[::1]`).
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn no_store(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn page(State(app): State<Arc<App>>) -> Response {
    no_store("text/html; charset=utf-8", app.index.clone())
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    no_store(content_type, body.to_owned())
}

async fn ready(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.board.ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of every kind",
        )
    }
}

async fn snapshot(State(app): State<Arc<App>>) -> Response {
    no_store("application/json", app.board.snapshot().to_string())
}

/// The board, then each change, as server-sent events (`snapshot`, `upsert`, `delete`, `problem`).
async fn events(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before reading the board: a change in between is sent twice, never missed.
    let changes = app.board.subscribe();
    let first = Event::default()
        .event("snapshot")
        .data(app.board.snapshot().to_string());
    let stream = futures::stream::unfold(
        (changes, Some(first), app),
        |(mut changes, first, app)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (changes, None, app)));
            }
            let event = match changes.recv().await {
                Ok(change) => Event::default().event(change.event).data(&*change.data),
                // Too far behind: the whole board again.
                Err(RecvError::Lagged(_)) => Event::default()
                    .event("snapshot")
                    .data(app.board.snapshot().to_string()),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (changes, None, app)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `POST /api/rollouts/{namespace}/{name}/{action}`: writes the request annotation, as
/// `kubectl sluice <action>` does; the page sees what the controller made of it through the watch.
async fn act(
    State(app): State<Arc<App>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if !app.options.allow_actions {
        return (
            StatusCode::FORBIDDEN,
            "actions are off: start the dashboard with --allow-actions".to_owned(),
        );
    }
    if !carries_token(&headers, &app.token) {
        return (
            StatusCode::FORBIDDEN,
            "the request does not carry the page's token: reload the page".to_owned(),
        );
    }
    // Checked before any request is made of them: a path is the client's text.
    if !is_dns_label(&namespace) || !is_dns_subdomain(&name) {
        return (
            StatusCode::BAD_REQUEST,
            "the namespace must be a DNS label and the name a DNS subdomain".to_owned(),
        );
    }
    let Some(action) = PAGE_ACTIONS.into_iter().find(|a| a.as_str() == action) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}"),
        );
    };
    if app
        .options
        .namespace
        .as_ref()
        .is_some_and(|scope| *scope != namespace)
    {
        return (
            StatusCode::FORBIDDEN,
            format!("this dashboard serves another namespace than {namespace:?}"),
        );
    }
    let rollouts: Api<Rollout> = Api::namespaced(app.client.clone(), &namespace);
    let result = async {
        let rollout = rollouts.get(&name).await?;
        if let Some(previous) = rollout.annotations().get(ACTION_ANNOTATION) {
            return Ok(Err(format!(
                "the earlier request {previous:?} has not been taken yet: is sluice-controller running?"
            )));
        }
        crate::write_request(&rollouts, &name, action, app.requester.as_deref(), None).await?;
        Ok(Ok(()))
    }
    .await;
    match result {
        Ok(Ok(())) => (
            StatusCode::ACCEPTED,
            format!("rollout.sluice.dev/{name}: {} requested", action.as_str()),
        ),
        Ok(Err(pending)) => (StatusCode::CONFLICT, pending),
        Err(kube::Error::Api(status)) => (
            StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY),
            status.message,
        ),
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

/// Whether the request carries the page's token, compared in constant time (how much of a guess
/// matched does not show in how long the answer takes).
fn carries_token(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(TOKEN_HEADER)
        .is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(token.as_bytes())))
}

/// An RFC 1123 label, as a namespace's name is: up to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit.
fn is_dns_label(text: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(text.chars().next())
        && edge(text.chars().last())
}

/// An RFC 1123 subdomain, as an object's name is: labels joined by dots, up to 253 characters.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_names_reach_the_api_and_the_token_must_match_whole() {
        for good in ["web", "team-a", "a1", "web.v2"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "Web",
            "-web",
            "web-",
            "a/b",
            "..",
            "web%2F..",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_label("team-a") && !is_dns_label("team.a"));
        let mut headers = HeaderMap::new();
        assert!(!carries_token(&headers, "t0ken"));
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("t0ke"));
        assert!(
            !carries_token(&headers, "t0ken"),
            "a prefix is not the token"
        );
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("t0ken"));
        assert!(carries_token(&headers, "t0ken"));
    }

    #[test]
    fn a_host_is_allowed_by_its_name_whatever_its_port() {
        assert_eq!(host_name("localhost:3100"), "localhost");
        assert_eq!(host_name("[::1]:3100"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("dash.example"), "dash.example");
        let everywhere = allowed_hosts(
            SocketAddr::from(([0, 0, 0, 0], 3100)),
            &["Dash.Example".to_owned()],
        );
        assert_eq!(
            everywhere,
            ["localhost", "127.0.0.1", "[::1]", "dash.example"]
        );
        let one = allowed_hosts(SocketAddr::from(([10, 0, 0, 7], 3100)), &[]);
        assert!(one.contains(&"10.0.0.7".to_owned()));
    }
}
