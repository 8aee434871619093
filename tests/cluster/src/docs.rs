//! The commands the README and `docs/*.md` show, for tests that parse each with the command-line
//! definition of the program it runs (`kubectl sluice ...` in the plugin, `cargo xtask ...` in
//! xtask), so a renamed command or flag fails a test rather than a reader's terminal.

use std::path::{Path, PathBuf};

/// Fewer than this many commands found means the extraction broke, not that the docs are fine.
const AT_LEAST: usize = 10;

/// A command found in the docs: where it is and its text (continuation lines joined).
pub struct Found {
    pub file: PathBuf,
    pub line: usize,
    pub text: String,
}

/// README.md and every `docs/*.md`.
pub fn markdown_files(root: &Path) -> Vec<PathBuf> {
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

/// The info string of a fence that opens a shell block.
fn is_shell_fence(info: &str) -> bool {
    let tag = info.split_whitespace().next().unwrap_or_default();
    matches!(tag, "sh" | "bash" | "shell" | "console")
}

/// The lines of shell code blocks in `text` (1-based line numbers), with lines ending in `\`
/// joined to the next, and a console prompt (`$ `) taken off.
pub fn shell_lines(text: &str) -> Vec<(usize, String)> {
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
pub fn first_command(line: &str) -> String {
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

/// Every documented command that starts with `prefix` (after any `NAME=value` assignments).
pub fn documented_commands(root: &Path, prefix: &str) -> Vec<Found> {
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
            if rest.starts_with(prefix) {
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

/// Checks every documented command that starts with `prefix` with `parse`, which gets the words
/// after the prefix with `binary` in front and says what is wrong; panics listing every failure
/// (file:line, the command, the reason), or when fewer than ten commands were found.
pub fn check_documented_commands(
    root: &Path,
    prefix: &str,
    binary: &str,
    parse: impl Fn(Vec<String>) -> Result<(), String>,
) {
    let commands = documented_commands(root, prefix);
    assert!(
        commands.len() >= AT_LEAST,
        "found only {} `{prefix}...` commands in README.md and docs/*.md; at least {AT_LEAST} expected",
        commands.len()
    );
    let failures: Vec<String> = commands
        .iter()
        .filter_map(|found| {
            parse_command(&found.text, prefix, binary, &parse)
                .err()
                .map(|why| {
                    format!(
                        "{}:{}: `{}`: {why}",
                        found
                            .file
                            .strip_prefix(root)
                            .unwrap_or(&found.file)
                            .display(),
                        found.line,
                        found.text
                    )
                })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} documented commands are not accepted by {binary}:\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n")
    );
}

/// Splits one documented command as a shell would and parses it with `parse`.
pub fn parse_command(
    command: &str,
    prefix: &str,
    binary: &str,
    parse: impl Fn(Vec<String>) -> Result<(), String>,
) -> Result<(), String> {
    let words = shlex::split(command).ok_or("the line is not valid shell (an unclosed quote?)")?;
    let skip = prefix.split_whitespace().count();
    parse(
        std::iter::once(binary.to_owned())
            .chain(words.into_iter().skip(skip))
            .collect(),
    )
}

/// clap's own words for an error, without the usage and help lines that follow them.
pub fn clap_words(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_are_cut_at_comments_pipes_and_redirections() {
        assert_eq!(
            first_command("kubectl sluice abort web   # all traffic back"),
            "kubectl sluice abort web   "
        );
        assert_eq!(
            first_command("kubectl sluice report web -o markdown > incident.md"),
            "kubectl sluice report web -o markdown "
        );
        assert_eq!(
            first_command("kubectl sluice migrate -f - 2> dropped.txt"),
            "kubectl sluice migrate -f - "
        );
        assert_eq!(
            first_command("kubectl sluice history web | head && echo done"),
            "kubectl sluice history web "
        );
        assert_eq!(
            first_command(r#"kubectl sluice breaker reset web --reason "a # b; c""#),
            r#"kubectl sluice breaker reset web --reason "a # b; c""#
        );
        let block = "```console\n$ kubectl sluice get rollout web \\\n    --watch\n```\n```yaml\nkubectl sluice abort web\n```\n";
        assert_eq!(
            shell_lines(block),
            vec![(2, "kubectl sluice get rollout web --watch".to_owned())]
        );
    }
}
