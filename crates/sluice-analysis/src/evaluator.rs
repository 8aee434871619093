//! Where conditions are evaluated: in a child process of the controller, never on its own threads.
//!
//! A condition is a tenant's program. Neither CEL's interpreter nor Argo Rollouts' expression
//! language counts steps or bytes, and a thread cannot be stopped from outside, so a condition that
//! builds a gigabyte string or loops for minutes would take the controller's memory or a thread for
//! as long as it likes. Each evaluation (a condition's check when a template is applied, each
//! measurement's verdict) therefore runs in a fresh child process started from the controller's own
//! binary ([`serve_if_asked`]), which limits itself to [`MEMORY_LIMIT_BYTES`] of address space and
//! [`CPU_LIMIT`] of processor time before it reads its condition, and which the controller kills
//! after [`WALL_LIMIT`]. At most [`CONCURRENT`] run at once. What a child costs is its own: the
//! controller's memory and its async workers never see the evaluation.
//!
//! [`condition::static_check`](crate::condition) refuses the conditions whose cost can be seen in
//! their text (too long, too deep, loops nested too deep, functions that build values of any size)
//! before any of this, so that they are refused when the template is applied.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_api::analysis::AnalysisPhase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::condition::{ConditionError, Conditions, QueryResult, ResultShape, Verdict};

/// The argument that makes the controller's binary an evaluator ([`serve_if_asked`]).
pub const WORKER_ARG: &str = "__sluice-evaluate-conditions";

/// The address space an evaluation may use, its binary included.
pub const MEMORY_LIMIT_BYTES: u64 = 256 * 1024 * 1024;

/// The processor time an evaluation may take.
pub const CPU_LIMIT: Duration = Duration::from_secs(1);

/// How long the controller waits for an evaluation before it kills it (processor time is limited
/// to [`CPU_LIMIT`]; this is for a child that waits on nothing, or a machine too busy to run it).
pub const WALL_LIMIT: Duration = Duration::from_secs(10);

/// Evaluations running at once; more wait for one to end.
pub const CONCURRENT: usize = 2;

/// The most a child may answer: a verdict and its message.
const ANSWER_LIMIT: u64 = 1024 * 1024;

/// The most a child reads: a request with an answer of up to a few MiB.
const REQUEST_LIMIT: u64 = 64 * 1024 * 1024;

/// How conditions are evaluated in this process.
#[derive(Clone, Debug)]
pub enum Evaluator {
    /// In a child process: `program` run with [`WORKER_ARG`].
    ChildProcess { program: PathBuf },
    /// On the calling thread, unbounded: only for tests of the conditions themselves.
    InProcess,
}

static EVALUATOR: OnceLock<Evaluator> = OnceLock::new();

/// Sets how this process evaluates conditions, once, before the first evaluation. Without it, a
/// child process of this process's own binary, which must call [`serve_if_asked`] first thing.
pub fn set_evaluator(evaluator: Evaluator) -> Result<(), Evaluator> {
    EVALUATOR.set(evaluator)
}

fn evaluator() -> &'static Evaluator {
    EVALUATOR.get_or_init(|| {
        if cfg!(test) {
            return Evaluator::InProcess;
        }
        match std::env::current_exe() {
            Ok(program) => Evaluator::ChildProcess { program },
            // Never in process: a child that cannot start is an Error verdict saying so.
            Err(_) => Evaluator::ChildProcess {
                program: PathBuf::from("/proc/self/exe"),
            },
        }
    })
}

static RUNNING: Semaphore = Semaphore::const_new(CONCURRENT);

/// A value as the child reads it: numbers by their bits, so that NaN and infinities cross.
#[derive(Serialize, Deserialize)]
enum Answer {
    Scalar(u64),
    Vector(Vec<u64>),
    Matrix(Vec<Vec<u64>>),
    Json(serde_json::Value),
}

impl Answer {
    fn of(result: QueryResult) -> Self {
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect();
        match result {
            QueryResult::Scalar(v) => Self::Scalar(v.to_bits()),
            QueryResult::Vector(v) => Self::Vector(bits(v)),
            QueryResult::Matrix(m) => Self::Matrix(m.into_iter().map(bits).collect()),
            QueryResult::Json(value) => Self::Json(value),
        }
    }

    fn into_result(self) -> QueryResult {
        let floats = |v: Vec<u64>| v.into_iter().map(f64::from_bits).collect();
        match self {
            Self::Scalar(v) => QueryResult::Scalar(f64::from_bits(v)),
            Self::Vector(v) => QueryResult::Vector(floats(v)),
            Self::Matrix(m) => QueryResult::Matrix(m.into_iter().map(floats).collect()),
            Self::Json(value) => QueryResult::Json(value),
        }
    }
}

/// What the controller asks a child: check the conditions (no answer) or judge an answer.
#[derive(Serialize, Deserialize)]
struct Request {
    shape: ResultShape,
    success: Option<String>,
    failure: Option<String>,
    answer: Option<Answer>,
}

/// What a child answers.
#[derive(Serialize, Deserialize)]
enum Response {
    /// The conditions compile and give true or false for some answer.
    Valid,
    /// They do not.
    Invalid(ConditionError),
    /// The verdict on the answer.
    Judged(Verdict),
}

/// Why an evaluation gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    /// The conditions needed more than the limits allow: they are too costly.
    #[error("{0}")]
    OverBudget(String),
    /// The evaluator could not be run (no process could start, the machine is overloaded): nothing
    /// is known about the conditions.
    #[error("the conditions could not be evaluated: {0}")]
    Unavailable(String),
}

/// If this process was started as an evaluator ([`WORKER_ARG`]): limits itself, reads one request
/// from stdin, writes the response to stdout and exits. Otherwise returns at once. Call it first
/// thing in `main`, before any runtime or thread starts.
pub fn serve_if_asked() {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(WORKER_ARG)) {
        return;
    }
    let code = match serve() {
        Ok(()) => 0,
        Err(problem) => {
            eprintln!("{problem}");
            2
        }
    };
    std::process::exit(code);
}

fn serve() -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    let cpu = CPU_LIMIT.as_secs().max(1);
    setrlimit(Resource::RLIMIT_AS, MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES)
        .map_err(|e| format!("cannot limit memory: {e}"))?;
    // SIGXCPU at the soft limit ends the process; the hard limit is a second later.
    setrlimit(Resource::RLIMIT_CPU, cpu, cpu + 1)
        .map_err(|e| format!("cannot limit processor time: {e}"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("cannot turn off cores: {e}"))?;
    // Where the container's memory limit is reached first, the kernel ends this process, not the
    // controller (raising one's own score needs no privilege).
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let mut input = Vec::new();
    std::io::stdin()
        .take(REQUEST_LIMIT)
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    let request: Request =
        serde_json::from_slice(&input).map_err(|e| format!("unreadable request: {e}"))?;
    drop(input);
    let response = answer(request);
    let output = serde_json::to_vec(&response).map_err(|e| format!("cannot answer: {e}"))?;
    std::io::stdout()
        .write_all(&output)
        .map_err(|e| format!("cannot answer: {e}"))
}

/// What a request deserves, evaluated here.
fn answer(request: Request) -> Response {
    let compiled = Conditions::compile_for(
        request.shape,
        request.success.as_deref(),
        request.failure.as_deref(),
    );
    match (compiled, request.answer) {
        (Err(invalid), None) => Response::Invalid(invalid),
        (Ok(_), None) => Response::Valid,
        (Err(invalid), Some(_)) => Response::Judged(Verdict {
            phase: AnalysisPhase::Error,
            message: invalid.to_string(),
        }),
        (Ok(conditions), Some(answer)) => Response::Judged(conditions.judge(&answer.into_result())),
    }
}

/// Checks conditions: they compile and give true or false for an answer of eight values.
pub(crate) async fn check(
    shape: ResultShape,
    success: Option<&str>,
    failure: Option<&str>,
) -> Result<Result<(), ConditionError>, EvaluationError> {
    let request = Request {
        shape,
        success: success.map(str::to_owned),
        failure: failure.map(str::to_owned),
        answer: None,
    };
    match evaluate(request, "check them on an answer of eight values").await? {
        Response::Valid => Ok(Ok(())),
        Response::Invalid(invalid) => Ok(Err(invalid)),
        Response::Judged(_) => Err(EvaluationError::Unavailable(
            "the evaluator answered a check with a verdict".to_owned(),
        )),
    }
}

/// Judges `result` by conditions that passed [`check`]; what cannot be judged is an Error verdict.
pub(crate) async fn judge(
    shape: ResultShape,
    success: Option<&str>,
    failure: Option<&str>,
    result: QueryResult,
) -> Verdict {
    let request = Request {
        shape,
        success: success.map(str::to_owned),
        failure: failure.map(str::to_owned),
        answer: Some(Answer::of(result)),
    };
    let error = |message| Verdict {
        phase: AnalysisPhase::Error,
        message,
    };
    match evaluate(request, "judge the answer").await {
        Ok(Response::Judged(verdict)) => verdict,
        Ok(Response::Invalid(invalid)) => error(invalid.to_string()),
        Ok(Response::Valid) => error("the evaluator gave no verdict".to_owned()),
        Err(problem) => error(problem.to_string()),
    }
}

async fn evaluate(request: Request, doing: &str) -> Result<Response, EvaluationError> {
    let program = match evaluator() {
        Evaluator::InProcess => return Ok(answer(request)),
        Evaluator::ChildProcess { program } => program,
    };
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        EvaluationError::Unavailable(format!("{what}: {e}"))
    };
    let body = serde_json::to_vec(&request).map_err(|e| unavailable("cannot ask", &e))?;
    drop(request);
    let _permit = RUNNING
        .acquire()
        .await
        .map_err(|e| unavailable("no evaluator", &e))?;
    let mut child = tokio::process::Command::new(program)
        .arg(WORKER_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable("cannot start an evaluator", &e))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(EvaluationError::Unavailable(
            "the evaluator has no pipes".to_owned(),
        ));
    };
    let talk = async {
        // A child that dies early closes its stdin: its exit status says why, not the write error.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
        let mut output = Vec::new();
        let mut errors = Vec::new();
        let (mut stdout, mut stderr) = (stdout.take(ANSWER_LIMIT), stderr.take(4096));
        let (read, _) = tokio::join!(
            stdout.read_to_end(&mut output),
            stderr.read_to_end(&mut errors),
        );
        let status = child.wait().await;
        (read.map(|_| output), errors, status)
    };
    let Ok((output, errors, status)) = tokio::time::timeout(WALL_LIMIT, talk).await else {
        // The child is killed as it is dropped (kill_on_drop).
        return Err(EvaluationError::Unavailable(format!(
            "an evaluation did not end within {}s (the controller's machine may be overloaded)",
            WALL_LIMIT.as_secs()
        )));
    };
    let status = status.map_err(|e| unavailable("lost the evaluator", &e))?;
    if !status.success() {
        return Err(over_budget(status, &errors, doing));
    }
    let output = output.map_err(|e| unavailable("cannot read the evaluator's answer", &e))?;
    serde_json::from_slice(&output).map_err(|e| unavailable("unreadable answer", &e))
}

/// Why a child ended without an answer, as the user should read it.
fn over_budget(status: std::process::ExitStatus, errors: &[u8], doing: &str) -> EvaluationError {
    use std::os::unix::process::ExitStatusExt;
    let said = String::from_utf8_lossy(errors);
    match status.signal() {
        Some(signal) if signal == libc_signal::SIGXCPU => EvaluationError::OverBudget(format!(
            "the conditions took more than {}s of processor time to {doing} (simplify them, or \
             aggregate the query)",
            CPU_LIMIT.as_secs()
        )),
        // An allocation refused past the address-space limit aborts; the kernel kills the child
        // first when the container's own memory limit is reached.
        Some(signal)
            if [
                libc_signal::SIGABRT,
                libc_signal::SIGSEGV,
                libc_signal::SIGKILL,
            ]
            .contains(&signal) =>
        {
            EvaluationError::OverBudget(format!(
                "the conditions needed more than {} MiB of memory to {doing} (simplify them, or \
                 aggregate the query)",
                MEMORY_LIMIT_BYTES / (1024 * 1024)
            ))
        }
        _ => EvaluationError::Unavailable(format!(
            "the evaluator ended with {status}: {}",
            said.lines().next().unwrap_or_default()
        )),
    }
}

/// The signal numbers the evaluator's end is read by.
mod libc_signal {
    use nix::sys::signal::Signal;
    pub const SIGXCPU: i32 = Signal::SIGXCPU as i32;
    pub const SIGKILL: i32 = Signal::SIGKILL as i32;
    pub const SIGABRT: i32 = Signal::SIGABRT as i32;
    pub const SIGSEGV: i32 = Signal::SIGSEGV as i32;
}

type CheckKey = (ResultShape, Option<String>, Option<String>);

/// What [`checked`] found, by shape and text: checks run once per text.
static CHECKED: LazyLock<Mutex<std::collections::HashMap<CheckKey, Result<(), ConditionError>>>> =
    LazyLock::new(Default::default);
const MAX_CHECKED: usize = 4096;

/// The outcome of an earlier [`checked`] of these conditions, if any.
pub(crate) fn known(
    shape: ResultShape,
    success: Option<&str>,
    failure: Option<&str>,
) -> Option<Result<(), ConditionError>> {
    let key = (
        shape,
        success.map(str::to_owned),
        failure.map(str::to_owned),
    );
    CHECKED.lock().ok()?.get(&key).cloned()
}

/// [`check`], once per text: a definite outcome (valid, invalid, over budget) is kept; an evaluator
/// that could not run is not.
pub(crate) async fn checked(
    shape: ResultShape,
    success: Option<&str>,
    failure: Option<&str>,
) -> Result<Result<(), ConditionError>, String> {
    if let Some(known) = known(shape, success, failure) {
        return Ok(known);
    }
    let outcome = match check(shape, success, failure).await {
        Ok(outcome) => outcome,
        Err(EvaluationError::OverBudget(reason)) => Err(ConditionError {
            field: match (success, failure) {
                (Some(_), Some(_)) => "successCondition or failureCondition",
                (Some(_), None) => "successCondition",
                _ => "failureCondition",
            }
            .to_owned(),
            source_text: success.or(failure).unwrap_or_default().to_owned(),
            reason,
        }),
        Err(unavailable @ EvaluationError::Unavailable(_)) => return Err(unavailable.to_string()),
    };
    if let Ok(mut kept) = CHECKED.lock() {
        if kept.len() >= MAX_CHECKED {
            kept.clear();
        }
        kept.insert(
            (
                shape,
                success.map(str::to_owned),
                failure.map(str::to_owned),
            ),
            outcome.clone(),
        );
    }
    Ok(outcome)
}
