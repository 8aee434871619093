//! The AnalysisRun reconciler: resolve arguments and Secrets → take the measurements that are due →
//! record them (sluice-engine's analysis module) → patch status → look again when the next one is due.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_analysis::{Conditions, Connection, Credentials};
use sluice_api::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisRunSpec, AnalysisRunStatus, Measurement, Metric,
};
use sluice_api::common::{PrometheusConnection, SecretKeyRef};
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;
use sluice_engine::analysis;
use sluice_engine::conditions::{self, ConditionStatus};
use tracing::{info, instrument, warn};

use crate::error::Error;
use crate::{Context, FIELD_MANAGER};
use sluice_api::names::STABLE_HASH_ANNOTATION;

/// The longest wait between looks at a running run, should a wake-up be missed.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub fn error_policy(run: Arc<AnalysisRun>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = run.namespace().unwrap_or_default(), analysisrun = run.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

#[instrument(skip_all, fields(namespace = run.namespace().unwrap_or_default(), analysisrun = run.name_any()))]
pub async fn reconcile(run: Arc<AnalysisRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = run
        .namespace()
        .ok_or_else(|| Error::NoNamespace(run.name_any()))?;
    if run.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut status = run.status.clone().unwrap_or_default();
    if status.phase.is_some_and(analysis::is_completed) {
        return Ok(Action::await_change());
    }
    let before = status.clone();
    let now = Timestamp::now();
    let started = status
        .started_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| run.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);

    let next = if run.spec.terminate {
        analysis::summarize(&run.spec, &mut status, now);
        None
    } else {
        match Prepared::new(&run.spec, &ctx.client, &namespace).await? {
            Err(problem) => {
                fail_invalid(&mut status, &problem, now, run.metadata.generation);
                None
            }
            Ok(prepared) => {
                let schedule = analysis::schedule(&run.spec, &status, started, now);
                let measurements = join_all(schedule.due.iter().filter_map(|name| {
                    let metric = run.spec.metrics.iter().find(|m| &m.name == name)?;
                    Some(prepared.measure(metric, &run))
                }))
                .await;
                for (metric, measurement) in measurements {
                    info!(
                        metric = metric.name.as_str(),
                        phase = ?measurement.phase,
                        value = measurement.value.as_deref().unwrap_or(""),
                        "measured"
                    );
                    ctx.metrics
                        .measured(&namespace, &metric.name, measurement.phase);
                    analysis::record(&run.spec, &mut status, metric, measurement);
                }
                analysis::summarize(&run.spec, &mut status, now);
                // Measuring took time: ask again from now for what is due next.
                let later = analysis::schedule(&run.spec, &status, started, Timestamp::now());
                if later.due.is_empty() {
                    later.next_in
                } else {
                    Some(Duration::ZERO)
                }
            }
        }
    };

    if status != before {
        let patch =
            json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun", "status": status});
        Api::<AnalysisRun>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &run.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        let finished = status.phase.is_some_and(analysis::is_completed)
            && !before.phase.is_some_and(analysis::is_completed);
        if finished {
            announce(&ctx, &run, &status).await;
        }
    }
    if status.phase.is_some_and(analysis::is_completed) {
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(
        next.map_or(MAX_WAIT, |d| d.min(MAX_WAIT)) + Duration::from_millis(20),
    ))
}

/// An Event on the run when it reaches its final phase.
async fn announce(ctx: &Context, run: &AnalysisRun, status: &AnalysisRunStatus) {
    let phase = status.phase.unwrap_or(AnalysisPhase::Error);
    let (warning, reason) = match phase {
        AnalysisPhase::Successful => (false, "AnalysisRunSuccessful"),
        AnalysisPhase::Inconclusive => (true, "AnalysisRunInconclusive"),
        AnalysisPhase::Failed => (true, "AnalysisRunFailed"),
        _ => (true, "AnalysisRunError"),
    };
    let message = status.message.clone().unwrap_or_default();
    info!(reason, note = %message, "analysis run finished");
    ctx.publish(&run.object_ref(&()), warning, reason, "Analyse", &message)
        .await;
}

/// A run that cannot be measured (a missing argument or Secret, a condition that does not compile) is
/// in Error at once, with the reason: the release it belongs to stops instead of waiting forever.
fn fail_invalid(
    status: &mut AnalysisRunStatus,
    problem: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    conditions::set(
        &mut status.conditions,
        "InvalidSpec",
        ConditionStatus::True,
        "InvalidSpec",
        problem,
        now,
        generation.unwrap_or(0),
    );
    status.phase = Some(AnalysisPhase::Error);
    status.message = Some(format!("cannot measure: {problem}"));
    status
        .started_at
        .get_or_insert(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    status.completed_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
}

/// What the run's measurements need, resolved once per reconcile.
struct Prepared {
    /// `args.NAME` → value.
    values: BTreeMap<String, String>,
    conditions: BTreeMap<String, Conditions>,
    connections: BTreeMap<String, Connection>,
}

impl Prepared {
    /// `Ok(Err(problem))` is the user's mistake, reported on the run; `Err` is a failure to retry.
    async fn new(
        spec: &AnalysisRunSpec,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Result<Self, String>, Error> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut values = BTreeMap::new();
        for arg in &spec.args {
            let value = match (
                &arg.value,
                arg.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref()),
            ) {
                (Some(value), _) => value.clone(),
                (None, Some(reference)) => match read_secret(&secrets, reference).await? {
                    Ok(value) => value,
                    Err(problem) => return Ok(Err(format!("argument {:?}: {problem}", arg.name))),
                },
                (None, None) => {
                    return Ok(Err(format!(
                        "argument {:?} has no value: the Rollout must supply one",
                        arg.name
                    )));
                }
            };
            values.insert(format!("args.{}", arg.name), value);
        }
        let mut conditions = BTreeMap::new();
        let mut connections = BTreeMap::new();
        for metric in &spec.metrics {
            if let Some(prometheus) = &metric.provider.prometheus {
                let compiled = match Conditions::compile(
                    metric.success_condition.as_deref(),
                    metric.failure_condition.as_deref(),
                ) {
                    Ok(c) => c,
                    Err(err) => return Ok(Err(format!("metric {:?}: {err}", metric.name))),
                };
                conditions.insert(metric.name.clone(), compiled);
                if let Err(missing) = sluice_analysis::substitute(&prometheus.query, &values) {
                    return Ok(Err(format!("metric {:?}: {missing}", metric.name)));
                }
                match connection(&prometheus.connection, &secrets).await? {
                    Ok(c) => connections.insert(metric.name.clone(), c),
                    Err(problem) => return Ok(Err(format!("metric {:?}: {problem}", metric.name))),
                };
            } else if let Some(judge) = &metric.provider.baseline {
                match connection(&judge.prometheus, &secrets).await? {
                    Ok(c) => connections.insert(metric.name.clone(), c),
                    Err(problem) => return Ok(Err(format!("metric {:?}: {problem}", metric.name))),
                };
            }
        }
        Ok(Ok(Self {
            values,
            conditions,
            connections,
        }))
    }

    async fn measure<'m>(
        &self,
        metric: &'m Metric,
        run: &AnalysisRun,
    ) -> (&'m Metric, Measurement) {
        let measurement = match (
            &metric.provider.prometheus,
            self.conditions.get(&metric.name),
            self.connections.get(&metric.name),
        ) {
            (None, _, Some(connection)) if metric.provider.baseline.is_some() => {
                let canary = run.labels().get(POD_TEMPLATE_HASH_LABEL);
                let stable = run.annotations().get(STABLE_HASH_ANNOTATION);
                match (&metric.provider.baseline, canary) {
                    (Some(judge), Some(canary)) => {
                        sluice_analysis::baseline::measure(
                            connection,
                            judge,
                            &self.values,
                            canary,
                            stable.map(String::as_str),
                            Timestamp::now,
                        )
                        .await
                    }
                    _ => error_measurement(format!(
                        "the baseline judge needs the canary's hash in the run's {POD_TEMPLATE_HASH_LABEL} label; runs created by a Rollout have it"
                    )),
                }
            }
            (Some(prometheus), Some(conditions), Some(connection)) => {
                match sluice_analysis::substitute(&prometheus.query, &self.values) {
                    Ok(query) => {
                        sluice_analysis::measure_prometheus(
                            connection,
                            &query,
                            conditions,
                            Timestamp::now,
                        )
                        .await
                    }
                    Err(missing) => error_measurement(missing.to_string()),
                }
            }
            _ => error_measurement(format!("metric {:?} has no usable provider", metric.name)),
        };
        (metric, measurement)
    }
}

fn error_measurement(message: String) -> Measurement {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
    Measurement {
        phase: AnalysisPhase::Error,
        value: None,
        started_at: Some(now.clone()),
        finished_at: Some(now),
        message: Some(message),
        metadata: BTreeMap::new(),
    }
}

/// A Secret's key as text; `Ok(Err(problem))` when it is missing.
async fn read_secret(
    secrets: &Api<Secret>,
    reference: &SecretKeyRef,
) -> Result<Result<String, String>, Error> {
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(format!("Secret {:?} does not exist", reference.name)));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .map(|s| s.clone().into_bytes())
        });
    Ok(match bytes {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| {
            format!(
                "key {:?} of Secret {:?} is not UTF-8 text",
                reference.key, reference.name
            )
        }),
        None => Err(format!(
            "Secret {:?} has no key {:?}",
            reference.name, reference.key
        )),
    })
}

/// A connection with its Secrets read.
pub(crate) async fn connection(
    spec: &PrometheusConnection,
    secrets: &Api<Secret>,
) -> Result<Result<Connection, String>, Error> {
    let mut connection = Connection::plain(&spec.address);
    if let Some(timeout) = spec.timeout {
        connection.timeout = Duration::from_secs(u64::try_from(timeout).unwrap_or(30));
    }
    connection.insecure = spec.insecure;
    connection.headers = spec
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    if let Some(auth) = &spec.authentication {
        if let Some(basic) = &auth.basic {
            let username = match read_secret(secrets, &basic.username_secret_ref).await? {
                Ok(v) => v,
                Err(problem) => {
                    return Ok(Err(format!("basic authentication username: {problem}")));
                }
            };
            let password = match read_secret(secrets, &basic.password_secret_ref).await? {
                Ok(v) => v,
                Err(problem) => {
                    return Ok(Err(format!("basic authentication password: {problem}")));
                }
            };
            connection.credentials = Some(Credentials::Basic { username, password });
        } else if let Some(bearer) = &auth.bearer {
            match read_secret(secrets, &bearer.token_secret_ref).await? {
                Ok(token) => connection.credentials = Some(Credentials::Bearer(token)),
                Err(problem) => return Ok(Err(format!("bearer token: {problem}"))),
            }
        }
    }
    if let Some(ca) = &spec.ca_secret_ref {
        match read_secret(secrets, ca).await? {
            Ok(pem) => connection.ca_pem = Some(pem.into_bytes()),
            Err(problem) => return Ok(Err(format!("CA bundle: {problem}"))),
        }
    }
    Ok(Ok(connection))
}
