//! Failpoints for the fault tests: a crash between two writes, a watch that lags. Compiled in only
//! with the `failpoints` feature (the e2e suite's build) and set through the `FAILPOINTS`
//! environment variable (`name=return` or `name=return(ARG)`, several separated by `;`); without
//! the feature each point is nothing, and a controller given `FAILPOINTS` refuses to start rather
//! than ignore it.

use std::time::Duration;

/// Ends the process here (exit code 137, as a SIGKILL would) when the failpoint `name` is set: the
/// crash between two writes a test wants to recover from.
pub fn crash(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        tracing::warn!(failpoint = name, "failpoint: exiting as a crash would");
        std::process::exit(137);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// How long to hold each event of a watch before its store sees it, when the failpoint `name` is
/// set to `return(MILLISECONDS)`: a cache that lags the API server.
pub fn lag(name: &str) -> Option<Duration> {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |ms| {
            ms.and_then(|ms| ms.parse().ok()).map(Duration::from_millis)
        })
        .flatten()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Turns on the failpoints `FAILPOINTS` names; the guard keeps them on. An error if `FAILPOINTS` is
/// set in a build without them.
pub fn setup() -> anyhow::Result<Guard> {
    #[cfg(feature = "failpoints")]
    {
        Ok(Guard(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        if std::env::var_os("FAILPOINTS").is_some() {
            anyhow::bail!(
                "FAILPOINTS is set, but this controller was built without failpoints \
                 (build it with `--features failpoints`)"
            );
        }
        Ok(Guard(()))
    }
}

/// Keeps the failpoints set while it lives.
#[cfg(feature = "failpoints")]
pub struct Guard(#[allow(dead_code)] fail::FailScenario<'static>);
/// Keeps the failpoints set while it lives.
#[cfg(not(feature = "failpoints"))]
pub struct Guard(());
