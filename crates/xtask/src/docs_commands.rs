//! The documentation against the code and the tree.
//!
//! - Every `cargo xtask ...` command the README and `docs/*.md` show in a shell code block must be
//!   one xtask accepts: each is parsed with xtask's own command-line definition
//!   ([`sluice_testbed::docs`] finds them).
//! - Every relative link in the README, `docs/*.md` and the chart's README must lead somewhere: to
//!   a file or directory that exists and, for a link into a Markdown file with an anchor, to a
//!   heading of that file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use sluice_testbed::docs::{
    check_documented_commands, clap_words, first_command, markdown_files, parse_command,
};

use crate::Cli;

const PREFIX: &str = "cargo xtask ";
const BINARY: &str = "xtask";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in crates/NAME")
        .to_path_buf()
}

/// `file` as a path from the repository's root, for messages.
fn shown(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn parse(args: Vec<String>) -> Result<(), String> {
    Cli::try_parse_from(args)
        .map(|_| ())
        .map_err(|err| clap_words(&err))
}

#[test]
fn every_documented_cargo_xtask_command_parses() {
    check_documented_commands(&repository_root(), PREFIX, BINARY, parse);
}

#[test]
fn a_wrong_task_is_reported_with_clap_s_words() {
    let err = parse_command(
        "cargo xtask bench abort [--count 20]",
        PREFIX,
        BINARY,
        parse,
    )
    .expect_err("brackets are no flag");
    assert!(err.contains("unexpected argument"), "{err}");
    assert!(
        parse_command(
            "cargo xtask bench scale --rollouts 1000 --peer argo-rollouts",
            PREFIX,
            BINARY,
            parse
        )
        .is_ok()
    );
    assert_eq!(
        first_command("cargo xtask cluster status --bench   # shows it"),
        "cargo xtask cluster status --bench   "
    );
}

// Links.

/// A Markdown link in a file: where, and its target as written.
struct Link {
    line: usize,
    target: String,
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        let is_marker = marker.len() >= 3
            && marker
                .chars()
                .all(|c| c == marker.chars().next().unwrap_or('`'));
        match &fence {
            None if is_marker => fence = Some(marker),
            None => out.push((index + 1, raw)),
            Some(open)
                if is_marker
                    && marker.starts_with(open.as_str())
                    && trimmed[marker.len()..].trim().is_empty() =>
            {
                fence = None;
            }
            Some(_) => {}
        }
    }
    out
}

/// `line` without its code spans (`` `like this` ``), which hold no links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + ticks..];
        let closing = "`".repeat(ticks);
        match after.find(&closing) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                // An unclosed span is literal text.
                out.push_str(&rest[start..start + ticks]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every inline link and image (`[text](target)`, `![alt](target)`) outside code.
fn links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (line, raw) in prose_lines(text) {
        let prose = without_code_spans(raw);
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            // The target ends at the parenthesis that closes the one opened.
            let mut depth = 1;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inside = after[..end].trim();
            // `<target>`, or a target followed by a title.
            let target = match inside.strip_prefix('<') {
                Some(bracketed) => bracketed.split('>').next().unwrap_or_default(),
                None => inside.split_whitespace().next().unwrap_or_default(),
            };
            out.push(Link {
                line,
                target: target.to_owned(),
            });
            rest = &after[end.min(after.len())..];
        }
    }
    out
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    // A link in a heading reads as its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").map(|i| open + i) {
            Some(middle) => {
                let close = rest[middle..]
                    .find(')')
                    .map_or(rest.len(), |i| middle + i + 1);
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..middle]);
                rest = &rest[close..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().collect::<String>())
            } else if c == ' ' {
                Some("-".to_owned())
            } else {
                None
            }
        })
        .collect()
}

/// The anchors of a Markdown file's headings, as GitHub numbers repeated ones (`-1`, `-2`).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let heading = trimmed[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(heading);
        let count = seen.entry(base.clone()).or_insert(0);
        out.push(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// What is wrong with a link from `file`, if anything.
fn broken(file: &Path, target: &str) -> Option<String> {
    let lower = target.to_ascii_lowercase();
    if target.is_empty() {
        return Some("an empty target".to_owned());
    }
    if lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("mailto:")
        || target.starts_with('#')
    {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let resolved = file.parent().unwrap_or(Path::new(".")).join(path);
    if !resolved.exists() {
        return Some(format!(
            "{path} does not exist (relative to the linking file)"
        ));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if resolved.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let text = std::fs::read_to_string(&resolved).ok()?;
    let known = anchors(&text);
    if known.iter().any(|a| a == anchor) {
        None
    } else {
        Some(format!("{path} has no heading with the anchor #{anchor}"))
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repository_root();
    let mut files = markdown_files(&root);
    files.push(root.join("charts/sluice/README.md"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
        for link in links(&text) {
            checked += 1;
            if let Some(why) = broken(file, &link.target) {
                failures.push(format!(
                    "{}:{}: ({}): {why}",
                    shown(&root, file),
                    link.line,
                    link.target
                ));
            }
        }
    }
    assert!(checked > 0, "no link found in {} files", files.len());
    assert!(
        failures.is_empty(),
        "{} broken link(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn links_and_anchors_are_read_as_github_does() {
    let text = "See [the API](api.md#the-resources) and ![shot](img.png \"title\").\n`[not](a-link)`\n```sh\n[x](y)\n```\n";
    let found: Vec<(usize, String)> = links(text)
        .into_iter()
        .map(|l| (l.line, l.target))
        .collect();
    assert_eq!(
        found,
        vec![
            (1, "api.md#the-resources".to_owned()),
            (1, "img.png".to_owned())
        ]
    );
    assert_eq!(
        slug("Beside Argo Rollouts, and taking over a running `Argo Rollout`"),
        "beside-argo-rollouts-and-taking-over-a-running-argo-rollout"
    );
    assert_eq!(slug("`kubectl sluice`"), "kubectl-sluice");
    assert_eq!(slug("Flux and kstatus"), "flux-and-kstatus");
    assert_eq!(
        anchors("# A\n## B\n## B\n```\n# C\n```\n"),
        vec!["a", "b", "b-1"]
    );
}
