//! The SLO-history harness on its own (no cluster): a Prometheus with 30 days of backfilled history
//! answers the error ratio computed by hand, and live events move its counts.

use std::time::Instant;

use anyhow::{Result, ensure};
use sluice_e2e::{SloHistory, SloPrometheus, Stretch};

/// `query` over `window`.
fn over(query: &str, window: &str) -> String {
    query.replace("{{window}}", window)
}

fn close(actual: f64, expected: f64, relative: f64) -> bool {
    (actual - expected).abs() <= relative * expected.abs()
}

#[tokio::test]
async fn a_backfilled_history_answers_the_hand_computed_error_ratio() -> Result<()> {
    let normal = |minutes| Stretch {
        minutes,
        requests_per_minute: 1000,
        error_ratio: 0.0005,
    };
    // 29 days, a 3-hour incident, then 20 hours: 30 days less an hour.
    let history = SloHistory::new(
        "checkout",
        vec![
            normal(29 * 24 * 60),
            Stretch {
                minutes: 180,
                requests_per_minute: 1000,
                error_ratio: 0.03,
            },
            normal(20 * 60),
        ],
    );
    let (bad, total) = history.totals();

    let started = Instant::now();
    let prometheus = SloPrometheus::start(&history).await?;
    eprintln!(
        "SloPrometheus::start took {:?} for {} minutes of history",
        started.elapsed(),
        history.minutes()
    );

    let ratio_query = format!(
        "({}) / ({})",
        over(&prometheus.error_query(), "30d"),
        over(&prometheus.total_query(), "30d")
    );
    let ratio = prometheus.query_value(&ratio_query).await?;
    let expected = bad as f64 / total as f64;
    eprintln!("30d error ratio: {ratio} (by hand {bad}/{total} = {expected})");
    ensure!(
        close(ratio, expected, 1e-6),
        "30d error ratio {ratio}, expected {expected}"
    );

    let (bad_hour, total_hour) = history.totals_last(60);
    let queried_total_hour = prometheus
        .query_value(&over(&prometheus.total_query(), "1h"))
        .await?;
    let queried_bad_hour = prometheus
        .query_value(&over(&prometheus.error_query(), "1h"))
        .await?;
    eprintln!(
        "last hour: {queried_bad_hour} bad of {queried_total_hour} (by hand {bad_hour} of {total_hour})"
    );
    ensure!(
        close(queried_total_hour, total_hour as f64, 0.02),
        "1h total {queried_total_hour}, expected {total_hour}"
    );

    let total_30d = over(&prometheus.total_query(), "30d");
    let before = prometheus.query_value(&total_30d).await?;
    prometheus.add_live(1_000_000, 0);
    let scraping = Instant::now();
    prometheus.wait_scraped().await?;
    eprintln!(
        "the first wait_scraped took {:?} ({:?} after start-up)",
        scraping.elapsed(),
        started.elapsed()
    );
    let after = prometheus.query_value(&total_30d).await?;
    eprintln!("30d total: {before} before 1 000 000 live events, {after} after");
    ensure!(
        close(after - before, 1_000_000.0, 0.02),
        "the 30d total grew by {}, not about 1 000 000",
        after - before
    );
    Ok(())
}
