//! A Prometheus of a test's own holding weeks of synthetic SLI history, for error-budget tests.
//!
//! [`SloHistory`] describes per-minute request counters for one service; [`SloPrometheus::start`]
//! backfills them with `promtool tsdb create-blocks-from openmetrics`, starts a Prometheus on the
//! result, and has it scrape a live exporter in this process every second, so a test can add events
//! while it runs ([`SloPrometheus::add_live`]) and move the error budget.
//!
//! Series: `slo_requests_total{service, code="200"|"500", source="history"|"live"}`. The history
//! series start at 0 and have a sample at every minute (the same timestamps for both codes), so
//! `increase()` over a window that holds the whole history does no start extrapolation and the ratio
//! of bad to total events is exact. The live series are backfilled at 0 over the same minutes, so
//! `increase()` over them is measured over the whole history's span and extrapolates live events by
//! at most a scrape interval's share of that span (not of the few seconds they have been scraped).

use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

use crate::{http_get, percent_encode};

/// The counter the history and the live exporter serve (family `slo_requests`).
pub const SLO_METRIC: &str = "slo_requests_total";

/// How long [`SloPrometheus::start`] waits for Prometheus to be ready, and
/// [`SloPrometheus::wait_scraped`] for a scrape.
const WAIT: Duration = Duration::from_secs(60);

/// One stretch of synthetic traffic, oldest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stretch {
    /// How many minutes it lasts.
    pub minutes: u32,
    /// Requests in each of its minutes.
    pub requests_per_minute: u64,
    /// The share of requests that fail (`code="500"`), from 0 to 1.
    pub error_ratio: f64,
}

/// Synthetic per-minute request counters for one service, ending shortly before "now".
#[derive(Debug, Clone)]
pub struct SloHistory {
    service: String,
    /// (bad, total) events of each minute, oldest first.
    minutes: Vec<(u64, u64)>,
    end_offset: Duration,
}

impl SloHistory {
    /// `stretches` oldest first; the history ends `end_offset` (default 30 s, see
    /// [`SloHistory::with_end_offset`]) before the moment the Prometheus is started.
    ///
    /// Errors per minute are `requests_per_minute * error_ratio` rounded with a carried remainder
    /// (each minute gets the rounded cumulative expectation minus what earlier minutes got), so the
    /// totals are exact integers. To fit a `30d` query window whole, the stretches should add up to
    /// less than 30 days by more than the time between [`SloPrometheus::start`] and the query.
    ///
    /// # Panics
    /// If an error ratio is not within 0..=1.
    pub fn new(service: &str, stretches: Vec<Stretch>) -> Self {
        let mut minutes = Vec::new();
        let mut expected_errors = 0.0_f64;
        let mut errors_so_far = 0_u64;
        for stretch in &stretches {
            assert!(
                (0.0..=1.0).contains(&stretch.error_ratio),
                "error ratio {} is not within 0..=1",
                stretch.error_ratio
            );
            for _ in 0..stretch.minutes {
                expected_errors += stretch.requests_per_minute as f64 * stretch.error_ratio;
                let cumulative = expected_errors.round() as u64;
                let errors = cumulative
                    .saturating_sub(errors_so_far)
                    .min(stretch.requests_per_minute);
                errors_so_far += errors;
                minutes.push((errors, stretch.requests_per_minute));
            }
        }
        Self {
            service: service.to_owned(),
            minutes,
            end_offset: Duration::from_secs(30),
        }
    }

    /// A constant error ratio over `days` days at `requests_per_minute`.
    pub fn steady(service: &str, days: u32, requests_per_minute: u64, error_ratio: f64) -> Self {
        Self::new(
            service,
            vec![Stretch {
                minutes: days * 24 * 60,
                requests_per_minute,
                error_ratio,
            }],
        )
    }

    /// Ends the history `end_offset` (rounded down to the millisecond) before Prometheus starts,
    /// instead of 30 s.
    pub fn with_end_offset(mut self, end_offset: Duration) -> Self {
        self.end_offset = end_offset;
        self
    }

    /// The service label of every series.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// How many minutes the history spans.
    pub fn minutes(&self) -> u32 {
        u32::try_from(self.minutes.len()).unwrap_or(u32::MAX)
    }

    /// Exact (bad, total) events in the history.
    pub fn totals(&self) -> (u64, u64) {
        sum(&self.minutes)
    }

    /// Exact (bad, total) events in the last `minutes` minutes of the history (all of it if it is
    /// shorter).
    pub fn totals_last(&self, minutes: u32) -> (u64, u64) {
        let skip = self.minutes.len().saturating_sub(minutes as usize);
        sum(&self.minutes[skip..])
    }

    /// Writes the history as OpenMetrics, its last sample at `end_ms` (Unix milliseconds): for each
    /// minute boundary, oldest first, the four series (history 200 and 500 at their cumulative
    /// counts, live 200 and 500 at 0). promtool keeps only in-order samples of a series (it drops
    /// the others silently), so time order is a must.
    fn write_openmetrics(&self, out: &mut impl Write, end_ms: i64) -> Result<()> {
        let service = escape_label(&self.service);
        let series = |code: &str, source: &str| {
            format!("{SLO_METRIC}{{service=\"{service}\",code=\"{code}\",source=\"{source}\"}}")
        };
        let (good_history, bad_history) = (series("200", "history"), series("500", "history"));
        let (good_live, bad_live) = (series("200", "live"), series("500", "live"));
        writeln!(out, "# TYPE slo_requests counter")?;
        let count = self.minutes.len() as i64;
        let (mut bad, mut good) = (0_u64, 0_u64);
        // One sample before the first minute (at 0) and one after each.
        for i in 0..=count {
            if i > 0 {
                let (b, t) = self.minutes[(i - 1) as usize];
                bad += b;
                good += t - b;
            }
            let ms = end_ms - (count - i) * 60_000;
            let ts = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
            writeln!(out, "{good_history} {good} {ts}")?;
            writeln!(out, "{bad_history} {bad} {ts}")?;
            writeln!(out, "{good_live} 0 {ts}")?;
            writeln!(out, "{bad_live} 0 {ts}")?;
        }
        writeln!(out, "# EOF")?;
        Ok(())
    }
}

/// `slo_requests_total{service="SERVICE",...}` with the extra `matchers`.
fn selector(service: &str, matchers: &[(&str, &str)]) -> String {
    let mut selector = format!("{SLO_METRIC}{{service=\"{}\"", escape_label(service));
    for (name, value) in matchers {
        let _ = write!(selector, ",{name}=\"{}\"", escape_label(value));
    }
    selector.push('}');
    selector
}

/// `sum(increase(SELECTOR[{{window}}]))`.
fn increase_query(selector: &str) -> String {
    format!("sum(increase({selector}[{{{{window}}}}]))")
}

fn sum(minutes: &[(u64, u64)]) -> (u64, u64) {
    minutes
        .iter()
        .fold((0, 0), |(bad, total), (b, t)| (bad + b, total + t))
}

/// Escapes a label value for PromQL and the exposition formats.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A Prometheus of its own for one test: the history backfilled, and a live exporter in this process
/// it scrapes every second. Killed (and its directory removed) when dropped.
pub struct SloPrometheus {
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    service: String,
    /// The last history sample, in Unix seconds.
    history_end: f64,
    child: Child,
    dir: PathBuf,
    exporter: LiveExporter,
}

impl SloPrometheus {
    /// Backfills `history` into a fresh TSDB under the temporary directory, starts Prometheus on it
    /// (90 days' retention, listening on a free loopback port) and waits until it answers for the
    /// history (about half a second in all).
    ///
    /// It does not wait for the first scrape of the live exporter: Prometheus 2.42 hands its scrape
    /// targets over only on a 5-second tick, so that comes about 5 s after start-up. Until then the
    /// live series hold their backfilled 0; [`SloPrometheus::wait_scraped`] waits for it.
    pub async fn start(history: &SloHistory) -> Result<Self> {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?;
        let end_ms = i64::try_from(started.saturating_sub(history.end_offset).as_millis())
            .context("the clock is too far in the future")?;
        let prometheus = sluice_testbed::prometheus::ensure_installed()?;
        let promtool = prometheus
            .parent()
            .map(|dir| dir.join("promtool"))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from("promtool"));

        let dir = unique_temp_dir()?;
        let dir = TempDir(dir);
        let exporter = LiveExporter::start(&history.service)?;

        // Writing ~170 000 lines and running promtool block; keep them off the test's runtime.
        let data = dir.0.join("data");
        let backfill = {
            let history = history.clone();
            let dir = dir.0.clone();
            let data = data.clone();
            tokio::task::spawn_blocking(move || backfill(&history, end_ms, &promtool, &dir, &data))
        };
        backfill.await.context("the backfill task panicked")??;

        let config = dir.0.join("prometheus.yml");
        std::fs::write(&config, config_yaml(exporter.addr))
            .with_context(|| format!("writing {}", config.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let logs = crate::repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let log = logs.join(format!(
            "slo-prometheus-{}-{port}.log",
            history
                .service
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=90d")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", prometheus.display()))?;
        let mut this = Self {
            url: format!("http://127.0.0.1:{port}"),
            log,
            service: history.service.clone(),
            history_end: end_ms as f64 / 1000.0,
            child,
            dir: dir.take(),
            exporter,
        };
        this.wait_ready(history).await?;
        Ok(this)
    }

    /// Adds live events (good and bad) for the service: counters the exporter serves grow by these
    /// amounts.
    pub fn add_live(&self, good: u64, bad: u64) {
        self.exporter
            .counters
            .good
            .fetch_add(good, Ordering::SeqCst);
        self.exporter.counters.bad.fetch_add(bad, Ordering::SeqCst);
    }

    /// Waits until Prometheus has scraped the live counters at their current values (or later ones),
    /// so a query that follows sees the events. The first call after start-up may take 5 s (see
    /// [`SloPrometheus::start`]); later ones take up to a second.
    pub async fn wait_scraped(&self) -> Result<()> {
        let good = self.exporter.counters.good.load(Ordering::SeqCst) as f64;
        let bad = self.exporter.counters.bad.load(Ordering::SeqCst) as f64;
        let live = self.selector(&[("source", "live")]);
        // Only scraped samples: the backfilled ones (at 0) end with the history.
        let promql = format!(
            "{live} and on (code) (timestamp({live}) > {:.3})",
            self.history_end
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let scraped = self.query_vector(&promql).await?;
            let value = |code: &str| {
                scraped
                    .iter()
                    .find(|(labels, _)| labels.get("code").and_then(|c| c.as_str()) == Some(code))
                    .map(|(_, value)| *value)
            };
            let (scraped_good, scraped_bad) = (value("200"), value("500"));
            if scraped_good.is_some_and(|v| v >= good) && scraped_bad.is_some_and(|v| v >= bad) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus at {} has not scraped the live counters at good={good}, bad={bad} after \
                     {WAIT:?} (it has good={scraped_good:?}, bad={scraped_bad:?}); see {}",
                    self.url,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// PromQL for bad events over `{{window}}` (literally; the operator replaces it), e.g.
    /// `sum(increase(slo_requests_total{service="checkout",code="500"}[{{window}}]))`.
    pub fn error_query(&self) -> String {
        increase_query(&self.selector(&[("code", "500")]))
    }

    /// PromQL for all events over `{{window}}`, e.g.
    /// `sum(increase(slo_requests_total{service="checkout"}[{{window}}]))`.
    pub fn total_query(&self) -> String {
        increase_query(&self.selector(&[]))
    }

    /// Runs an instant query and returns its single value (an error if it has none, or several).
    pub async fn query_value(&self, promql: &str) -> Result<f64> {
        let result = self.query_vector(promql).await?;
        match result.as_slice() {
            [(_, value)] => Ok(*value),
            [] => bail!("{promql} returned no value"),
            _ => bail!("{promql} returned {} values, not one", result.len()),
        }
    }

    /// `slo_requests_total{service="X",...}` with the extra `matchers`.
    fn selector(&self, matchers: &[(&str, &str)]) -> String {
        selector(&self.service, matchers)
    }

    /// Runs an instant query; a scalar answers as one value without labels.
    async fn query_vector(
        &self,
        promql: &str,
    ) -> Result<Vec<(serde_json::Map<String, serde_json::Value>, f64)>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let body = http_get(&self.url, &path)
            .await
            .with_context(|| format!("querying {promql}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("parsing the answer {body}"))?;
        let data = &answer["data"];
        let sample_value = |pair: &serde_json::Value| -> Result<f64> {
            pair[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no value in {pair}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .with_context(|| format!("no result in {body}"))?
                .iter()
                .map(|sample| {
                    let labels = sample["metric"].as_object().cloned().unwrap_or_default();
                    Ok((labels, sample_value(&sample["value"])?))
                })
                .collect(),
            Some("scalar") => Ok(vec![(Default::default(), sample_value(&data["result"])?)]),
            _ => bail!("{promql} answered neither a vector nor a scalar: {body}"),
        }
    }

    /// Waits for `/-/ready`, then until the backfilled series answer.
    async fn wait_ready(&mut self, history: &SloHistory) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        let series = format!("count(last_over_time({}[31d]))", self.selector(&[]));
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Prometheus exited ({status}) while starting; see {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            let last_error = match http_get(&self.url, "/-/ready").await {
                Ok(_) => match self.query_value(&series).await {
                    Ok(count) if count >= 4.0 => break,
                    Ok(count) => anyhow::anyhow!("{count} of 4 series"),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if Instant::now() > deadline {
                bail!(
                    "Prometheus at {} did not answer for the {} minutes of history of {:?} within {WAIT:?} \
                     (last: {last_error:#}); see {}",
                    self.url,
                    history.minutes(),
                    history.service,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for SloPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Prometheus configuration: a 1 s scrape of the live exporter, without the `job` and
/// `instance` labels so the live series continue their backfilled part.
fn config_yaml(exporter: SocketAddr) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 5s\n\
         scrape_configs:\n\
         - job_name: sluice-slo-live\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         \x20 static_configs:\n  - targets: ['{exporter}']\n\
         \x20 metric_relabel_configs:\n  - action: labeldrop\n    regex: job|instance\n"
    )
}

/// Writes the history to `dir/history.om` and has promtool turn it into blocks in `data`.
fn backfill(
    history: &SloHistory,
    end_ms: i64,
    promtool: &Path,
    dir: &Path,
    data: &Path,
) -> Result<()> {
    let input = dir.join("history.om");
    let file =
        std::fs::File::create(&input).with_context(|| format!("creating {}", input.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    history
        .write_openmetrics(&mut out, end_ms)
        .and_then(|()| Ok(out.flush()?))
        .with_context(|| format!("writing {}", input.display()))?;
    drop(out);
    // promtool cuts 2 h blocks by default and reads the whole file again for each (a minute for 30
    // days); its hidden --max-block-duration makes a few large blocks instead.
    let output = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg("--max-block-duration=720h")
        .arg(&input)
        .arg(data)
        .output()
        .with_context(|| format!("running {}", promtool.display()))?;
    ensure!(
        output.status.success(),
        "{} tsdb create-blocks-from openmetrics {} failed ({}): {}{}",
        promtool.display(),
        input.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
    std::fs::remove_file(&input).with_context(|| format!("removing {}", input.display()))?;
    Ok(())
}

/// A new directory under the temporary directory.
fn unique_temp_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "sluice-slo-prometheus-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes its directory when dropped, unless taken.
struct TempDir(PathBuf);

impl TempDir {
    fn take(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The last lines of a log, for errors.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The live counters the exporter serves.
#[derive(Default)]
struct LiveCounters {
    good: AtomicU64,
    bad: AtomicU64,
}

/// A tiny HTTP server on a thread of its own (so it answers whatever the test's runtime is doing):
/// any request gets the live series in the Prometheus text format.
struct LiveExporter {
    counters: Arc<LiveCounters>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveExporter {
    fn start(service: &str) -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the live exporter's port")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(LiveCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let service = escape_label(service);
        let thread = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("slo-live-exporter".to_owned())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            let _ = serve(stream, &service, &counters);
                        }
                    }
                })
                .context("starting the live exporter's thread")?
        };
        Ok(Self {
            counters,
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LiveExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request's head and answers it with the live series, closing the connection.
fn serve(mut stream: TcpStream, service: &str, counters: &LiveCounters) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let good = counters.good.load(Ordering::SeqCst);
    let bad = counters.bad.load(Ordering::SeqCst);
    let body = format!(
        "# TYPE {SLO_METRIC} counter\n\
         {SLO_METRIC}{{service=\"{service}\",code=\"200\",source=\"live\"}} {good}\n\
         {SLO_METRIC}{{service=\"{service}\",code=\"500\",source=\"live\"}} {bad}\n"
    );
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_rounded_with_a_carry() {
        let history = SloHistory::new(
            "web",
            vec![
                Stretch {
                    minutes: 10,
                    requests_per_minute: 1000,
                    error_ratio: 0.0005,
                },
                Stretch {
                    minutes: 3,
                    requests_per_minute: 100,
                    error_ratio: 0.03,
                },
            ],
        );
        assert_eq!(history.totals(), (5 + 9, 10_300));
        assert_eq!(history.totals_last(3), (9, 300));
        assert_eq!(history.totals_last(100), history.totals());
    }

    #[test]
    fn the_openmetrics_file_starts_at_zero_and_ends_at_the_end() -> Result<()> {
        let history = SloHistory::steady("web", 0, 10, 0.5);
        let history = SloHistory {
            minutes: vec![(1, 10), (2, 10)],
            ..history
        };
        let mut out = Vec::new();
        history.write_openmetrics(&mut out, 1_000_120_500)?;
        let text = String::from_utf8(out)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 3 * 4 + 1);
        assert_eq!(
            lines[1],
            r#"slo_requests_total{service="web",code="200",source="history"} 0 1000000.500"#
        );
        assert_eq!(
            lines[10],
            r#"slo_requests_total{service="web",code="500",source="history"} 3 1000120.500"#
        );
        assert_eq!(lines[13], "# EOF");
        Ok(())
    }

    #[test]
    fn queries_keep_the_window_placeholder() {
        assert_eq!(
            increase_query(&selector("checkout", &[("code", "500")])),
            r#"sum(increase(slo_requests_total{service="checkout",code="500"}[{{window}}]))"#
        );
        assert_eq!(percent_encode("a b{\"}"), "a%20b%7B%22%7D");
    }
}
