//! The web provider (Argo Rollouts' `web` metric): an HTTP GET, POST or PUT whose JSON answer,
//! picked by a JSONPath, the metric's conditions judge. `{{args.NAME}}` in the URL, header values and
//! body is replaced by the argument's value (a value read from a Secret is redacted from what the run
//! records, as for queries). The URL must pass the controller's address policy; redirects are never
//! followed; answers are read up to [`MAX_ANSWER_BYTES`] and
//! parsed only when they hold at most [`MAX_ANSWER_VALUES`] values.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json_path::JsonPath;
use sluice_api::analysis::{AnalysisPhase, Measurement, Metric, WebMethod, WebMetric};
use sluice_api::common::PrometheusConnection;

use crate::address::PolicyResolver;
use crate::condition::{ConditionError, Judge, QueryResult, ResultShape};
use crate::prometheus::{
    BodyError, Connection, MAX_ANSWER_BYTES, cap, error_chain, install_crypto_provider, read_capped,
};
use crate::provider::{Provider, RunContext, error_measurement};

/// Seconds a request may take when the metric does not say (as Argo Rollouts).
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 10;

/// A web metric, with its JSONPath parsed and its conditions compiled.
#[derive(Debug)]
pub struct WebProvider<'a> {
    spec: &'a WebMetric,
    path: Result<JsonPath, String>,
    conditions: Result<Judge, ConditionError>,
}

impl<'a> WebProvider<'a> {
    pub fn new(spec: &'a WebMetric, metric: &Metric) -> Self {
        Self {
            spec,
            path: json_path(spec.json_path.as_deref()),
            conditions: Judge::new(
                ResultShape::Json,
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
            ),
        }
    }

    fn timeout(&self) -> Duration {
        let seconds = self
            .spec
            .timeout_seconds
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
    }
}

/// A JSONPath as Kubernetes and Argo Rollouts write it (`{$.data.ok}`, `{.data.ok}`) or as RFC 9535
/// does (`$.data.ok`); none is the whole answer.
fn json_path(text: Option<&str>) -> Result<JsonPath, String> {
    let text = text.unwrap_or("$").trim();
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text)
        .trim();
    let rooted = if inner.starts_with('$') {
        inner.to_owned()
    } else if inner.starts_with('.') || inner.starts_with('[') {
        format!("${inner}")
    } else {
        format!("$.{inner}")
    };
    JsonPath::parse(&rooted).map_err(|err| format!("jsonPath {text:?} is not a JSONPath: {err}"))
}

/// `fill` in every string value of a JSON document (not its keys): a value can change a string,
/// never the document's shape.
pub fn fill_json(
    template: &serde_json::Value,
    values: &BTreeMap<String, String>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match template {
        Value::String(text) => Value::String(fill(text, values)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| fill_json(item, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, value)| Ok((key.clone(), fill_json(value, values)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// `{{args.NAME}}` (spaces inside the braces allowed) replaced by its value, as written: the URL's
/// host is checked against the address policy after this, and a header value cannot hold a line
/// break. A placeholder with no value is an error naming it.
pub fn fill(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| {
            format!("{{{{{name}}}}} is used but no argument of that name was given")
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Provider for WebProvider<'_> {
    fn name(&self) -> &'static str {
        "web"
    }

    fn connection(&self) -> Option<&PrometheusConnection> {
        None
    }

    fn validate(&self) -> Result<(), String> {
        self.path.as_ref().map(drop).map_err(Clone::clone)?;
        self.conditions
            .as_ref()
            .map(drop)
            .map_err(ToString::to_string)
    }

    fn check(&self, args: &BTreeMap<String, String>) -> Result<(), String> {
        self.validate()?;
        fill(&self.spec.url, args)?;
        for header in &self.spec.headers {
            fill(&header.value, args).map_err(|e| format!("header {}: {e}", header.key))?;
        }
        if let Some(body) = &self.spec.body {
            fill(body, args).map_err(|e| format!("body: {e}"))?;
        }
        if let Some(body) = &self.spec.json_body {
            fill_json(body, args).map_err(|e| format!("jsonBody: {e}"))?;
        }
        Ok(())
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
        let started = now();
        let (path, conditions) = match (&self.path, &self.conditions) {
            (Ok(path), Ok(conditions)) => (path, conditions),
            (Err(problem), _) => return error_measurement(problem.clone(), now),
            (_, Err(problem)) => return error_measurement(problem.to_string(), now),
        };
        let url = match fill(&self.spec.url, args) {
            Ok(url) => url,
            Err(problem) => return error_measurement(format!("url: {problem}"), now),
        };
        let mut metadata = BTreeMap::from([("url".to_owned(), cap(&url))]);
        let (phase, value, message) = match self.fetch(connection, &url, args).await {
            Ok(answer) => match pick(path, &answer) {
                Ok(result) => {
                    let shown = result.display();
                    let verdict = conditions.judge(result).await;
                    (verdict.phase, Some(cap(&shown)), verdict.message)
                }
                Err(problem) => (AnalysisPhase::Error, None, problem),
            },
            Err(problem) => (AnalysisPhase::Error, None, problem),
        };
        metadata.insert(
            "method".to_owned(),
            method_name(self.spec.method).to_owned(),
        );
        Measurement {
            phase,
            value,
            started_at: Some(Time(started)),
            finished_at: Some(Time(now())),
            message: Some(cap(&message)),
            metadata,
        }
    }
}

fn method_name(method: Option<WebMethod>) -> &'static str {
    match method.unwrap_or(WebMethod::Get) {
        WebMethod::Get => "GET",
        WebMethod::Post => "POST",
        WebMethod::Put => "PUT",
    }
}

/// The most values a web answer may hold: what its JSON is parsed into is bounded by this, not
/// only by its bytes.
pub const MAX_ANSWER_VALUES: usize = 100_000;

/// How many values JSON text holds, counted without building any: each value but the first
/// follows a `[`, `{` (an object's first member), `,` or `:` outside strings, so this is a close
/// upper bound.
fn count_values(text: &[u8]) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for byte in text {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// What `path` picks from the answer: one value as it is, several as a list. Nothing picked is an
/// Error (the answer does not have the field), not "no data".
fn pick(path: &JsonPath, answer: &serde_json::Value) -> Result<QueryResult, String> {
    let nodes = path.query(answer).all();
    match nodes.as_slice() {
        [] => Err(format!(
            "the jsonPath matched nothing in the answer {}",
            cap(&answer.to_string())
        )),
        [one] => Ok(QueryResult::Json((*one).clone())),
        many => Ok(QueryResult::Json(serde_json::Value::Array(
            many.iter().map(|v| (*v).clone()).collect(),
        ))),
    }
}

/// One HTTP client per (timeout in ms, insecure, address policy); a bounded number, forgotten all at
/// once past the bound.
type ClientKey = (u64, bool, String);
static CLIENTS: LazyLock<Mutex<BTreeMap<ClientKey, reqwest::Client>>> =
    LazyLock::new(Default::default);
const MAX_CLIENTS: usize = 64;

impl WebProvider<'_> {
    fn client(&self, connection: &Connection) -> Result<reqwest::Client, String> {
        policy_client(
            self.timeout(),
            self.spec.insecure.unwrap_or(false),
            &connection.policy,
        )
    }
}

/// `url` parsed, if it is an http or https URL whose host `policy` allows (what the host resolves
/// to is checked when the client connects).
pub(crate) fn allowed_url(
    policy: &crate::AddressPolicy,
    url: &str,
) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url} is not an http or https URL"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url} names no host"))?;
    policy
        .check_host(host)
        .map_err(|e| format!("Sluice may not reach {url}: {e}"))?;
    Ok(parsed)
}

/// An HTTP client that reaches only what `policy` allows (each name's addresses checked as it is
/// resolved), never follows a redirect and gives up after `timeout`; shared by every caller with the
/// same settings.
pub(crate) fn policy_client(
    timeout: Duration,
    insecure: bool,
    policy: &Arc<crate::AddressPolicy>,
) -> Result<reqwest::Client, String> {
    {
        let key = (
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            insecure,
            policy.to_string(),
        );
        if let Some(client) = CLIENTS.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(client);
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // Straight to the address the policy checked: never through a proxy the environment names
            // (HTTP_PROXY), which would resolve and reach the host itself.
            .no_proxy()
            .tls_danger_accept_invalid_certs(insecure)
            // A redirect would reach an address the policy never saw: refused, saying where to.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "the server redirected to {to}; Sluice never follows redirects (use that address)"
                ))
            }))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .build()
            .map_err(|e| format!("could not build an HTTP client: {e}"))?;
        if let Ok(mut clients) = CLIENTS.lock() {
            if clients.len() >= MAX_CLIENTS {
                clients.clear();
            }
            clients.insert(key, client.clone());
        }
        Ok(client)
    }
}

impl WebProvider<'_> {
    /// Sends the request and reads the answer as JSON, or says why there is none.
    async fn fetch(
        &self,
        connection: &Connection,
        url: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, String> {
        let parsed = allowed_url(&connection.policy, url)?;
        let client = self.client(connection)?;
        let method = match self.spec.method.unwrap_or(WebMethod::Get) {
            WebMethod::Get => reqwest::Method::GET,
            WebMethod::Post => reqwest::Method::POST,
            WebMethod::Put => reqwest::Method::PUT,
        };
        let mut request = client.request(method, parsed);
        for header in &self.spec.headers {
            let value = fill(&header.value, args)?;
            let name = HeaderName::from_bytes(header.key.as_bytes())
                .map_err(|e| format!("header name {:?}: {e}", header.key))?;
            // Refused at apply too: a Host header would send the request to another virtual host.
            if name == reqwest::header::HOST {
                return Err(
                    "a Host header is not allowed: the url says where the request goes".to_owned(),
                );
            }
            let value =
                HeaderValue::from_str(&value).map_err(|e| format!("header {}: {e}", header.key))?;
            request = request.header(name, value);
        }
        if let Some(body) = &self.spec.body {
            request = request.body(fill(body, args)?);
        }
        if let Some(body) = &self.spec.json_body {
            let text = serde_json::to_string(&fill_json(body, args)?)
                .map_err(|e| format!("jsonBody: {e}"))?;
            let typed = self
                .spec
                .headers
                .iter()
                .any(|h| h.key.eq_ignore_ascii_case("content-type"));
            if !typed {
                request = request.header(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            request = request.body(text);
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("could not reach {url}: {}", error_chain(&err)))?;
        let status = response.status();
        let too_large = || {
            format!(
                "{url} answered more than {} MiB; Sluice reads at most that",
                MAX_ANSWER_BYTES >> 20
            )
        };
        let body = read_capped(response).await.map_err(|err| match err {
            BodyError::TooLarge => too_large(),
            BodyError::Read(reason) => format!("could not read {url}'s answer: {reason}"),
        })?;
        if !status.is_success() {
            return Err(format!(
                "{url} answered HTTP {status}: {}",
                cap(&String::from_utf8_lossy(&body))
            ));
        }
        // Counted before anything is built: 4 MiB of `[0,0,...]` would be two million values.
        let values = count_values(&body);
        if values > MAX_ANSWER_VALUES {
            return Err(format!(
                "{url} answered JSON of more than {MAX_ANSWER_VALUES} values ({values}); pick \
                 less with the server's query parameters"
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{url} answered HTTP {status} with something that is not JSON ({e}): {}",
                cap(&String::from_utf8_lossy(&body))
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_counted_without_building_them() {
        assert!(count_values(b"[0,0,0]") >= 3);
        assert!(count_values(br#"{"a": [1, 2], "b": "x,y[z]:\"q"}"#) < 10);
        let huge = format!("[{}0]", "0,".repeat(2_000_000));
        assert!(count_values(huge.as_bytes()) > MAX_ANSWER_VALUES);
    }

    #[test]
    fn json_paths_as_kubernetes_argo_and_rfc_9535_write_them() {
        let answer = json!({"data": {"ok": true, "rates": [0.1, 0.2]}});
        for (path, want) in [
            ("{$.data.ok}", json!(true)),
            ("{.data.ok}", json!(true)),
            ("$.data.ok", json!(true)),
            ("data.rates[1]", json!(0.2)),
            ("{$.data.rates[*]}", json!([0.1, 0.2])),
        ] {
            let parsed = json_path(Some(path)).expect(path);
            assert_eq!(
                pick(&parsed, &answer),
                Ok(QueryResult::Json(want)),
                "{path}"
            );
        }
        assert_eq!(
            pick(&json_path(None).expect("whole"), &answer),
            Ok(QueryResult::Json(answer.clone()))
        );
        let missing = pick(&json_path(Some("{$.nope}")).expect("path"), &answer);
        assert!(missing.is_err_and(|e| e.contains("matched nothing")));
        assert!(json_path(Some("{$.data[}")).is_err());
    }

    #[test]
    fn placeholders_are_filled_and_a_missing_one_is_named() {
        let values = BTreeMap::from([("args.token".to_owned(), "s3cret".to_owned())]);
        assert_eq!(
            fill("Bearer {{ args.token }}", &values).as_deref(),
            Ok("Bearer s3cret")
        );
        let err = fill("{{args.other}}", &values).expect_err("missing");
        assert!(err.contains("args.other"), "{err}");
        assert_eq!(fill("{\"a\": 1}", &values).as_deref(), Ok("{\"a\": 1}"));
    }

    #[test]
    fn a_json_body_is_filled_in_its_strings_and_keeps_its_shape() {
        let values = BTreeMap::from([("args.name".to_owned(), "a\", \"b\": \"c".to_owned())]);
        let body =
            json!({"name": "{{args.name}}", "list": ["x-{{args.name}}", 2], "{{args.name}}": true});
        let filled = fill_json(&body, &values).expect("filled");
        assert_eq!(
            filled,
            json!({"name": "a\", \"b\": \"c", "list": ["x-a\", \"b\": \"c", 2], "{{args.name}}": true})
        );
        assert!(fill_json(&json!({"x": "{{args.other}}"}), &values).is_err());
    }
}
