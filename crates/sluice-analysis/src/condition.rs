//! A metric's `successCondition` and `failureCondition`: expressions over `result`.
//!
//! `result` is what the query answered: a list of numbers for an instant vector (one per series, so
//! `result[0]` is the first), a number for a scalar, a list of lists for a range vector.
//!
//! A condition is read as CEL (`size(result)`, `result.all(x, x < 0.5)`, `result.exists(x, x > 1.0)`,
//! ...); one that CEL cannot parse is read as Argo Rollouts' expression language (expr:
//! `all(result, {# < 0.5})`, `any(...)`, `and`/`or`/`not`, `let`), so a template copied from Argo
//! Rollouts works unchanged. Both may call the functions Argo Rollouts gives its conditions:
//! `len(list)`, `isNaN(x)`, `isInf(x)`, `asFloat(x)`, `asInt(x)`, `isNil(result)` and
//! `default(result, value)`. Integers and doubles compare with each other, so `result[0] < 1`
//! works. Ranges (`1..n`) are refused: they build lists of any size.
//!
//! A condition is checked when it is compiled (a template is applied, a run starts): its text must
//! not show a cost beyond bounds ([`static_check`]), it must parse and give true or false for at
//! least one answer of eight values (a number, a list, a list of lists), so that an unknown function
//! or variable is refused then, not at a release's first measurement.
//!
//! The controller holds conditions as a [`Judge`]: it checks their text here ([`precheck`]) and
//! leaves every evaluation to the [evaluator](crate::evaluator), a child process with its own
//! limits, which compiles them into [`Conditions`] there.
//!
//! A result that is empty, or holds NaN (a ratio of 0/0: no traffic), is Inconclusive with a message
//! saying so, unless a condition decides about it itself: one that mentions `isNaN` decides about
//! NaN, one that mentions `default` or `isNil` about no data (`result` is then null). Neither
//! condition true is Inconclusive as well: a measurement never passes by default.

use std::sync::{Arc, LazyLock};

use cel::extractors::Arguments;
use cel::{Context, Env, ExecutionError, Value};
use sluice_api::analysis::AnalysisPhase;

/// What a query answered, as the conditions see it.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    /// A scalar.
    Scalar(f64),
    /// One value per series of an instant vector.
    Vector(Vec<f64>),
    /// The samples of each series of a range vector.
    Matrix(Vec<Vec<f64>>),
    /// What a web metric's JSONPath picked from its answer.
    Json(serde_json::Value),
}

/// The kind of answers a provider hands its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ResultShape {
    /// Numbers: a scalar, a list, a list of lists (Prometheus). A condition must give true or false
    /// for one of them.
    Numbers,
    /// Any JSON value (web). Whether a condition fits an answer depends on the answer's fields, so
    /// only the functions it calls are checked.
    Json,
}

impl QueryResult {
    /// The numbers of a Prometheus answer (none for JSON, which has no NaN).
    fn values(&self) -> Vec<f64> {
        match self {
            Self::Scalar(v) => vec![*v],
            Self::Vector(v) => v.clone(),
            Self::Matrix(m) => m.iter().flatten().copied().collect(),
            Self::Json(_) => Vec::new(),
        }
    }

    /// No data: no series, or a JSON null or empty list.
    fn is_empty(&self) -> bool {
        match self {
            Self::Json(serde_json::Value::Null) => true,
            Self::Json(serde_json::Value::Array(items)) => items.is_empty(),
            Self::Json(_) => false,
            _ => self.values().is_empty(),
        }
    }

    /// The result as text for the measurement's `value`, e.g. `[0.0042]`.
    pub fn display(&self) -> String {
        let list = |v: &[f64]| {
            let items: Vec<String> = v.iter().map(|x| format_number(*x)).collect();
            format!("[{}]", items.join(", "))
        };
        match self {
            Self::Scalar(v) => format_number(*v),
            Self::Vector(v) => list(v),
            Self::Matrix(m) => {
                let rows: Vec<String> = m.iter().map(|r| list(r)).collect();
                format!("[{}]", rows.join(", "))
            }
            Self::Json(value) => value.to_string(),
        }
    }

    fn to_cel(&self) -> Value {
        let list = |v: &[f64]| Value::List(Arc::new(v.iter().map(|x| Value::Float(*x)).collect()));
        match self {
            Self::Scalar(v) => Value::Float(*v),
            Self::Vector(v) => list(v),
            Self::Matrix(m) => Value::List(Arc::new(m.iter().map(|r| list(r)).collect())),
            Self::Json(value) => json_to_cel(value),
        }
    }

    fn to_expr(&self) -> expr::Value {
        let list =
            |v: &[f64]| expr::Value::Array(v.iter().map(|x| expr::Value::Float(*x)).collect());
        match self {
            Self::Scalar(v) => expr::Value::Float(*v),
            Self::Vector(v) => list(v),
            Self::Matrix(m) => expr::Value::Array(m.iter().map(|r| list(r)).collect()),
            Self::Json(value) => json_to_expr(value),
        }
    }
}

fn json_to_cel(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Float))
            .unwrap_or(Value::Null),
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(fields) => {
            let map: std::collections::HashMap<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

fn json_to_expr(value: &serde_json::Value) -> expr::Value {
    use serde_json::Value as J;
    match value {
        J::Null => expr::Value::Nil,
        J::Bool(b) => expr::Value::Bool(*b),
        J::Number(n) => n
            .as_i64()
            .map(expr::Value::Integer)
            .or_else(|| n.as_f64().map(expr::Value::Float))
            .unwrap_or(expr::Value::Nil),
        J::String(s) => expr::Value::String(s.clone()),
        J::Array(items) => expr::Value::Array(items.iter().map(json_to_expr).collect()),
        J::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k.clone(), json_to_expr(v)))
            .collect(),
    }
}

fn format_number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else {
        // Enough digits to read an error ratio, without float noise.
        let text = format!("{x:.6}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        if text.is_empty() || text == "-" {
            "0".to_owned()
        } else {
            text.to_owned()
        }
    }
}

/// A condition that did not compile, or that no answer could satisfy the evaluation of.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field} {source_text:?} is not a valid expression: {reason}")]
pub struct ConditionError {
    /// `successCondition` or `failureCondition`.
    pub field: String,
    pub source_text: String,
    pub reason: String,
}

/// The language a condition was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Common Expression Language.
    Cel,
    /// Argo Rollouts' expression language (expr).
    Expr,
}

enum Program {
    Cel(cel::Program),
    Expr(expr::Program),
}

struct Condition {
    text: String,
    program: Program,
}

impl Condition {
    fn dialect(&self) -> Dialect {
        match self.program {
            Program::Cel(_) => Dialect::Cel,
            Program::Expr(_) => Dialect::Expr,
        }
    }
}

/// A metric's compiled conditions.
pub struct Conditions {
    env: Arc<Env>,
    success: Option<Condition>,
    failure: Option<Condition>,
    decides_nan: bool,
    decides_no_data: bool,
}

impl std::fmt::Debug for Conditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditions")
            .field("success", &self.success.as_ref().map(|c| &c.text))
            .field("failure", &self.failure.as_ref().map(|c| &c.text))
            .finish()
    }
}

/// The verdict of one measurement, with why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub phase: AnalysisPhase,
    pub message: String,
}

/// The answers a condition is tried on when it is compiled: it must give true or false for one.
fn probes() -> [QueryResult; 3] {
    [
        QueryResult::Vector(vec![0.5; 8]),
        QueryResult::Scalar(0.5),
        QueryResult::Matrix(vec![vec![0.5; 8]; 8]),
    ]
}

/// The `..` range operator outside string literals, if any.
fn has_range(text: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                } else if c == '.' && chars.peek() == Some(&'.') {
                    return true;
                }
            }
        }
    }
    false
}

/// Argo Rollouts' functions for expr conditions, beside expr's own (`all`, `any`, `len`, `float`, ...).
static EXPR_ENV: LazyLock<expr::Environment<'static>> = LazyLock::new(|| {
    use expr::Value as V;
    fn number(name: &str, args: &[V]) -> expr::Result<f64> {
        match args {
            [V::Float(x)] => Ok(*x),
            // As Argo Rollouts does: an integer read as a float.
            #[allow(clippy::cast_precision_loss)]
            [V::Integer(x)] => Ok(*x as f64),
            [V::String(s)] => s
                .trim()
                .parse()
                .map_err(|_| expr::Error::ExprError(format!("{name}: {s:?} is not a number"))),
            other => Err(expr::Error::ExprError(format!(
                "{name} takes one number or numeric string, got {other:?}"
            ))),
        }
    }
    let mut env = expr::Environment::new();
    env.add_function("isNaN", |c| {
        number("isNaN", &c.args).map(|x| x.is_nan().into())
    });
    env.add_function("isInf", |c| {
        number("isInf", &c.args).map(|x| x.is_infinite().into())
    });
    env.add_function("asFloat", |c| number("asFloat", &c.args).map(V::Float));
    env.add_function("asInt", |c| match c.args.as_slice() {
        [V::Integer(x)] => Ok(V::Integer(*x)),
        [V::String(s)] => s
            .trim()
            .parse::<i64>()
            .map(V::Integer)
            .map_err(|_| expr::Error::ExprError(format!("asInt: {s:?} is not an integer"))),
        // Truncated towards zero and saturating, as a Go conversion of an in-range float.
        #[allow(clippy::cast_possible_truncation)]
        _ => number("asInt", &c.args).map(|x| V::Integer(x as i64)),
    });
    env.add_function("isNil", |c| match c.args.as_slice() {
        [value] => Ok(value.is_nil().into()),
        other => Err(expr::Error::ExprError(format!(
            "isNil takes one argument, got {}",
            other.len()
        ))),
    });
    env.add_function("default", |c| match c.args.as_slice() {
        [value, fallback] => Ok(if value.is_nil() { fallback } else { value }.clone()),
        other => Err(expr::Error::ExprError(format!(
            "default takes two arguments (value, fallback), got {}",
            other.len()
        ))),
    });
    env
});

/// A CEL number as a double, for `asFloat`.
fn cel_float(args: &[Value]) -> Result<Value, ExecutionError> {
    #[allow(clippy::cast_precision_loss)]
    match args {
        [Value::Float(x)] => Ok(Value::Float(*x)),
        [Value::Int(x)] => Ok(Value::Float(*x as f64)),
        [Value::UInt(x)] => Ok(Value::Float(*x as f64)),
        [Value::String(s)] => s.trim().parse().map(Value::Float).map_err(|_| {
            ExecutionError::function_error("asFloat", format!("{s:?} is not a number"))
        }),
        other => Err(ExecutionError::function_error(
            "asFloat",
            format!("takes one number or numeric string, got {other:?}"),
        )),
    }
}

/// A CEL number as an integer, for `asInt`.
fn cel_int(args: &[Value]) -> Result<Value, ExecutionError> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    match args {
        [Value::Int(x)] => Ok(Value::Int(*x)),
        [Value::UInt(x)] => Ok(Value::Int(*x as i64)),
        [Value::Float(x)] => Ok(Value::Int(*x as i64)),
        [Value::String(s)] => s.trim().parse().map(Value::Int).map_err(|_| {
            ExecutionError::function_error("asInt", format!("{s:?} is not an integer"))
        }),
        other => Err(ExecutionError::function_error(
            "asInt",
            format!("takes one number or numeric string, got {other:?}"),
        )),
    }
}

impl Conditions {
    /// Compiles the conditions (either may be absent), each read in the first dialect in which it
    /// parses and gives true or false for some answer, so that a condition that can never be
    /// evaluated is refused now.
    pub fn compile(success: Option<&str>, failure: Option<&str>) -> Result<Self, ConditionError> {
        Self::compile_for(ResultShape::Numbers, success, failure)
    }

    /// [`compile`](Self::compile) for conditions over answers of `shape`.
    pub fn compile_for(
        shape: ResultShape,
        success: Option<&str>,
        failure: Option<&str>,
    ) -> Result<Self, ConditionError> {
        let env = Arc::new(Env::stdlib());
        let success = success
            .map(|text| read(&env, shape, "successCondition", text, Probe::Yes))
            .transpose()?;
        let failure = failure
            .map(|text| read(&env, shape, "failureCondition", text, Probe::Yes))
            .transpose()?;
        let mentions = |words: &[&str]| {
            [&success, &failure]
                .into_iter()
                .flatten()
                .any(|c| words.iter().any(|w| c.text.contains(w)))
        };
        Ok(Self {
            decides_nan: mentions(&["isNaN"]),
            decides_no_data: mentions(&["default(", "isNil("]),
            env,
            success,
            failure,
        })
    }

    /// The dialect each condition was read in (success, failure).
    pub fn dialects(&self) -> (Option<Dialect>, Option<Dialect>) {
        (
            self.success.as_ref().map(Condition::dialect),
            self.failure.as_ref().map(Condition::dialect),
        )
    }

    /// Judges a query's result: Failed if the failure condition holds, else Successful if the success
    /// condition holds, else Inconclusive. A condition that cannot be evaluated on this result (a
    /// type error, an index out of range) makes the measurement an Error naming the condition.
    pub fn judge(&self, result: &QueryResult) -> Verdict {
        let shown = result.display();
        let seen = if result.is_empty() {
            if !self.decides_no_data {
                return Verdict {
                    phase: AnalysisPhase::Inconclusive,
                    message:
                        "the query returned no data (no series matched): cannot judge; a condition using default() or isNil() may decide instead"
                            .to_owned(),
                };
            }
            None
        } else {
            Some(result)
        };
        if !self.decides_nan && result.values().iter().any(|v| v.is_nan()) {
            return Verdict {
                phase: AnalysisPhase::Inconclusive,
                message: format!(
                    "the query returned NaN ({shown}), e.g. a ratio with no traffic: cannot judge; a condition using isNaN() may decide instead"
                ),
            };
        }
        let error = |message| Verdict {
            phase: AnalysisPhase::Error,
            message,
        };
        if let Some(failure) = &self.failure {
            match evaluate(&self.env, failure, seen) {
                Ok(true) => {
                    return Verdict {
                        phase: AnalysisPhase::Failed,
                        message: format!("{shown} met failureCondition {:?}", failure.text),
                    };
                }
                Ok(false) => {}
                Err(problem) => return error(format!("condition {:?} {problem}", failure.text)),
            }
        }
        match &self.success {
            Some(success) => match evaluate(&self.env, success, seen) {
                Ok(true) => Verdict {
                    phase: AnalysisPhase::Successful,
                    message: format!("{shown} met successCondition {:?}", success.text),
                },
                Ok(false) => match &self.failure {
                    // With both conditions, failing the success one alone decides nothing.
                    Some(_) => Verdict {
                        phase: AnalysisPhase::Inconclusive,
                        message: format!(
                            "{shown} met neither successCondition {:?} nor failureCondition",
                            success.text
                        ),
                    },
                    None => Verdict {
                        phase: AnalysisPhase::Failed,
                        message: format!(
                            "{shown} did not meet successCondition {:?}",
                            success.text
                        ),
                    },
                },
                Err(problem) => error(format!("condition {:?} {problem}", success.text)),
            },
            None => Verdict {
                phase: AnalysisPhase::Successful,
                message: format!("{shown} did not meet failureCondition"),
            },
        }
    }
}

/// A metric's conditions as the controller holds them: their text, checked without evaluating it
/// ([`precheck`]). They are evaluated only by the
/// [evaluator](crate::evaluator), in a child process with its own limits.
#[derive(Clone, Debug)]
pub struct Judge {
    shape: ResultShape,
    success: Option<String>,
    failure: Option<String>,
}

impl Judge {
    /// The conditions, if they pass [`precheck`] and no earlier [`check`](Self::check) found them
    /// invalid.
    pub fn new(
        shape: ResultShape,
        success: Option<&str>,
        failure: Option<&str>,
    ) -> Result<Self, ConditionError> {
        precheck(shape, success, failure)?;
        if let Some(Err(invalid)) = crate::evaluator::known(shape, success, failure) {
            return Err(invalid);
        }
        Ok(Self {
            shape,
            success: success.map(str::to_owned),
            failure: failure.map(str::to_owned),
        })
    }

    /// Whether the conditions compile and give true or false for some answer, found by the
    /// evaluator once per text (`Err`: the evaluator could not run, nothing is known).
    pub async fn check(&self) -> Result<Result<(), ConditionError>, String> {
        crate::evaluator::checked(self.shape, self.success.as_deref(), self.failure.as_deref())
            .await
    }

    /// The verdict on `result`, from the evaluator: what it could not judge is an Error saying why.
    pub async fn judge(&self, result: QueryResult) -> Verdict {
        crate::evaluator::judge(
            self.shape,
            self.success.as_deref(),
            self.failure.as_deref(),
            result,
        )
        .await
    }
}

/// The longest condition accepted: conditions are comparisons, not programs.
pub const MAX_CONDITION_BYTES: usize = 1024;
/// Brackets nested deeper than this are refused (the parsers recurse on them).
pub const MAX_NESTING: usize = 24;
/// Loops (`all`, `map`, `.exists(...)`, ...) inside loops inside loops are refused: each level
/// multiplies the work by the answer's length.
pub const MAX_LOOP_NESTING: usize = 2;
/// More than one `let` is refused: each may double what the one before built.
pub const MAX_LETS: usize = 1;

/// Functions and macros that visit every element of a list.
const LOOPS: &[&str] = &[
    "all",
    "any",
    "none",
    "one",
    "filter",
    "map",
    "count",
    "sum",
    "find",
    "findIndex",
    "findLast",
    "findLastIndex",
    "groupBy",
    "sortBy",
    "exists",
    "exists_one",
    "mean",
    "median",
    "min",
    "max",
    "sort",
    "uniq",
    "flatten",
    "join",
    "concat",
    "toJSON",
    "toPairs",
    "fromPairs",
];

/// Functions refused whatever their arguments: they build a value of any size from a small one
/// (`repeat("a", 1000000)`, an accumulator that doubles at each element).
const UNBOUNDED: &[&str] = &["repeat", "reduce"];

/// What a condition's text shows of its cost, checked before it is parsed: its length, how deep its
/// brackets and loops nest, how many `let`s it has and whether it calls a function that builds
/// values of any size. A condition that passes may still be too costly on a large answer; the
/// evaluator's limits (see [`crate::evaluator`]) stop that one.
pub fn static_check(field: &str, text: &str) -> Result<(), ConditionError> {
    let refuse = |reason: String| ConditionError {
        field: field.to_owned(),
        source_text: if text.len() > 80 {
            format!("{}...", text.chars().take(80).collect::<String>())
        } else {
            text.to_owned()
        },
        reason,
    };
    if text.len() > MAX_CONDITION_BYTES {
        return Err(refuse(format!(
            "it is {} bytes long; a condition may have at most {MAX_CONDITION_BYTES} (compare the \
             query's answer, and aggregate in the query)",
            text.len()
        )));
    }
    let mut quote: Option<char> = None;
    let mut word = String::new();
    let mut last_word = String::new();
    // Open brackets, each with whether it holds a loop's arguments.
    let mut open: Vec<bool> = Vec::new();
    let mut lets = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            if word == "let" {
                lets += 1;
            }
            last_word = std::mem::take(&mut word);
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => {
                let called = if c == '(' { last_word.as_str() } else { "" };
                if UNBOUNDED.contains(&called) {
                    return Err(refuse(format!(
                        "{called}() is not allowed: it builds values of any size"
                    )));
                }
                open.push(LOOPS.contains(&called));
                if open.len() > MAX_NESTING {
                    return Err(refuse(format!(
                        "its brackets nest more than {MAX_NESTING} deep"
                    )));
                }
                if open.iter().filter(|l| **l).count() > MAX_LOOP_NESTING {
                    return Err(refuse(format!(
                        "it nests loops over lists more than {MAX_LOOP_NESTING} deep: each level \
                         multiplies the work by the answer's length"
                    )));
                }
            }
            ')' | ']' | '}' => {
                open.pop();
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
    }
    if lets > MAX_LETS {
        return Err(refuse(format!(
            "it has {lets} let bindings; a condition may have at most {MAX_LETS}"
        )));
    }
    Ok(())
}

/// Whether reading a condition evaluates it on the [`probes`] (only the evaluator does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Yes,
    No,
}

type TextKey = (ResultShape, Option<String>, Option<String>);

/// What [`precheck`] found, by shape and text: a Rollout's templates are checked on each of its
/// reconciles, and reading a condition takes a few hundred microseconds.
static PRECHECKED: LazyLock<
    std::sync::Mutex<std::collections::HashMap<TextKey, Result<(), ConditionError>>>,
> = LazyLock::new(Default::default);
const MAX_PRECHECKED: usize = 4096;

/// What can be found of conditions without evaluating them, here: the cost their text shows
/// ([`static_check`]), that each parses in one of the dialects and calls only functions it has.
/// Whether they give true or false is for the evaluator to find.
pub fn precheck(
    shape: ResultShape,
    success: Option<&str>,
    failure: Option<&str>,
) -> Result<(), ConditionError> {
    let key = (
        shape,
        success.map(str::to_owned),
        failure.map(str::to_owned),
    );
    if let Some(found) = PRECHECKED.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let env = Arc::new(Env::stdlib());
    let found = [("successCondition", success), ("failureCondition", failure)]
        .into_iter()
        .filter_map(|(field, text)| text.map(|text| (field, text)))
        .try_for_each(|(field, text)| read(&env, shape, field, text, Probe::No).map(drop));
    if let Ok(mut kept) = PRECHECKED.lock() {
        if kept.len() >= MAX_PRECHECKED {
            kept.clear();
        }
        kept.insert(key, found.clone());
    }
    found
}

/// `text` read as CEL, else as Argo Rollouts' expression language: the first in which it parses
/// and gives true or false for one of the [`probes`]. Otherwise what went wrong in each.
fn read(
    env: &Arc<Env>,
    shape: ResultShape,
    field: &'static str,
    text: &str,
    probe: Probe,
) -> Result<Condition, ConditionError> {
    static_check(field, text)?;
    let as_cel = env
        .compile(text)
        .map_err(|err| first_line(&err.to_string()).to_owned())
        .and_then(|program| usable(env, shape, text, Program::Cel(program), probe));
    let cel_problem = match as_cel {
        Ok(condition) => return Ok(condition),
        Err(problem) => problem,
    };
    let as_expr = if has_range(text) {
        Err("ranges (a..b) are not allowed: they build lists of any size".to_owned())
    } else {
        expr::compile(text)
            .map_err(|err| err.to_string())
            .and_then(|program| usable(env, shape, text, Program::Expr(program), probe))
    };
    as_expr.map_err(|expr_problem| ConditionError {
        field: field.to_owned(),
        source_text: text.to_owned(),
        reason: format!(
            "read as CEL: {cel_problem}; read as Argo Rollouts' expression language: {expr_problem}"
        ),
    })
}

/// The condition, if every function it calls exists in its dialect and (for numbers) it gives true
/// or false for one of the [`probes`].
fn usable(
    env: &Arc<Env>,
    shape: ResultShape,
    text: &str,
    program: Program,
    probe: Probe,
) -> Result<Condition, String> {
    let condition = Condition {
        text: text.to_owned(),
        program,
    };
    let dialect = condition.dialect();
    if let Some(unknown) = called_functions(text)
        .into_iter()
        .find(|name| !knows_function(env, dialect, name))
    {
        return Err(format!("there is no function {unknown}()"));
    }
    if shape == ResultShape::Json || probe == Probe::No {
        return Ok(condition);
    }
    let mut first_problem = None;
    for probe in probes() {
        match evaluate(env, &condition, Some(&probe)) {
            Ok(_) => return Ok(condition),
            Err(problem) => {
                first_problem.get_or_insert(problem);
            }
        }
    }
    Err(format!(
        "it gives true or false for no answer (a number, a list or a list of lists of eight): {}",
        first_problem.unwrap_or_default()
    ))
}

/// One condition on `result` (`None`: no data, seen as null), or why it could not be evaluated.
fn evaluate(
    env: &Arc<Env>,
    condition: &Condition,
    result: Option<&QueryResult>,
) -> Result<bool, String> {
    let shown = result.map_or_else(|| "no data".to_owned(), QueryResult::display);
    let outcome = match &condition.program {
        Program::Cel(program) => {
            let mut context = Context::with_env(env.clone());
            context
                .add_variable_from_value("result", result.map_or(Value::Null, QueryResult::to_cel));
            // Names Argo Rollouts users know; none of them is in CEL's standard library.
            let registered = [
                context.add_function("isNaN", |x: f64| x.is_nan()),
                context.add_function("isInf", |x: f64| x.is_infinite()),
                context.add_function("len", |list: Arc<Vec<Value>>| {
                    i64::try_from(list.len()).unwrap_or(i64::MAX)
                }),
                context.add_function("asFloat", |Arguments(args): Arguments| cel_float(&args)),
                context.add_function("asInt", |Arguments(args): Arguments| cel_int(&args)),
                context.add_function("isNil", |Arguments(args): Arguments| {
                    matches!(args.as_slice(), [Value::Null])
                }),
                context.add_function("default", |Arguments(args): Arguments| {
                    match args.as_slice() {
                        [Value::Null, fallback] => Ok(fallback.clone()),
                        [value, _] => Ok(value.clone()),
                        other => Err(ExecutionError::function_error(
                            "default",
                            format!("takes (value, fallback), got {} arguments", other.len()),
                        )),
                    }
                }),
            ];
            if let Some(Err(err)) = registered.into_iter().find(Result::is_err) {
                return Err(format!("could not set up condition functions: {err}"));
            }
            match program.execute(&context) {
                Ok(Value::Bool(b)) => Ok(b),
                Ok(other) => Err(format!("{other:?}")),
                Err(err) => Err(format!("failed on {shown}: {err}")),
            }
        }
        Program::Expr(program) => {
            let mut context = expr::Context::default();
            context.insert(
                "result",
                result.map_or(expr::Value::Nil, QueryResult::to_expr),
            );
            match EXPR_ENV.run(program, &context) {
                Ok(expr::Value::Bool(b)) => Ok(b),
                Ok(other) => Err(format!("{other}")),
                Err(err) => Err(format!("failed on {shown}: {err}")),
            }
        }
    };
    outcome.map_err(|problem| {
        if problem.starts_with("failed on ") {
            problem
        } else {
            format!("gave {problem} for {shown}, not true or false")
        }
    })
}

/// The names a condition calls as functions (`name(`), outside string literals; a method call
/// (`.name(`) is not one of them.
fn called_functions(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut quote: Option<char> = None;
    let mut word = String::new();
    let mut word_after_dot = false;
    let mut previous = ' ';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            previous = c;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            if word.is_empty() {
                word_after_dot = previous == '.';
            }
            word.push(c);
        } else {
            if !word.is_empty() {
                let mut rest = std::iter::once(c).chain(chars.clone());
                let calls = rest.find(|x| !x.is_whitespace()) == Some('(');
                if calls && !word_after_dot && !word.starts_with(|x: char| x.is_ascii_digit()) {
                    names.push(std::mem::take(&mut word));
                }
                word.clear();
            }
            if matches!(c, '"' | '\'' | '`') {
                quote = Some(c);
            }
        }
        if !c.is_whitespace() {
            previous = c;
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Whether `name` is a function of `dialect` (with Argo Rollouts' functions): calling it with no
/// arguments fails for some other reason than an unknown name, or succeeds.
fn knows_function(env: &Arc<Env>, dialect: Dialect, name: &str) -> bool {
    let call = format!("{name}()");
    match dialect {
        // A macro, not a function: `has(a.b)`.
        Dialect::Cel if name == "has" => true,
        Dialect::Cel => {
            let Ok(program) = env.compile(&call) else {
                // A macro or keyword that needs arguments (has, all, ...).
                return true;
            };
            let condition = Condition {
                text: call,
                program: Program::Cel(program),
            };
            !evaluate(env, &condition, Some(&QueryResult::Scalar(0.0)))
                .is_err_and(|e| e.contains("Undeclared reference"))
        }
        Dialect::Expr => {
            let Ok(program) = expr::compile(&call) else {
                return true;
            };
            let mut context = expr::Context::default();
            context.insert("result", expr::Value::Nil);
            !EXPR_ENV
                .run(&program, &context)
                .is_err_and(|e| e.to_string().contains("Unknown function"))
        }
    }
}

/// The first line of a multi-line parser message.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(success: Option<&str>, failure: Option<&str>, result: QueryResult) -> AnalysisPhase {
        Conditions::compile(success, failure)
            .expect("compiles")
            .judge(&result)
            .phase
    }

    use AnalysisPhase::{Error, Failed, Inconclusive, Successful};

    #[test]
    fn the_common_idioms_work() {
        let v = |x: f64| QueryResult::Vector(vec![x]);
        assert_eq!(judge(Some("result[0] < 0.01"), None, v(0.001)), Successful);
        assert_eq!(judge(Some("result[0] < 0.01"), None, v(0.02)), Failed);
        assert_eq!(
            judge(Some("result[0] < 1"), None, v(0.5)),
            Successful,
            "int vs double"
        );
        assert_eq!(judge(Some("len(result) > 0"), None, v(3.0)), Successful);
        assert_eq!(judge(Some("size(result) == 1"), None, v(3.0)), Successful);
        assert_eq!(
            judge(
                Some("result.all(x, x < 0.5)"),
                None,
                QueryResult::Vector(vec![0.1, 0.4])
            ),
            Successful
        );
        assert_eq!(
            judge(Some("result >= 0.95"), None, QueryResult::Scalar(0.99)),
            Successful
        );
        assert_eq!(
            judge(
                Some("double(result[0]) > 0.1 && int(result[0]) == 0 && string(result[0]) != ''"),
                None,
                v(0.5)
            ),
            Successful,
            "CEL's standard functions are known"
        );
        assert_eq!(judge(None, Some("result[0] >= 0.05"), v(0.07)), Failed);
        assert_eq!(judge(None, Some("result[0] >= 0.05"), v(0.01)), Successful);
    }

    /// Conditions as Argo Rollouts' documentation and users write them, unchanged.
    #[test]
    fn argo_rollouts_conditions_work_unchanged() {
        let v = |values: &[f64]| QueryResult::Vector(values.to_vec());
        let cases: &[(&str, QueryResult, AnalysisPhase)] = &[
            ("all(result, {# < 0.5})", v(&[0.1, 0.4]), Successful),
            ("all(result, {# < 0.5})", v(&[0.1, 0.6]), Failed),
            ("all(result, # < 0.5)", v(&[0.1, 0.4]), Successful),
            ("any(result, {# > 0.5})", v(&[0.1, 0.6]), Successful),
            ("none(result, {# > 0.5})", v(&[0.1, 0.6]), Failed),
            (
                "result[0] >= 0.95 and len(result) == 1",
                v(&[0.97]),
                Successful,
            ),
            ("not (result[0] < 0.95)", v(&[0.97]), Successful),
            ("asFloat(result[0]) >= 0.95", v(&[0.97]), Successful),
            ("asInt(result[0]) == 0", v(&[0.97]), Successful),
            ("asFloat(result) < 1", QueryResult::Scalar(0.5), Successful),
            (
                "isNaN(result[0]) || result[0] < 0.05",
                v(&[f64::NAN]),
                Successful,
            ),
            ("isInf(result[0])", v(&[f64::INFINITY]), Successful),
            ("default(result, [0])[0] < 1", v(&[]), Successful),
            ("isNil(result) || result[0] < 1", v(&[]), Successful),
            (
                "let r = result[0]; r > 0.1 and r < 0.9",
                v(&[0.5]),
                Successful,
            ),
            ("result[0] > 0.9 ? false : true", v(&[0.5]), Successful),
            (
                "median(result) < 0.5 && max(result) < 1",
                v(&[0.1, 0.2, 0.9]),
                Successful,
            ),
            ("result[0] * 100 < 5", v(&[0.01]), Successful),
        ];
        for (condition, result, want) in cases {
            let compiled = Conditions::compile(Some(condition), None)
                .unwrap_or_else(|err| panic!("{condition}: {err}"));
            let verdict = compiled.judge(result);
            assert_eq!(
                verdict.phase, *want,
                "{condition} on {result:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn each_condition_is_read_in_one_dialect() {
        let dialect = |text| {
            Conditions::compile(Some(text), None)
                .expect("compiles")
                .dialects()
                .0
        };
        assert_eq!(dialect("result.all(x, x < 0.5)"), Some(Dialect::Cel));
        assert_eq!(dialect("asFloat(result[0]) > 1"), Some(Dialect::Cel));
        assert_eq!(dialect("all(result, {# < 0.5})"), Some(Dialect::Expr));
        assert_eq!(
            dialect("result[0] > 0 and result[0] < 1"),
            Some(Dialect::Expr)
        );
    }

    /// An unknown function or variable, a range, or a condition that is never true or false is
    /// refused when compiled, not at the first measurement.
    #[test]
    fn what_can_never_be_evaluated_is_refused_at_compile() {
        for (condition, says) in [
            ("p99(result) < 1", "p99"),
            ("all(result, {# < limit})", "limit"),
            ("sizeof(result) > 0", "sizeof"),
            ("result[0] + 1", "not true or false"),
            ("len(1..100000000000) > 0", "ranges"),
            ("all(result, {# <", "read as CEL"),
        ] {
            let err = Conditions::compile(Some(condition), None)
                .err()
                .unwrap_or_else(|| panic!("{condition} compiled"));
            let text = err.to_string();
            assert!(text.contains(says), "{condition}: {text}");
            assert!(text.contains("successCondition"), "{text}");
        }
        // A range inside a string is only text.
        assert!(Conditions::compile(Some("'a..b' != '' && result[0] < 1"), None).is_ok());
    }

    #[test]
    fn conditions_over_json_answers_read_fields() {
        let answer = QueryResult::Json(serde_json::json!({"status": "ok", "rate": 0.01, "n": 3}));
        for (condition, want) in [
            ("result.status == 'ok' && result.rate < 0.05", Successful),
            ("result.status == \"ok\" and result.rate < 0.005", Failed),
            ("result.n >= 3", Successful),
            ("asFloat(result.rate) < 1", Successful),
        ] {
            let compiled = Conditions::compile_for(ResultShape::Json, Some(condition), None)
                .unwrap_or_else(|err| panic!("{condition}: {err}"));
            assert_eq!(compiled.judge(&answer).phase, want, "{condition}");
        }
        let err = Conditions::compile_for(ResultShape::Json, Some("p99(result.rate) < 1"), None)
            .expect_err("unknown function");
        assert!(err.to_string().contains("no function p99()"), "{err}");
        assert_eq!(
            Conditions::compile_for(ResultShape::Json, Some("result.ok"), None)
                .expect("compiles")
                .judge(&QueryResult::Json(serde_json::Value::Null))
                .phase,
            Inconclusive,
            "null is no data"
        );
    }

    #[test]
    fn called_functions_are_found_outside_strings_and_methods() {
        assert_eq!(
            called_functions(
                "all(result, {# < 1}) && result.exists(x, x > 0) && 'p99(' != size (result)"
            ),
            vec!["all".to_owned(), "size".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_judge_checks_each_text_once_and_remembers_what_is_invalid() {
        let unknown = Judge::new(ResultShape::Numbers, Some("p97(result) < 1"), None);
        assert!(
            unknown.is_err_and(|e| e.to_string().contains("no function p97()")),
            "found without evaluating"
        );
        let judge = Judge::new(ResultShape::Numbers, Some("result[0] + 0.5"), None)
            .expect("it parses and calls no unknown function");
        let invalid = judge.check().await.expect("evaluated");
        assert!(invalid.is_err_and(|e| e.to_string().contains("not true or false")));
        let again = Judge::new(ResultShape::Numbers, Some("result[0] + 0.5"), None);
        assert!(
            again.is_err_and(|e| e.to_string().contains("not true or false")),
            "a judge of a text found invalid is refused without evaluating it again"
        );
        let fine = Judge::new(ResultShape::Numbers, Some("result[0] < 0.25"), None).expect("ok");
        assert_eq!(fine.check().await, Ok(Ok(())));
        assert_eq!(
            fine.judge(QueryResult::Vector(vec![0.1])).await.phase,
            Successful
        );
    }

    /// What the text of a condition shows of its cost is refused before it is parsed or evaluated:
    /// each of these would take the memory or a thread of whatever evaluated it.
    #[test]
    fn conditions_whose_text_shows_their_cost_are_refused() {
        let nested = (0..12).fold("# > 0".to_owned(), |inner, _| {
            format!("all(result, {{{inner}}})")
        });
        let long = format!("result[0] < 1{}", " && result[0] < 1".repeat(80));
        for (condition, says) in [
            (
                "len(repeat(repeat(\"a\",1000),1000000)) > 0",
                "repeat() is not allowed",
            ),
            (nested.as_str(), "nests loops over lists more than 2 deep"),
            (
                "result.map(x, result.map(y, result.map(z, z))).size() > 0",
                "nests loops",
            ),
            ("len(reduce(result, #acc + #acc, \"ab\")) > 0", "reduce()"),
            (
                "let a = result + result; let b = a + a; len(b) > 0",
                "2 let bindings",
            ),
            (
                &format!("{}true{}", "(".repeat(40), ")".repeat(40)),
                "nest more than 24",
            ),
            (long.as_str(), "at most 1024"),
        ] {
            let err = Conditions::compile(Some(condition), None)
                .err()
                .unwrap_or_else(|| panic!("{condition} compiled"));
            assert!(err.to_string().contains(says), "{condition}: {err}");
            let refused = Judge::new(ResultShape::Numbers, None, Some(condition));
            assert!(
                refused.is_err_and(|e| e.to_string().contains("failureCondition")),
                "{condition}"
            );
        }
        // Loops nested twice, one let, and brackets or names inside strings are fine.
        for fine in [
            "result.all(x, result.exists(y, y >= x))",
            "all(result, {any(result, {# > 0})})",
            "let r = result[0]; r > 0.1 and r < 0.9",
            "'repeat(((((' != '' && result[0] < 1",
        ] {
            assert!(
                Conditions::compile(Some(fine), None).is_ok(),
                "{fine} refused"
            );
        }
    }

    #[test]
    fn both_conditions_false_is_inconclusive() {
        let phase = judge(
            Some("result[0] < 0.01"),
            Some("result[0] >= 0.05"),
            QueryResult::Vector(vec![0.03]),
        );
        assert_eq!(phase, Inconclusive);
    }

    #[test]
    fn no_data_and_nan_never_pass() {
        assert_eq!(
            judge(Some("true"), None, QueryResult::Vector(vec![])),
            Inconclusive
        );
        assert_eq!(
            judge(
                Some("all(result, {# < 1})"),
                None,
                QueryResult::Vector(vec![])
            ),
            Inconclusive
        );
        let nan = QueryResult::Vector(vec![f64::NAN]);
        assert_eq!(
            judge(Some("!(result[0] >= 0.05)"), None, nan.clone()),
            Inconclusive
        );
        // A condition that handles NaN itself decides.
        assert_eq!(
            judge(Some("isNaN(result[0]) || result[0] < 0.05"), None, nan),
            Successful
        );
        // One that handles no data decides too, and may still fail it.
        assert_eq!(
            judge(
                Some("default(result, 1) < 0.5"),
                None,
                QueryResult::Vector(vec![])
            ),
            Failed
        );
    }

    #[test]
    fn a_condition_that_cannot_be_evaluated_is_an_error() {
        assert_eq!(
            judge(
                Some("result[3] < 1.0"),
                None,
                QueryResult::Vector(vec![0.1])
            ),
            Error
        );
        assert_eq!(
            judge(Some("result[0] < 1"), None, QueryResult::Scalar(0.1)),
            Error
        );
    }

    #[test]
    fn a_malformed_condition_does_not_compile() {
        let err = Conditions::compile(Some("result[0] <"), None).expect_err("malformed");
        assert!(err.to_string().contains("successCondition"), "{err}");
    }

    #[test]
    fn values_are_shown_readably() {
        assert_eq!(
            QueryResult::Vector(vec![0.0042, 1.0]).display(),
            "[0.0042, 1]"
        );
        assert_eq!(QueryResult::Scalar(f64::NAN).display(), "NaN");
    }
}
