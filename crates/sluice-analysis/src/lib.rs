//! Sluice's metric providers, one module each behind the [`Provider`] trait: [`prometheus`], a query
//! judged by conditions (CEL, or Argo Rollouts' expression language), and [`baseline`], the statistical judge of canary against stable.
//! [`MetricSource::of`] maps a metric's `provider` to its implementation; [`slo`] writes an
//! ErrorBudgetGate's error-ratio queries; [`evaluator`] runs conditions in a child process with its
//! own limits. The controller resolves Secrets and arguments; this crate
//! sends the queries and turns answers into measurements, never failing silently: no data or NaN is
//! Inconclusive, an unreachable server or a refused query is an Error with the server's words.

pub mod address;
pub mod baseline;
pub mod condition;
pub mod evaluator;
pub mod hook;
pub mod job;
pub mod prometheus;
pub mod promql;
pub mod provider;
pub mod slo;
pub mod web;

pub use address::{AddressPolicy, ClusterRanges, Rule as AddressRule};
pub use condition::{
    ConditionError, Conditions, Dialect, Judge, QueryResult, ResultShape, Verdict,
};
pub use prometheus::{Connection, Credentials, QueryError};
pub use promql::{SubstituteError, substitute};
pub use provider::{MetricSource, NoProvider, Provider, RunContext, error_measurement};

/// What makes a template's metrics unmeasurable whatever the arguments: a metric with no provider, or
/// a condition that does not parse or can never give true or false. The problem names the metric.
pub fn check_template(spec: &sluice_api::analysis::AnalysisTemplateSpec) -> Result<(), String> {
    for metric in &spec.metrics {
        let source = MetricSource::of(metric).map_err(|missing| missing.to_string())?;
        source
            .validate()
            .map_err(|problem| format!("metric {:?}: {problem}", metric.name))?;
    }
    Ok(())
}

/// [`check_template`], then what only evaluating the conditions shows: each metric's conditions
/// compile and give true or false for some answer within the evaluator's limits (see [`evaluator`]),
/// found once per text. `Err`: the evaluator could not run, so nothing is known yet.
pub async fn check_template_conditions(
    spec: &sluice_api::analysis::AnalysisTemplateSpec,
) -> Result<Result<(), String>, String> {
    if let Err(problem) = check_template(spec) {
        return Ok(Err(problem));
    }
    for metric in &spec.metrics {
        let source = match MetricSource::of(metric) {
            Ok(source) => source,
            Err(missing) => return Ok(Err(missing.to_string())),
        };
        if let Err(problem) = source.check_conditions().await? {
            return Ok(Err(format!("metric {:?}: {problem}", metric.name)));
        }
    }
    Ok(Ok(()))
}

/// Values read from Secrets, kept out of everything a run records or says: each is replaced by
/// `***` in a measurement's value, message and metadata (the query as sent), longest first.
#[derive(Clone, Default)]
pub struct Redactions {
    values: Vec<String>,
}

impl std::fmt::Debug for Redactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactions({} values)", self.values.len())
    }
}

impl Redactions {
    /// Adds a value to keep out, as written and as a query's strings carry it escaped (an empty
    /// one hides nothing and is ignored).
    pub fn add(&mut self, value: &str) {
        for form in [
            value.to_owned(),
            promql::escape_double_quoted(value),
            promql::escape_single_quoted(value),
        ] {
            if !form.is_empty() && !self.values.contains(&form) {
                self.values.push(form);
            }
        }
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// `text` with every value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        self.values
            .iter()
            .fold(text.to_owned(), |text, value| text.replace(value, "***"))
    }

    /// Redacts what a measurement records. A failed query that carried a secret value gets no
    /// server message at all: a server quotes pieces of what it could not parse, and a piece of a
    /// secret is not caught by replacing the whole.
    pub fn measurement(&self, measurement: &mut sluice_api::analysis::Measurement) {
        if self.values.is_empty() {
            return;
        }
        let carried = measurement
            .metadata
            .values()
            .any(|text| self.values.iter().any(|v| text.contains(v.as_str())));
        if carried && measurement.phase == sluice_api::analysis::AnalysisPhase::Error {
            measurement.message = Some(
                "the query failed; the server's answer is withheld because the query carries a \
                 value read from a Secret"
                    .to_owned(),
            );
        }
        for text in [&mut measurement.value, &mut measurement.message]
            .into_iter()
            .flatten()
        {
            *text = self.redact(text);
        }
        for text in measurement.metadata.values_mut() {
            *text = self.redact(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_redacted_longest_first_wherever_they_appear() {
        let mut redactions = Redactions::default();
        redactions.add("");
        redactions.add("abc");
        redactions.add("abcdef");
        redactions.add("q\"t");
        let mut measurement = sluice_api::analysis::Measurement {
            value: Some("[abcdef]".into()),
            message: Some("parse error near \"abc\"".into()),
            metadata: [("query".to_owned(), "up{token=\"abcdef\"}".to_owned())].into(),
            phase: sluice_api::analysis::AnalysisPhase::Error,
            started_at: None,
            finished_at: None,
        };
        redactions.measurement(&mut measurement);
        assert_eq!(measurement.value.as_deref(), Some("[***]"));
        assert_eq!(
            measurement.message.as_deref(),
            Some(
                "the query failed; the server's answer is withheld because the query carries a \
                 value read from a Secret"
            )
        );
        assert_eq!(measurement.metadata["query"], "up{token=\"***\"}");
        assert_eq!(format!("{redactions:?}"), "Redactions(4 values)");
        // Escaped as a query's string carries it, it is still caught.
        assert_eq!(redactions.redact(r#"up{a="q\"t"}"#), r#"up{a="***"}"#);
        // A query without one keeps the server's words, with any value redacted.
        let mut other = sluice_api::analysis::Measurement {
            message: Some("no such label abc".into()),
            metadata: [("query".to_owned(), "up".to_owned())].into(),
            ..measurement
        };
        redactions.measurement(&mut other);
        assert_eq!(other.message.as_deref(), Some("no such label ***"));
    }
}
