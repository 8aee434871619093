//! `kubectl sluice history` and `kubectl sluice report`: a Rollout's release records, as a table,
//! and the timeline of one release, readable in an incident review (text, Markdown or JSON).

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::ListParams;
use sluice_api::names::ROLLOUT_LABEL;
use sluice_api::release::{Release, ReleaseProgress};
use sluice_api::rollout::{CanaryStep, Rollout};

/// How `report` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// The Rollout's release records, oldest first.
pub async fn records(releases: &Api<Release>, rollout: &str) -> Result<Vec<Release>> {
    let mut records = releases
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={rollout}")))
        .await
        .context("listing the release records")?
        .items;
    records.retain(|r| r.spec.rollout == rollout);
    records.sort_by_key(|r| r.spec.release.number);
    Ok(records)
}

/// `history`: one line per release.
pub fn table(records: &[Release]) -> String {
    let mut rows = vec![[
        "NUMBER".to_owned(),
        "REVISION".to_owned(),
        "OUTCOME".to_owned(),
        "STARTED".to_owned(),
        "DURATION".to_owned(),
        "IMAGES".to_owned(),
        "REASON".to_owned(),
    ]];
    for record in records {
        let r = &record.spec.release;
        rows.push([
            r.number.to_string(),
            r.revision.clone(),
            outcome(r),
            r.started_at.0.to_string(),
            r.ended_at
                .as_ref()
                .map_or_else(|| "in flight".to_owned(), |end| span(&r.started_at, end)),
            r.images.join(","),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The record a `report` is about: `number`, else the newest of `revision`, else the newest.
pub fn pick(records: &[Release], number: Option<i64>, revision: Option<&str>) -> Result<Release> {
    let found = records.iter().rev().find(|r| {
        number.is_none_or(|n| r.spec.release.number == n)
            && revision.is_none_or(|rev| r.spec.release.revision == rev)
    });
    match found {
        Some(record) => Ok(record.clone()),
        None if records.is_empty() => bail!("the Rollout has no release records yet"),
        None => bail!(
            "no release record matches (kept: {})",
            records
                .iter()
                .map(|r| format!("{} ({})", r.spec.release.number, r.spec.release.revision))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `report`: the timeline of one release.
pub fn report(record: &Release, rollout: Option<&Rollout>, format: Format) -> Result<String> {
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(&record.spec)? + "\n");
    }
    let md = format == Format::Markdown;
    let r = &record.spec.release;
    // The steps the release ran: the Rollout's, or those of the plan it started with.
    let steps: Vec<CanaryStep> = rollout
        .and_then(|ro| ro.spec.strategy.canary.as_ref())
        .map_or_else(Vec::new, |c| match &r.plan {
            Some(plan) => sluice_engine::adaptive::adapt(c, plan.profile).steps,
            None => c.steps.clone(),
        });
    let mut out = String::new();
    let heading = |out: &mut String, text: &str| {
        if md {
            let _ = writeln!(out, "\n## {text}\n");
        } else {
            let _ = writeln!(out, "\n{text}");
        }
    };
    if md {
        let _ = writeln!(
            out,
            "# Release {} of Rollout {}",
            r.number, record.spec.rollout
        );
    } else {
        let _ = writeln!(
            out,
            "Release {} of Rollout {}",
            r.number, record.spec.rollout
        );
    }
    let item = if md { "- " } else { "  " };
    let _ = writeln!(
        out,
        "{item}Revision: {} ({})",
        r.revision,
        r.images.join(", ")
    );
    let _ = writeln!(out, "{item}Started: {}", r.started_at.0);
    if let Some(plan) = &r.plan {
        let _ = writeln!(out, "{item}Plan: {:?}: {}", plan.profile, plan.reason);
    }
    match &r.ended_at {
        Some(end) => {
            let _ = writeln!(out, "{item}Ended: {} ({})", end.0, span(&r.started_at, end));
        }
        None => {
            let _ = writeln!(out, "{item}Ended: not yet (in flight)");
        }
    }
    let _ = writeln!(
        out,
        "{item}Outcome: {}{}",
        outcome(r),
        r.reason
            .as_deref()
            .map(|why| format!(": {why}"))
            .unwrap_or_default()
    );
    if let (Some(restored), Some(end)) = (&r.restored_at, &r.ended_at) {
        let _ = writeln!(
            out,
            "{item}Stable serving everything again: {} ({} after the abort)",
            restored.0,
            span(end, restored)
        );
    }

    if !r.steps.is_empty() {
        heading(&mut out, "Steps");
        let rows: Vec<[String; 5]> = r
            .steps
            .iter()
            .map(|s| {
                let what = usize::try_from(s.index)
                    .ok()
                    .and_then(|i| steps.get(i))
                    .map_or_else(
                        || "?".to_owned(),
                        |step| {
                            let (kind, what) = step_parts(step);
                            format!("{kind} {what}")
                        },
                    );
                [
                    (s.index + 1).to_string(),
                    what,
                    s.started_at.0.to_string(),
                    s.ended_at
                        .as_ref()
                        .map_or_else(|| "(current)".to_owned(), |end| span(&s.started_at, end)),
                    format!("{}%", s.weight),
                ]
            })
            .collect();
        grid(
            &mut out,
            md,
            ["#", "step", "reached", "time there", "weight reached"],
            &rows,
        );
    }
    for score in &r.confidence {
        heading(&mut out, &score_heading(score, !r.steps.is_empty()));
        let rows: Vec<[String; 4]> = score
            .factors
            .iter()
            .map(|f| {
                [
                    f.name.clone(),
                    f.value.to_string(),
                    f.weight.to_string(),
                    f.note.clone(),
                ]
            })
            .collect();
        grid(&mut out, md, ["factor", "value", "weight", "why"], &rows);
    }
    if !record.spec.analysis.is_empty() {
        heading(&mut out, "Analysis");
        for run in &record.spec.analysis {
            let _ = writeln!(
                out,
                "{item}{} {}{}",
                run.name,
                run.phase,
                run.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            for metric in &run.metrics {
                let _ = writeln!(
                    out,
                    "{}metric {} {}: last value {} ({} measurements, {} failed, {} inconclusive, {} errors){}",
                    if md { "  - " } else { "    " },
                    metric.name,
                    metric.phase,
                    metric.value.as_deref().unwrap_or("none"),
                    metric.measurements,
                    metric.failed,
                    metric.inconclusive,
                    metric.errors,
                    metric
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    if !r.timeline.is_empty() {
        heading(&mut out, "Timeline");
        let mut rows: Vec<[String; 4]> = Vec::new();
        for (i, entry) in r.timeline.iter().enumerate() {
            if i == sluice_api::release::TIMELINE_HEAD && r.timeline_dropped > 0 {
                rows.push([
                    String::new(),
                    "…".to_owned(),
                    format!("{} entries left out", r.timeline_dropped),
                    String::new(),
                ]);
            }
            rows.push([
                entry.at.0.to_string(),
                entry.reason.clone(),
                entry.message.clone(),
                entry.by.clone().unwrap_or_default(),
            ]);
        }
        grid(&mut out, md, ["at", "what", "detail", "by"], &rows);
    }
    Ok(out)
}

/// How a release ended (or that it has not), with what aborted it.
fn outcome(r: &ReleaseProgress) -> String {
    match (r.outcome, r.aborted_by) {
        (None, _) => "InFlight".to_owned(),
        (Some(o), Some(cause)) => format!("{o:?} ({cause:?})"),
        (Some(o), None) => format!("{o:?}"),
    }
}

/// A step as the Rollout's spec writes it: its kind and what it sets, e.g. `("setWeight", "20")`,
/// `("pause", "30s")`, `("analysis", "error-rate, latency")`.
pub fn step_parts(step: &CanaryStep) -> (&'static str, String) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    if let Some(weight) = step.set_weight {
        return ("setWeight", weight.to_string());
    }
    if let Some(pause) = &step.pause {
        return match &pause.duration {
            Some(IntOrString::Int(n)) => ("pause", format!("{n}s")),
            Some(IntOrString::String(s)) => ("pause", s.clone()),
            None => ("pause", "until promoted".to_owned()),
        };
    }
    if let Some(analysis) = &step.analysis {
        let names: Vec<&str> = analysis
            .templates
            .iter()
            .map(|t| t.template_name.as_str())
            .collect();
        return ("analysis", names.join(", "));
    }
    if let Some(scale) = &step.set_canary_scale {
        let what = match (scale.weight, scale.replicas) {
            (Some(weight), _) => format!("weight {weight}%"),
            (None, Some(replicas)) => format!("{replicas} replicas"),
            (None, None) => "matchTrafficWeight".to_owned(),
        };
        return ("setCanaryScale", what);
    }
    if let Some(route) = &step.set_header_route {
        return ("setHeaderRoute", route.name.clone());
    }
    if let Some(route) = &step.set_mirror_route {
        return ("setMirrorRoute", route.name.clone());
    }
    if let Some(confidence) = &step.confidence {
        return (
            "confidence",
            format!(
                "go on at {}, abort below {}",
                confidence.promote_at, confidence.abort_below
            ),
        );
    }
    ("?", String::new())
}

/// A duration between two times, e.g. `1m20s`.
fn span(from: &Time, to: &Time) -> String {
    let seconds = to.0.duration_since(from.0).as_secs().max(0);
    match seconds {
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// A table: aligned columns in text, a Markdown table otherwise.
fn grid<const N: usize>(out: &mut String, md: bool, header: [&str; N], rows: &[[String; N]]) {
    if md {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(N));
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        return;
    }
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push(' ');
                text.push_str(cell);
            } else {
                let _ = write!(text, " {cell:<width$}", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A confidence score's heading: at its canary step, or (a release without steps: blue-green's
/// `prePromotionConfidence`) before promotion.
fn score_heading(score: &sluice_api::rollout::ConfidenceScore, stepped: bool) -> String {
    let when = if stepped {
        format!("at step {}", score.step + 1)
    } else {
        "before promotion".to_owned()
    };
    format!(
        "Confidence {when}: {}/100, {:?}",
        score.score, score.decision
    )
}

#[cfg(test)]
mod score_tests {
    use super::*;

    #[test]
    fn a_blue_green_score_is_headed_before_promotion_and_a_canary_one_at_its_step() {
        let score: sluice_api::rollout::ConfidenceScore =
            serde_json::from_value(serde_json::json!({
                "step": 2, "revision": "abc", "score": 70, "decision": "Review",
                "factors": [], "scoredAt": "2026-12-02T10:00:00Z"
            }))
            .expect("score");
        assert_eq!(
            score_heading(&score, true),
            "Confidence at step 3: 70/100, Review"
        );
        assert_eq!(
            score_heading(&score, false),
            "Confidence before promotion: 70/100, Review"
        );
    }
}
