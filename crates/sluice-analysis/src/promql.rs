//! Values placed into PromQL: `{{name}}` placeholders filled so that a value stays a value.
//!
//! A query comes from a template (often a platform team's ClusterAnalysisTemplate); its values from
//! arguments a Rollout, an annotation or a Secret supplies. Inserted raw, a value such as
//! `"} or vector(0) #` would rewrite the query. So each value is escaped for where it lands: inside a
//! double- or single-quoted string it is escaped as PromQL reads strings; inside a raw (backtick)
//! string, or outside any string, where nothing can be escaped, only a value that cannot change the
//! query's shape is placed (outside a string: a number, a duration or a name), anything else is
//! refused, naming the placeholder.

use std::collections::BTreeMap;

/// Why a query could not be filled in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubstituteError {
    /// A `{{...}}` placeholder with no value.
    #[error("the query uses {{{{{name}}}}} but no argument of that name was given")]
    Missing { name: String },
    /// A value that cannot be placed where its placeholder is without changing the query.
    #[error("the value of {{{{{name}}}}} cannot be placed {place} in the query: {why}")]
    Unsafe {
        name: String,
        place: &'static str,
        why: &'static str,
    },
}

/// Where a placeholder stands in the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Bare,
    Double,
    Single,
    Raw,
    Comment,
}

/// A value inside a double-quoted PromQL string (a label value), escaped.
pub fn escape_double_quoted(value: &str) -> String {
    escape(value, '"')
}

/// A value inside a single-quoted PromQL string, escaped.
pub fn escape_single_quoted(value: &str) -> String {
    escape(value, '\'')
}

fn escape(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A value that stands on its own outside a string: a number (`0.05`, `-1`, `1e-3`), a duration
/// (`5m`, `1h30m`) or a name (`http_requests_total`, a pod-template hash).
fn bare_safe(value: &str) -> bool {
    let body = value
        .strip_prefix('-')
        .or_else(|| value.strip_prefix('+'))
        .unwrap_or(value);
    let mut previous = None;
    !body.is_empty()
        && body.chars().all(|c| {
            let ok = c.is_ascii_alphanumeric()
                || matches!(c, '_' | ':' | '.')
                || (matches!(c, '-' | '+') && matches!(previous, Some('e' | 'E')));
            previous = Some(c);
            ok
        })
}

/// Replaces each `{{name}}` (spaces inside the braces allowed) with its value from `values`, whose
/// keys are written as in the query (`args.service`, `hash`, `window`), escaped for where it lands.
pub fn substitute(
    template: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, SubstituteError> {
    let mut out = String::with_capacity(template.len());
    let mut place = Place::Bare;
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '{' && template[at..].starts_with("{{") {
            let after = &template[at + 2..];
            if let Some(end) = after.find("}}") {
                let name = after[..end].trim();
                let value = values.get(name).ok_or_else(|| SubstituteError::Missing {
                    name: name.to_owned(),
                })?;
                out.push_str(&place_value(name, value, place)?);
                // Skip the placeholder's remaining characters.
                let resume = at + 2 + end + 2;
                while chars.peek().is_some_and(|(i, _)| *i < resume) {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
        place = match (place, c) {
            (Place::Bare, '"') => Place::Double,
            (Place::Bare, '\'') => Place::Single,
            (Place::Bare, '`') => Place::Raw,
            (Place::Bare, '#') => Place::Comment,
            (Place::Double | Place::Single, '\\') => {
                // The escaped character is the string's, whatever it is.
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
                place
            }
            (Place::Double, '"') | (Place::Single, '\'') | (Place::Raw, '`') => Place::Bare,
            (Place::Comment, '\n') => Place::Bare,
            (place, _) => place,
        };
    }
    Ok(out)
}

fn place_value(name: &str, value: &str, place: Place) -> Result<String, SubstituteError> {
    let unsafe_here = |place: &'static str, why: &'static str| SubstituteError::Unsafe {
        name: name.to_owned(),
        place,
        why,
    };
    match place {
        Place::Double => Ok(escape_double_quoted(value)),
        Place::Single => Ok(escape_single_quoted(value)),
        Place::Raw if value.contains('`') => Err(unsafe_here(
            "in a raw (backtick) string",
            "it contains a backtick, which such a string cannot escape (use a quoted string)",
        )),
        Place::Raw => Ok(value.to_owned()),
        Place::Comment if value.contains(['\n', '\r']) => Err(unsafe_here(
            "in a comment",
            "it contains a line break, which would end the comment",
        )),
        Place::Comment => Ok(value.to_owned()),
        Place::Bare if bare_safe(value) => Ok(value.to_owned()),
        Place::Bare => Err(unsafe_here(
            "outside a string",
            "only a number, a duration or a name can stand there (quote the placeholder where a \
             label value is meant, e.g. job=\"{{args.job}}\")",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_value_in_a_label_stays_a_label_value() {
        let injected = r#"x"}) + 5 - 10 #"#;
        let query = substitute(
            r#"0 * count(up{job="{{ args.job }}"}) + 5"#,
            &values(&[("args.job", injected)]),
        )
        .expect("placed");
        assert_eq!(query, r#"0 * count(up{job="x\"}) + 5 - 10 #"}) + 5"#);
        let query = substitute(
            r"up{job='{{args.job}}'}",
            &values(&[("args.job", r"it's \ here")]),
        )
        .expect("placed");
        assert_eq!(query, r"up{job='it\'s \\ here'}");
        // Escapes already in the template do not end the string early.
        let query = substitute(
            r#"up{job="a\"{{args.job}}"}"#,
            &values(&[("args.job", "\"")]),
        )
        .expect("placed");
        assert_eq!(query, r#"up{job="a\"\""}"#);
    }

    #[test]
    fn outside_a_string_only_numbers_durations_and_names_stand() {
        let query = substitute(
            "rate(http_requests_total[{{window}}]) > {{args.limit}} and {{args.metric}}",
            &values(&[
                ("window", "1h30m"),
                ("args.limit", "-1e-3"),
                ("args.metric", "job:errors:rate5m"),
            ]),
        )
        .expect("placed");
        assert_eq!(
            query,
            "rate(http_requests_total[1h30m]) > -1e-3 and job:errors:rate5m"
        );
        for hostile in [
            "5m]) or vector(1",
            "1 or vector(0)",
            "",
            "a-b",
            "x{y=\"1\"}",
        ] {
            let err = substitute(
                "up offset {{args.offset}}",
                &values(&[("args.offset", hostile)]),
            )
            .expect_err(hostile);
            assert!(
                matches!(&err, SubstituteError::Unsafe { name, place: "outside a string", .. } if name == "args.offset"),
                "{hostile:?}: {err}"
            );
        }
    }

    #[test]
    fn raw_strings_and_comments_refuse_what_would_end_them() {
        assert!(substitute("up{job=~`{{args.re}}`}", &values(&[("args.re", "a.*")])).is_ok());
        assert!(
            substitute(
                "up{job=~`{{args.re}}`}",
                &values(&[("args.re", "a`} or vector(1) #")])
            )
            .is_err()
        );
        assert!(substitute("up # {{args.note}}", &values(&[("args.note", "a b")])).is_ok());
        assert!(
            substitute(
                "up # {{args.note}}\n",
                &values(&[("args.note", "x\nor vector(1)")])
            )
            .is_err()
        );
    }

    #[test]
    fn a_missing_placeholder_is_named_and_unclosed_braces_stay() {
        assert_eq!(
            substitute("{{args.nope}}", &values(&[])),
            Err(SubstituteError::Missing {
                name: "args.nope".into()
            })
        );
        assert_eq!(
            substitute("no braces {", &values(&[])).as_deref(),
            Ok("no braces {")
        );
        assert_eq!(
            substitute("{{ open", &values(&[])).as_deref(),
            Ok("{{ open")
        );
    }
}
