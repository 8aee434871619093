//! How an AnalysisRun progresses: which metrics are due for a measurement, how each measurement
//! moves its metric's tally and phase, and the run's phase (the worst of its metrics). Pure: the
//! controller takes the measurements and hands them in with the time.
//!
//! Semantics follow Argo Rollouts, with one deliberate difference that keeps a broken data source
//! from passing silently: a measurement in Error does not count towards `count`. A metric whose
//! queries keep failing is retried each interval until `consecutiveErrorLimit` is exceeded, and then
//! it is in Error; it never completes as Successful on errors alone.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::analysis::{
    AnalysisPhase, AnalysisRunSpec, AnalysisRunStatus, Measurement, Metric, MetricResult,
    RunSummary,
};

use crate::duration;

/// Consecutive errors tolerated when a metric does not say.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i32 = 4;
/// Measurements kept per metric when the run does not say.
pub const DEFAULT_MEASUREMENT_RETENTION: usize = 10;

/// Whether a phase is final for a metric or a run.
pub fn is_completed(phase: AnalysisPhase) -> bool {
    !matches!(phase, AnalysisPhase::Pending | AnalysisPhase::Running)
}

/// The metric's interval; `None` when it is measured once.
/// The shortest wait between two measurements of a metric, whatever its spec says (the CRD refuses
/// less; a run written before that rule still never queries in a tight loop).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

fn interval(metric: &Metric) -> Option<Duration> {
    metric
        .interval
        .as_deref()
        .and_then(duration::parse)
        .map(|d| d.max(MIN_INTERVAL))
}

/// Measurements (Errors aside) after which the metric is complete; `None` runs until terminated.
fn wanted_count(metric: &Metric) -> Option<i32> {
    match (metric.count, interval(metric)) {
        (Some(count), _) => Some(count),
        // No interval and no count: a single measurement.
        (None, None) => Some(1),
        (None, Some(_)) => None,
    }
}

fn is_dry_run(spec: &AnalysisRunSpec, name: &str) -> bool {
    spec.dry_run
        .iter()
        .any(|d| d.metric_name == name || d.metric_name == "*")
}

fn retention(spec: &AnalysisRunSpec, name: &str) -> usize {
    spec.measurement_retention
        .iter()
        .find(|r| r.metric_name == name || r.metric_name == "*")
        .and_then(|r| usize::try_from(r.limit).ok())
        .unwrap_or(DEFAULT_MEASUREMENT_RETENTION)
}

/// The most a run's retained measurements may take, serialized: a run's status must fit in one
/// object (etcd takes about 1.5 MiB), whatever `measurementRetention` asks (64 metrics keeping 1,000
/// measurements of up to a few KiB each would not).
pub const MAX_RETAINED_BYTES: usize = 512 * 1024;

/// Drops the oldest measurements, from the metric that keeps the most, until what all metrics keep
/// takes at most `budget` bytes serialized; each metric keeps its newest measurement. The tallies
/// (counts, consecutive errors) are not touched: they, not the measurements, decide.
pub fn fit_retained(status: &mut AnalysisRunStatus, budget: usize) {
    let size = |m: &Measurement| serde_json::to_vec(m).map_or(0, |v| v.len() + 1);
    let mut sizes: Vec<std::collections::VecDeque<usize>> = status
        .metric_results
        .iter()
        .map(|r| r.measurements.iter().map(size).collect())
        .collect();
    let mut total: usize = sizes.iter().flatten().sum();
    let mut dropped = vec![0usize; sizes.len()];
    while total > budget {
        let Some((most, _)) = sizes
            .iter()
            .enumerate()
            .filter(|(_, kept)| kept.len() > 1)
            .max_by_key(|(_, kept)| kept.len())
        else {
            break;
        };
        if let Some(oldest) = sizes[most].pop_front() {
            total -= oldest;
            dropped[most] += 1;
        }
    }
    for (result, drop) in status.metric_results.iter_mut().zip(dropped) {
        if drop > 0 {
            result.measurements.drain(..drop);
        }
    }
}

fn result_for<'a>(status: &'a AnalysisRunStatus, name: &str) -> Option<&'a MetricResult> {
    status.metric_results.iter().find(|r| r.name == name)
}

fn add(at: Timestamp, by: Duration) -> Timestamp {
    duration::after(at, by)
}

/// What makes a run's spec unreadable to the scheduler: a duration that does not parse (the schema
/// refuses these; a run written another way must fail, not measure at once).
pub fn unreadable_durations(spec: &AnalysisRunSpec) -> Option<String> {
    spec.metrics.iter().find_map(|metric| {
        [
            ("interval", metric.interval.as_deref()),
            ("initialDelay", metric.initial_delay.as_deref()),
        ]
        .into_iter()
        .find_map(|(field, value)| {
            let value = value?;
            duration::parse(value).is_none().then(|| {
                format!(
                    "metric {}: {field} {value:?} is not a duration such as 30s, 5m or 1h30m",
                    metric.name
                )
            })
        })
    })
}

/// What is due now, and when to look again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Names of the metrics to measure now.
    pub due: Vec<String>,
    /// Names of the metrics whose latest measurement is still under way (a Job): the controller
    /// looks at it each time the run is woken, and at least every [`IN_PROGRESS_LOOK`].
    pub in_progress: Vec<String>,
    /// The soonest a not-yet-due metric will be due.
    pub next_in: Option<Duration>,
}

/// The longest wait between two looks at a measurement under way, should a wake-up be missed.
pub const IN_PROGRESS_LOOK: Duration = Duration::from_secs(10);

/// Which metrics are due for a measurement at `now`. The first measurement of a metric is due
/// `initialDelay` after `started`; each later one `interval` after the previous one started.
pub fn schedule(
    spec: &AnalysisRunSpec,
    status: &AnalysisRunStatus,
    started: Timestamp,
    now: Timestamp,
) -> Schedule {
    let mut out = Schedule::default();
    if spec.terminate || status.phase.is_some_and(is_completed) {
        return out;
    }
    for metric in &spec.metrics {
        let result = result_for(status, &metric.name);
        if result.is_some_and(|r| is_completed(r.phase)) {
            continue;
        }
        let last = result.and_then(|r| r.measurements.last());
        if last.is_some_and(|m| m.phase == AnalysisPhase::Running) {
            out.in_progress.push(metric.name.clone());
            out.next_in = Some(
                out.next_in
                    .map_or(IN_PROGRESS_LOOK, |w| w.min(IN_PROGRESS_LOOK)),
            );
            continue;
        }
        let due_at = match last {
            None => add(
                started,
                metric
                    .initial_delay
                    .as_deref()
                    .and_then(duration::parse)
                    // Unreadable runs are failed before they are scheduled (`unreadable_durations`).
                    .unwrap_or(Duration::ZERO),
            ),
            Some(last) => {
                let from = last
                    .started_at
                    .as_ref()
                    .or(last.finished_at.as_ref())
                    .map_or(started, |t| t.0);
                // Measured once and not complete can only mean it errored: retry after a short wait.
                add(from, interval(metric).unwrap_or(Duration::from_secs(10)))
            }
        };
        if due_at <= now {
            out.due.push(metric.name.clone());
        } else {
            let wait = Duration::try_from(due_at.duration_since(now)).unwrap_or(Duration::ZERO);
            out.next_in = Some(out.next_in.map_or(wait, |w| w.min(wait)));
        }
    }
    out
}

/// Records a measurement of `metric` and updates its tally and phase. A Running measurement (a Job
/// started) is recorded without counting; the next measurement of the metric replaces it and counts.
pub fn record(
    spec: &AnalysisRunSpec,
    status: &mut AnalysisRunStatus,
    metric: &Metric,
    measurement: Measurement,
) {
    let dry_run = is_dry_run(spec, &metric.name);
    let keep = retention(spec, &metric.name);
    let index = match status
        .metric_results
        .iter()
        .position(|r| r.name == metric.name)
    {
        Some(i) => i,
        None => {
            status.metric_results.push(MetricResult {
                name: metric.name.clone(),
                phase: AnalysisPhase::Running,
                measurements: Vec::new(),
                message: None,
                count: 0,
                successful: 0,
                failed: 0,
                inconclusive: 0,
                error: 0,
                consecutive_error: 0,
                consecutive_success: 0,
                dry_run,
            });
            status.metric_results.len() - 1
        }
    };
    let Some(result) = status.metric_results.get_mut(index) else {
        return;
    };
    result.dry_run = dry_run;
    if result
        .measurements
        .last()
        .is_some_and(|m| m.phase == AnalysisPhase::Running)
    {
        // The measurement under way ends (or is reported again): it was never counted.
        result.measurements.pop();
    }
    if measurement.phase == AnalysisPhase::Running {
        result.message.clone_from(&measurement.message);
        result.measurements.push(measurement);
        return;
    }
    result.count += 1;
    match measurement.phase {
        AnalysisPhase::Successful => {
            result.successful += 1;
            result.consecutive_success += 1;
            result.consecutive_error = 0;
        }
        AnalysisPhase::Failed => {
            result.failed += 1;
            result.consecutive_success = 0;
            result.consecutive_error = 0;
        }
        AnalysisPhase::Inconclusive => {
            result.inconclusive += 1;
            result.consecutive_success = 0;
            result.consecutive_error = 0;
        }
        AnalysisPhase::Error => {
            result.error += 1;
            result.consecutive_error += 1;
        }
        AnalysisPhase::Pending | AnalysisPhase::Running => {}
    }
    let latest = measurement.message.clone();
    result.measurements.push(measurement);
    if result.measurements.len() > keep {
        let excess = result.measurements.len() - keep;
        result.measurements.drain(..excess);
    }
    let (phase, message) = metric_phase(metric, result, latest);
    result.phase = phase;
    result.message = message;
}

/// A metric's phase from its tally: Failed beyond `failureLimit`, Inconclusive beyond
/// `inconclusiveLimit`, Error beyond `consecutiveErrorLimit`, Successful after
/// `consecutiveSuccessLimit` successes in a row or `count` measurements, else Running.
fn metric_phase(
    metric: &Metric,
    result: &MetricResult,
    latest: Option<String>,
) -> (AnalysisPhase, Option<String>) {
    let failure_limit = metric.failure_limit.unwrap_or(0);
    let inconclusive_limit = metric.inconclusive_limit.unwrap_or(0);
    let error_limit = metric
        .consecutive_error_limit
        .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT);
    let why = |what: String| {
        Some(
            latest
                .as_ref()
                .map_or(what.clone(), |l| format!("{what}: {l}")),
        )
    };
    if result.failed > failure_limit {
        return (
            AnalysisPhase::Failed,
            why(format!(
                "{} failed measurement(s), more than failureLimit {failure_limit}",
                result.failed
            )),
        );
    }
    if result.inconclusive > inconclusive_limit {
        return (
            AnalysisPhase::Inconclusive,
            why(format!(
                "{} inconclusive measurement(s), more than inconclusiveLimit {inconclusive_limit}",
                result.inconclusive
            )),
        );
    }
    if result.consecutive_error > error_limit {
        return (
            AnalysisPhase::Error,
            why(format!(
                "{} errors in a row, more than consecutiveErrorLimit {error_limit}",
                result.consecutive_error
            )),
        );
    }
    if let Some(limit) = metric.consecutive_success_limit
        && result.consecutive_success >= limit
    {
        return (
            AnalysisPhase::Successful,
            Some(format!("{limit} successful measurements in a row")),
        );
    }
    if let Some(count) = wanted_count(metric)
        && result.count - result.error >= count
    {
        return (
            AnalysisPhase::Successful,
            Some(format!(
                "{} of {} measurements successful",
                result.successful,
                result.count - result.error
            )),
        );
    }
    (AnalysisPhase::Running, latest)
}

/// Sets the run's phase, message, summaries and completion time from its metrics. The run takes the
/// worst phase of its (non-dry-run) metrics: a Failed or Error metric ends the run at once; otherwise
/// it runs until every metric, dry-run ones included, is complete. A terminated run ends with what it has, metrics still
/// running counting as Successful.
pub fn summarize(spec: &AnalysisRunSpec, status: &mut AnalysisRunStatus, now: Timestamp) {
    if status.started_at.is_none() {
        status.started_at = Some(Time(now));
    }
    let mut summary = RunSummary::default();
    let mut dry = RunSummary::default();
    let mut worst_done = AnalysisPhase::Successful;
    let mut worst_metric: Option<(String, Option<String>)> = None;
    let mut any_running = false;
    let mut fatal = false;
    for metric in &spec.metrics {
        let phase = result_for(status, &metric.name).map_or(AnalysisPhase::Pending, |r| r.phase);
        let message = result_for(status, &metric.name).and_then(|r| r.message.clone());
        let tally = if is_dry_run(spec, &metric.name) {
            &mut dry
        } else {
            &mut summary
        };
        tally.count += 1;
        match phase {
            AnalysisPhase::Successful => tally.successful += 1,
            AnalysisPhase::Failed => tally.failed += 1,
            AnalysisPhase::Inconclusive => tally.inconclusive += 1,
            AnalysisPhase::Error => tally.error += 1,
            AnalysisPhase::Pending | AnalysisPhase::Running => {}
        }
        if is_dry_run(spec, &metric.name) {
            // Measured to the end like any metric (as Argo Rollouts does), but never the verdict.
            any_running |= !is_completed(phase);
            continue;
        }
        if is_completed(phase) {
            if phase > worst_done {
                worst_done = phase;
                worst_metric = Some((metric.name.clone(), message));
            }
            fatal |= matches!(phase, AnalysisPhase::Failed | AnalysisPhase::Error);
        } else {
            any_running = true;
        }
    }
    status.run_summary = Some(summary);
    status.dry_run_summary = (dry.count > 0).then_some(dry);
    if status.phase.is_some_and(is_completed) {
        return;
    }
    let (phase, message) = if fatal || !any_running || spec.terminate {
        let message = match &worst_metric {
            Some((name, Some(why))) => format!("metric {name:?} {}: {why}", phase_word(worst_done)),
            Some((name, None)) => format!("metric {name:?} {}", phase_word(worst_done)),
            None if spec.terminate && any_running => {
                "terminated: the release moved on; every measurement so far passed".to_owned()
            }
            None => "every metric passed".to_owned(),
        };
        (worst_done, message)
    } else {
        (AnalysisPhase::Running, "measuring".to_owned())
    };
    status.phase = Some(phase);
    status.message = Some(message);
    if is_completed(phase) {
        status.completed_at = Some(Time(now));
    }
}

fn phase_word(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Pending => "is pending",
        AnalysisPhase::Running => "is running",
        AnalysisPhase::Successful => "passed",
        AnalysisPhase::Inconclusive => "is inconclusive",
        AnalysisPhase::Error => "is in error",
        AnalysisPhase::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::analysis::DryRun;

    use super::*;

    fn metric(name: &str, count: Option<i32>, interval: Option<&str>) -> Metric {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "count": count,
            "interval": interval,
            "successCondition": "result[0] < 0.01",
            "provider": {"prometheus": {"address": "http://127.0.0.1:9090", "query": "up"}}
        }))
        .expect("metric")
    }

    fn spec(metrics: Vec<Metric>) -> AnalysisRunSpec {
        AnalysisRunSpec {
            metrics,
            args: Vec::new(),
            dry_run: Vec::new(),
            measurement_retention: Vec::new(),
            terminate: false,
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("time")
    }

    fn measured(phase: AnalysisPhase, second: i64) -> Measurement {
        Measurement {
            phase,
            value: Some("[0.5]".into()),
            started_at: Some(Time(at(second))),
            finished_at: Some(Time(at(second))),
            message: Some(format!("{phase:?}")),
            metadata: Default::default(),
        }
    }

    fn run(spec: &AnalysisRunSpec, phases: &[AnalysisPhase]) -> AnalysisRunStatus {
        let mut status = AnalysisRunStatus::default();
        for (i, phase) in phases.iter().enumerate() {
            let second = i64::try_from(i).unwrap_or(0) * 60;
            record(
                spec,
                &mut status,
                &spec.metrics[0],
                measured(*phase, second),
            );
            summarize(spec, &mut status, at(second));
        }
        status
    }

    use AnalysisPhase::{Error, Failed, Inconclusive, Running, Successful};

    #[test]
    fn a_measurement_under_way_is_not_counted_until_it_ends_and_is_looked_at_not_retaken() {
        let spec: AnalysisRunSpec = serde_json::from_value(serde_json::json!({"metrics": [{
            "name": "smoke", "count": 1,
            "provider": {"web": {"url": "http://x.svc/"}}
        }]}))
        .expect("spec");
        let metric = spec.metrics[0].clone();
        let at = Timestamp::from_second(1_700_000_000).expect("time");
        let mut status = AnalysisRunStatus::default();
        let measurement = |phase| Measurement {
            phase,
            value: None,
            started_at: Some(Time(at)),
            finished_at: None,
            message: Some(format!("{phase:?}")),
            metadata: Default::default(),
        };
        assert_eq!(
            schedule(&spec, &status, at, at).due,
            vec!["smoke".to_owned()]
        );
        record(&spec, &mut status, &metric, measurement(Running));
        let result = &status.metric_results[0];
        assert_eq!((result.count, result.measurements.len()), (0, 1));
        let later = schedule(&spec, &status, at, add(at, Duration::from_secs(60)));
        assert!(
            later.due.is_empty(),
            "a measurement under way is not taken again"
        );
        assert_eq!(later.in_progress, vec!["smoke".to_owned()]);
        assert_eq!(later.next_in, Some(IN_PROGRESS_LOOK));
        record(&spec, &mut status, &metric, measurement(Running));
        assert_eq!(
            status.metric_results[0].measurements.len(),
            1,
            "reported again, not twice"
        );
        record(&spec, &mut status, &metric, measurement(Failed));
        let result = &status.metric_results[0];
        assert_eq!(
            (result.count, result.failed, result.measurements.len()),
            (1, 1, 1)
        );
        assert_eq!(result.phase, Failed);
    }

    #[test]
    fn a_delay_past_the_end_of_time_is_never_due_and_an_unreadable_one_is_named() {
        let mut long = metric("m", Some(1), None);
        long.initial_delay = Some("999999999h".to_owned());
        let waits = spec(vec![long]);
        let status = AnalysisRunStatus::default();
        // It used to fall back to "now" when the sum overflowed: measured at once.
        assert!(schedule(&waits, &status, at(0), at(1)).due.is_empty());
        assert_eq!(unreadable_durations(&waits), None);
        let mut unreadable = metric("m", Some(1), None);
        unreadable.initial_delay = Some("9999999999999h".to_owned());
        let message = unreadable_durations(&spec(vec![unreadable]));
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("initialDelay") && m.contains("metric m")),
            "{message:?}"
        );
    }

    #[test]
    fn count_successes_complete_the_metric() {
        let spec = spec(vec![metric("m", Some(3), Some("1m"))]);
        assert_eq!(run(&spec, &[Successful, Successful]).phase, Some(Running));
        let done = run(&spec, &[Successful, Successful, Successful]);
        assert_eq!(done.phase, Some(Successful));
        assert!(done.completed_at.is_some());
    }

    #[test]
    fn one_failure_beyond_the_limit_fails_at_once() {
        let spec = spec(vec![metric("m", Some(5), Some("1m"))]);
        let status = run(&spec, &[Successful, Failed]);
        assert_eq!(status.phase, Some(Failed));
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("\"m\" failed")),
            "{:?}",
            status.message
        );
    }

    #[test]
    fn errors_never_complete_a_metric_and_end_in_error() {
        let spec = spec(vec![metric("m", Some(2), Some("1m"))]);
        // Four errors in a row are tolerated (default limit), the fifth is not.
        assert_eq!(run(&spec, &[Error; 4]).phase, Some(Running));
        assert_eq!(run(&spec, &[Error; 5]).phase, Some(Error));
        // An error between successes resets nothing but is not a success either.
        assert_eq!(
            run(&spec, &[Successful, Error, Successful]).phase,
            Some(Successful)
        );
    }

    #[test]
    fn inconclusive_beyond_the_limit_is_inconclusive() {
        let spec = spec(vec![metric("m", Some(3), Some("1m"))]);
        assert_eq!(run(&spec, &[Inconclusive]).phase, Some(Inconclusive));
    }

    #[test]
    fn the_worst_metric_wins_and_dry_run_metrics_do_not_count() {
        let mut s = spec(vec![metric("a", Some(1), None), metric("b", Some(1), None)]);
        let mut status = AnalysisRunStatus::default();
        record(
            &s,
            &mut status,
            &s.metrics[0].clone(),
            measured(Successful, 0),
        );
        summarize(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(Running), "b has not been measured");
        record(
            &s,
            &mut status,
            &s.metrics[1].clone(),
            measured(Inconclusive, 0),
        );
        summarize(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(Inconclusive));

        s.dry_run = vec![DryRun {
            metric_name: "b".into(),
        }];
        let mut status = AnalysisRunStatus::default();
        record(
            &s,
            &mut status,
            &s.metrics[0].clone(),
            measured(Successful, 0),
        );
        record(&s, &mut status, &s.metrics[1].clone(), measured(Failed, 0));
        summarize(&s, &mut status, at(0));
        assert_eq!(status.phase, Some(Successful));
        assert_eq!(status.dry_run_summary.map(|d| d.failed), Some(1));
    }

    #[test]
    fn schedule_honours_initial_delay_and_interval() {
        let mut m = metric("m", Some(3), Some("1m"));
        m.initial_delay = Some("30s".into());
        let spec = spec(vec![m]);
        let status = AnalysisRunStatus::default();
        let s = schedule(&spec, &status, at(0), at(10));
        assert!(s.due.is_empty());
        assert_eq!(s.next_in, Some(Duration::from_secs(20)));
        assert_eq!(schedule(&spec, &status, at(0), at(30)).due, ["m"]);

        let mut status = AnalysisRunStatus::default();
        record(
            &spec,
            &mut status,
            &spec.metrics[0],
            measured(Successful, 30),
        );
        summarize(&spec, &mut status, at(30));
        let s = schedule(&spec, &status, at(0), at(60));
        assert!(s.due.is_empty());
        assert_eq!(s.next_in, Some(Duration::from_secs(30)));
        assert_eq!(schedule(&spec, &status, at(0), at(90)).due, ["m"]);
    }

    #[test]
    fn an_interval_under_a_second_waits_a_second() {
        let spec = spec(vec![metric("m", Some(5), Some("1ms"))]);
        let mut status = AnalysisRunStatus::default();
        record(
            &spec,
            &mut status,
            &spec.metrics[0],
            measured(Successful, 30),
        );
        summarize(&spec, &mut status, at(30));
        let s = schedule(&spec, &status, at(0), at(30));
        assert!(s.due.is_empty());
        assert_eq!(s.next_in, Some(MIN_INTERVAL));
    }

    /// Whatever the retention asks, what a run keeps fits in its object: the oldest go first, from
    /// the metrics that keep the most, and each metric keeps its newest.
    #[test]
    fn retained_measurements_fit_in_the_runs_object() {
        let measurement = |i: usize| Measurement {
            phase: AnalysisPhase::Successful,
            value: Some(format!("{i}:{}", "9".repeat(1000))),
            started_at: None,
            finished_at: None,
            message: Some("m".repeat(1000)),
            metadata: std::collections::BTreeMap::new(),
        };
        let mut status = AnalysisRunStatus::default();
        for metric in 0..64 {
            let kept = if metric == 0 { 1 } else { 1000 };
            status.metric_results.push(MetricResult {
                name: format!("m{metric}"),
                phase: AnalysisPhase::Running,
                measurements: (0..kept).map(measurement).collect(),
                message: None,
                count: 0,
                successful: 0,
                failed: 0,
                inconclusive: 0,
                error: 0,
                consecutive_error: 0,
                consecutive_success: 0,
                dry_run: false,
            });
        }
        fit_retained(&mut status, MAX_RETAINED_BYTES);
        let size = serde_json::to_vec(&status).expect("json").len();
        assert!(size <= MAX_RETAINED_BYTES + 64 * 1024, "{size} bytes");
        for result in &status.metric_results {
            assert!(!result.measurements.is_empty(), "{} kept none", result.name);
            let newest = result.measurements.last().and_then(|m| m.value.clone());
            let want = if result.name == "m0" { "0:" } else { "999:" };
            assert!(
                newest.is_some_and(|v| v.starts_with(want)),
                "{}",
                result.name
            );
        }
    }

    #[test]
    fn retention_keeps_the_newest_measurements() {
        let mut spec = spec(vec![metric("m", None, Some("1s"))]);
        spec.measurement_retention = vec![sluice_api::analysis::MeasurementRetention {
            metric_name: "m".into(),
            limit: 2,
        }];
        let status = run(&spec, &[Successful, Successful, Failed]);
        let result = &status.metric_results[0];
        assert_eq!(result.measurements.len(), 2);
        assert_eq!(result.count, 3);
        assert_eq!(result.measurements[1].phase, Failed);
    }

    #[test]
    fn a_terminated_background_run_passes_with_what_it_has() {
        let mut spec = spec(vec![metric("m", None, Some("1m"))]);
        let mut status = run(&spec, &[Successful, Successful]);
        assert_eq!(status.phase, Some(Running));
        spec.terminate = true;
        summarize(&spec, &mut status, at(200));
        assert_eq!(status.phase, Some(Successful));
        assert!(schedule(&spec, &status, at(0), at(300)).due.is_empty());
    }
}
