//! Sluice's metric providers, one module each behind the [`Provider`] trait: [`prometheus`], a query
//! judged by CEL conditions, and [`baseline`], the statistical judge of canary against stable.
//! [`MetricSource::of`] maps a metric's `provider` to its implementation; [`slo`] writes an
//! ErrorBudgetGate's error-ratio queries. The controller resolves Secrets and arguments; this crate
//! sends the queries and turns answers into measurements, never failing silently: no data or NaN is
//! Inconclusive, an unreachable server or a refused query is an Error with the server's words.

pub mod baseline;
pub mod condition;
pub mod prometheus;
pub mod provider;
pub mod slo;

use std::collections::BTreeMap;

pub use condition::{ConditionError, Conditions, QueryResult, Verdict};
pub use prometheus::{Connection, Credentials, QueryError};
pub use provider::{MetricSource, NoProvider, Provider, RunContext, error_measurement};

/// A `{{...}}` placeholder with no value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the query uses {{{{{name}}}}} but no argument of that name was given")]
pub struct MissingPlaceholder {
    pub name: String,
}

/// Replaces each `{{name}}` (spaces inside the braces allowed) with its value from `values`, whose
/// keys are written as in the query: `args.service`, `hash`, `window`.
pub fn substitute(
    template: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, MissingPlaceholder> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| MissingPlaceholder {
            name: name.to_owned(),
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_a_missing_one_is_named() {
        let values: BTreeMap<String, String> = [
            ("args.service".to_owned(), "checkout".to_owned()),
            ("hash".to_owned(), "abc".to_owned()),
        ]
        .into();
        assert_eq!(
            substitute(
                "rate(x{svc=\"{{args.service}}\",h=\"{{ hash }}\"}[5m])",
                &values
            ),
            Ok("rate(x{svc=\"checkout\",h=\"abc\"}[5m])".to_owned())
        );
        assert_eq!(
            substitute("{{args.nope}}", &values),
            Err(MissingPlaceholder {
                name: "args.nope".to_owned()
            })
        );
        assert_eq!(
            substitute("no braces {", &values),
            Ok("no braces {".to_owned())
        );
    }
}
