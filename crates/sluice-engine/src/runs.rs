//! The analysis runs of a release: what each observed run's verdict means, which runs the release
//! needs (one per slot: a step's, the background, pre- and post-promotion), and which to start, stop
//! and delete. The controller only creates, patches and deletes what [`RunPlan`] names.

use k8s_openapi::jiff::Timestamp;
use sluice_api::analysis::{AnalysisPhase, DryRun, MeasurementRetention, MetricFailurePolicy};
use sluice_api::common::{AnalysisRunArgument, AnalysisTemplateRef, RolloutAnalysis};
use sluice_api::rollout::{
    BlueGreenStatus, CanaryStatus, CheckStatus, ChecksPhase, PreDeploymentChecksStatus,
    RolloutAnalysisRunStatus, RolloutStatus,
};

use crate::Strategy;
use crate::bluegreen;
use crate::events::Event;
use crate::gate;
use crate::release::{AnalysisOutcome, Plan, Snapshot};

/// Which analysis of a release a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunSlot {
    /// The analysis of the canary step at this index.
    Step(i32),
    /// The canary's background analysis.
    Background,
    /// Blue-green: before the switch.
    PrePromotion,
    /// Blue-green: after the switch.
    PostPromotion,
    /// The pre-deployment check at this index of `spec.preDeploymentChecks`.
    Check(i32),
}

impl RunSlot {
    /// The value of the run's kind label.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Step(_) => "step",
            Self::Background => "background",
            Self::PrePromotion => "pre-promotion",
            Self::PostPromotion => "post-promotion",
            Self::Check(_) => "check",
        }
    }

    /// The index its step label carries: a step's, or a check's in `spec.preDeploymentChecks`.
    pub fn step(self) -> Option<i32> {
        match self {
            Self::Step(i) | Self::Check(i) => Some(i),
            _ => None,
        }
    }

    /// The slot named by a run's kind and step labels.
    pub fn from_labels(kind: &str, step: Option<&str>) -> Option<Self> {
        match kind {
            "step" => step?.parse().ok().map(Self::Step),
            "background" => Some(Self::Background),
            "pre-promotion" => Some(Self::PrePromotion),
            "post-promotion" => Some(Self::PostPromotion),
            "check" => step?.parse().ok().map(Self::Check),
            _ => None,
        }
    }

    /// The part of a run's name that says what it measures: `step2`, `background`, ...
    fn name_part(self) -> String {
        match self {
            Self::Step(i) => format!("step{}", i + 1),
            Self::Check(i) => format!("check{}", i + 1),
            other => other.kind().to_owned(),
        }
    }

    /// Where the Rollout's status records this slot's run.
    fn record(self, status: &RolloutStatus) -> Option<&RolloutAnalysisRunStatus> {
        match self {
            Self::Step(_) => status
                .canary
                .as_ref()?
                .current_step_analysis_run_status
                .as_ref(),
            Self::Background => status
                .canary
                .as_ref()?
                .current_background_analysis_run_status
                .as_ref(),
            Self::PrePromotion => status
                .blue_green
                .as_ref()?
                .pre_promotion_analysis_run_status
                .as_ref(),
            Self::PostPromotion => status
                .blue_green
                .as_ref()?
                .post_promotion_analysis_run_status
                .as_ref(),
            Self::Check(i) => status
                .pre_deployment_checks
                .as_ref()?
                .checks
                .get(usize::try_from(i).ok()?)?
                .analysis_run
                .as_ref(),
        }
    }

    fn record_mut(self, status: &mut RolloutStatus) -> &mut Option<RolloutAnalysisRunStatus> {
        match self {
            Self::Step(_) => {
                &mut status
                    .canary
                    .get_or_insert_with(CanaryStatus::default)
                    .current_step_analysis_run_status
            }
            Self::Background => {
                &mut status
                    .canary
                    .get_or_insert_with(CanaryStatus::default)
                    .current_background_analysis_run_status
            }
            Self::PrePromotion => {
                &mut status
                    .blue_green
                    .get_or_insert_with(BlueGreenStatus::default)
                    .pre_promotion_analysis_run_status
            }
            Self::PostPromotion => {
                &mut status
                    .blue_green
                    .get_or_insert_with(BlueGreenStatus::default)
                    .post_promotion_analysis_run_status
            }
            Self::Check(i) => {
                // The checks' records are made (one per check) before their runs are planned.
                let checks = &mut status
                    .pre_deployment_checks
                    .get_or_insert_with(|| PreDeploymentChecksStatus {
                        revision: String::new(),
                        phase: ChecksPhase::Running,
                        checks: Vec::new(),
                    })
                    .checks;
                let index = usize::try_from(i).unwrap_or(0);
                while checks.len() <= index {
                    checks.push(CheckStatus {
                        name: String::new(),
                        severity: Default::default(),
                        analysis_run: None,
                    });
                }
                &mut checks[index].analysis_run
            }
        }
    }
}

/// An AnalysisRun the Rollout owns, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView {
    pub name: String,
    /// The pod-template hash of the revision it measures.
    pub hash: Option<String>,
    /// What it measures.
    pub slot: Option<RunSlot>,
    /// Its phase (`None` before its first look).
    pub phase: Option<AnalysisPhase>,
    pub message: Option<String>,
    /// It was asked to stop.
    pub terminating: bool,
    /// When it was created (orders the history kept of finished runs).
    pub created: Option<Timestamp>,
    /// The `onFailure` policy of each metric that failed or errored (dry-run metrics left out).
    pub failed_policies: Vec<Option<MetricFailurePolicy>>,
}

/// A run to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart {
    pub slot: RunSlot,
    /// Its name, already recorded in the status.
    pub name: String,
    /// The templates whose metrics it runs, and the arguments given to them.
    pub templates: Vec<AnalysisTemplateRef>,
    pub args: Vec<AnalysisRunArgument>,
    /// Dry-run metrics and measurement retention the reference adds to the templates'.
    pub dry_run: Vec<DryRun>,
    pub measurement_retention: Vec<MeasurementRetention>,
    /// The spec field that asks for it, for messages about its templates.
    pub field: String,
}

/// What to do with the release's AnalysisRuns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPlan {
    /// Create these (applying one that exists already changes nothing).
    pub start: Vec<RunStart>,
    /// Ask these to stop measuring: the release no longer needs them.
    pub terminate: Vec<String>,
    /// Delete these: their revision's ReplicaSet is deleted.
    pub delete: Vec<String>,
}

/// What a run's phase means for the release. A failure of metrics that all say `onFailure: Pause`
/// holds the release for a person instead of aborting it.
pub fn verdict(run: &RunView) -> AnalysisOutcome {
    let message = format!(
        "{} (AnalysisRun {})",
        run.message.clone().unwrap_or_default(),
        run.name
    );
    match run.phase {
        None | Some(AnalysisPhase::Pending | AnalysisPhase::Running) => AnalysisOutcome::Running,
        Some(AnalysisPhase::Successful) => AnalysisOutcome::Successful,
        Some(AnalysisPhase::Inconclusive) => AnalysisOutcome::Inconclusive(message),
        Some(AnalysisPhase::Failed | AnalysisPhase::Error) => {
            let pause_only = !run.failed_policies.is_empty()
                && run
                    .failed_policies
                    .iter()
                    .all(|p| *p == Some(MetricFailurePolicy::Pause));
            if pause_only {
                AnalysisOutcome::Inconclusive(format!("{message}; onFailure: Pause"))
            } else {
                AnalysisOutcome::Failed(message)
            }
        }
    }
}

/// The observed run the status records for `slot`, if it measures `hash` (and, for a step, that
/// step).
fn recorded<'a>(
    runs: &'a [RunView],
    status: &RolloutStatus,
    slot: RunSlot,
    hash: &str,
) -> Option<&'a RunView> {
    let name = &slot.record(status)?.name;
    runs.iter().find(|r| {
        r.name == *name
            && r.hash.as_deref() == Some(hash)
            && (slot.step().is_none() || r.slot == Some(slot))
    })
}

/// The verdicts a strategy's state machine reads: the run of the step at the persisted index (blue-
/// green: pre-promotion), the background run (blue-green: post-promotion), and each pre-deployment
/// check's.
pub(crate) fn verdicts(
    status: &RolloutStatus,
    runs: &[RunView],
    hash: &str,
    strategy: Strategy<'_>,
) -> crate::release::Verdicts {
    let checks = status
        .pre_deployment_checks
        .as_ref()
        .map_or(0, |c| c.checks.len());
    let checks = (0..checks)
        .map(|i| {
            let slot = RunSlot::Check(i32::try_from(i).unwrap_or(i32::MAX));
            recorded(runs, status, slot, hash).map(verdict)
        })
        .collect();
    let (first, second) = match strategy {
        Strategy::Canary(_) => (
            RunSlot::Step(status.current_step_index.unwrap_or(0)),
            RunSlot::Background,
        ),
        Strategy::BlueGreen(_) => (RunSlot::PrePromotion, RunSlot::PostPromotion),
    };
    crate::release::Verdicts {
        step: recorded(runs, status, first, hash).map(verdict),
        background: recorded(runs, status, second, hash).map(verdict),
        checks,
    }
}

/// The runs the release needs now, by slot, with what they run and the field that asks for them.
fn wanted(s: &Snapshot<'_>, strategy: Strategy<'_>, status: &RolloutStatus) -> Vec<RunStart> {
    let hash = s.current_hash;
    let mut wanted = Vec::new();
    // A revision the error-budget gates have not let start gets no analysis yet.
    let admitted =
        status.stable_rs.as_deref() != Some(hash) && !status.abort && gate::admitted(status, hash);
    if admitted {
        for (i, check) in crate::checks::wanted(status, &s.spec.pre_deployment_checks, hash) {
            wanted.push(RunStart {
                slot: RunSlot::Check(i32::try_from(i).unwrap_or(i32::MAX)),
                name: String::new(),
                templates: check.templates.clone(),
                args: check.args.clone(),
                dry_run: Vec::new(),
                measurement_retention: Vec::new(),
                field: format!("spec.preDeploymentChecks[{i}]"),
            });
        }
    }
    let mut want = |slot: RunSlot, analysis: &RolloutAnalysis, field: String| {
        wanted.push(RunStart {
            slot,
            name: String::new(),
            templates: analysis.templates.clone(),
            args: analysis.args.clone(),
            dry_run: analysis.dry_run.clone(),
            measurement_retention: analysis.measurement_retention.clone(),
            field,
        });
    };
    match strategy {
        Strategy::BlueGreen(blue_green) => {
            if let (true, Some(analysis)) = (
                bluegreen::wants_pre_promotion_analysis(status, blue_green),
                &blue_green.pre_promotion_analysis,
            ) {
                want(
                    RunSlot::PrePromotion,
                    analysis,
                    "spec.strategy.blueGreen.prePromotionAnalysis".to_owned(),
                );
            }
            if let (true, Some(analysis)) = (
                bluegreen::wants_post_promotion_analysis(status, blue_green),
                &blue_green.post_promotion_analysis,
            ) {
                want(
                    RunSlot::PostPromotion,
                    analysis,
                    "spec.strategy.blueGreen.postPromotionAnalysis".to_owned(),
                );
            }
        }
        Strategy::Canary(canary) => {
            if !admitted {
                return wanted;
            }
            let index = status.current_step_index.unwrap_or(0);
            let step = usize::try_from(index)
                .ok()
                .and_then(|i| canary.steps.get(i));
            if let Some(analysis) = step.and_then(|s| s.analysis.as_ref()) {
                want(
                    RunSlot::Step(index),
                    analysis,
                    format!("spec.strategy.canary.steps[{index}].analysis"),
                );
            }
            if let Some(background) = &canary.analysis
                && index >= background.starting_step.unwrap_or(0)
            {
                wanted.push(RunStart {
                    slot: RunSlot::Background,
                    name: String::new(),
                    templates: background.templates.clone(),
                    args: background.args.clone(),
                    dry_run: background.dry_run.clone(),
                    measurement_retention: background.measurement_retention.clone(),
                    field: "spec.strategy.canary.analysis".to_owned(),
                });
            }
        }
    }
    wanted
}

/// Decides the release's runs after its status is settled: records in the status the run of each
/// slot it needs (starting one where there is none), and stops or deletes the others.
pub(crate) fn plan_runs(s: &Snapshot<'_>, strategy: Strategy<'_>, plan: &mut Plan) {
    let hash = s.current_hash;
    let mut keep: Vec<String> = Vec::new();
    for mut start in wanted(s, strategy, &plan.status) {
        let slot = start.slot;
        let prefix = format!("{}-{hash}-{}-", s.name, slot.name_part());
        let record = if let Some(run) = recorded(s.runs, &plan.status, slot, hash) {
            RolloutAnalysisRunStatus {
                name: run.name.clone(),
                status: run
                    .phase
                    .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
                message: run.message.clone(),
            }
        } else if let Some(record) = slot
            .record(&plan.status)
            .filter(|r| r.name.starts_with(&prefix))
        {
            // Recorded but not seen yet (the watch lags the create): apply the same run again.
            start.name = record.name.clone();
            plan.runs.start.push(start);
            keep.push(record.name.clone());
            continue;
        } else {
            let attempt = s
                .runs
                .iter()
                .filter(|r| r.hash.as_deref() == Some(hash) && r.slot == Some(slot))
                .count()
                + 1;
            start.name = format!("{prefix}{attempt}");
            plan.events.push(Event {
                warning: false,
                reason: "AnalysisRunStarted",
                message: format!(
                    "{} analysis started: AnalysisRun {}",
                    slot.kind(),
                    start.name
                ),
            });
            let record = RolloutAnalysisRunStatus {
                name: start.name.clone(),
                status: "Pending".to_owned(),
                message: None,
            };
            plan.runs.start.push(start);
            record
        };
        keep.push(record.name.clone());
        *slot.record_mut(&mut plan.status) = Some(record);
    }
    for run in s.runs {
        if run.hash.as_ref().is_some_and(|h| plan.delete.contains(h)) {
            plan.runs.delete.push(run.name.clone());
            continue;
        }
        let running = !run.phase.is_some_and(crate::analysis::is_completed);
        if running && !run.terminating && !keep.contains(&run.name) {
            plan.runs.terminate.push(run.name.clone());
        }
    }
    prune_history(s, &keep, plan);
}

/// Finished runs kept of earlier revisions when `spec.analysis` does not say, per kind of verdict.
pub const DEFAULT_RUN_HISTORY_LIMIT: i32 = 5;

/// Deletes the finished runs of earlier revisions beyond `spec.analysis`'s limits, oldest first. The
/// runs of the revision being released, and any run the status names, are kept.
fn prune_history(s: &Snapshot<'_>, keep: &[String], plan: &mut Plan) {
    let history = s.spec.analysis.clone().unwrap_or_default();
    let limit =
        |n: Option<i32>| usize::try_from(n.unwrap_or(DEFAULT_RUN_HISTORY_LIMIT)).unwrap_or(0);
    let (successful_limit, unsuccessful_limit) = (
        limit(history.successful_run_history_limit),
        limit(history.unsuccessful_run_history_limit),
    );
    let named = recorded_run_names(&plan.status);
    let mut finished: Vec<&RunView> = s
        .runs
        .iter()
        .filter(|r| r.hash.as_deref() != Some(s.current_hash))
        .filter(|r| r.phase.is_some_and(crate::analysis::is_completed))
        .filter(|r| !keep.contains(&r.name) && !named.contains(&r.name))
        .filter(|r| !plan.runs.delete.contains(&r.name))
        .collect();
    // Newest first; a run not yet seen with a creation time counts as newest.
    finished.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    let (mut successful, mut unsuccessful) = (0, 0);
    for run in finished {
        let (seen, limit) = if run.phase == Some(AnalysisPhase::Successful) {
            (&mut successful, successful_limit)
        } else {
            (&mut unsuccessful, unsuccessful_limit)
        };
        *seen += 1;
        if *seen > limit {
            plan.runs.delete.push(run.name.clone());
        }
    }
}

/// The names of the runs `status` records, one per slot.
pub fn recorded_run_names(status: &RolloutStatus) -> Vec<String> {
    let canary = status.canary.as_ref();
    let blue_green = status.blue_green.as_ref();
    [
        canary.and_then(|c| c.current_step_analysis_run_status.as_ref()),
        canary.and_then(|c| c.current_background_analysis_run_status.as_ref()),
        blue_green.and_then(|b| b.pre_promotion_analysis_run_status.as_ref()),
        blue_green.and_then(|b| b.post_promotion_analysis_run_status.as_ref()),
    ]
    .into_iter()
    .flatten()
    .chain(
        status
            .pre_deployment_checks
            .iter()
            .flat_map(|c| c.checks.iter().filter_map(|c| c.analysis_run.as_ref())),
    )
    .map(|r| r.name.clone())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_runs_of_earlier_revisions_are_kept_up_to_the_limits_newest_first() {
        let spec: sluice_api::rollout::RolloutSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}},
            "strategy": {"canary": {}},
            "analysis": {"successfulRunHistoryLimit": 1, "unsuccessfulRunHistoryLimit": 0}
        }))
        .expect("spec");
        let run = |name: &str, hash: &str, phase, second| RunView {
            name: name.to_owned(),
            hash: Some(hash.to_owned()),
            slot: Some(RunSlot::Background),
            phase: Some(phase),
            message: None,
            terminating: false,
            failed_policies: Vec::new(),
            created: Timestamp::from_second(second).ok(),
        };
        let runs = [
            run("old-ok", "a", AnalysisPhase::Successful, 100),
            run("newer-ok", "b", AnalysisPhase::Successful, 200),
            run("failed", "b", AnalysisPhase::Failed, 150),
            run("current-failed", "c", AnalysisPhase::Failed, 300),
        ];
        let status = RolloutStatus::default();
        let observed = status.clone();
        let snapshot = Snapshot {
            name: "web",
            generation: 1,
            spec: &spec,
            status: &observed,
            current_hash: "c",
            replica_sets: &[],
            runs: &runs,
            pods: &[],
            actions: crate::release::Actions::default(),
            request: None,
            invalid_spec: None,
            gating: &crate::gate::Gating::default(),
            workload_replicas: None,
            images: &[],
            requester: None,
            request_reason: None,
            circuit: &Default::default(),
            history: &[],
            plan_pin: None,
            hook_answers: &[],
            now: Timestamp::from_second(400).expect("time"),
        };
        let mut plan = Plan {
            status,
            create_current: false,
            avoid: None,
            scale: Default::default(),
            scale_down_at: Default::default(),
            delete: Vec::new(),
            traffic: crate::release::Traffic {
                canary_weight: 0,
                canary_hash: String::new(),
                stable_hash: String::new(),
                managed_routes: Vec::new(),
                leave_services: false,
            },
            runs: RunPlan::default(),
            evict: Vec::new(),
            pod_metadata: Vec::new(),
            workload_replicas: None,
            aborted_by: None,
            ended_release: None,
            events: Vec::new(),
            requeue_after: None,
            webhooks: Vec::new(),
        };
        prune_history(&snapshot, &[], &mut plan);
        let mut deleted = plan.runs.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["failed".to_owned(), "old-ok".to_owned()]);
    }
}
