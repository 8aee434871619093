//! Conditions as a tenant writes them (CEL or Argo Rollouts' expression language), compiled and
//! evaluated against answers of any shape (scalars, vectors, matrices; NaN, infinities, empty; any
//! JSON a web metric picks): no panic, no hang, an Error verdict for what cannot be evaluated.
//!
//! Input: the condition, a NUL byte, then the answer: its first byte picks the shape, the rest are
//! little-endian f64s (a matrix takes a byte of row length before each row) or JSON text.
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
    let _ = conditions.judge(&answer);
});

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
