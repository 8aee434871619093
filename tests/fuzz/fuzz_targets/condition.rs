//! Conditions as a tenant writes them (CEL or Argo Rollouts' expression language), compiled and
//! evaluated against answers of any shape (scalars, vectors, matrices; NaN, infinities, empty; any
//! JSON a web metric picks): no panic, no hang, an Error verdict for what cannot be evaluated.
//!
//! Input: the condition, a NUL byte, then the answer: its first byte picks the shape, the rest are
//! little-endian f64s (a matrix takes a byte of row length before each row) or JSON text.
//!
//! Conditions are evaluated here, in process, as the controller's evaluator child does. What their
//! text shows of their cost (nesting, growth, length) is refused when they compile, so the seeds
//! with loops nested twelve deep, `repeat`, `reduce` and chains of `let` must compile to an error,
//! not run; what is left is bounded by the size of the answer, kept small here (the evaluator's
//! process limits bound it for real answers, tested apart).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_analysis::{Conditions, QueryResult, ResultShape};

fuzz_target!(|data: &[u8]| {
    let (condition, answer) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let condition = String::from_utf8_lossy(condition);
    let answer = result(answer);
    let shape = match answer {
        QueryResult::Json(_) => ResultShape::Json,
        _ => ResultShape::Numbers,
    };
    let Ok(conditions) = Conditions::compile_for(shape, Some(&condition), Some(&condition)) else {
        return;
    };
    if nodes(&answer) <= MAX_NODES {
        let _ = conditions.judge(&answer);
    }
});

/// The largest answer judged here: loops nested twice over it, with a body as long as a condition
/// may be, stay within the fuzzer's memory and time limits.
const MAX_NODES: usize = 16;

fn nodes(answer: &QueryResult) -> usize {
    fn json(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(json).sum::<usize>(),
            serde_json::Value::Object(fields) => 1 + fields.values().map(json).sum::<usize>(),
            _ => 1,
        }
    }
    match answer {
        QueryResult::Scalar(_) => 1,
        QueryResult::Vector(v) => v.len(),
        QueryResult::Matrix(m) => m.len() + m.iter().map(Vec::len).sum::<usize>(),
        QueryResult::Json(value) => json(value),
    }
}

fn numbers(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .take(2000)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

fn result(answer: &[u8]) -> QueryResult {
    let Some((shape, rest)) = answer.split_first() else {
        return QueryResult::Vector(Vec::new());
    };
    match shape % 4 {
        0 => QueryResult::Scalar(numbers(rest).first().copied().unwrap_or(f64::NAN)),
        1 => QueryResult::Vector(numbers(rest)),
        3 => QueryResult::Json(serde_json::from_slice(rest).unwrap_or_default()),
        _ => {
            let mut rows = Vec::new();
            let mut rest = rest;
            while let Some((len, tail)) = rest.split_first() {
                let take = (usize::from(*len) * 8).min(tail.len());
                rows.push(numbers(&tail[..take]));
                rest = &tail[take..];
            }
            QueryResult::Matrix(rows)
        }
    }
}
