//! The AnalysisRuns of a Rollout's releases: created from templates when a release reaches an
//! analysis step (or its background analysis starts), read back as verdicts for the engine, stopped
//! when the release moves on, and deleted with the revision they measured.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use sluice_api::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisRunSpec, AnalysisTemplate, AnalysisTemplateSpec, Argument,
    ClusterAnalysisTemplate, ValueFrom,
};
use sluice_api::common::{AnalysisRunArgument, AnalysisTemplateRef, PodTemplateHashValue};
use sluice_api::names::{ANALYSIS_KIND_LABEL, ROLLOUT_LABEL, STABLE_HASH_ANNOTATION, STEP_LABEL};
use sluice_api::rollout::{BlueGreenStrategy, CanaryStrategy, POD_TEMPLATE_HASH_LABEL, Rollout};
use sluice_engine::runs::{RunPlan, RunSlot, RunView};
use tracing::info;

use crate::cache::{self, Caches};
use crate::error::{Error, Writing};
use crate::writer;
use crate::{Context, FIELD_MANAGER};

/// The runs the Rollout owns, from the cache, as the engine sees them.
pub fn owned_runs(ctx: &Context, namespace: &str, rollout: &Rollout) -> Vec<RunView> {
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
    .map(|r| view(r))
    .collect()
}

/// A run as the engine sees it: what it measures (from its labels), its phase and message, and the
/// `onFailure` policy of each metric that failed or errored.
fn view(run: &AnalysisRun) -> RunView {
    let status = run.status.clone().unwrap_or_default();
    let failed_policies = status
        .metric_results
        .iter()
        .filter(|r| !r.dry_run)
        .filter(|r| matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error))
        .map(|r| {
            run.spec
                .metrics
                .iter()
                .find(|m| m.name == r.name)
                .and_then(|m| m.on_failure)
        })
        .collect();
    let labels = run.labels();
    RunView {
        name: run.name_any(),
        hash: labels.get(POD_TEMPLATE_HASH_LABEL).cloned(),
        slot: labels.get(ANALYSIS_KIND_LABEL).and_then(|kind| {
            RunSlot::from_labels(kind, labels.get(STEP_LABEL).map(String::as_str))
        }),
        phase: status.phase,
        message: status.message,
        terminating: run.spec.terminate,
        failed_policies,
        created: run.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// An analysis template as the cache holds it, namespaced or cluster-scoped.
#[derive(Clone)]
pub enum Template {
    Namespaced(Arc<AnalysisTemplate>),
    Cluster(Arc<ClusterAnalysisTemplate>),
}

impl Template {
    pub fn spec(&self) -> &AnalysisTemplateSpec {
        match self {
            Self::Namespaced(t) => &t.spec,
            Self::Cluster(t) => &t.spec.template,
        }
    }

    /// What the template's `Valid` condition says is wrong with its current spec, if it is False:
    /// what only evaluating its conditions shows, which the template check finds in a child process
    /// (see `template_status`).
    pub fn found_invalid(&self) -> Option<&str> {
        let (meta, status) = match self {
            Self::Namespaced(t) => (&t.metadata, t.status.as_ref()),
            Self::Cluster(t) => (&t.metadata, t.status.as_ref()),
        };
        let status = status?;
        if status.observed_generation != meta.generation {
            return None;
        }
        sluice_engine::conditions::get(&status.conditions, crate::template_status::CONDITION_VALID)
            .filter(|valid| valid.status == "False")
            .map(|valid| valid.message.as_str())
    }
}

/// The templates each field of a Rollout's strategy names, by that field
/// (`spec.strategy.canary.steps[2].analysis`).
pub type Templates = BTreeMap<String, Vec<Template>>;

/// The templates named by `refs`, from the cache, or what is wrong with them (a missing template, one
/// whose metrics cannot be measured).
pub fn templates(
    caches: &Caches,
    namespace: &str,
    refs: &[AnalysisTemplateRef],
    field: &str,
) -> Result<Vec<Template>, String> {
    let mut found = Vec::new();
    for reference in refs {
        let name = &reference.template_name;
        let template = if reference.cluster_scope {
            caches
                .cluster_templates
                .get(&ObjectRef::new(name))
                .map(Template::Cluster)
        } else {
            cache::get(&caches.templates, namespace, name).map(Template::Namespaced)
        };
        let kind = || {
            if reference.cluster_scope {
                "ClusterAnalysisTemplate".to_owned()
            } else {
                format!("AnalysisTemplate in namespace {namespace}")
            }
        };
        match template {
            Some(template) => {
                // The template's `Valid` condition, and the part of its check that needs no
                // evaluation, so that a release never starts on metrics that cannot be measured,
                // whether that status is written yet or not.
                if let Err(problem) =
                    sluice_analysis::check_template(template.spec()).and_then(|()| {
                        template
                            .found_invalid()
                            .map_or(Ok(()), |p| Err(p.to_owned()))
                    })
                {
                    return Err(format!(
                        "{} {name:?} named in {field} is invalid: {problem}",
                        kind()
                    ));
                }
                found.push(template);
            }
            None => {
                return Err(format!(
                    "{} {name:?} named in {field} does not exist",
                    kind()
                ));
            }
        }
    }
    Ok(found)
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

/// A template's argument with its `fieldRef` read from the Rollout, as Argo Rollouts does. A field
/// the Rollout does not have (a missing label) stays a `fieldRef`, which the run reports by path.
fn resolve_field(rollout: &Rollout, arg: &Argument) -> Argument {
    let field = arg
        .value_from
        .as_ref()
        .and_then(|from| from.field_ref.as_ref());
    match field.and_then(|field| field_of(rollout, &field.field_path)) {
        Some(value) if arg.value.is_none() => Argument {
            name: arg.name.clone(),
            value: Some(value),
            value_from: None,
        },
        _ => arg.clone(),
    }
}

/// The run's spec: the templates' metrics merged, their arguments filled from the Rollout's.
fn run_spec(
    rollout: &Rollout,
    templates: &[Template],
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
    for template in templates.iter().map(Template::spec) {
        for metric in &template.metrics {
            if !spec.metrics.iter().any(|m| m.name == metric.name) {
                spec.metrics.push(metric.clone());
            }
        }
        for arg in &template.args {
            merged
                .entry(arg.name.clone())
                .or_insert_with(|| resolve_field(rollout, arg));
        }
        spec.dry_run.extend(template.dry_run.iter().cloned());
        spec.measurement_retention
            .extend(template.measurement_retention.iter().cloned());
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
        // A field the Rollout does not have stays a fieldRef, which the run reports by path.
        let unset_field = given
            .value_from
            .as_ref()
            .and_then(|from| from.field_ref.clone())
            .filter(|_| value.is_none());
        merged.insert(
            given.name.clone(),
            Argument {
                name: given.name.clone(),
                value,
                value_from: unset_field.map(|field| ValueFrom {
                    secret_key_ref: None,
                    field_ref: Some(field),
                }),
            },
        );
    }
    spec.args = merged.into_values().collect();
    spec
}

/// Carries out the plan's run changes: creates the runs it starts (from the templates observed
/// before the decision), stops and deletes the others.
pub async fn apply(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    templates: &Templates,
    (hash, stable): (&str, &str),
    runs: &RunPlan,
) -> Result<(), Error> {
    let api: Api<AnalysisRun> = Api::namespaced(ctx.client.clone(), namespace);
    for start in &runs.start {
        let Some(found) = templates.get(&start.field) else {
            return Err(Error::Unobserved(format!(
                "the templates of {}, for run {}",
                start.field, start.name
            )));
        };
        let mut spec = run_spec(rollout, found, &start.args, hash, stable);
        // What the Rollout's reference says: more dry-run metrics, and retention that comes first
        // (the first entry naming a metric decides).
        spec.dry_run.extend(start.dry_run.iter().cloned());
        spec.measurement_retention
            .splice(0..0, start.measurement_retention.iter().cloned());
        let mut labels = BTreeMap::from([
            (ROLLOUT_LABEL.to_owned(), rollout.name_any()),
            (POD_TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned()),
            (ANALYSIS_KIND_LABEL.to_owned(), start.slot.kind().to_owned()),
        ]);
        if let Some(i) = start.slot.step() {
            labels.insert(STEP_LABEL.to_owned(), i.to_string());
        }
        let manifest = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "AnalysisRun",
            "metadata": {
                "name": start.name,
                "labels": labels,
                "annotations": {STABLE_HASH_ANNOTATION: stable},
                "ownerReferences": [crate::owned_by(rollout)],
            },
            "spec": spec,
        });
        api.patch(
            &start.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
        .writing(|| format!("AnalysisRun {}", start.name))?;
        info!(analysisrun = start.name.as_str(), "started an analysis run");
        crate::failpoints::crash("analysisrun-created");
    }
    for name in &runs.terminate {
        let patch = json!({"spec": {"terminate": true}});
        api.patch(name, &writer(), &Patch::Merge(&patch))
            .await
            .writing(|| format!("(stopping) AnalysisRun {name}"))?;
        info!(
            analysisrun = name.as_str(),
            "stopped an analysis run the release no longer needs"
        );
    }
    for name in &runs.delete {
        match api.delete(name, &DeleteParams::background()).await {
            // Gone already (deleted by a reconcile whose deletion the cache had not seen yet).
            Err(kube::Error::Api(gone)) if gone.code == 404 => {}
            deleted => {
                deleted.writing(|| format!("(deleting) AnalysisRun {name}"))?;
            }
        }
    }
    Ok(())
}
