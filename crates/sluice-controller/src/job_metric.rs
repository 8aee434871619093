//! Job metrics: a measurement is a Job the run owns. Due: the Job is applied (named for the run, the
//! metric and the measurement's number, so a restart between starting it and recording it applies
//! the same Job again) and a Running measurement naming it is recorded. Under way: the Job's outcome
//! is read from the cache of Jobs (whose changes wake the run) and replaces that measurement.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use sluice_analysis::Redactions;
use sluice_analysis::job::{JOB_NAME_KEY, JobProvider, outcome};
use sluice_api::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisRunStatus, JobMetric, Measurement, Metric,
};
use tracing::info;

use crate::error::Error;
use crate::{Context, FIELD_MANAGER, cache};

/// Why a job metric may not take an argument read from a Secret.
pub const NO_SECRETS: &str = "a job metric cannot take a value read from a Secret (it would be \
     written into the Job, readable by anyone who may read Jobs): mount the Secret in the Job's pod \
     instead";

/// How long a started Job may stay out of the cache before it counts as gone.
const GONE_AFTER: Duration = Duration::from_secs(60);

/// The measurement of `metric` to record now, if any: a Job started (Running), or the outcome of the
/// one under way. `Err` is a failure to retry (the API server could not be reached).
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    ctx: &Context,
    run: &AnalysisRun,
    namespace: &str,
    metric: &Metric,
    spec: &JobMetric,
    status: &AnalysisRunStatus,
    (values, redactions): (&BTreeMap<String, String>, &Redactions),
    now: Timestamp,
) -> Result<Option<Measurement>, Error> {
    let result = status.metric_results.iter().find(|r| r.name == metric.name);
    let under_way = result
        .and_then(|r| r.measurements.last())
        .filter(|m| m.phase == AnalysisPhase::Running);
    if let Some(running) = under_way {
        return Ok(finished(ctx, namespace, running, now));
    }
    let n = result.map_or(0, |r| r.count) + 1;
    let uid = run.uid().unwrap_or_default();
    let manifest =
        match JobProvider::new(spec).manifest((&run.name_any(), &uid), &metric.name, n, values) {
            Ok(manifest) => manifest,
            Err(problem) => {
                return Ok(Some(ended(
                    AnalysisPhase::Error,
                    problem,
                    now,
                    BTreeMap::new(),
                )));
            }
        };
    let text = manifest.to_string();
    if redactions.redact(&text) != text {
        return Ok(Some(ended(
            AnalysisPhase::Error,
            NO_SECRETS.to_owned(),
            now,
            BTreeMap::new(),
        )));
    }
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
    {
        Ok(_) => {
            info!(
                job = name.as_str(),
                metric = metric.name.as_str(),
                "started a job measurement"
            );
            Ok(Some(Measurement {
                phase: AnalysisPhase::Running,
                value: None,
                started_at: Some(Time(now)),
                finished_at: None,
                message: Some(format!("Job {name} started")),
                metadata: BTreeMap::from([(JOB_NAME_KEY.to_owned(), name)]),
            }))
        }
        // The API server refused this Job (an invalid spec, a quota): the measurement is an Error
        // with its words. Anything else is tried again.
        Err(kube::Error::Api(refused))
            if (400..500).contains(&refused.code) && refused.code != 409 && refused.code != 429 =>
        {
            Ok(Some(ended(
                AnalysisPhase::Error,
                format!("the Job {name} could not be created: {}", refused.message),
                now,
                BTreeMap::from([(JOB_NAME_KEY.to_owned(), name)]),
            )))
        }
        Err(err) => Err(err.into()),
    }
}

/// Deletes the Jobs still under way in a run that is stopped (a Job already gone is fine).
pub async fn stop(ctx: &Context, namespace: &str, status: &AnalysisRunStatus) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    for running in status
        .metric_results
        .iter()
        .filter_map(|r| r.measurements.last())
        .filter(|m| m.phase == AnalysisPhase::Running)
    {
        let Some(name) = running.metadata.get(JOB_NAME_KEY) else {
            continue;
        };
        if cache::get(&ctx.caches.jobs, namespace, name).is_none() {
            continue;
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => info!(job = name.as_str(), "stopped the Job of a stopped run"),
            Err(kube::Error::Api(gone)) if gone.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The outcome of the Job `running` names, once it has one.
fn finished(
    ctx: &Context,
    namespace: &str,
    running: &Measurement,
    now: Timestamp,
) -> Option<Measurement> {
    let name = running.metadata.get(JOB_NAME_KEY)?;
    let started = running.started_at.as_ref().map_or(now, |t| t.0);
    match cache::get(&ctx.caches.jobs, namespace, name) {
        Some(job) => {
            let (phase, message) = outcome(&job)?;
            Some(Measurement {
                phase,
                value: None,
                started_at: running.started_at.clone(),
                finished_at: Some(Time(now)),
                message: Some(message),
                metadata: running.metadata.clone(),
            })
        }
        None => {
            let waited = Duration::try_from(now.duration_since(started)).unwrap_or(Duration::ZERO);
            (waited > GONE_AFTER).then(|| Measurement {
                phase: AnalysisPhase::Error,
                value: None,
                started_at: running.started_at.clone(),
                finished_at: Some(Time(now)),
                message: Some(format!("Job {name} is gone before it finished")),
                metadata: running.metadata.clone(),
            })
        }
    }
}

fn ended(
    phase: AnalysisPhase,
    message: String,
    now: Timestamp,
    metadata: BTreeMap<String, String>,
) -> Measurement {
    Measurement {
        phase,
        value: None,
        started_at: Some(Time(now)),
        finished_at: Some(Time(now)),
        message: Some(message),
        metadata,
    }
}
