//! One webhook call (`spec.webhooks`): a POST of a JSON document to a URL the address policy
//! allows, judged by its status code alone (2xx passes). Redirects are never followed; the answer's
//! body is read (up to [`crate::prometheus::MAX_ANSWER_BYTES`]) only to quote it when it refuses.

use std::sync::Arc;
use std::time::Duration;

use crate::AddressPolicy;
use crate::prometheus::{BodyError, error_chain, read_capped};
use crate::web::{allowed_url, policy_client};

/// Most characters of a refusing answer's body quoted in its message.
const QUOTED_CHARS: usize = 200;

/// What a call got: a 2xx answer, or anything else, each said in a short sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOutcome {
    /// It answered 2xx.
    pub ok: bool,
    /// `answered 200 OK`, `answered 403 Forbidden: <body>`, or why there was no answer.
    pub message: String,
}

/// A POST of a JSON document: where, with which media type and extra headers, and how long it may
/// take.
#[derive(Clone, Debug)]
pub struct Post<'a> {
    pub url: &'a str,
    pub document: &'a serde_json::Value,
    /// `application/json` unless the format says otherwise (`application/cloudevents+json`).
    pub content_type: &'a str,
    /// Extra headers (an `Authorization` read from a Secret, a dedupe key).
    pub headers: &'a [(String, String)],
    pub timeout: Duration,
}

impl<'a> Post<'a> {
    /// A JSON document with no extra headers.
    pub fn json(url: &'a str, document: &'a serde_json::Value, timeout: Duration) -> Self {
        Self {
            url,
            document,
            content_type: "application/json",
            headers: &[],
            timeout,
        }
    }
}

/// Sends `request` and says what came of it.
pub async fn post(policy: &Arc<AddressPolicy>, request: &Post<'_>) -> CallOutcome {
    match send(policy, request).await {
        Ok(outcome) => outcome,
        Err(message) => CallOutcome { ok: false, message },
    }
}

async fn send(policy: &Arc<AddressPolicy>, request: &Post<'_>) -> Result<CallOutcome, String> {
    let (url, timeout) = (request.url, request.timeout);
    let parsed = allowed_url(policy, url)?;
    let client = policy_client(timeout, false, policy)?;
    let body = serde_json::to_vec(request.document).map_err(|e| format!("the document: {e}"))?;
    let mut post = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, request.content_type);
    for (name, value) in request.headers {
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| format!("header {name}: {e}"))?;
        post = post.header(name.as_str(), value);
    }
    let response = post.body(body).send().await.map_err(|err| {
        if err.is_timeout() {
            format!("{url} did not answer within {}s", timeout.as_secs_f64())
        } else {
            format!("could not reach {url}: {}", error_chain(&err))
        }
    })?;
    let status = response.status();
    let said = |body: &[u8]| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            let quoted: String = text.chars().take(QUOTED_CHARS).collect();
            let more = if text.chars().count() > QUOTED_CHARS {
                "…"
            } else {
                ""
            };
            format!(": {quoted}{more}")
        }
    };
    if status.is_success() {
        // A passing answer's body says nothing that counts; it is not read.
        return Ok(CallOutcome {
            ok: true,
            message: format!("answered {status}"),
        });
    }
    let body = match read_capped(response).await {
        Ok(body) => said(&body),
        Err(BodyError::TooLarge) => ": (a body too large to quote)".to_owned(),
        Err(BodyError::Read(reason)) => format!(" (its body could not be read: {reason})"),
    };
    Ok(CallOutcome {
        ok: false,
        message: format!("answered {status}{body}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-answer HTTP server on loopback: answers `status` with `body` and hands back the request.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    fn loopback() -> Arc<AddressPolicy> {
        Arc::new(AddressPolicy::new(vec!["127.0.0.1".parse().expect("rule")]))
    }

    #[tokio::test]
    async fn a_2xx_answer_passes_and_the_document_is_posted_as_json() {
        let (url, server) = serve_once("200 OK", "").await;
        let document = serde_json::json!({"name": "web", "phase": "Waiting"});
        let outcome = post(
            &loopback(),
            &Post::json(&url, &document, Duration::from_secs(5)),
        )
        .await;
        assert_eq!(
            outcome,
            CallOutcome {
                ok: true,
                message: "answered 200 OK".to_owned()
            }
        );
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /hook "), "{request}");
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        assert!(request.ends_with(&document.to_string()), "{request}");
    }

    #[tokio::test]
    async fn a_refusal_quotes_the_answer_and_the_policy_is_kept() {
        let (url, _server) = serve_once("403 Forbidden", "not approved yet").await;
        let empty = serde_json::json!({});
        let outcome = post(
            &loopback(),
            &Post::json(&url, &empty, Duration::from_secs(5)),
        )
        .await;
        assert_eq!(outcome.message, "answered 403 Forbidden: not approved yet");
        assert!(!outcome.ok);
        // The default policy does not reach loopback.
        let denied = post(
            &Arc::new(AddressPolicy::default()),
            &Post::json(&url, &empty, Duration::from_secs(5)),
        )
        .await;
        assert!(!denied.ok);
        assert!(
            denied.message.starts_with("Sluice may not reach"),
            "{}",
            denied.message
        );
    }
}
