//! Pre-deployment checks (`spec.preDeploymentChecks`): analyses a release must pass before its
//! first pod. They start once the error-budget gates let the revision start; until every check has
//! a verdict the new version gets no pods. A critical check that fails (or is inconclusive) aborts
//! the release, naming the check; an advisory one that fails is reported (condition
//! `AdvisoryCheckFailed`, an Event) and the release goes on. The verdicts are kept in
//! `status.preDeploymentChecks` for the revision, so a restart never runs them twice.

use k8s_openapi::jiff::Timestamp;
use sluice_api::rollout::{
    CheckSeverity, CheckStatus, ChecksPhase, PreDeploymentCheck, PreDeploymentChecksStatus,
    RolloutStatus,
};

use crate::conditions::{self, ConditionStatus};
use crate::events::Event;
use crate::release::AnalysisOutcome;

/// Condition type while the revision released failed an advisory check.
pub const CONDITION_ADVISORY_CHECK_FAILED: &str = "AdvisoryCheckFailed";

/// What the checks mean for the release now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// No checks to wait for (none configured, or the release was under way before they were).
    Go,
    /// Checks are running: the new version gets no pods yet. The message names them.
    Running(String),
    /// A critical check failed: abort with this message.
    Failed(String),
}

/// Moves the checks of revision `hash` on with their runs' `verdicts` (by check index), recording
/// them in `status`. `starting`: the release has not created a pod or sent traffic yet, so checks
/// that were never run for this revision start now (added to a release under way, they do not).
pub(crate) fn decide(
    status: &mut RolloutStatus,
    checks: &[PreDeploymentCheck],
    hash: &str,
    starting: bool,
    verdicts: &[Option<AnalysisOutcome>],
    (now, generation): (Timestamp, i64),
    events: &mut Vec<Event>,
) -> Checked {
    if checks.is_empty() {
        status.pre_deployment_checks = None;
        return Checked::Go;
    }
    let record = status
        .pre_deployment_checks
        .as_ref()
        .filter(|c| c.revision == hash);
    // A retry asks for the checks again (`rerun`), whatever pods the aborted attempt left.
    let rerun = record.is_some_and(|c| c.checks.is_empty());
    if record.is_none() || rerun {
        if !starting && !rerun {
            return Checked::Go;
        }
        status.pre_deployment_checks = Some(PreDeploymentChecksStatus {
            revision: hash.to_owned(),
            phase: ChecksPhase::Running,
            checks: checks
                .iter()
                .map(|c| CheckStatus {
                    name: c.name.clone(),
                    severity: c.severity,
                    analysis_run: None,
                })
                .collect(),
        });
        status
            .conditions
            .retain(|c| c.type_ != CONDITION_ADVISORY_CHECK_FAILED);
        events.push(Event {
            warning: false,
            reason: "PreDeploymentChecksStarted",
            message: format!("pre-deployment checks started: {}", names(checks)),
        });
        // The verdicts handed in belong to the runs of an earlier record (an aborted attempt), not
        // to these checks, whose runs start now.
        return Checked::Running(format!(
            "pre-deployment checks running: {}",
            checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let Some(record) = status.pre_deployment_checks.as_mut() else {
        return Checked::Go;
    };
    match record.phase {
        ChecksPhase::Passed => return Checked::Go,
        ChecksPhase::Failed => return Checked::Failed(failed_message(record)),
        ChecksPhase::Running => {}
    }
    let verdict = |i: usize| verdicts.get(i).cloned().flatten();
    let pending: Vec<&str> = checks
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(verdict(*i), None | Some(AnalysisOutcome::Running)))
        .map(|(_, c)| c.name.as_str())
        .collect();
    if !pending.is_empty() {
        return Checked::Running(format!(
            "pre-deployment checks running: {}",
            pending.join(", ")
        ));
    }
    // Every check has its verdict: recorded with it (the runs are no longer followed).
    for (i, check) in record.checks.iter_mut().enumerate() {
        if let (Some(run), Some(outcome)) = (check.analysis_run.as_mut(), verdict(i)) {
            let (phase, message) = match outcome {
                AnalysisOutcome::Successful => ("Successful", None),
                AnalysisOutcome::Inconclusive(m) => ("Inconclusive", Some(m)),
                AnalysisOutcome::Failed(m) => ("Failed", Some(m)),
                AnalysisOutcome::Running => continue,
            };
            run.status = phase.to_owned();
            run.message = message;
        }
    }
    let failure = |i: usize| match verdict(i) {
        Some(AnalysisOutcome::Failed(m) | AnalysisOutcome::Inconclusive(m)) => Some(m),
        _ => None,
    };
    let critical: Vec<String> = checks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.severity == CheckSeverity::Critical)
        .filter_map(|(i, c)| failure(i).map(|m| format!("{} failed: {m}", c.name)))
        .collect();
    if !critical.is_empty() {
        record.phase = ChecksPhase::Failed;
        return Checked::Failed(format!(
            "critical pre-deployment check {}; no pod was started",
            critical.join("; ")
        ));
    }
    record.phase = ChecksPhase::Passed;
    let advisory: Vec<String> = checks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| failure(i).map(|m| format!("{} failed: {m}", c.name)))
        .collect();
    if advisory.is_empty() {
        events.push(Event {
            warning: false,
            reason: "PreDeploymentChecksPassed",
            message: format!("pre-deployment checks passed: {}", names(checks)),
        });
    } else {
        let message = format!(
            "advisory pre-deployment check {}; the release goes on",
            advisory.join("; ")
        );
        conditions::set(
            &mut status.conditions,
            CONDITION_ADVISORY_CHECK_FAILED,
            ConditionStatus::True,
            "AdvisoryCheckFailed",
            &message,
            now,
            generation,
        );
        events.push(Event {
            warning: true,
            reason: "AdvisoryCheckFailed",
            message,
        });
    }
    Checked::Go
}

fn names(checks: &[PreDeploymentCheck]) -> String {
    checks
        .iter()
        .map(|c| format!("{} ({:?})", c.name, c.severity))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message of checks recorded as failed, seen again (a later pass of the same decision).
fn failed_message(record: &PreDeploymentChecksStatus) -> String {
    let failed: Vec<&str> = record
        .checks
        .iter()
        .filter(|c| c.severity == CheckSeverity::Critical)
        .filter(|c| {
            c.analysis_run
                .as_ref()
                .is_some_and(|r| r.status != "Successful")
        })
        .map(|c| c.name.as_str())
        .collect();
    format!(
        "critical pre-deployment check {} failed; no pod was started",
        failed.join(", ")
    )
}

/// Asks for the checks of revision `hash` to run again (a retry): they start at the next decision
/// even though the aborted attempt's pods may still be there.
pub(crate) fn rerun(status: &mut RolloutStatus, hash: &str) {
    status.pre_deployment_checks = Some(PreDeploymentChecksStatus {
        revision: hash.to_owned(),
        phase: ChecksPhase::Running,
        checks: Vec::new(),
    });
}

/// The checks whose runs the release needs now (by index): all of them while they run.
pub(crate) fn wanted<'a>(
    status: &RolloutStatus,
    checks: &'a [PreDeploymentCheck],
    hash: &str,
) -> Vec<(usize, &'a PreDeploymentCheck)> {
    let running = status.pre_deployment_checks.as_ref().is_some_and(|c| {
        c.revision == hash && c.phase == ChecksPhase::Running && !c.checks.is_empty()
    });
    if running {
        checks.iter().enumerate().collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, severity: CheckSeverity) -> PreDeploymentCheck {
        PreDeploymentCheck {
            name: name.to_owned(),
            severity,
            templates: Vec::new(),
            args: Vec::new(),
        }
    }

    fn run(
        status: &mut RolloutStatus,
        checks: &[PreDeploymentCheck],
        starting: bool,
        verdicts: &[Option<AnalysisOutcome>],
    ) -> (Checked, Vec<Event>) {
        let mut events = Vec::new();
        let now = Timestamp::from_second(1_000).expect("time");
        let checked = decide(
            status,
            checks,
            "new",
            starting,
            verdicts,
            (now, 1),
            &mut events,
        );
        (checked, events)
    }

    #[test]
    fn checks_hold_the_release_until_each_has_a_verdict() {
        let checks = [
            check("tests", CheckSeverity::Critical),
            check("scan", CheckSeverity::Advisory),
        ];
        let mut status = RolloutStatus::default();
        let (checked, events) = run(&mut status, &checks, true, &[]);
        assert_eq!(
            checked,
            Checked::Running("pre-deployment checks running: tests, scan".to_owned())
        );
        assert_eq!(events[0].reason, "PreDeploymentChecksStarted");
        assert_eq!(wanted(&status, &checks, "new").len(), 2);
        let (checked, _) = run(
            &mut status,
            &checks,
            false,
            &[
                Some(AnalysisOutcome::Successful),
                Some(AnalysisOutcome::Running),
            ],
        );
        assert_eq!(
            checked,
            Checked::Running("pre-deployment checks running: scan".to_owned())
        );
        let (checked, events) = run(
            &mut status,
            &checks,
            false,
            &[
                Some(AnalysisOutcome::Successful),
                Some(AnalysisOutcome::Successful),
            ],
        );
        assert_eq!(checked, Checked::Go);
        assert_eq!(events[0].reason, "PreDeploymentChecksPassed");
        assert!(wanted(&status, &checks, "new").is_empty());
        // Decided once: the same verdicts again change nothing.
        let before = status.clone();
        let (checked, events) = run(&mut status, &checks, false, &[]);
        assert_eq!((checked, events.len()), (Checked::Go, 0));
        assert_eq!(status, before);
    }

    #[test]
    fn a_critical_failure_stops_the_release_and_an_advisory_one_warns() {
        let checks = [
            check("tests", CheckSeverity::Critical),
            check("scan", CheckSeverity::Advisory),
        ];
        let failed = |m: &str| Some(AnalysisOutcome::Failed(m.to_owned()));
        let mut status = RolloutStatus::default();
        run(&mut status, &checks, true, &[]);
        let (checked, _) = run(
            &mut status,
            &checks,
            false,
            &[failed("2 tests failed"), failed("CVE found")],
        );
        assert_eq!(
            checked,
            Checked::Failed(
                "critical pre-deployment check tests failed: 2 tests failed; no pod was started"
                    .to_owned()
            )
        );

        let mut status = RolloutStatus::default();
        run(&mut status, &checks, true, &[]);
        let (checked, events) = run(
            &mut status,
            &checks,
            false,
            &[Some(AnalysisOutcome::Successful), failed("CVE found")],
        );
        assert_eq!(checked, Checked::Go);
        assert!(events[0].warning && events[0].reason == "AdvisoryCheckFailed");
        let condition = conditions::get(&status.conditions, CONDITION_ADVISORY_CHECK_FAILED)
            .expect("condition");
        assert_eq!(
            condition.message,
            "advisory pre-deployment check scan failed: CVE found; the release goes on"
        );
    }

    #[test]
    fn a_retry_runs_the_checks_again_though_the_aborted_attempt_left_pods() {
        let checks = [check("tests", CheckSeverity::Critical)];
        let mut status = RolloutStatus::default();
        run(&mut status, &checks, true, &[]);
        let failed = Some(AnalysisOutcome::Failed("2 tests failed".to_owned()));
        assert!(matches!(
            run(&mut status, &checks, false, &[failed]).0,
            Checked::Failed(_)
        ));
        // Retried while the canary still has pods: not `starting`, yet the checks run again.
        rerun(&mut status, "new");
        let (checked, events) = run(&mut status, &checks, false, &[]);
        assert_eq!(
            checked,
            Checked::Running("pre-deployment checks running: tests".to_owned())
        );
        assert_eq!(events[0].reason, "PreDeploymentChecksStarted");
        assert_eq!(wanted(&status, &checks, "new").len(), 1);
    }

    #[test]
    fn checks_never_start_for_a_release_under_way_and_go_when_removed() {
        let checks = [check("tests", CheckSeverity::Critical)];
        let mut status = RolloutStatus::default();
        assert_eq!(run(&mut status, &checks, false, &[]).0, Checked::Go);
        assert_eq!(status.pre_deployment_checks, None);
        run(&mut status, &checks, true, &[]);
        assert!(status.pre_deployment_checks.is_some());
        assert_eq!(run(&mut status, &[], false, &[]).0, Checked::Go);
        assert_eq!(status.pre_deployment_checks, None);
    }
}
