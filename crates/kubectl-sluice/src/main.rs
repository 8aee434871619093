//! `kubectl sluice`: act on and watch Sluice Rollouts.
//!
//! Requests (promote, abort, retry, pause, resume, restart) are written to the `sluice.dev/action` annotation,
//! which the controller acts on and removes, so they never fight a GitOps tool over the spec.
//! `undo` is the exception: it puts an earlier template back into the spec, as a new revision.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::names::{
    ACTION_ANNOTATION, PLAN_ANNOTATION, REQUEST_REASON_ANNOTATION, REQUESTED_BY_ANNOTATION,
    ROLLOUT_LABEL, RolloutAction, TEMPLATE_ANNOTATION,
};
use sluice_api::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};

mod dashboard;
#[cfg(test)]
mod docs_commands;
mod history;
mod migrate;
mod takeover;

/// Label on the ReplicaSets a Rollout owns (set by the controller).
/// The field manager of the plugin's writes.
const FIELD_MANAGER: &str = "kubectl-sluice";

#[derive(Parser)]
#[command(
    name = "kubectl sluice",
    about = "Act on and watch Sluice Rollouts",
    version
)]
struct Cli {
    /// Namespace of the Rollout (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete the current step (a pause, an analysis) and go on; with --full, skip all remaining steps.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Send all traffic back to stable and stop the release.
    Abort { name: String },
    /// Start an aborted release again from its first step.
    Retry {
        /// Only `rollout` is supported, as in `kubectl sluice retry rollout NAME`.
        kind: String,
        name: String,
    },
    /// Pause the release where it stands.
    Pause { name: String },
    /// Resume a paused release.
    Resume { name: String },
    /// Replace every pod of the Rollout, a few at a time (within maxUnavailable, at least one).
    Restart { name: String },
    /// Roll back to the previous revision (or --to-revision N, counting back from the newest).
    Undo {
        name: String,
        #[arg(long, default_value_t = 1)]
        to_revision: usize,
    },
    /// Wait until the release is Healthy (exit 0), Degraded (exit 1) or the timeout passes (exit 2).
    Status {
        name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Convert Argo Rollouts manifests to Sluice's (files, directories of .yaml/.yml/.json, or -
    /// for stdin) and print them; every field that could not be carried is named on stderr, and
    /// the exit code is then 1. Works offline.
    ///
    /// With --takeover NAME instead: moves the running, Healthy Argo Rollout NAME to Sluice with its
    /// pods (none is replaced): creates the converted Rollout marked `sluice.dev/takeover-from`,
    /// waits for the controller to label the stable ReplicaSet and its pods, deletes the Argo
    /// Rollout with its ReplicaSets orphaned, and waits for the Rollout to adopt them.
    Migrate {
        /// Files or directories to read; `-` reads stdin.
        #[arg(
            short = 'f',
            long = "filename",
            required_unless_present = "takeover",
            conflicts_with = "takeover"
        )]
        files: Vec<std::path::PathBuf>,
        /// The Argo Rollout to take over, in the namespace of --namespace.
        #[arg(long, value_name = "NAME")]
        takeover: Option<String>,
    },
    /// The circuit breaker: `status NAME`, or `reset NAME --reason "..."` (recorded with who asked).
    Breaker {
        #[command(subcommand)]
        command: BreakerCommand,
    },
    /// Pin the step plan of a Rollout's next releases (`pin NAME cautious|standard|fast`), or let
    /// its recent releases choose again (`unpin NAME`); needs `strategy.canary.adaptive`.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// List a Rollout's releases (its Release records), oldest first.
    History { name: String },
    /// The timeline of one release (the newest, or --number N, or the newest of --revision R): its
    /// steps with the time at each and the weight reached, analysis verdicts with the measurements
    /// that decided them, people's actions and how it ended.
    Report {
        name: String,
        /// The release's number (see `history`).
        #[arg(long)]
        number: Option<i64>,
        /// The newest release of this revision (pod-template hash).
        #[arg(long)]
        revision: Option<String>,
        /// text, markdown or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: history::Format,
    },
    /// Serve a live web page of every Rollout (phase, step, weights, pods per version), its release
    /// timeline, analysis measurements against their thresholds, gates, breaker and history.
    /// Read-only unless --allow-actions.
    Dashboard {
        /// Where to listen; a loopback address answers only to localhost.
        #[arg(long, default_value = "127.0.0.1:3100")]
        address: std::net::SocketAddr,
        /// Every namespace (default: the one of --namespace or the kubeconfig context).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Offer promote, abort, retry, pause, resume and restart on the page; each writes the
        /// same request annotation as the commands, with this command's credentials.
        #[arg(long)]
        allow_actions: bool,
        /// A host name the page may also be reached by (an Ingress's); localhost and the address
        /// listened on always may. Repeatable.
        #[arg(long = "allowed-host")]
        allowed_hosts: Vec<String>,
    },
    /// Show a Rollout's steps, ReplicaSets and pods; --watch redraws every second.
    Get {
        /// Only `rollout` is supported.
        kind: String,
        name: String,
        #[arg(short, long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Pin a plan for the next releases.
    Pin {
        name: String,
        /// cautious, standard or fast.
        profile: String,
    },
    /// Let the Rollout's recent releases choose the plan again.
    Unpin { name: String },
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// Show the breaker's state, the failures that count and when it turns half-open.
    Status { name: String },
    /// Close the breaker now; the reason is recorded in status, the release record and an Event.
    Reset {
        name: String,
        #[arg(long)]
        reason: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::Migrate {
        files,
        takeover: None,
    } = &cli.command
    {
        return migrate_files(files);
    }
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (check KUBECONFIG)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Promote { name, full } => {
            let action = if full {
                RolloutAction::PromoteFull
            } else {
                RolloutAction::Promote
            };
            request(&rollouts, &name, action).await
        }
        Command::Abort { name } => request(&rollouts, &name, RolloutAction::Abort).await,
        Command::Plan { command } => {
            let (name, value) = match command {
                PlanCommand::Pin { name, profile } => {
                    if sluice_engine::adaptive::parse_profile(&profile).is_none() {
                        bail!("unknown plan {profile:?}: cautious, standard or fast");
                    }
                    (name, Some(profile.to_ascii_lowercase()))
                }
                PlanCommand::Unpin { name } => (name, None),
            };
            let patch = json!({"metadata": {"annotations": {PLAN_ANNOTATION: value}}});
            rollouts
                .patch(
                    &name,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
                .with_context(|| format!("Rollout {name:?}"))?;
            match value {
                Some(profile) => {
                    println!("rollout.sluice.dev/{name}: next releases run the {profile} plan")
                }
                None => println!(
                    "rollout.sluice.dev/{name}: next releases' plan chosen from recent releases"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Breaker { command } => match command {
            BreakerCommand::Status { name } => breaker_status(&rollouts, &name).await,
            BreakerCommand::Reset { name, reason } => {
                if reason.trim().is_empty() {
                    bail!("--reason must say why the breaker is reset");
                }
                request_with_reason(&rollouts, &name, RolloutAction::ResetBreaker, Some(&reason))
                    .await
            }
        },
        Command::Retry { kind, name } => {
            check_kind(&kind)?;
            request(&rollouts, &name, RolloutAction::Retry).await
        }
        Command::Pause { name } => request(&rollouts, &name, RolloutAction::Pause).await,
        Command::Resume { name } => request(&rollouts, &name, RolloutAction::Resume).await,
        Command::Restart { name } => request(&rollouts, &name, RolloutAction::Restart).await,
        Command::Undo { name, to_revision } => {
            undo(&client, &rollouts, &namespace, &name, to_revision).await
        }
        Command::Status { name, timeout } => {
            status(&rollouts, &name, Duration::from_secs(timeout)).await
        }
        Command::Dashboard {
            address,
            all_namespaces,
            allow_actions,
            allowed_hosts,
        } => {
            let options = dashboard::Options {
                address,
                namespace: (!all_namespaces).then_some(namespace),
                allow_actions,
                allowed_hosts,
            };
            dashboard::run(client, options).await
        }
        Command::Get { kind, name, watch } => {
            check_kind(&kind)?;
            get(&client, &rollouts, &namespace, &name, watch).await
        }
        Command::Migrate {
            takeover: Some(name),
            ..
        } => takeover::run(client, &namespace, &name).await,
        Command::Migrate { files, .. } => migrate_files(&files),
        Command::History { name } => {
            let releases = Api::namespaced(client.clone(), &namespace);
            print!(
                "{}",
                history::table(&history::records(&releases, &name).await?)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            name,
            number,
            revision,
            output,
        } => {
            let releases = Api::namespaced(client.clone(), &namespace);
            let records = history::records(&releases, &name).await?;
            let record = history::pick(&records, number, revision.as_deref())?;
            let rollout = rollouts.get_opt(&name).await?;
            print!("{}", history::report(&record, rollout.as_ref(), output)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `migrate`: reads every manifest named, converts it, prints the result.
fn migrate_files(paths: &[std::path::PathBuf]) -> Result<ExitCode> {
    use std::io::Read as _;
    let mut text = String::new();
    for path in paths {
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            text.push_str("\n---\n");
            continue;
        }
        let mut files = if path.is_dir() {
            std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect()
        } else {
            vec![path.clone()]
        };
        files.sort();
        for file in files {
            text.push_str(
                &std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            text.push_str("\n---\n");
        }
    }
    let (yaml, dropped) = migrate::convert_yaml(&text)?;
    print!("{yaml}");
    for d in &dropped {
        if d.path.is_empty() {
            eprintln!("{}: not carried: {}", d.document, d.why);
        } else {
            eprintln!("{}: {}: not carried: {}", d.document, d.path, d.why);
        }
    }
    Ok(if dropped.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} field(s) could not be carried over", dropped.len());
        ExitCode::from(1)
    })
}

fn check_kind(kind: &str) -> Result<()> {
    match kind {
        "rollout" | "rollouts" | "ro" => Ok(()),
        other => bail!("unknown kind {other:?}: use `rollout`"),
    }
}

/// How long a request waits for the controller to take the one before it, and then its own.
const REQUEST_WAIT: Duration = Duration::from_secs(15);

/// The request waiting on the Rollout, if any.
async fn pending(rollouts: &Api<Rollout>, name: &str) -> Result<Option<String>> {
    Ok(rollouts
        .get(name)
        .await
        .with_context(|| format!("Rollout {name:?}"))?
        .annotations()
        .get(ACTION_ANNOTATION)
        .cloned())
}

/// Writes a request to the Rollout's annotation and waits until the controller takes it. The
/// annotation holds one request at a time, so a request first waits for the one before it: two
/// quick commands (resume, then promote) must not overwrite each other.
async fn request(rollouts: &Api<Rollout>, name: &str, action: RolloutAction) -> Result<ExitCode> {
    request_with_reason(rollouts, name, action, None).await
}

/// `breaker status`: the breaker as the Rollout's status records it.
async fn breaker_status(rollouts: &Api<Rollout>, name: &str) -> Result<ExitCode> {
    let rollout = rollouts
        .get(name)
        .await
        .with_context(|| format!("Rollout {name:?}"))?;
    if rollout.spec.circuit_breaker.is_none() {
        println!("Rollout {name} has no circuit breaker (spec.circuitBreaker)");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(breaker) = rollout.status.and_then(|s| s.circuit_breaker) else {
        println!("Rollout {name}: circuit breaker not evaluated yet");
        return Ok(ExitCode::SUCCESS);
    };
    println!("Rollout {name}: circuit breaker {:?}", breaker.state);
    if let Some(at) = &breaker.opened_at {
        println!("  opened at:     {}", at.0);
    }
    if let Some(at) = &breaker.half_open_at {
        println!("  half-open at:  {}", at.0);
    }
    if let Some(trial) = &breaker.trial {
        println!("  let through:   {trial}");
    }
    if !breaker.failures.is_empty() {
        println!("  failures that count:");
        for failure in &breaker.failures {
            println!("    {failure}");
        }
    }
    if let Some(reset) = &breaker.last_reset {
        println!(
            "  last reset:    {}{}: {}",
            reset.at.0,
            reset
                .by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default(),
            reset.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn request_with_reason(
    rollouts: &Api<Rollout>,
    name: &str,
    action: RolloutAction,
    reason: Option<&str>,
) -> Result<ExitCode> {
    let request = action;
    let action = action.as_str();
    let started = Instant::now();
    while let Some(previous) = pending(rollouts, name).await? {
        if started.elapsed() > REQUEST_WAIT {
            bail!(
                "the earlier request {previous:?} on Rollout {name:?} has not been taken in {}s: is sluice-controller running?",
                REQUEST_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Who asks, as the API server knows them: recorded with what the request did.
    let by = requester(rollouts.clone().into_client()).await;
    write_request(rollouts, name, request, by.as_deref(), reason).await?;
    let sent = Instant::now();
    while pending(rollouts, name).await?.as_deref() == Some(action) {
        if sent.elapsed() > REQUEST_WAIT {
            println!(
                "rollout.sluice.dev/{name}: {action} requested; the controller has not taken it yet (is sluice-controller running?)"
            );
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("rollout.sluice.dev/{name}: {action} requested");
    Ok(ExitCode::SUCCESS)
}

/// Writes a request to the Rollout's annotation, with who asks and why.
pub(crate) async fn write_request(
    rollouts: &Api<Rollout>,
    name: &str,
    action: RolloutAction,
    by: Option<&str>,
    reason: Option<&str>,
) -> kube::Result<Rollout> {
    let patch = json!({"metadata": {"annotations": {
        ACTION_ANNOTATION: action.as_str(), REQUESTED_BY_ANNOTATION: by, REQUEST_REASON_ANNOTATION: reason
    }}});
    rollouts
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
}

/// The identity the API server knows this client by (a SelfSubjectReview), if it says.
pub(crate) async fn requester(client: Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let review = Api::<SelfSubjectReview>::all(client)
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// The Rollout's ReplicaSets, newest first.
async fn owned_replica_sets(
    client: &Client,
    namespace: &str,
    rollout: &Rollout,
) -> Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let uid = rollout.uid().unwrap_or_default();
    let mut sets: Vec<ReplicaSet> = api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", rollout.name_any())))
        .await?
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    sets.sort_by_key(|rs| std::cmp::Reverse(rs.metadata.creation_timestamp.clone().map(|t| t.0)));
    Ok(sets)
}

async fn undo(
    client: &Client,
    rollouts: &Api<Rollout>,
    namespace: &str,
    name: &str,
    back: usize,
) -> Result<ExitCode> {
    let rollout = rollouts
        .get(name)
        .await
        .with_context(|| format!("Rollout {name:?}"))?;
    if let Some(workload) = &rollout.spec.workload_ref {
        bail!(
            "Rollout {name:?} takes its pod template from Deployment {:?} (spec.workloadRef): undo \
             there, e.g. `kubectl rollout undo deployment/{}`, and the Rollout releases that template",
            workload.name,
            workload.name
        );
    }
    let current = rollout
        .status
        .as_ref()
        .and_then(|s| s.current_pod_hash.clone())
        .unwrap_or_default();
    let sets = owned_replica_sets(client, namespace, &rollout).await?;
    let earlier: Vec<&ReplicaSet> = sets
        .iter()
        .filter(|rs| rs.labels().get(POD_TEMPLATE_HASH_LABEL) != Some(&current))
        .collect();
    let Some(target) = earlier.get(back.saturating_sub(1)) else {
        bail!(
            "Rollout {name:?} has {} earlier revision(s) kept; nothing to undo to",
            earlier.len()
        );
    };
    // The template as the Rollout had it (the ReplicaSet's own copy carries the API server's defaults,
    // which would make it a new revision).
    let mut template = match target.annotations().get(TEMPLATE_ANNOTATION) {
        Some(original) => serde_json::from_str(original)?,
        None => serde_json::to_value(
            target
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .context("ReplicaSet without template")?,
        )?,
    };
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let patch = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    rollouts
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await?;
    let hash = target
        .labels()
        .get(POD_TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default();
    println!("rollout.sluice.dev/{name}: rolled back to revision {hash}");
    Ok(ExitCode::SUCCESS)
}

async fn status(rollouts: &Api<Rollout>, name: &str, timeout: Duration) -> Result<ExitCode> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let rollout = rollouts
            .get(name)
            .await
            .with_context(|| format!("Rollout {name:?}"))?;
        let status = rollout.status.clone().unwrap_or_default();
        let current = status.observed_generation == rollout.metadata.generation;
        let phase = status
            .phase
            .map_or("Unknown".to_owned(), |p| format!("{p:?}"));
        let line = format!("{phase} - {}", status.message.clone().unwrap_or_default());
        if line != last {
            println!("{line}");
            last = line;
        }
        match status.phase {
            Some(RolloutPhase::Healthy) if current => return Ok(ExitCode::SUCCESS),
            Some(RolloutPhase::Degraded) if current => return Ok(ExitCode::from(1)),
            _ => {}
        }
        if started.elapsed() > timeout {
            println!("timed out after {}s", timeout.as_secs());
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get(
    client: &Client,
    rollouts: &Api<Rollout>,
    namespace: &str,
    name: &str,
    watch: bool,
) -> Result<ExitCode> {
    loop {
        let rollout = rollouts
            .get(name)
            .await
            .with_context(|| format!("Rollout {name:?}"))?;
        let sets = owned_replica_sets(client, namespace, &rollout).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let mut pods_by_hash: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for pod in pods
            .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await?
            .items
        {
            if let Some(hash) = pod.labels().get(POD_TEMPLATE_HASH_LABEL).cloned() {
                pods_by_hash.entry(hash).or_default().push(pod);
            }
        }
        let runs = recorded_runs(client, namespace, &rollout).await?;
        let view = render(&rollout, &sets, &pods_by_hash, &runs);
        let mut out = std::io::stdout().lock();
        if watch {
            // Clear the screen and draw again from the top.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{view}")?;
        out.flush()?;
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The AnalysisRuns the Rollout's status names (the current step's and the background one), with
/// what they are for.
async fn recorded_runs(
    client: &Client,
    namespace: &str,
    rollout: &Rollout,
) -> Result<Vec<(&'static str, AnalysisRun)>> {
    let api: Api<AnalysisRun> = Api::namespaced(client.clone(), namespace);
    let canary = rollout.status.as_ref().and_then(|s| s.canary.as_ref());
    let blue_green = rollout.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let mut runs = Vec::new();
    for (what, record) in [
        (
            "step",
            canary.and_then(|c| c.current_step_analysis_run_status.as_ref()),
        ),
        (
            "background",
            canary.and_then(|c| c.current_background_analysis_run_status.as_ref()),
        ),
        (
            "pre-promotion",
            blue_green.and_then(|b| b.pre_promotion_analysis_run_status.as_ref()),
        ),
        (
            "post-promotion",
            blue_green.and_then(|b| b.post_promotion_analysis_run_status.as_ref()),
        ),
    ] {
        if let Some(record) = record
            && let Some(run) = api.get_opt(&record.name).await?
        {
            runs.push((what, run));
        }
    }
    Ok(runs)
}

fn phase_mark(phase: Option<AnalysisPhase>) -> &'static str {
    match phase {
        Some(AnalysisPhase::Successful) => "✔",
        Some(AnalysisPhase::Failed | AnalysisPhase::Error) => "✖",
        Some(AnalysisPhase::Inconclusive) => "?",
        _ => "◐",
    }
}

/// The analysis section: each run, each metric's tally and its latest measurement.
fn render_runs(out: &mut String, runs: &[(&str, AnalysisRun)]) {
    use std::fmt::Write as _;
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "Analysis:");
    for (what, run) in runs {
        let status = run.status.clone().unwrap_or_default();
        let phase = status
            .phase
            .map_or("Pending".to_owned(), |p| format!("{p:?}"));
        let _ = writeln!(
            out,
            "  {} [{what}] {} {phase}",
            phase_mark(status.phase),
            run.name_any()
        );
        for result in &status.metric_results {
            let last = result.measurements.last();
            let _ = writeln!(
                out,
                "      {} {}: {:?}, {} measured ({} ok, {} failed, {} inconclusive, {} errors){}  {}",
                phase_mark(Some(result.phase)),
                result.name,
                result.phase,
                result.count,
                result.successful,
                result.failed,
                result.inconclusive,
                result.error,
                if result.dry_run { " [dry-run]" } else { "" },
                last.and_then(|m| m.value.clone())
                    .map(|v| format!("last {v}"))
                    .unwrap_or_default(),
            );
            if let Some(message) = last.and_then(|m| m.message.as_deref())
                && result.phase != AnalysisPhase::Successful
            {
                let _ = writeln!(out, "          {message}");
            }
        }
    }
}

/// The text view of a Rollout: summary, steps, analysis, ReplicaSets and pods.
fn render(
    rollout: &Rollout,
    sets: &[ReplicaSet],
    pods: &BTreeMap<String, Vec<Pod>>,
    runs: &[(&str, AnalysisRun)],
) -> String {
    use std::fmt::Write as _;
    let status = rollout.status.clone().unwrap_or_default();
    let mut out = String::new();
    let phase = status
        .phase
        .map_or("Unknown".to_owned(), |p| format!("{p:?}"));
    let icon = match status.phase {
        Some(RolloutPhase::Healthy) => "✔",
        Some(RolloutPhase::Progressing) => "◐",
        Some(RolloutPhase::Paused) => "⏸",
        Some(RolloutPhase::Degraded) => "✖",
        None => "?",
    };
    let _ = writeln!(out, "Name:       {}", rollout.name_any());
    let _ = writeln!(
        out,
        "Namespace:  {}",
        rollout.namespace().unwrap_or_default()
    );
    let _ = writeln!(out, "Status:     {icon} {phase}");
    if let Some(message) = &status.message {
        let _ = writeln!(out, "Message:    {message}");
    }
    if let Some(held) = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ReleaseHeld" && c.status == "True")
    {
        let _ = writeln!(out, "Held:       {} ({})", held.message, held.reason);
    }
    if let Some(breaker) = status
        .circuit_breaker
        .as_ref()
        .filter(|b| b.state != sluice_api::rollout::CircuitState::Closed)
    {
        let _ = writeln!(
            out,
            "Breaker:    {:?} after {} failed release(s){}{}",
            breaker.state,
            breaker.failures.len(),
            breaker
                .half_open_at
                .as_ref()
                .map(|t| format!(", half-open at {}", t.0))
                .unwrap_or_default(),
            breaker
                .trial
                .as_ref()
                .map(|t| format!(", letting {t} through"))
                .unwrap_or_default()
        );
    }
    if let Some(checks) = status
        .pre_deployment_checks
        .as_ref()
        .filter(|c| Some(&c.revision) == status.current_pod_hash.as_ref() && !c.checks.is_empty())
    {
        let each: Vec<String> = checks
            .checks
            .iter()
            .map(|c| {
                let run = c.analysis_run.as_ref();
                format!(
                    "{} ({:?}) {}",
                    c.name,
                    c.severity,
                    run.map_or("Pending", |r| r.status.as_str())
                )
            })
            .collect();
        let _ = writeln!(out, "Checks:     {:?}: {}", checks.phase, each.join(", "));
    }
    if let Some(hooks) = status
        .webhooks
        .as_ref()
        .filter(|h| Some(&h.revision) == status.current_pod_hash.as_ref() && !h.hooks.is_empty())
    {
        let each: Vec<String> = hooks
            .hooks
            .iter()
            .map(|h| {
                format!(
                    "{} ({}) {:?}{}",
                    h.name,
                    h.type_.as_str(),
                    h.phase,
                    h.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(out, "Webhooks:   {}", each.join("; "));
    }
    if let Some(score) = status
        .canary
        .as_ref()
        .and_then(|c| c.confidence.as_ref())
        .or_else(|| {
            status
                .blue_green
                .as_ref()
                .and_then(|b| b.confidence.as_ref())
        })
        .filter(|c| Some(&c.revision) == status.current_pod_hash.as_ref())
    {
        let when = if status
            .canary
            .as_ref()
            .is_some_and(|c| c.confidence.is_some())
        {
            format!("at step {}", score.step + 1)
        } else {
            "before promotion".to_owned()
        };
        let _ = writeln!(
            out,
            "Confidence: {}/100 {when}: {:?}",
            score.score, score.decision
        );
        for factor in &score.factors {
            let _ = writeln!(
                out,
                "  {:<13} {:>3} × {:<3} {}",
                factor.name, factor.value, factor.weight, factor.note
            );
        }
    }
    if let Some(bypass) = status.error_budget.as_ref().and_then(|e| e.bypasses.last()) {
        let _ = writeln!(
            out,
            "Bypassed:   {} at {}: {}",
            bypass.revision, bypass.time.0, bypass.reason
        );
    }
    let stable = status.stable_rs.clone().unwrap_or_default();
    let current = status.current_pod_hash.clone().unwrap_or_default();
    let blue_green = rollout.spec.strategy.blue_green.as_ref();
    let active = status
        .blue_green
        .as_ref()
        .and_then(|b| b.active_selector.clone())
        .unwrap_or_default();
    if let Some(strategy) = blue_green {
        use sluice_engine::bluegreen::{Stage, stage};
        let what = if stable == current {
            "released"
        } else {
            match stage(&status) {
                Stage::Preview => "preview coming up",
                Stage::PrePromotionAnalysis => "pre-promotion analysis",
                Stage::AwaitingPromotion => "waiting for promotion",
                Stage::ScalingUp => "scaling up before the switch",
                Stage::PostPromotionAnalysis => "switched; post-promotion analysis",
                Stage::Completed => "completing",
            }
        };
        let preview = status
            .blue_green
            .as_ref()
            .and_then(|b| b.preview_selector.clone())
            .unwrap_or_default();
        let _ = writeln!(out, "Strategy:   BlueGreen");
        let _ = writeln!(out, "  Stage:    {what}");
        let _ = writeln!(
            out,
            "  Active:   {active} (Service {})",
            strategy.active_service
        );
        if let Some(service) = &strategy.preview_service {
            let _ = writeln!(out, "  Preview:  {preview} (Service {service})");
        }
    }
    if let Some(canary) = &rollout.spec.strategy.canary {
        let weight = status
            .canary
            .as_ref()
            .and_then(|c| c.weights.as_ref())
            .map_or(0, |w| w.canary.weight);
        let _ = writeln!(out, "Strategy:   Canary");
        let _ = writeln!(
            out,
            "  Step:     {}",
            status
                .step_progress
                .clone()
                .unwrap_or_else(|| "-".to_owned())
        );
        let _ = writeln!(
            out,
            "  Weight:   {weight}% canary, {}% stable",
            100 - weight
        );
        // An adaptive release runs the steps of the plan it started with.
        let plan = status.release.as_ref().and_then(|r| r.plan.clone());
        if let Some(plan) = &plan {
            let _ = writeln!(out, "  Plan:     {:?}: {}", plan.profile, plan.reason);
        }
        let canary = &plan.map_or_else(
            || canary.clone(),
            |p| sluice_engine::adaptive::adapt(canary, p.profile),
        );
        let index = usize::try_from(status.current_step_index.unwrap_or(0)).unwrap_or(0);
        for (i, step) in canary.steps.iter().enumerate() {
            let mark = if i < index || stable == current {
                "✔"
            } else if i == index {
                "▶"
            } else {
                "○"
            };
            let (kind, detail) = history::step_parts(step);
            let what = format!("{kind}: {detail}");
            let _ = writeln!(out, "    {mark} {}. {what}", i + 1);
        }
    }
    render_runs(&mut out, runs);
    let _ = writeln!(out, "ReplicaSets:");
    for rs in sets {
        let hash = rs
            .labels()
            .get(POD_TEMPLATE_HASH_LABEL)
            .cloned()
            .unwrap_or_default();
        let role = match (blue_green.is_some(), hash == stable, hash == current) {
            (true, _, _) if hash == active => "active",
            (true, _, true) => "preview",
            (false, true, _) => "stable",
            (false, false, true) => "canary",
            _ => "old",
        };
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let available = rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        let image = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {hash} [{role}] {available}/{replicas} available  {image}",
            if available >= replicas { "✔" } else { "◐" }
        );
        for pod in pods.get(&hash).map(Vec::as_slice).unwrap_or_default() {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "      {} {} {phase}{}",
                if ready { "✔" } else { "✖" },
                pod.name_any(),
                if ready { "" } else { ", not ready" }
            );
        }
    }
    out
}
