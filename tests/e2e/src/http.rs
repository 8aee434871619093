//! A small HTTP server on loopback for the tests: answers each request as the test says (by path,
//! changeable while it runs) and records what it received, for checks, webhooks and notification
//! receivers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request line and headers as sent.
    pub head: String,
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// An answer: status code and JSON body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body: body.to_string(),
        }
    }
}

/// A running server. Paths without an answer get 404.
#[derive(Clone)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl TestServer {
    /// Starts a server on a free loopback port; it runs until the test's runtime ends.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = Self {
            address: format!("http://{}", listener.local_addr()?),
            answers: Arc::default(),
            received: Arc::default(),
        };
        let (answers, received) = (server.answers.clone(), server.received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answers, received) = (answers.clone(), received.clone());
                tokio::spawn(serve(stream, answers, received));
            }
        });
        Ok(server)
    }

    /// Answers requests for `path` with `answer` from now on.
    pub fn answer(&self, path: &str, answer: Answer) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(path.to_owned(), answer);
        }
    }

    /// Everything received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// What was received for `path`.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let answer = answers
        .lock()
        .ok()
        .and_then(|a| a.get(&request.path).cloned())
        .unwrap_or(Answer {
            status: 404,
            body: r#"{"error":"no such path"}"#.to_owned(),
        });
    if let Ok(mut received) = received.lock() {
        received.push(request);
    }
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Reads one HTTP/1.1 request from `stream`: the head, then as much body as `Content-Length` says.
/// `None` if the connection closes or fails before the head is complete.
pub async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, mut body) = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            break (head, buffer[end + 4..].to_vec());
        }
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        head,
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
        at: std::time::Instant::now(),
    })
}
