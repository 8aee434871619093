//! The controller's own binary as the evaluator of conditions: each evaluation in a child process
//! that limits its memory and processor time, so that a costly condition ends in an Error verdict
//! saying why while this process's memory does not move.

use sluice_analysis::evaluator::{Evaluator, set_evaluator};
use sluice_analysis::{Judge, QueryResult, ResultShape};
use sluice_api::analysis::AnalysisPhase;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Keeps a copy of the answer as text for each pair of series: a few kilobytes times a million.
const MEMORY: &str = "let s = join(map(result, {string(#)}), \",\"); len(map(result, {map(result, {[s, s, s, s, s, s, s, s]})})) > 0";
/// Copies the answer for each pair of series, keeping nothing.
const CPU: &str = "result.all(x, result.all(y, (result + result).size() > 0))";

fn judge(success: &str) -> Judge {
    Judge::new(ResultShape::Numbers, Some(success), None)
        .unwrap_or_else(|e| panic!("{success}: {e}"))
}

#[tokio::test]
async fn conditions_are_evaluated_in_a_child_process_within_its_limits() {
    let program = env!("CARGO_BIN_EXE_sluice-controller").into();
    assert!(set_evaluator(Evaluator::ChildProcess { program }).is_ok());

    let simple = judge("result[0] < 0.5");
    assert_eq!(simple.check().await, Ok(Ok(())));
    let verdict = simple.judge(QueryResult::Vector(vec![0.1])).await;
    assert_eq!(verdict.phase, AnalysisPhase::Successful, "{verdict:?}");
    let nan = simple.judge(QueryResult::Vector(vec![f64::NAN])).await;
    assert_eq!(
        nan.phase,
        AnalysisPhase::Inconclusive,
        "NaN crosses: {nan:?}"
    );

    let never = judge("result[0] + 0.5").check().await;
    assert!(
        never.as_ref().is_ok_and(|found| found
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not true or false"))),
        "{never:?}"
    );

    // A large answer a web metric may pick (a list of 100,000 values) is judged within the limits.
    let large = QueryResult::Json(serde_json::Value::Array(vec![0.into(); 100_000]));
    let verdict = Judge::new(ResultShape::Json, Some("size(result) == 100000"), None)
        .expect("compiles")
        .judge(large)
        .await;
    assert_eq!(verdict.phase, AnalysisPhase::Successful, "{verdict:?}");

    // Loops nested twice pass the text's check; over a thousand series they are too costly.
    let answer = QueryResult::Vector(vec![0.5; 1000]);
    let before = rss_mib();
    let started = std::time::Instant::now();
    let memory = judge(MEMORY).judge(answer.clone()).await;
    let memory_took = started.elapsed();
    let started = std::time::Instant::now();
    let cpu = judge(CPU).judge(answer).await;
    let cpu_took = started.elapsed();
    let grew = rss_mib() - before;
    println!(
        "costly conditions: {:?} after {memory_took:?} ({}), {:?} after {cpu_took:?} ({}); this \
         process grew by {grew:.1} MiB",
        memory.phase, memory.message, cpu.phase, cpu.message
    );
    assert_eq!(memory.phase, AnalysisPhase::Error);
    assert!(memory.message.contains("MiB of memory"), "{memory:?}");
    assert_eq!(cpu.phase, AnalysisPhase::Error);
    assert!(cpu.message.contains("processor time"), "{cpu:?}");
    // Not a timing: a bound on what this process held. Either condition evaluated here takes
    // gigabytes.
    assert!(grew < 32.0, "grew by {grew:.1} MiB");
}
