//! The `Release` objects: each release of a Rollout (`status.release`, as the engine records it)
//! mirrored into an object of its own, with the verdicts and last measurements of its analysis
//! runs, so the history outlives the release, the runs and the controller.
//!
//! A record is written (server-side apply) only when what it would say differs from what was last
//! written, which the `sluice.dev/record-hash` annotation tells from the cache: a settled Rollout
//! writes nothing. The newest `releaseHistoryLimit` are kept.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_api::analysis::AnalysisRun;
use sluice_api::names::ROLLOUT_LABEL;
use sluice_api::release::{MetricRecord, Release, ReleaseProgress, RunRecord};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout};

use crate::error::{Error, Writing};
use crate::{Context, FIELD_MANAGER, cache};

/// Annotation holding a hash of what a record says (its release and analysis).
pub const RECORD_HASH_ANNOTATION: &str = "sluice.dev/record-hash";

/// The name of a Rollout's release number `number`.
pub fn name(rollout: &str, number: i64) -> String {
    format!("{rollout}-{number}")
}

/// What this controller knows a record says: from its own last write (the cache may lag it) or
/// else from the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    hash: Option<String>,
    ended: bool,
    restored: bool,
}

impl Known {
    fn of(record: &Release) -> Self {
        Self {
            hash: record.annotations().get(RECORD_HASH_ANNOTATION).cloned(),
            ended: record.spec.release.outcome.is_some(),
            restored: record.spec.release.restored_at.is_some(),
        }
    }

    /// Whether the record exists.
    pub fn exists(&self) -> bool {
        self.hash.is_some()
    }

    /// Whether the record says the release ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the record says stable was restored after an abort.
    pub fn restored(&self) -> bool {
        self.restored
    }
}

/// The records this controller wrote, by (namespace, name): what each says as of its last write.
#[derive(Default)]
pub struct Written {
    known: std::sync::Mutex<std::collections::HashMap<(String, String), Known>>,
}

impl Written {
    fn get(&self, key: &(String, String)) -> Option<Known> {
        self.known.lock().ok()?.get(key).cloned()
    }

    fn put(&self, key: (String, String), known: Known) {
        if let Ok(mut map) = self.known.lock() {
            map.insert(key, known);
        }
    }

    fn forget(&self, key: &(String, String)) {
        if let Ok(mut map) = self.known.lock() {
            map.remove(key);
        }
    }

    /// Forgets every record of a deleted Rollout (`ROLLOUT-N`), not those of another whose name it
    /// begins (`ROLLOUT-2-N`).
    pub fn forget_rollout(&self, namespace: &str, rollout: &str) {
        if let Ok(mut map) = self.known.lock() {
            map.retain(|(ns, record), _| {
                let of_it = ns == namespace
                    && record
                        .strip_prefix(rollout)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
                !of_it
            });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.lock().map(|m| m.len()).unwrap_or_default()
    }
}

/// Writes the record of `release` if it says something new, and deletes the records beyond the
/// Rollout's `releaseHistoryLimit`.
pub async fn mirror(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    release: &ReleaseProgress,
) -> Result<(), Error> {
    let rollout_name = rollout.name_any();
    let record_name = name(&rollout_name, release.number);
    let key = (namespace.to_owned(), record_name.clone());
    let cached = cache::get(&ctx.caches.releases, namespace, &record_name);
    let known = ctx
        .records
        .get(&key)
        .or_else(|| cached.as_deref().map(Known::of))
        .unwrap_or_default();
    let analysis = analysis(ctx, rollout, namespace, release, cached.as_deref());
    let hash = content_hash(release, &analysis);
    // An ended release changes only when stable is restored after an abort: its runs may be gone
    // by now, and what the record says of them stays as it was.
    let settled_end =
        known.ended && release.outcome.is_some() && known.restored == release.restored_at.is_some();
    if !settled_end && known.hash.as_deref() != Some(hash.as_str()) {
        let mut spec = release_fields(release)?;
        spec.insert("rollout".to_owned(), json!(rollout_name));
        spec.insert("analysis".to_owned(), serde_json::to_value(&analysis)?);
        let record = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "Release",
            "metadata": {
                "name": record_name,
                "labels": {ROLLOUT_LABEL: rollout_name},
                "annotations": {RECORD_HASH_ANNOTATION: hash},
                "ownerReferences": [crate::owned_by(rollout)],
            },
            "spec": spec,
        });
        Api::<Release>::namespaced(ctx.client.clone(), namespace)
            .patch(
                &record_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&record),
            )
            .await
            .writing(|| format!("Release {record_name}"))?;
        ctx.metrics
            .record_release(namespace, &rollout_name, &known, release);
        ctx.records.put(
            key,
            Known {
                hash: Some(hash),
                ended: release.outcome.is_some(),
                restored: release.restored_at.is_some(),
            },
        );
    }
    prune(ctx, rollout, namespace, release.number).await
}

/// The release's fields, as a JSON object for the record's spec.
fn release_fields(
    release: &ReleaseProgress,
) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::to_value(release)? {
        serde_json::Value::Object(fields) => Ok(fields),
        _ => Ok(serde_json::Map::new()),
    }
}

/// The analysis runs of the release's revision, as recorded before and as they stand now (a run
/// deleted since stays as it was recorded).
fn analysis(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    release: &ReleaseProgress,
    known: Option<&Release>,
) -> Vec<RunRecord> {
    let mut runs: BTreeMap<String, RunRecord> = known
        .map(|r| {
            r.spec
                .analysis
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect()
        })
        .unwrap_or_default();
    let uid = rollout.uid().unwrap_or_default();
    let started = release.started_at.0;
    for run in cache::owned(
        &ctx.caches.runs,
        &ctx.caches.run_index,
        namespace,
        &rollout.name_any(),
    ) {
        let ours = run.owner_references().iter().any(|o| o.uid == uid)
            && run.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&release.revision)
            // A retry is a new release of the same revision: only the runs it started.
            && run.metadata.creation_timestamp.as_ref().is_some_and(|t| t.0 >= started);
        if ours {
            runs.insert(run.name_any(), run_record(&run));
        }
    }
    runs.into_values().collect()
}

fn run_record(run: &AnalysisRun) -> RunRecord {
    let status = run.status.clone().unwrap_or_default();
    RunRecord {
        name: run.name_any(),
        phase: status
            .phase
            .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
        message: status.message,
        metrics: status
            .metric_results
            .iter()
            .map(|m| {
                let last = m.measurements.last();
                MetricRecord {
                    name: m.name.clone(),
                    phase: format!("{:?}", m.phase),
                    value: last.and_then(|l| l.value.clone()),
                    message: last
                        .and_then(|l| l.message.clone())
                        .or_else(|| m.message.clone()),
                    measurements: m.count,
                    failed: m.failed,
                    inconclusive: m.inconclusive,
                    errors: m.error,
                }
            })
            .collect(),
    }
}

fn content_hash(release: &ReleaseProgress, analysis: &[RunRecord]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&(release, analysis))
        .unwrap_or_default()
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Deletes the Rollout's records older than the newest `releaseHistoryLimit`.
async fn prune(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    newest: i64,
) -> Result<(), Error> {
    let keep_from = newest - i64::from(rollout.spec.release_history_limit) + 1;
    let api: Api<Release> = Api::namespaced(ctx.client.clone(), namespace);
    for record in cache::owned(
        &ctx.caches.releases,
        &ctx.caches.release_index,
        namespace,
        &rollout.name_any(),
    ) {
        if record.spec.release.number < keep_from && record.meta().deletion_timestamp.is_none() {
            let record_name = record.name_any();
            ctx.records
                .forget(&(namespace.to_owned(), record_name.clone()));
            match api.delete(&record_name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(err).writing(|| format!("(deleting) Release {record_name}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deleted Rollout's records are forgotten, not those of another Rollout whose name begins
    /// with its name, nor those of another namespace.
    #[test]
    fn a_deleted_rollouts_records_are_forgotten_and_no_other() {
        let written = Written::default();
        for (ns, record) in [
            ("a", "web-1"),
            ("a", "web-12"),
            ("a", "web-2-1"),
            ("b", "web-1"),
        ] {
            written.put((ns.to_owned(), record.to_owned()), Known::default());
        }
        written.forget_rollout("a", "web");
        assert_eq!(written.len(), 2);
        assert!(
            written
                .get(&("a".to_owned(), "web-2-1".to_owned()))
                .is_some()
        );
        assert!(written.get(&("b".to_owned(), "web-1".to_owned())).is_some());
    }
}
