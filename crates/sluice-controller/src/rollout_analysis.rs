//! The AnalysisRuns of a Rollout's releases: created from templates when a release reaches an
//! analysis step (or its background analysis starts), read back as verdicts for the engine, stopped
//! when the release moves on, and deleted with the revision they measured.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_api::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisRunSpec, AnalysisTemplateSpec, Argument,
    MetricFailurePolicy,
};
use sluice_api::common::{AnalysisRunArgument, AnalysisTemplateRef, PodTemplateHashValue};
use sluice_api::rollout::{
    BlueGreenStatus, BlueGreenStrategy, CanaryStatus, CanaryStrategy, POD_TEMPLATE_HASH_LABEL,
    Rollout, RolloutAnalysisRunStatus,
};
use sluice_engine::bluegreen;
use sluice_engine::release::{AnalysisOutcome, Plan};
use tracing::info;

use crate::cache::{self, Caches};
use crate::error::Error;
use crate::rollout::{ROLLOUT_LABEL, Strategy};
use crate::{Context, FIELD_MANAGER};

/// Label on a run: `step` or `background`.
pub const ANALYSIS_KIND_LABEL: &str = "sluice.dev/analysis";
/// Label on a step's run: the step's index.
pub const STEP_LABEL: &str = "sluice.dev/step";
/// Annotation on a run: the stable version's pod-template hash, the baseline judge's baseline.
pub const STABLE_HASH_ANNOTATION: &str = "sluice.dev/stable-pod-template-hash";

/// The runs the Rollout owns, from the cache.
pub fn owned_runs(ctx: &Context, namespace: &str, rollout: &Rollout) -> Vec<AnalysisRun> {
    let uid = rollout.uid().unwrap_or_default();
    let caches = &ctx.caches;
    cache::owned(
        &caches.runs,
        &caches.run_index,
        namespace,
        &rollout.name_any(),
    )
    .iter()
    .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
    .map(|r| r.as_ref().clone())
    .collect()
}

/// What a run's phase means for the release. A failure of metrics that all say `onFailure: Pause`
/// holds the release for a person instead of aborting it.
pub fn outcome(run: &AnalysisRun) -> AnalysisOutcome {
    let status = run.status.clone().unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();
    let message = format!("{message} (AnalysisRun {})", run.name_any());
    match status.phase {
        None | Some(AnalysisPhase::Pending | AnalysisPhase::Running) => AnalysisOutcome::Running,
        Some(AnalysisPhase::Successful) => AnalysisOutcome::Successful,
        Some(AnalysisPhase::Inconclusive) => AnalysisOutcome::Inconclusive(message),
        Some(AnalysisPhase::Failed | AnalysisPhase::Error) => {
            let bad: Vec<&str> = status
                .metric_results
                .iter()
                .filter(|r| !r.dry_run)
                .filter(|r| matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error))
                .map(|r| r.name.as_str())
                .collect();
            let pause_only = !bad.is_empty()
                && bad.iter().all(|name| {
                    run.spec.metrics.iter().any(|m| {
                        m.name == *name && m.on_failure == Some(MetricFailurePolicy::Pause)
                    })
                });
            if pause_only {
                AnalysisOutcome::Inconclusive(format!("{message}; onFailure: Pause"))
            } else {
                AnalysisOutcome::Failed(message)
            }
        }
    }
}

fn recorded<'a>(
    runs: &'a [AnalysisRun],
    record: Option<&RolloutAnalysisRunStatus>,
    hash: &str,
) -> Option<&'a AnalysisRun> {
    let name = &record?.name;
    runs.iter().find(|r| {
        r.name_any() == *name
            && r.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
    })
}

/// The verdicts the engine needs: the run of the step at the persisted index, and the background run.
pub fn verdicts(
    rollout: &Rollout,
    runs: &[AnalysisRun],
    hash: &str,
) -> (Option<AnalysisOutcome>, Option<AnalysisOutcome>) {
    if rollout.spec.strategy.canary.is_none() {
        // Blue-green: the pre-promotion run stands for the step's, the post-promotion for the background.
        let blue_green = rollout.status.as_ref().and_then(|s| s.blue_green.as_ref());
        let pre = recorded(
            runs,
            blue_green.and_then(|b| b.pre_promotion_analysis_run_status.as_ref()),
            hash,
        )
        .map(outcome);
        let post = recorded(
            runs,
            blue_green.and_then(|b| b.post_promotion_analysis_run_status.as_ref()),
            hash,
        )
        .map(outcome);
        return (pre, post);
    }
    let canary = rollout.status.as_ref().and_then(|s| s.canary.as_ref());
    let index = rollout
        .status
        .as_ref()
        .and_then(|s| s.current_step_index)
        .unwrap_or(0);
    let step = recorded(
        runs,
        canary.and_then(|c| c.current_step_analysis_run_status.as_ref()),
        hash,
    )
    .filter(|r| r.labels().get(STEP_LABEL) == Some(&index.to_string()))
    .map(outcome);
    let background = recorded(
        runs,
        canary.and_then(|c| c.current_background_analysis_run_status.as_ref()),
        hash,
    )
    .map(outcome);
    (step, background)
}

/// The template specs named by `refs`, from the cache, or what is wrong with them (a missing
/// template).
pub fn templates(
    caches: &Caches,
    namespace: &str,
    refs: &[AnalysisTemplateRef],
    field: &str,
) -> Result<Vec<AnalysisTemplateSpec>, String> {
    let mut specs = Vec::new();
    for reference in refs {
        let name = &reference.template_name;
        let spec = if reference.cluster_scope {
            caches
                .cluster_templates
                .get(&ObjectRef::new(name))
                .map(|t| t.spec.template.clone())
        } else {
            cache::get(&caches.templates, namespace, name).map(|t| t.spec.clone())
        };
        match spec {
            Some(spec) => specs.push(spec),
            None => {
                let kind = if reference.cluster_scope {
                    "ClusterAnalysisTemplate".to_owned()
                } else {
                    format!("AnalysisTemplate in namespace {namespace}")
                };
                return Err(format!("{kind} {name:?} named in {field} does not exist"));
            }
        }
    }
    Ok(specs)
}

/// Every template reference of the canary strategy, with the field that names it.
pub fn template_refs(canary: &CanaryStrategy) -> Vec<(String, &[AnalysisTemplateRef])> {
    let mut refs: Vec<(String, &[AnalysisTemplateRef])> = canary
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.analysis.as_ref().map(|a| {
                (
                    format!("spec.strategy.canary.steps[{i}].analysis"),
                    a.templates.as_slice(),
                )
            })
        })
        .collect();
    if let Some(background) = &canary.analysis {
        refs.push((
            "spec.strategy.canary.analysis".to_owned(),
            background.templates.as_slice(),
        ));
    }
    refs
}

/// Every template reference of the blue-green strategy, with the field that names it.
pub fn blue_green_template_refs(
    blue_green: &BlueGreenStrategy,
) -> Vec<(String, &[AnalysisTemplateRef])> {
    [
        ("prePromotionAnalysis", &blue_green.pre_promotion_analysis),
        ("postPromotionAnalysis", &blue_green.post_promotion_analysis),
    ]
    .into_iter()
    .filter_map(|(field, analysis)| {
        analysis.as_ref().map(|a| {
            (
                format!("spec.strategy.blueGreen.{field}"),
                a.templates.as_slice(),
            )
        })
    })
    .collect()
}

/// A field of the Rollout named by a downward-API style path.
fn field_of(rollout: &Rollout, path: &str) -> Option<String> {
    let meta = &rollout.metadata;
    let keyed = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        _ => {
            if let Some(key) = keyed("metadata.labels['") {
                meta.labels.as_ref()?.get(&key).cloned()
            } else if let Some(key) = keyed("metadata.annotations['") {
                meta.annotations.as_ref()?.get(&key).cloned()
            } else {
                None
            }
        }
    }
}

/// The run's spec: the templates' metrics merged, their arguments filled from the Rollout's.
fn run_spec(
    rollout: &Rollout,
    templates: Vec<AnalysisTemplateSpec>,
    args: &[AnalysisRunArgument],
    hash: &str,
    stable: &str,
) -> AnalysisRunSpec {
    let mut spec = AnalysisRunSpec {
        metrics: Vec::new(),
        args: Vec::new(),
        dry_run: Vec::new(),
        measurement_retention: Vec::new(),
        terminate: false,
    };
    let mut merged: BTreeMap<String, Argument> = BTreeMap::new();
    for template in templates {
        for metric in template.metrics {
            if !spec.metrics.iter().any(|m| m.name == metric.name) {
                spec.metrics.push(metric);
            }
        }
        for arg in template.args {
            merged.entry(arg.name.clone()).or_insert(arg);
        }
        spec.dry_run.extend(template.dry_run);
        spec.measurement_retention
            .extend(template.measurement_retention);
    }
    for given in args {
        let value = match (&given.value, &given.value_from) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(from)) => match (from.pod_template_hash_value, &from.field_ref) {
                (Some(PodTemplateHashValue::Latest), _) => Some(hash.to_owned()),
                (Some(PodTemplateHashValue::Stable), _) => Some(stable.to_owned()),
                (None, Some(field)) => field_of(rollout, &field.field_path),
                (None, None) => None,
            },
            (None, None) => None,
        };
        merged.insert(
            given.name.clone(),
            Argument {
                name: given.name.clone(),
                value,
                value_from: None,
            },
        );
    }
    spec.args = merged.into_values().collect();
    spec
}

/// Which run the plan's state wants.
struct Wanted<'a> {
    kind: &'static str,
    step: Option<i32>,
    refs: &'a [AnalysisTemplateRef],
    args: &'a [AnalysisRunArgument],
    field: String,
}

/// After the engine decided: start the runs the release now needs, record their summaries in the
/// plan's status, stop the runs it no longer needs, and delete those of deleted revisions.
/// `Ok(Err(problem))` is a user error (a missing template) to report.
pub async fn sync(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    strategy: Strategy<'_>,
    hash: &str,
    runs: &[AnalysisRun],
    plan: &mut Plan,
) -> Result<Result<(), String>, Error> {
    let api: Api<AnalysisRun> = Api::namespaced(ctx.client.clone(), namespace);
    let stable = plan.status.stable_rs.clone().unwrap_or_default();
    // A revision the error-budget gates have not let start gets no analysis yet.
    let releasing =
        stable != hash && !plan.status.abort && sluice_engine::gate::admitted(&plan.status, hash);
    let index = plan.status.current_step_index.unwrap_or(0);
    let mut wanted: Vec<Wanted<'_>> = Vec::new();
    if let Strategy::BlueGreen(blue_green) = strategy {
        for (kind, wants, analysis, field) in [
            (
                "pre-promotion",
                bluegreen::wants_pre_promotion_analysis(&plan.status, blue_green),
                &blue_green.pre_promotion_analysis,
                "spec.strategy.blueGreen.prePromotionAnalysis",
            ),
            (
                "post-promotion",
                bluegreen::wants_post_promotion_analysis(&plan.status, blue_green),
                &blue_green.post_promotion_analysis,
                "spec.strategy.blueGreen.postPromotionAnalysis",
            ),
        ] {
            if let (true, Some(analysis)) = (wants, analysis) {
                wanted.push(Wanted {
                    kind,
                    step: None,
                    refs: &analysis.templates,
                    args: &analysis.args,
                    field: field.to_owned(),
                });
            }
        }
    }
    if let Strategy::Canary(canary) = strategy
        && releasing
    {
        let step = usize::try_from(index)
            .ok()
            .and_then(|i| canary.steps.get(i));
        if let Some(analysis) = step.and_then(|s| s.analysis.as_ref()) {
            wanted.push(Wanted {
                kind: "step",
                step: Some(index),
                refs: &analysis.templates,
                args: &analysis.args,
                field: format!("spec.strategy.canary.steps[{index}].analysis"),
            });
        }
        if let Some(background) = &canary.analysis
            && index >= background.starting_step.unwrap_or(0)
        {
            wanted.push(Wanted {
                kind: "background",
                step: None,
                refs: &background.templates,
                args: &background.args,
                field: "spec.strategy.canary.analysis".to_owned(),
            });
        }
    }

    let mut keep: Vec<String> = Vec::new();
    for want in &wanted {
        let slot = match want.kind {
            "step" => {
                &mut plan
                    .status
                    .canary
                    .get_or_insert_with(CanaryStatus::default)
                    .current_step_analysis_run_status
            }
            "background" => {
                &mut plan
                    .status
                    .canary
                    .get_or_insert_with(CanaryStatus::default)
                    .current_background_analysis_run_status
            }
            "pre-promotion" => {
                &mut plan
                    .status
                    .blue_green
                    .get_or_insert_with(BlueGreenStatus::default)
                    .pre_promotion_analysis_run_status
            }
            _ => {
                &mut plan
                    .status
                    .blue_green
                    .get_or_insert_with(BlueGreenStatus::default)
                    .post_promotion_analysis_run_status
            }
        };
        let current = recorded(runs, slot.as_ref(), hash).filter(|r| {
            want.step
                .is_none_or(|i| r.labels().get(STEP_LABEL) == Some(&i.to_string()))
        });
        let run = match current {
            Some(run) => run.clone(),
            None => {
                let specs = match templates(&ctx.caches, namespace, want.refs, &want.field) {
                    Ok(specs) => specs,
                    Err(problem) => return Ok(Err(problem)),
                };
                let spec = run_spec(rollout, specs, want.args, hash, &stable);
                let same_kind = runs
                    .iter()
                    .filter(|r| {
                        r.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
                            && r.labels().get(ANALYSIS_KIND_LABEL).map(String::as_str)
                                == Some(want.kind)
                            && want
                                .step
                                .is_none_or(|i| r.labels().get(STEP_LABEL) == Some(&i.to_string()))
                    })
                    .count();
                let what = match want.step {
                    Some(i) => format!("step{}", i + 1),
                    None => want.kind.to_owned(),
                };
                let name = format!("{}-{hash}-{what}-{}", rollout.name_any(), same_kind + 1);
                let mut labels = BTreeMap::from([
                    (ROLLOUT_LABEL.to_owned(), rollout.name_any()),
                    (POD_TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned()),
                    (ANALYSIS_KIND_LABEL.to_owned(), want.kind.to_owned()),
                ]);
                if let Some(i) = want.step {
                    labels.insert(STEP_LABEL.to_owned(), i.to_string());
                }
                let manifest = json!({
                    "apiVersion": "sluice.dev/v1alpha1",
                    "kind": "AnalysisRun",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {STABLE_HASH_ANNOTATION: stable},
                        "ownerReferences": [rollout.controller_owner_ref(&())],
                    },
                    "spec": spec,
                });
                let created = api
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&manifest),
                    )
                    .await?;
                info!(analysisrun = name.as_str(), "started an analysis run");
                plan.events.push(sluice_engine::release::Event {
                    warning: false,
                    reason: "AnalysisRunStarted",
                    message: format!("{} analysis started: AnalysisRun {name}", want.kind),
                });
                created
            }
        };
        let run_status = run.status.clone().unwrap_or_default();
        *slot = Some(RolloutAnalysisRunStatus {
            name: run.name_any(),
            status: run_status
                .phase
                .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
            message: run_status.message,
        });
        keep.push(run.name_any());
    }

    // Runs the release no longer needs stop measuring; those of deleted revisions go.
    for run in runs {
        let name = run.name_any();
        let run_hash = run.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
        if run_hash.as_ref().is_some_and(|h| plan.delete.contains(h)) {
            api.delete(&name, &DeleteParams::background()).await?;
            continue;
        }
        let running = !run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(sluice_engine::analysis::is_completed);
        if running && !run.spec.terminate && !keep.contains(&name) {
            let patch = json!({"spec": {"terminate": true}});
            api.patch(&name, &crate::rollout::writer(), &Patch::Merge(&patch))
                .await?;
            info!(
                analysisrun = name.as_str(),
                "stopped an analysis run the release no longer needs"
            );
        }
    }
    Ok(Ok(()))
}
