//! A metric's `successCondition` and `failureCondition`: CEL expressions over `result`.
//!
//! `result` is what the query answered: a list of numbers for an instant vector (one per series, so
//! `result[0]` is the first), a number for a scalar, a list of lists for a range vector. Besides CEL's
//! standard library (`size(result)`, `result.all(x, x < 0.5)`, `result.exists(x, x > 1.0)`, ...),
//! conditions may call `len(list)` (as `size`), `isNaN(x)` and `isInf(x)`. Integers and doubles
//! compare with each other, so `result[0] < 1` works.
//!
//! A result that is empty, or holds NaN (a ratio of 0/0: no traffic), is Inconclusive with a message
//! saying so, unless a condition mentions `isNaN` and so decides about NaN itself. Neither condition
//! true is Inconclusive as well: a measurement never passes by default.

use std::sync::Arc;

use cel::{Context, Env, Program, Value};
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
}

impl QueryResult {
    fn values(&self) -> Vec<f64> {
        match self {
            Self::Scalar(v) => vec![*v],
            Self::Vector(v) => v.clone(),
            Self::Matrix(m) => m.iter().flatten().copied().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.values().is_empty()
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
        }
    }

    fn to_cel(&self) -> Value {
        let list = |v: &[f64]| Value::List(Arc::new(v.iter().map(|x| Value::Float(*x)).collect()));
        match self {
            Self::Scalar(v) => Value::Float(*v),
            Self::Vector(v) => list(v),
            Self::Matrix(m) => Value::List(Arc::new(m.iter().map(|r| list(r)).collect())),
        }
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

/// A condition that did not compile.
#[derive(Debug, thiserror::Error)]
#[error("{field} {source_text:?} is not a valid expression: {reason}")]
pub struct ConditionError {
    /// `successCondition` or `failureCondition`.
    pub field: &'static str,
    pub source_text: String,
    pub reason: String,
}

/// A metric's compiled conditions.
pub struct Conditions {
    env: Arc<Env>,
    success: Option<(String, Program)>,
    failure: Option<(String, Program)>,
    decides_nan: bool,
}

impl std::fmt::Debug for Conditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditions")
            .field("success", &self.success.as_ref().map(|(s, _)| s))
            .field("failure", &self.failure.as_ref().map(|(s, _)| s))
            .finish()
    }
}

/// The longest conditions may take to judge one answer.
pub const JUDGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The verdict of one measurement, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub phase: AnalysisPhase,
    pub message: String,
}

impl Conditions {
    /// Compiles the conditions; either may be absent.
    pub fn compile(success: Option<&str>, failure: Option<&str>) -> Result<Self, ConditionError> {
        let env = Arc::new(Env::stdlib());
        let compile = |field: &'static str, text: Option<&str>| {
            text.map(|text| {
                env.compile(text)
                    .map(|program| (text.to_owned(), program))
                    .map_err(|err| ConditionError {
                        field,
                        source_text: text.to_owned(),
                        reason: err.to_string(),
                    })
            })
            .transpose()
        };
        let success = compile("successCondition", success)?;
        let failure = compile("failureCondition", failure)?;
        let decides_nan = [&success, &failure]
            .into_iter()
            .flatten()
            .any(|(text, _)| text.contains("isNaN"));
        Ok(Self {
            env,
            success,
            failure,
            decides_nan,
        })
    }

    /// [`judge`](Self::judge) on a blocking thread, so that an expensive condition never holds the
    /// task reconciles share; one that takes longer than [`JUDGE_LIMIT`] is an Error.
    pub async fn judge_bounded(self: &Arc<Self>, result: QueryResult) -> Verdict {
        let conditions = self.clone();
        let judging = tokio::task::spawn_blocking(move || conditions.judge(&result));
        match tokio::time::timeout(JUDGE_LIMIT, judging).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(failed)) => Verdict {
                phase: AnalysisPhase::Error,
                message: format!("the conditions could not be evaluated: {failed}"),
            },
            Err(_) => Verdict {
                phase: AnalysisPhase::Error,
                message: format!(
                    "the conditions took more than {}s to judge the answer (simplify them, or \
                     aggregate the query)",
                    JUDGE_LIMIT.as_secs()
                ),
            },
        }
    }

    /// Judges a query's result: Failed if the failure condition holds, else Successful if the success
    /// condition holds, else Inconclusive. A condition that cannot be evaluated on this result (a
    /// type error, an index out of range) makes the measurement an Error naming the condition.
    pub fn judge(&self, result: &QueryResult) -> Verdict {
        let shown = result.display();
        if result.is_empty() {
            return Verdict {
                phase: AnalysisPhase::Inconclusive,
                message: "the query returned no data (no series matched): cannot judge".to_owned(),
            };
        }
        if !self.decides_nan && result.values().iter().any(|v| v.is_nan()) {
            return Verdict {
                phase: AnalysisPhase::Inconclusive,
                message: format!(
                    "the query returned NaN ({shown}), e.g. a ratio with no traffic: cannot judge; a condition using isNaN() may decide instead"
                ),
            };
        }
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("result", result.to_cel());
        // Names Argo Rollouts users know; none of them is in CEL's standard library.
        let registered = [
            context.add_function("isNaN", |x: f64| x.is_nan()),
            context.add_function("isInf", |x: f64| x.is_infinite()),
            context.add_function("len", |list: Arc<Vec<Value>>| {
                i64::try_from(list.len()).unwrap_or(i64::MAX)
            }),
        ];
        if let Some(Err(err)) = registered.into_iter().find(Result::is_err) {
            return Verdict {
                phase: AnalysisPhase::Error,
                message: format!("could not set up condition functions: {err}"),
            };
        }
        let evaluate = |(text, program): &(String, Program)| -> Result<bool, Verdict> {
            match program.execute(&context) {
                Ok(Value::Bool(b)) => Ok(b),
                Ok(other) => Err(Verdict {
                    phase: AnalysisPhase::Error,
                    message: format!(
                        "condition {text:?} gave {other:?} for result {shown}, not true or false"
                    ),
                }),
                Err(err) => Err(Verdict {
                    phase: AnalysisPhase::Error,
                    message: format!("condition {text:?} failed on result {shown}: {err}"),
                }),
            }
        };
        if let Some(failure) = &self.failure {
            match evaluate(failure) {
                Ok(true) => {
                    return Verdict {
                        phase: AnalysisPhase::Failed,
                        message: format!("{shown} met failureCondition {:?}", failure.0),
                    };
                }
                Ok(false) => {}
                Err(verdict) => return verdict,
            }
        }
        match &self.success {
            Some(success) => match evaluate(success) {
                Ok(true) => Verdict {
                    phase: AnalysisPhase::Successful,
                    message: format!("{shown} met successCondition {:?}", success.0),
                },
                Ok(false) => match &self.failure {
                    // With both conditions, failing the success one alone decides nothing.
                    Some(_) => Verdict {
                        phase: AnalysisPhase::Inconclusive,
                        message: format!(
                            "{shown} met neither successCondition {:?} nor failureCondition",
                            success.0
                        ),
                    },
                    None => Verdict {
                        phase: AnalysisPhase::Failed,
                        message: format!("{shown} did not meet successCondition {:?}", success.0),
                    },
                },
                Err(verdict) => verdict,
            },
            None => Verdict {
                phase: AnalysisPhase::Successful,
                message: format!("{shown} did not meet failureCondition"),
            },
        }
    }
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
        assert_eq!(judge(None, Some("result[0] >= 0.05"), v(0.07)), Failed);
        assert_eq!(judge(None, Some("result[0] >= 0.05"), v(0.01)), Successful);
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
            judge(Some("result[0]"), None, QueryResult::Vector(vec![0.1])),
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
