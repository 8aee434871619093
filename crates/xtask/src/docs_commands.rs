//! The documentation against the code and the tree.
//!
//! - Every `cargo xtask ...` command the README and `docs/*.md` show in a shell code block must be
//!   one xtask accepts: each is parsed with xtask's own command-line definition.
//! - Every relative link in the README, `docs/*.md` and the chart's README must lead somewhere: to
//!   a file or directory that exists and, for a link into a Markdown file with an anchor, to a
//!   heading of that file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser as _;

use crate::Cli;

/// The words a documented command starts with, and what the binary is called instead.
const PREFIX: &str = "cargo xtask ";
const BINARY: &str = "xtask";

/// Fewer than this many commands found means the extraction broke, not that the docs are fine.
const AT_LEAST: usize = 10;

/// A command found in the docs: where it is and its text (continuation lines joined).
struct Found {
    file: PathBuf,
    line: usize,
    text: String,
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in crates/NAME")
        .to_path_buf()
}

/// README.md and every `docs/*.md`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("reading docs/")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn shown(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The info string of a fence that opens a shell block.
fn is_shell_fence(info: &str) -> bool {
    let tag = info.split_whitespace().next().unwrap_or_default();
    matches!(tag, "sh" | "bash" | "shell" | "console")
}

/// The lines of shell code blocks in `text` (1-based line numbers), with lines ending in `\`
/// joined to the next, and a console prompt (`$ `) taken off.
fn shell_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<(String, bool)> = None;
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        let opens_or_closes = marker.len() >= 3
            && marker
                .chars()
                .all(|c| c == marker.chars().next().unwrap_or('`'));
        match &fence {
            None if opens_or_closes => {
                let info = trimmed[marker.len()..].trim();
                fence = Some((marker, is_shell_fence(info)));
                continue;
            }
            None => continue,
            Some((open, _))
                if opens_or_closes
                    && marker.starts_with(open.as_str())
                    && trimmed[marker.len()..].trim().is_empty() =>
            {
                if let Some(done) = pending.take() {
                    out.push(done);
                }
                fence = None;
                continue;
            }
            Some((_, false)) => continue,
            Some((_, true)) => {}
        }
        let line = raw.trim();
        let (start, joined) = match pending.take() {
            Some((start, so_far)) => (start, format!("{so_far} {line}")),
            None => (number, line.strip_prefix("$ ").unwrap_or(line).to_owned()),
        };
        match joined.strip_suffix('\\') {
            Some(continued) => pending = Some((start, continued.trim_end().to_owned())),
            None => out.push((start, joined)),
        }
    }
    if let Some(done) = pending {
        out.push(done);
    }
    out
}

/// The part of a shell line that is one command: up to the first unquoted `|`, `&`, `;`, `<`, `>`
/// or `#` that starts a comment. A redirection's file descriptor (`2>`) goes with it.
fn first_command(line: &str) -> String {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut previous: Option<char> = None;
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
            previous = Some(c);
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => escaped = true,
            Some(_) => {}
            None => match c {
                '\\' => escaped = true,
                '\'' | '"' => quote = Some(c),
                '#' if previous.is_none_or(char::is_whitespace) => return line[..at].to_owned(),
                '|' | '&' | ';' | '<' | '>' => {
                    let head = &line[..at];
                    // `2>`: the descriptor belongs to the redirection.
                    let word_start = head.rfind(char::is_whitespace).map_or(0, |i| i + 1);
                    let word = &head[word_start..];
                    if matches!(c, '<' | '>')
                        && !word.is_empty()
                        && word.chars().all(|d| d.is_ascii_digit())
                    {
                        return head[..word_start].to_owned();
                    }
                    return head.to_owned();
                }
                _ => {}
            },
        }
        previous = Some(c);
    }
    line.to_owned()
}

/// Every documented command that starts with [`PREFIX`] (after any `NAME=value` assignments).
fn documented_commands(root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
        for (line, shell) in shell_lines(&text) {
            let command = first_command(&shell);
            let command = command.trim();
            let mut rest = command;
            // Environment assignments before the command: `KUBECONFIG=x kubectl sluice ...`.
            while let Some((word, after)) = rest.split_once(' ') {
                let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if !is_assignment {
                    break;
                }
                rest = after.trim_start();
            }
            if rest.starts_with(PREFIX) {
                found.push(Found {
                    file: file.clone(),
                    line,
                    text: rest.to_owned(),
                });
            }
        }
    }
    found
}

/// Parses one documented command; `Err` says what is wrong with it.
fn check(command: &str) -> Result<(), String> {
    let words = shlex::split(command).ok_or("the line is not valid shell (an unclosed quote?)")?;
    let args = std::iter::once(BINARY.to_owned()).chain(words.into_iter().skip(2));
    Cli::try_parse_from(args).map(|_| ()).map_err(|err| {
        // clap's own words, without the usage and help lines that follow them.
        err.to_string()
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[test]
fn every_documented_cargo_xtask_command_parses() {
    let root = repository_root();
    let commands = documented_commands(&root);
    assert!(
        commands.len() >= AT_LEAST,
        "found only {} `{PREFIX}...` commands in README.md and docs/*.md; at least {AT_LEAST} expected",
        commands.len()
    );
    let failures: Vec<String> = commands
        .iter()
        .filter_map(|found| {
            check(&found.text).err().map(|why| {
                format!(
                    "{}:{}: `{}`: {why}",
                    shown(&root, &found.file),
                    found.line,
                    found.text
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} documented commands are not accepted by xtask:\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_task_is_reported_with_clap_s_words() {
    let err = check("cargo xtask bench abort [--count 20]").expect_err("brackets are no flag");
    assert!(err.contains("unexpected argument"), "{err}");
    assert!(check("cargo xtask bench scale --rollouts 1000 --peer argo-rollouts").is_ok());
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
