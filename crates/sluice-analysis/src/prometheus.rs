//! The Prometheus provider: a PromQL query (`{{args.NAME}}` replaced by the argument's value) whose
//! answer the metric's conditions judge. No data or NaN is Inconclusive; an unreachable server or
//! a refused query is an Error with the server's words.
//!
//! Also the client for a Prometheus-compatible HTTP API (prometheus-http-query over reqwest and
//! rustls) that this provider, the baseline judge and ErrorBudgetGates send their queries with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use prometheus_http_query::response::Data;
use reqwest::header::{HeaderName, HeaderValue};
use sluice_api::analysis::{AnalysisPhase, Measurement, Metric, PrometheusMetric};
use sluice_api::common::PrometheusConnection;

use crate::address::{AddressPolicy, PolicyResolver};
use crate::condition::{ConditionError, Judge, QueryResult, ResultShape};
use crate::provider::{Provider, RunContext, error_measurement};
use crate::substitute;

/// A metric's query, with its conditions compiled.
#[derive(Debug)]
pub struct PrometheusProvider<'a> {
    spec: &'a PrometheusMetric,
    conditions: Result<Judge, ConditionError>,
}

impl<'a> PrometheusProvider<'a> {
    /// The query of `spec`, judged by `metric`'s conditions. A condition that does not compile is
    /// reported by [`Provider::check`].
    pub fn new(spec: &'a PrometheusMetric, metric: &Metric) -> Self {
        Self {
            spec,
            conditions: Judge::new(
                ResultShape::Numbers,
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
            ),
        }
    }
}

impl Provider for PrometheusProvider<'_> {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn connection(&self) -> Option<&PrometheusConnection> {
        Some(&self.spec.connection)
    }

    fn validate(&self) -> Result<(), String> {
        self.conditions
            .as_ref()
            .map(drop)
            .map_err(ToString::to_string)
    }

    fn check(&self, args: &BTreeMap<String, String>) -> Result<(), String> {
        self.validate()?;
        substitute(&self.spec.query, args)
            .map(drop)
            .map_err(|missing| missing.to_string())
    }

    async fn check_conditions(&self) -> Result<Result<(), String>, String> {
        match &self.conditions {
            Ok(conditions) => Ok(conditions.check().await?.map_err(|e| e.to_string())),
            Err(invalid) => Ok(Err(invalid.to_string())),
        }
    }

    async fn measure(
        &self,
        connection: &Connection,
        args: &BTreeMap<String, String>,
        _run: &RunContext<'_>,
        now: impl Fn() -> Timestamp + Send + Sync,
    ) -> Measurement {
        let conditions = match &self.conditions {
            Ok(conditions) => conditions,
            Err(err) => return error_measurement(err.to_string(), now),
        };
        match substitute(&self.spec.query, args) {
            Ok(query) => measure(connection, &query, conditions, now).await,
            Err(missing) => error_measurement(missing.to_string(), now),
        }
    }
}

/// Takes one measurement: sends `promql`, judges the answer.
async fn measure(
    connection: &Connection,
    promql: &str,
    conditions: &Judge,
    now: impl Fn() -> Timestamp,
) -> Measurement {
    let started = now();
    let mut metadata = BTreeMap::new();
    metadata.insert("query".to_owned(), cap(promql));
    let (phase, value, message) = match query(connection, promql).await {
        Ok(result) => {
            let shown = result.display();
            let verdict = conditions.judge(result).await;
            (verdict.phase, Some(cap(&shown)), verdict.message)
        }
        Err(err) => (AnalysisPhase::Error, None, err.to_string()),
    };
    Measurement {
        phase,
        value,
        started_at: Some(Time(started)),
        finished_at: Some(Time(now())),
        message: Some(cap(&message)),
        metadata,
    }
}

/// The most of an answer read: a condition judges a few numbers, not a dump.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most series an answer may hold.
pub const MAX_SERIES: usize = 1000;
/// The most samples a range answer may hold, over all its series.
pub const MAX_SAMPLES: usize = 10_000;
/// The longest query, value or message a measurement records, so that a run's status stays far
/// below the API server's object size limit whatever the answers.
pub const MAX_RECORDED_CHARS: usize = 1024;

/// `text`, cut to [`MAX_RECORDED_CHARS`] characters with a note of how much was left out.
pub fn cap(text: &str) -> String {
    let total = text.chars().count();
    if total <= MAX_RECORDED_CHARS {
        return text.to_owned();
    }
    let kept: String = text.chars().take(MAX_RECORDED_CHARS).collect();
    format!("{kept}… ({} more characters)", total - MAX_RECORDED_CHARS)
}

/// Seconds a query may take when the metric does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// Credentials, already read from their Secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug logs.
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

/// Everything needed to send a query, with Secrets resolved.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Base URL, e.g. `http://prometheus.monitoring.svc:9090`.
    pub address: String,
    pub timeout: Duration,
    pub credentials: Option<Credentials>,
    /// Extra headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Skip TLS verification.
    pub insecure: bool,
    /// A CA bundle (PEM) to verify the server with.
    pub ca_pem: Option<Vec<u8>>,
    /// Where queries may be sent (the controller's `--allow-provider-address` rules).
    pub policy: Arc<AddressPolicy>,
}

impl Connection {
    /// A connection with no credentials and the default timeout.
    pub fn plain(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
            credentials: None,
            headers: Vec::new(),
            insecure: false,
            ca_pem: None,
            policy: Arc::new(AddressPolicy::default()),
        }
    }
}

/// Why a query gave no answer. Either makes the measurement an Error.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server could not be reached, timed out, or answered something that is not the query API.
    #[error("could not query Prometheus at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The server refused the query (a PromQL syntax error, a bad header, authentication).
    #[error("Prometheus at {address} refused the query: {reason}")]
    Refused { address: String, reason: String },
    /// The connection settings are unusable (a bad header name, a bad CA bundle).
    #[error("invalid connection to {address}: {reason}")]
    Invalid { address: String, reason: String },
    /// The address policy does not let the controller reach the address.
    #[error("Sluice may not query {address}: {reason}")]
    Denied { address: String, reason: String },
    /// The answer is larger than Sluice reads.
    #[error("Prometheus at {address} answered too much: {reason}")]
    Oversized { address: String, reason: String },
}

/// Installs rustls' ring provider for this process, once; kube and reqwest both use rustls and
/// neither picks a provider by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What makes two connections' HTTP clients interchangeable.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    address: String,
    timeout: Duration,
    insecure: bool,
    ca_pem: Option<Vec<u8>>,
    policy: String,
}

/// One HTTP client (with its connection pool and TLS set-up) per provider configuration; a bounded
/// number, forgotten all at once past the bound.
static CLIENTS: LazyLock<Mutex<HashMap<ClientKey, prometheus_http_query::Client>>> =
    LazyLock::new(Default::default);
const MAX_CLIENTS: usize = 256;

fn client(connection: &Connection) -> Result<prometheus_http_query::Client, QueryError> {
    let key = ClientKey {
        address: connection.address.clone(),
        timeout: connection.timeout,
        insecure: connection.insecure,
        ca_pem: connection.ca_pem.clone(),
        policy: connection.policy.to_string(),
    };
    if let Some(client) = CLIENTS.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(client);
    }
    let client = new_client(connection)?;
    if let Ok(mut clients) = CLIENTS.lock() {
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
    }
    Ok(client)
}

fn new_client(connection: &Connection) -> Result<prometheus_http_query::Client, QueryError> {
    install_crypto_provider();
    let invalid = |reason: String| QueryError::Invalid {
        address: connection.address.clone(),
        reason,
    };
    let mut builder = reqwest::Client::builder()
        .timeout(connection.timeout)
        // Straight to the address the policy checked: never through a proxy the environment names
        // (HTTP_PROXY), which would resolve and reach the host itself.
        .no_proxy()
        .tls_danger_accept_invalid_certs(connection.insecure)
        // A redirect would reach an address the policy never saw: refused, saying where to.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let to = attempt.url().to_string();
            attempt.error(format!(
                "the server redirected to {to}; Sluice never follows redirects (use that address)"
            ))
        }))
        .dns_resolver(Arc::new(PolicyResolver {
            policy: connection.policy.clone(),
        }));
    if let Some(pem) = &connection.ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| invalid(format!("the CA bundle is not PEM: {e}")))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder
        .build()
        .map_err(|e| invalid(format!("could not build an HTTP client: {e}")))?;
    prometheus_http_query::Client::from(http, &connection.address)
        .map_err(|e| invalid(format!("the address is not a URL: {e}")))
}

/// Sends an instant query and returns its result.
pub async fn query(connection: &Connection, promql: &str) -> Result<QueryResult, QueryError> {
    Ok(match raw_query(connection, promql).await? {
        Data::Scalar(sample) => QueryResult::Scalar(sample.value()),
        Data::Vector(series) => {
            QueryResult::Vector(series.iter().map(|s| s.sample().value()).collect())
        }
        Data::Matrix(series) => QueryResult::Matrix(
            series
                .iter()
                .map(|s| s.samples().iter().map(|x| x.value()).collect())
                .collect(),
        ),
    })
}

/// Sends an instant query and returns each series' labels with its value (a scalar has no labels).
pub async fn query_series(
    connection: &Connection,
    promql: &str,
) -> Result<Vec<(HashMap<String, String>, f64)>, QueryError> {
    Ok(match raw_query(connection, promql).await? {
        Data::Scalar(sample) => vec![(HashMap::new(), sample.value())],
        Data::Vector(series) => series
            .into_iter()
            .map(|s| {
                let (labels, sample) = s.into_inner();
                (labels, sample.value())
            })
            .collect(),
        Data::Matrix(series) => series
            .into_iter()
            .filter_map(|s| {
                let (labels, samples) = s.into_inner();
                samples.last().map(|x| (labels, x.value()))
            })
            .collect(),
    })
}

async fn raw_query(connection: &Connection, promql: &str) -> Result<Data, QueryError> {
    let denied = |reason: String| QueryError::Denied {
        address: connection.address.clone(),
        reason,
    };
    let url = reqwest::Url::parse(&connection.address).map_err(|e| QueryError::Invalid {
        address: connection.address.clone(),
        reason: format!("the address is not a URL: {e}"),
    })?;
    let host = url
        .host_str()
        .ok_or_else(|| denied("the address names no host".to_owned()))?;
    connection
        .policy
        .check_host(host)
        .map_err(|e| denied(e.to_string()))?;
    let client = client(connection)?;
    let invalid = |reason: String| QueryError::Invalid {
        address: connection.address.clone(),
        reason,
    };
    let mut request = client
        .query(promql)
        .timeout(i64::try_from(connection.timeout.as_millis()).unwrap_or(i64::MAX));
    for (name, value) in &connection.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| invalid(format!("header name {name:?}: {e}")))?;
        // Refused at apply too: a Host header would send the query to another virtual host.
        if name == reqwest::header::HOST {
            return Err(invalid("a Host header is not allowed".to_owned()));
        }
        let value =
            HeaderValue::from_str(value).map_err(|e| invalid(format!("header {name}: {e}")))?;
        request = request.header(name, value);
    }
    match &connection.credentials {
        Some(Credentials::Basic { username, password }) => {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let value = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|e| invalid(format!("basic credentials: {e}")))?;
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        Some(Credentials::Bearer(token)) => {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|e| invalid(format!("bearer token: {e}")))?;
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        None => {}
    }
    let unreachable = |reason: String| QueryError::Unreachable {
        address: connection.address.clone(),
        reason,
    };
    let oversized = |reason: String| QueryError::Oversized {
        address: connection.address.clone(),
        reason,
    };
    let response = request
        .get_raw()
        .await
        .map_err(|err| unreachable(error_chain(&err)))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_owned();
    let too_large = || {
        oversized(format!(
            "more than {} MiB; Sluice reads at most that (aggregate the query)",
            MAX_ANSWER_BYTES >> 20
        ))
    };
    let body = read_capped(response).await.map_err(|err| match err {
        BodyError::TooLarge => too_large(),
        BodyError::Read(reason) => unreachable(reason),
    })?;
    parse_answer(
        &connection.address,
        &status.to_string(),
        &content_type,
        &body,
    )
}

/// Why a response's body was not read whole.
pub(crate) enum BodyError {
    /// It is longer than [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// The connection failed while it was read (the error chain).
    Read(String),
}

/// A response's body, read up to [`MAX_ANSWER_BYTES`]: a declared length above it is refused before
/// reading, an undeclared one as soon as it passes the cap.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| BodyError::Read(error_chain(&err)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads an answer of the query API (`status` and `content_type` as the server sent them): its data,
/// or why it is no answer (a refusal, something that is not the API's JSON, more than Sluice
/// judges). Any bytes give one or the other.
pub fn parse_answer(
    address: &str,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Data, QueryError> {
    let unreachable = |reason: String| QueryError::Unreachable {
        address: address.to_owned(),
        reason,
    };
    let oversized = |reason: String| QueryError::Oversized {
        address: address.to_owned(),
        reason,
    };
    if !content_type.starts_with("application/json") {
        return Err(unreachable(format!(
            "answered HTTP {status} with {content_type}, not the query API's JSON"
        )));
    }
    // Count the series before building them: 100,000 small series fit in the bytes read, and
    // would take ten times that once built.
    if let Ok(shape) = serde_json::from_slice::<Shape>(body) {
        let series = shape.data.map_or(0, |d| d.result.len());
        if series > MAX_SERIES {
            return Err(oversized(format!(
                "{series} series; Sluice judges at most {MAX_SERIES} series and {MAX_SAMPLES} \
                 samples (aggregate the query)"
            )));
        }
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|err| {
        unreachable(format!(
            "answered HTTP {status} with JSON that is not the query API's: {err}"
        ))
    })?;
    let data = match answer {
        Answer::Success { data } => data.into_inner().0,
        Answer::Error { error_type, error } => {
            return Err(QueryError::Refused {
                address: address.to_owned(),
                reason: format!("{error_type}: {error}"),
            });
        }
    };
    let (series, samples) = match &data {
        Data::Vector(v) => (v.len(), v.len()),
        Data::Matrix(m) => (m.len(), m.iter().map(|s| s.samples().len()).sum()),
        Data::Scalar(_) => (1, 1),
    };
    if series > MAX_SERIES || samples > MAX_SAMPLES {
        return Err(oversized(format!(
            "{series} series and {samples} samples; Sluice judges at most {MAX_SERIES} series and \
             {MAX_SAMPLES} samples (aggregate the query)"
        )));
    }
    Ok(data)
}

/// The query API's answer, read for its number of series only (nothing of each is kept).
#[derive(serde::Deserialize)]
struct Shape {
    #[serde(default)]
    data: Option<ShapeData>,
}

#[derive(serde::Deserialize)]
struct ShapeData {
    #[serde(default)]
    result: Vec<serde::de::IgnoredAny>,
}

/// The query API's answer.
#[derive(serde::Deserialize)]
#[serde(tag = "status")]
enum Answer {
    #[serde(rename = "success")]
    Success {
        data: prometheus_http_query::response::PromqlResult,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "errorType", default)]
        error_type: String,
        #[serde(default)]
        error: String,
    },
}

/// An error with its causes, so "error sending request" says why (connection refused, 401, ...).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(success: &str, query: &str) -> Metric {
        serde_json::from_value(serde_json::json!({
            "name": "errors",
            "successCondition": success,
            "provider": {"prometheus": {"address": "http://127.0.0.1:1", "query": query}},
        }))
        .expect("metric")
    }

    fn provider(metric: &Metric) -> PrometheusProvider<'_> {
        let spec = metric.provider.prometheus.as_ref().expect("prometheus");
        PrometheusProvider::new(spec, metric)
    }

    /// A condition that does not compile, or a placeholder with no argument, spoils every measurement:
    /// the check finds them before the first.
    #[test]
    fn the_check_finds_a_bad_condition_and_a_missing_argument() {
        let args: BTreeMap<String, String> =
            [("args.service".to_owned(), "checkout".to_owned())].into();
        let good = metric("result[0] < 1", "up{svc=\"{{args.service}}\"}");
        assert_eq!(provider(&good).check(&args), Ok(()));

        let bad = metric("result[0] <", "up");
        let problem = provider(&bad).check(&args).expect_err("bad condition");
        assert!(
            problem.starts_with("successCondition \"result[0] <\" is not a valid expression"),
            "{problem}"
        );

        let missing = metric("result[0] < 1", "up{svc=\"{{args.nope}}\"}");
        assert_eq!(
            provider(&missing).check(&args),
            Err("the query uses {{args.nope}} but no argument of that name was given".to_owned())
        );
    }

    /// Should a measurement be taken anyway, the missing argument is its Error; no query is sent.
    #[tokio::test]
    async fn a_missing_argument_is_an_error_measurement() {
        let missing = metric("result[0] < 1", "up{svc=\"{{args.nope}}\"}");
        let m = provider(&missing)
            .measure(
                &Connection::plain("http://127.0.0.1:1"),
                &BTreeMap::new(),
                &RunContext::default(),
                Timestamp::now,
            )
            .await;
        assert_eq!(m.phase, AnalysisPhase::Error);
        assert_eq!(
            m.message.as_deref(),
            Some("the query uses {{args.nope}} but no argument of that name was given")
        );
    }

    /// A stand-in server on loopback answering every request with `head`, then `body` in chunks
    /// of `chunk` bytes, `pause` apart.
    async fn hostile(
        head: String,
        body: Vec<u8>,
        chunk: usize,
        pause: std::time::Duration,
    ) -> Connection {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for part in body.chunks(chunk.max(1)) {
                        if stream.write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                });
            }
        });
        let mut connection = Connection::plain(&address);
        connection.policy = Arc::new(AddressPolicy::new(vec!["127.0.0.1".parse().expect("rule")]));
        connection.timeout = std::time::Duration::from_secs(2);
        connection
    }

    fn json_head(length: Option<usize>) -> String {
        let length = length.map_or_else(
            || "Transfer-Encoding: identity\r\nConnection: close\r\n".to_owned(),
            |n| format!("Content-Length: {n}\r\n"),
        );
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n")
    }

    fn vector(series: usize) -> Vec<u8> {
        let items: Vec<String> = (0..series)
            .map(|i| format!(r#"{{"metric":{{"i":"{i}"}},"value":[1700000000,"1"]}}"#))
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            items.join(",")
        )
        .into_bytes()
    }

    /// Hostile answers end in an Error that says what was wrong, never in a verdict, and never
    /// read more than the cap.
    #[tokio::test]
    async fn hostile_answers_are_errors_within_bounds() {
        let pause = std::time::Duration::ZERO;
        let huge = vec![b' '; MAX_ANSWER_BYTES + 1];
        let cases: Vec<(&str, Connection, &str)> = vec![
            (
                "a declared 4 MiB + 1 body",
                hostile(json_head(Some(huge.len())), huge.clone(), 1 << 16, pause).await,
                "answered too much: more than 4 MiB",
            ),
            (
                "an undeclared 4 MiB + 1 body",
                hostile(json_head(None), huge, 1 << 16, pause).await,
                "answered too much: more than 4 MiB",
            ),
            (
                "1001 series",
                {
                    let body = vector(MAX_SERIES + 1);
                    hostile(json_head(Some(body.len())), body, 1 << 16, pause).await
                },
                "1001 series",
            ),
            (
                "invalid JSON",
                hostile(json_head(Some(9)), b"{not json".to_vec(), 64, pause).await,
                "JSON that is not the query API's",
            ),
            (
                "an HTML error page",
                hostile(
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n"
                        .to_owned(),
                    b"<html>".to_vec(),
                    64,
                    pause,
                )
                .await,
                "answered HTTP 502 Bad Gateway with text/html",
            ),
            (
                "a slow drip",
                {
                    let body = vector(1);
                    hostile(
                        json_head(Some(body.len())),
                        body,
                        1,
                        std::time::Duration::from_millis(200),
                    )
                    .await
                },
                "could not query Prometheus",
            ),
        ];
        let good = metric("result[0] == 1", "up");
        for (what, connection, says) in cases {
            let started = std::time::Instant::now();
            let m = provider(&good)
                .measure(
                    &connection,
                    &BTreeMap::new(),
                    &RunContext::default(),
                    Timestamp::now,
                )
                .await;
            let message = m.message.clone().unwrap_or_default();
            assert_eq!(m.phase, AnalysisPhase::Error, "{what}: {message}");
            assert!(message.contains(says), "{what}: {message}");
            assert!(message.chars().count() <= MAX_RECORDED_CHARS + 40, "{what}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(4),
                "{what} took {:?}",
                started.elapsed()
            );
        }
        // Within the caps, the answer is judged.
        let body = vector(MAX_SERIES);
        let connection = hostile(json_head(Some(body.len())), body, 1 << 16, pause).await;
        let m = provider(&metric("result[0] == 1", "up"))
            .measure(
                &connection,
                &BTreeMap::new(),
                &RunContext::default(),
                Timestamp::now,
            )
            .await;
        assert_eq!(m.phase, AnalysisPhase::Successful, "{:?}", m.message);
        assert!(m.value.is_some_and(|v| v.contains("more characters")));
    }
}
