//! A minimal plain-HTTP GET for health checks and test probes of loopback services.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// GET `path` from `base` (`http://host:port`); returns the body of a 2xx answer.
pub fn get(base: &str, path: &str) -> Result<String> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("{base} is not an http:// URL"))?
        .trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{authority} did not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body.to_owned())
}

/// GET `path` from a loopback port.
pub fn get_port(port: u16, path: &str) -> Result<String> {
    get(&format!("http://127.0.0.1:{port}"), path)
}
