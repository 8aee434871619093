//! The job provider (Argo Rollouts' `job` metric): each measurement is a Kubernetes Job, owned by
//! the AnalysisRun; it is Successful when the Job completes, Failed when it fails, Error when it
//! cannot be created. Starting the Job and reading its outcome are the controller's (it holds the
//! client and the Job cache); this module builds the Job and reads its status.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use sluice_api::analysis::{AnalysisPhase, JobMetric, Measurement};
use sluice_api::common::PrometheusConnection;
use sluice_api::names::ANALYSIS_RUN_LABEL;

use crate::prometheus::Connection;
use crate::provider::{Provider, RunContext, error_measurement};
use crate::web::fill;

/// The metadata key of a job measurement that names its Job.
pub const JOB_NAME_KEY: &str = "job-name";

/// A job metric.
#[derive(Debug)]
pub struct JobProvider<'a> {
    spec: &'a JobMetric,
}

impl<'a> JobProvider<'a> {
    pub fn new(spec: &'a JobMetric) -> Self {
        Self { spec }
    }

    /// The Job for measurement `n` of `metric` in run `run` (uid `run_uid`), with `{{args.NAME}}`
    /// filled in every string of its spec.
    pub fn manifest(
        &self,
        (run, run_uid): (&str, &str),
        metric: &str,
        n: i32,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, String> {
        let mut spec = serde_json::to_value(&self.spec.spec)
            .map_err(|e| format!("the Job spec cannot be written: {e}"))?;
        fill_strings(&mut spec, args)?;
        let metadata = self.spec.metadata.clone().unwrap_or_default();
        let mut labels = metadata.labels;
        labels.insert(ANALYSIS_RUN_LABEL.to_owned(), run.to_owned());
        Ok(serde_json::json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job_name(run, metric, n),
                "labels": labels,
                "annotations": metadata.annotations,
                "ownerReferences": [{
                    "apiVersion": "sluice.dev/v1alpha1",
                    "kind": "AnalysisRun",
                    "name": run,
                    "uid": run_uid,
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": spec,
        }))
    }
}

/// `{{args.NAME}}` filled in every string of `value`.
fn fill_strings(
    value: &mut serde_json::Value,
    args: &BTreeMap<String, String>,
) -> Result<(), String> {
    match value {
        serde_json::Value::String(text) => *text = fill(text, args)?,
        serde_json::Value::Array(items) => {
            for item in items {
                fill_strings(item, args)?;
            }
        }
        serde_json::Value::Object(fields) => {
            for item in fields.values_mut() {
                fill_strings(item, args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The Job of measurement `n`: `<run>-<metric>-<n>`, shortened with a hash to the 63 characters a
/// Job's name may have (its pods carry it in a label).
pub fn job_name(run: &str, metric: &str, n: i32) -> String {
    let full = format!("{run}-{metric}-{n}");
    if full.len() <= 63 {
        return full;
    }
    let hash = fnv(&full);
    let keep: String = full.chars().take(63 - 11).collect();
    format!("{}-{hash:010x}", keep.trim_end_matches(['-', '.']))
        .chars()
        .take(63)
        .collect()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) & 0xff_ffff_ffff
}

/// The Job's outcome, once it has one: Successful when complete, Failed when failed (with the
/// Job's reason and message).
pub fn outcome(job: &Job) -> Option<(AnalysisPhase, String)> {
    let name = job.metadata.name.as_deref().unwrap_or("the Job");
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some((AnalysisPhase::Successful, format!("Job {name} completed"))),
            "Failed" => Some((
                AnalysisPhase::Failed,
                format!(
                    "Job {name} failed: {}{}",
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
            )),
            _ => None,
        })
}

impl Provider for JobProvider<'_> {
    fn name(&self) -> &'static str {
        "job"
    }

    fn connection(&self) -> Option<&PrometheusConnection> {
        None
    }

    fn check(&self, args: &BTreeMap<String, String>) -> Result<(), String> {
        self.manifest(("run", "uid"), "metric", 1, args).map(drop)
    }

    /// Job metrics are measured by the controller, which starts the Job and reads its outcome; a
    /// measurement asked of this provider directly is an Error saying so.
    async fn measure(
        &self,
        _connection: &Connection,
        _args: &BTreeMap<String, String>,
        _run: &RunContext<'_>,
        now: impl Fn() -> Timestamp + Send + Sync,
    ) -> Measurement {
        error_measurement(
            "a job metric is measured by starting a Job, which only the controller does".to_owned(),
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> JobMetric {
        serde_json::from_value(json!({
            "metadata": {"labels": {"team": "a"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "smoke", "image": "registry.example/smoke:1",
                                "args": ["--target", "{{args.url}}"]}]}}}
        }))
        .expect("job metric")
    }

    #[test]
    fn the_job_is_owned_by_the_run_labelled_and_filled() {
        let spec = provider();
        let args = BTreeMap::from([("args.url".to_owned(), "http://web.svc".to_owned())]);
        let job = JobProvider::new(&spec)
            .manifest(("run-1", "u-1"), "smoke", 2, &args)
            .expect("manifest");
        assert_eq!(job["metadata"]["name"], "run-1-smoke-2");
        assert_eq!(job["metadata"]["labels"]["team"], "a");
        assert_eq!(job["metadata"]["labels"][ANALYSIS_RUN_LABEL], "run-1");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["args"][1],
            "http://web.svc"
        );
        let missing = JobProvider::new(&spec).check(&BTreeMap::new());
        assert!(missing.is_err_and(|e| e.contains("args.url")));
    }

    #[test]
    fn long_names_are_shortened_to_a_valid_job_name() {
        let name = job_name(&"r".repeat(60), "metric", 12);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, job_name(&"r".repeat(60), "metric", 13));
    }

    #[test]
    fn the_outcome_is_read_from_the_jobs_conditions() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(
                json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
            )
            .expect("job")
        };
        assert_eq!(outcome(&job(json!([]))), None);
        assert_eq!(
            outcome(&job(json!([{"type": "Complete", "status": "True"}]))).map(|o| o.0),
            Some(AnalysisPhase::Successful)
        );
        let failed = outcome(&job(json!([{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])));
        assert!(
            failed.is_some_and(|(phase, message)| phase == AnalysisPhase::Failed
                && message.contains("BackoffLimitExceeded"))
        );
    }
}
