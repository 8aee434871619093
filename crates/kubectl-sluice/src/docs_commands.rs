//! Every `kubectl sluice ...` command the README and `docs/*.md` show in a shell code block must be
//! one this plugin accepts: each is parsed with the plugin's own command-line definition
//! ([`sluice_testbed::docs`] finds them), so a renamed command or flag fails here rather than in a
//! reader's terminal.

use std::path::{Path, PathBuf};

use clap::Parser as _;
use sluice_testbed::docs::{check_documented_commands, clap_words, parse_command};

use crate::Cli;

const PREFIX: &str = "kubectl sluice ";
const BINARY: &str = "kubectl-sluice";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in crates/NAME")
        .to_path_buf()
}

fn parse(args: Vec<String>) -> Result<(), String> {
    Cli::try_parse_from(args)
        .map(|_| ())
        .map_err(|err| clap_words(&err))
}

#[test]
fn every_documented_kubectl_sluice_command_parses() {
    check_documented_commands(&repository_root(), PREFIX, BINARY, parse);
}

#[test]
fn a_wrong_command_is_reported_with_clap_s_words() {
    let err = parse_command(
        "kubectl sluice pause web / resume web",
        PREFIX,
        BINARY,
        parse,
    )
    .expect_err("extra arguments");
    assert!(err.contains("unexpected argument"), "{err}");
    assert!(
        parse_command(
            "kubectl sluice report NAME --number 7",
            PREFIX,
            BINARY,
            parse
        )
        .is_ok()
    );
}
