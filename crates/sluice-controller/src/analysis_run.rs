//! The AnalysisRun reconciler: resolve arguments and Secrets → take the measurements that are due →
//! record them (sluice-engine's analysis module) → patch status → look again when the next one is due.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_analysis::{
    Connection, Credentials, MetricSource, NoProvider, Provider, Redactions, RunContext,
    error_measurement,
};
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
use sluice_api::names::{
    ANALYSIS_SECRET_LABEL, SECRET_DESTINATIONS_ANNOTATION, STABLE_HASH_ANNOTATION, STANDALONE_LABEL,
};

/// The longest wait between looks at a running run, should a wake-up be missed.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Measurements of one run taken at once: what a run holds at a time is at most this many answers.
const MEASURED_AT_ONCE: usize = 4;

pub fn error_policy(run: Arc<AnalysisRun>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = run.namespace().unwrap_or_default(), analysisrun = run.name_any(), %error, "reconcile failed");
    Action::requeue(ctx.backoffs.failed(
        "AnalysisRun",
        &run.namespace().unwrap_or_default(),
        &run.name_any(),
    ))
}

#[instrument(skip_all, fields(namespace = run.namespace().unwrap_or_default(), analysisrun = run.name_any()))]
pub async fn reconcile(run: Arc<AnalysisRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_run(run.clone(), ctx.clone()).await;
    if result.is_ok() {
        ctx.backoffs.succeeded(
            "AnalysisRun",
            &run.namespace().unwrap_or_default(),
            &run.name_any(),
        );
    }
    result
}

async fn reconcile_run(run: Arc<AnalysisRun>, ctx: Arc<Context>) -> Result<Action, Error> {
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
        // A stopped run's Jobs under way stop too.
        crate::job_metric::stop(&ctx, &namespace, &status).await?;
        analysis::summarize(&run.spec, &mut status, now);
        None
    } else if !runs_here(&run) {
        let problem = format!(
            "no Rollout owns this run: label it {STANDALONE_LABEL}=true to have it run on its own"
        );
        fail_invalid(&mut status, &problem, now, run.metadata.generation);
        None
    } else if let Some(problem) = analysis::unreadable_durations(&run.spec) {
        fail_invalid(&mut status, &problem, now, run.metadata.generation);
        None
    } else {
        match Prepared::new(
            &run.spec,
            ctx.caches.secrets.as_ref(),
            &namespace,
            &ctx.address_policy,
        )
        .await?
        {
            Err(problem) => {
                fail_invalid(&mut status, &problem, now, run.metadata.generation);
                None
            }
            Ok(prepared) => {
                let schedule = analysis::schedule(&run.spec, &status, started, now);
                let context = RunContext {
                    canary_hash: run
                        .labels()
                        .get(POD_TEMPLATE_HASH_LABEL)
                        .map(String::as_str),
                    stable_hash: run
                        .annotations()
                        .get(STABLE_HASH_ANNOTATION)
                        .map(String::as_str),
                };
                let metric_named =
                    |name: &String| run.spec.metrics.iter().find(|m| &m.name == name);
                // Job metrics: a Job started, or the outcome of the one under way.
                let mut measurements = Vec::new();
                for metric in schedule
                    .due
                    .iter()
                    .chain(&schedule.in_progress)
                    .filter_map(metric_named)
                {
                    let Some(job) = &metric.provider.job else {
                        continue;
                    };
                    let values = (&prepared.values, &prepared.redactions);
                    if let Some(measurement) = crate::job_metric::measure(
                        &ctx, &run, &namespace, metric, job, &status, values, now,
                    )
                    .await?
                    {
                        measurements.push((metric, "job", measurement));
                    }
                }
                // A few at a time: each answer may be megabytes, and a run may have dozens of
                // metrics due at once.
                let due: Vec<_> = schedule
                    .due
                    .iter()
                    .filter_map(metric_named)
                    .filter(|m| m.provider.job.is_none())
                    .map(|metric| prepared.measure(metric, &context))
                    .collect();
                measurements.extend(
                    futures::stream::iter(due)
                        .buffered(MEASURED_AT_ONCE)
                        .collect::<Vec<_>>()
                        .await,
                );
                for (metric, provider, measurement) in measurements {
                    info!(
                        metric = metric.name.as_str(),
                        provider,
                        phase = ?measurement.phase,
                        value = measurement.value.as_deref().unwrap_or(""),
                        "measured"
                    );
                    ctx.metrics
                        .measured(&namespace, &metric.name, measurement.phase);
                    analysis::record(&run.spec, &mut status, metric, measurement);
                }
                analysis::summarize(&run.spec, &mut status, now);
                // A status that does not fit in the object would fail its write on every try.
                analysis::fit_retained(&mut status, analysis::MAX_RETAINED_BYTES);
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

/// Whether the controller measures this run: one a Rollout owns, or one marked to run on its own
/// ([`STANDALONE_LABEL`]). Anything else written as an AnalysisRun is refused, not measured.
fn runs_here(run: &AnalysisRun) -> bool {
    let owned = run
        .owner_references()
        .iter()
        .any(|o| o.kind == "Rollout" && o.api_version.starts_with("sluice.dev/"));
    owned || run.labels().get(STANDALONE_LABEL).map(String::as_str) == Some("true")
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
    ctx.publish(&run.object_ref(&()), warning, reason, "Analyse", &message);
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
struct Prepared<'a> {
    /// `args.NAME` → value.
    values: BTreeMap<String, String>,
    /// Every value read from a Secret, kept out of what the run records.
    redactions: Redactions,
    /// Each metric's provider, with its connection's Secrets read. A metric without a provider is not
    /// here: each of its measurements is an Error saying so.
    sources: BTreeMap<&'a str, (MetricSource<'a>, Connection)>,
}

impl<'a> Prepared<'a> {
    /// `Ok(Err(problem))` is the user's mistake, reported on the run; `Err` is a failure to retry.
    async fn new(
        spec: &'a AnalysisRunSpec,
        secrets: Option<&Store<Secret>>,
        namespace: &str,
        policy: &Arc<sluice_analysis::AddressPolicy>,
    ) -> Result<Result<Self, String>, Error> {
        let secrets = SecretsIn {
            store: secrets,
            namespace,
        };
        let mut values = BTreeMap::new();
        let mut redactions = Redactions::default();
        // The arguments read from Secrets: each goes only where its Secret allows.
        let mut from_secrets: Vec<(String, FromSecret)> = Vec::new();
        for arg in &spec.args {
            let value = match (
                &arg.value,
                arg.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref()),
            ) {
                (Some(value), _) => value.clone(),
                (None, Some(reference)) => match read_secret(secrets, reference) {
                    Ok(value) => {
                        redactions.add(&value.text);
                        let text = value.text.clone();
                        from_secrets.push((arg.name.clone(), value));
                        text
                    }
                    Err(problem) => return Ok(Err(format!("argument {:?}: {problem}", arg.name))),
                },
                (None, None) => {
                    let problem = match arg.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                        Some(field) => format!(
                            "argument {:?} reads {} of the Rollout, which is not set (a standalone \
                             run has no Rollout to read)",
                            arg.name, field.field_path
                        ),
                        None => format!(
                            "argument {:?} has no value: the Rollout must supply one",
                            arg.name
                        ),
                    };
                    return Ok(Err(problem));
                }
            };
            values.insert(format!("args.{}", arg.name), value);
        }
        let mut sources = BTreeMap::new();
        for metric in &spec.metrics {
            let Ok(source) = MetricSource::of(metric) else {
                // Not a problem of the whole run: each of its measurements is an Error saying so.
                continue;
            };
            if let Err(problem) = source.check(&values) {
                return Ok(Err(format!("metric {:?}: {problem}", metric.name)));
            }
            // An evaluator that cannot run now is not the run's fault: its measurements say so.
            if let Ok(Err(problem)) = source.check_conditions().await {
                return Ok(Err(format!("metric {:?}: {problem}", metric.name)));
            }
            if let MetricSource::Job(job) = &source
                && let Ok(manifest) = job.manifest(("run", "uid"), &metric.name, 1, &values)
            {
                let text = manifest.to_string();
                if redactions.redact(&text) != text {
                    return Ok(Err(format!(
                        "metric {:?}: {}",
                        metric.name,
                        crate::job_metric::NO_SECRETS
                    )));
                }
            }
            let connection = match source.connection() {
                Some(server) => match connection(server, secrets, policy) {
                    Ok(c) => c,
                    Err(problem) => return Ok(Err(format!("metric {:?}: {problem}", metric.name))),
                },
                // A provider with no server of its own (web) still obeys the address policy.
                None => Connection {
                    policy: policy.clone(),
                    ..Connection::plain("")
                },
            };
            if let Some(problem) = secret_argument_refused(metric, &source, &values, &from_secrets)
            {
                // The host may have been built from an argument: nothing read from a Secret shows.
                return Ok(Err(
                    redactions.redact(&format!("metric {:?}: {problem}", metric.name))
                ));
            }
            match &connection.credentials {
                Some(Credentials::Basic { username, password }) => {
                    redactions.add(username);
                    redactions.add(password);
                }
                Some(Credentials::Bearer(token)) => redactions.add(token),
                None => {}
            }
            sources.insert(metric.name.as_str(), (source, connection));
        }
        Ok(Ok(Self {
            values,
            redactions,
            sources,
        }))
    }

    /// One measurement of `metric`, with the name of the provider that took it.
    async fn measure<'m>(
        &self,
        metric: &'m Metric,
        run: &RunContext<'_>,
    ) -> (&'m Metric, &'static str, Measurement) {
        match self.sources.get(metric.name.as_str()) {
            Some((source, connection)) => {
                let mut measurement = source
                    .measure(connection, &self.values, run, Timestamp::now)
                    .await;
                self.redactions.measurement(&mut measurement);
                (metric, source.name(), measurement)
            }
            None => {
                let missing = NoProvider {
                    metric: metric.name.clone(),
                };
                (
                    metric,
                    "none",
                    error_measurement(missing.to_string(), Timestamp::now),
                )
            }
        }
    }
}

/// Why an argument read from a Secret may not go where `metric` sends it (a job metric's Job never
/// carries one: refused before), if it may not.
fn secret_argument_refused(
    metric: &Metric,
    source: &MetricSource<'_>,
    values: &BTreeMap<String, String>,
    from_secrets: &[(String, FromSecret)],
) -> Option<String> {
    if from_secrets.is_empty() {
        return None;
    }
    let address = match (source.connection(), &metric.provider.web) {
        (Some(server), _) => server.address.clone(),
        // A URL that cannot be filled in is an Error of each measurement: nothing is sent.
        (None, Some(web)) => sluice_analysis::web::fill(&web.url, values).ok()?,
        (None, None) => return None,
    };
    let host = host_of(&address).unwrap_or_default();
    let provider = serde_json::to_string(&metric.provider).unwrap_or_default();
    from_secrets
        .iter()
        .filter(|(name, _)| places_argument(&provider, name))
        .find_map(|(name, value)| {
            value
                .may_go_to(&host)
                .err()
                .map(|problem| format!("argument {name:?}: {problem}"))
        })
}

/// The Secrets of one namespace that a run, gate or sink may read: the cached Secrets open to
/// analysis, or none when the operator may not read Secrets.
#[derive(Clone, Copy)]
pub(crate) struct SecretsIn<'a> {
    pub store: Option<&'a Store<Secret>>,
    pub namespace: &'a str,
}

/// A Secret's key as text, or the problem: it is missing, or the Secret is not open to analysis
/// (labelled [`ANALYSIS_SECRET_LABEL`]`=true`, the only Secrets watched). A missing Secret and a
/// closed one read alike, so that a run tells a tenant nothing of Secrets it may not read.
pub(crate) fn read_secret(
    secrets: SecretsIn<'_>,
    reference: &SecretKeyRef,
) -> Result<FromSecret, String> {
    let Some(store) = secrets.store else {
        return Err(format!(
            "Sluice may not read Secret {:?}: it was installed without the right to read Secrets \
             (the chart's readSecrets is false, the controller's --read-secrets=false)",
            reference.name
        ));
    };
    let secret = store
        .get(&ObjectRef::new(&reference.name).within(secrets.namespace))
        .filter(|s| s.labels().get(ANALYSIS_SECRET_LABEL).map(String::as_str) == Some("true"));
    let Some(secret) = secret else {
        return Err(format!(
            "Secret {:?} is not open to analysis: it does not exist, or lacks the label \
             {ANALYSIS_SECRET_LABEL}=true that lets Sluice read it",
            reference.name
        ));
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
    let text = match bytes {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| {
            format!(
                "key {:?} of Secret {:?} is not UTF-8 text",
                reference.key, reference.name
            )
        })?,
        None => {
            return Err(format!(
                "Secret {:?} has no key {:?}",
                reference.name, reference.key
            ));
        }
    };
    Ok(FromSecret {
        text,
        secret: reference.name.clone(),
        destinations: destinations(&secret),
    })
}

/// A value read from a Secret, with where the Secret lets it be sent.
pub(crate) struct FromSecret {
    pub text: String,
    /// The Secret's name, for messages.
    secret: String,
    /// Its annotation's rules, or what is wrong with them.
    destinations: Result<Vec<sluice_analysis::AddressRule>, String>,
}

impl FromSecret {
    /// Whether the value may be sent to `host` (a URL's host): only where the Secret's annotation
    /// [`SECRET_DESTINATIONS_ANNOTATION`] allows. The problem names the host: callers whose host
    /// came from a Secret redact it.
    pub(crate) fn may_go_to(&self, host: &str) -> Result<(), String> {
        let rules = self
            .destinations
            .as_ref()
            .map_err(|why| format!("Secret {:?}: {why}", self.secret))?;
        if rules.is_empty() {
            return Err(format!(
                "Secret {:?} names no destination, so its values are sent nowhere: its \
                 annotation {SECRET_DESTINATIONS_ANNOTATION} lists where they may go (here \
                 {host})",
                self.secret
            ));
        }
        let policy = sluice_analysis::AddressPolicy::new(rules.clone());
        policy.check_host(host).map_err(|_| {
            format!(
                "Secret {:?} may not be sent to {host}: its annotation \
                 {SECRET_DESTINATIONS_ANNOTATION} allows {policy}",
                self.secret
            )
        })
    }
}

/// The rules of a Secret's [`SECRET_DESTINATIONS_ANNOTATION`] (none without it).
fn destinations(secret: &Secret) -> Result<Vec<sluice_analysis::AddressRule>, String> {
    let Some(text) = secret.annotations().get(SECRET_DESTINATIONS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|rule| !rule.is_empty())
        .map(|rule| {
            rule.parse().map_err(|why| {
                format!("its annotation {SECRET_DESTINATIONS_ANNOTATION} is not valid: {why}")
            })
        })
        .collect()
}

/// The host of a URL as the HTTP client reads it.
pub(crate) fn host_of(url: &str) -> Option<String> {
    sluice_analysis::address::url_host(url)
}

/// Whether `text` (a provider's spec as JSON) places the argument `name` (`{{args.NAME}}`, spaces
/// inside the braces allowed).
fn places_argument(text: &str, name: &str) -> bool {
    let wanted = format!("args.{name}");
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return false;
        };
        if after[..end].trim() == wanted {
            return true;
        }
        rest = &after[end + 2..];
    }
    false
}

/// The value, if it may be sent to `host` (none: an address without a host, which the address
/// policy refuses before anything is sent).
fn sent_to(value: FromSecret, host: Option<&str>) -> Result<String, String> {
    value.may_go_to(host.unwrap_or_default())?;
    Ok(value.text)
}

/// A connection with its Secrets read.
pub(crate) fn connection(
    spec: &PrometheusConnection,
    secrets: SecretsIn<'_>,
    policy: &Arc<sluice_analysis::AddressPolicy>,
) -> Result<Connection, String> {
    let mut connection = Connection::plain(&spec.address);
    connection.policy = policy.clone();
    // Where credentials read from Secrets go: the server's host (written in the spec, no Secret's).
    let host = host_of(&spec.address);
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
            let username = read_secret(secrets, &basic.username_secret_ref)
                .and_then(|v| sent_to(v, host.as_deref()))
                .map_err(|problem| format!("basic authentication username: {problem}"))?;
            let password = read_secret(secrets, &basic.password_secret_ref)
                .and_then(|v| sent_to(v, host.as_deref()))
                .map_err(|problem| format!("basic authentication password: {problem}"))?;
            connection.credentials = Some(Credentials::Basic { username, password });
        } else if let Some(bearer) = &auth.bearer {
            let token = read_secret(secrets, &bearer.token_secret_ref)
                .and_then(|v| sent_to(v, host.as_deref()))
                .map_err(|problem| format!("bearer token: {problem}"))?;
            connection.credentials = Some(Credentials::Bearer(token));
        }
    }
    if let Some(ca) = &spec.ca_secret_ref {
        // Read to check the server with, never sent: no destination to allow.
        let pem = read_secret(secrets, ca)
            .map(|v| v.text)
            .map_err(|problem| format!("CA bundle: {problem}"))?;
        connection.ca_pem = Some(pem.into_bytes());
    }
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(annotation: Option<&str>) -> FromSecret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("prometheus-token".to_owned());
        if let Some(text) = annotation {
            secret.metadata.annotations = Some(
                [(SECRET_DESTINATIONS_ANNOTATION.to_owned(), text.to_owned())]
                    .into_iter()
                    .collect(),
            );
        }
        FromSecret {
            text: "s3cret".to_owned(),
            secret: "prometheus-token".to_owned(),
            destinations: destinations(&secret),
        }
    }

    /// A Secret's values go where its annotation's rules allow, and nowhere without one.
    #[test]
    fn a_secrets_destinations_are_its_annotations_rules() {
        let bound = value(Some("prometheus.monitoring.svc, *.internal, 10.0.0.0/8"));
        for host in ["prometheus.monitoring.svc", "thanos.internal", "10.1.2.3"] {
            assert_eq!(bound.may_go_to(host), Ok(()), "{host}");
        }
        for host in [
            "127.0.0.1",
            "evil.tenant.svc",
            "prometheus.monitoring.svc.evil.io",
            "",
        ] {
            let refused = bound.may_go_to(host).expect_err(host);
            assert!(
                refused.contains("may not be sent to") && !refused.contains("s3cret"),
                "{host}: {refused}"
            );
        }
        let unbound = value(None).may_go_to("prometheus.monitoring.svc");
        assert!(
            unbound.is_err_and(|why| why.contains("names no destination")),
            "a Secret without the annotation"
        );
        let invalid = value(Some("http://prometheus")).may_go_to("prometheus");
        assert!(
            invalid.is_err_and(|why| why.contains("is not valid")),
            "an annotation that is not rules"
        );
    }

    #[test]
    fn an_argument_is_placed_where_its_placeholder_is() {
        let text = r#"{"web":{"headers":[{"value":"Bearer {{ args.token }}"}],"url":"http://x/{{args.service}}"}}"#;
        assert!(places_argument(text, "token"));
        assert!(places_argument(text, "service"));
        assert!(!places_argument(text, "tok"));
        assert!(!places_argument("{{args.token", "token"));
    }
}
