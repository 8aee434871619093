//! The Rollout reconciler, one direction: observe (the caches → a snapshot, problems found as data)
//! → decide (`sluice_engine::decide`, the clock passed in) → apply (what the plan adds, the status,
//! then what it starts or takes away).
//!
//! - [`observe`]: what a reconcile reads, from the caches, and which Rollouts a change wakes;
//! - [`requests`]: people's requests, taken off the Rollout before they are acted on;
//! - [`apply`]: the plan put in force, in the order that keeps traffic on pods that exist.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use sluice_api::rollout::Rollout;
use sluice_engine::hash::pod_template_hash;
use sluice_engine::images::{self, DigestRequirement};
use sluice_engine::release::{Actions, ReplicaSetView, Snapshot};
use tracing::{Instrument, warn};

use crate::Context;
use crate::cache;
use crate::error::Error;
use crate::rollout_analysis::{self, Templates};
use crate::written::Kind;
use crate::{release_record, workload};

mod apply;
mod observe;
mod requests;
pub(crate) mod takeover;

use apply::{
    Observed, announce, execute, invalid_spec, remove_surplus, report_failure, write_status,
};
pub(crate) use observe::Strategy;
use observe::{check_objects, in_flight, pod_view, strategy_of, view};
pub use observe::{references, wakes};
use requests::{Pending, take_request};

/// How long to wait before looking again when nothing is scheduled. Every change a decision reads
/// wakes the Rollout through a watch; this is only a safety net (as Argo Rollouts' resync), and a
/// settled Rollout's look costs no request.
const RESYNC: Duration = Duration::from_secs(900);
/// How soon to look again after acting on a person's request, to take it off the Rollout.
const REQUEST_CLEARED_AFTER: Duration = Duration::from_millis(500);
/// How soon to look again at a Rollout whose cached copy is older than the controller's own write.
const STALE_RETRY: Duration = Duration::from_millis(50);
/// A reconcile that takes longer is abandoned and retried: an API request that never answers (the
/// client's own read timeout is minutes) must not leave a release unattended. Abandoning one midway
/// is as safe as a crash: the next reconcile starts again from status and what it observes.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    // Every request sent within this span is counted for this reconcile. Its level is ERROR so
    // that any filter short of `off` keeps it.
    let span = tracing::error_span!(
        "reconcile",
        namespace = rollout.namespace().unwrap_or_default(),
        rollout = rollout.name_any()
    );
    ctx.metrics.open_reconciles.begin(&span);
    // A panic is one Rollout's failure (reported on it, retried with backoff), not the process's.
    let attempt = AssertUnwindSafe(reconcile_rollout(&rollout, &ctx))
        .catch_unwind()
        .map(|outcome| outcome.unwrap_or_else(|panic| Err(Error::Panic(panic_message(&*panic)))));
    ctx.metrics.reconciles_running.inc();
    let result = tokio::time::timeout(RECONCILE_TIMEOUT, attempt.instrument(span.clone()))
        .await
        .unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)));
    ctx.metrics.reconciles_running.dec();
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if let Some(sent) = ctx.metrics.open_reconciles.end(&span) {
        ctx.metrics.reconcile_requests.observe(sent as f64);
    }
    match &result {
        Ok(_) => ctx.backoffs.succeeded(
            "Rollout",
            &rollout.namespace().unwrap_or_default(),
            &rollout.name_any(),
        ),
        // The view was older than the Rollout: nothing failed, the next look decides afresh.
        Err(error) if error.is_conflict() => {}
        Err(error) => report_failure(&rollout, &ctx, error).instrument(span).await,
    }
    result
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

pub fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        // A conditional write found the Rollout changed since the view it was decided on.
        return Action::requeue(STALE_RETRY);
    }
    warn!(namespace = rollout.namespace().unwrap_or_default(), rollout = rollout.name_any(), %error, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.metric_label().to_owned(),
        })
        .inc();
    Action::requeue(ctx.backoffs.failed(
        "Rollout",
        &rollout.namespace().unwrap_or_default(),
        &rollout.name_any(),
    ))
}

async fn reconcile_rollout(rollout: &Rollout, ctx: &Context) -> Result<Action, Error> {
    let name = rollout.name_any();
    let namespace = rollout
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if rollout.metadata.deletion_timestamp.is_some() {
        // Owned ReplicaSets go with it through garbage collection.
        return Ok(Action::await_change());
    }
    if ctx.written.is_stale(
        Kind::Rollout,
        &namespace,
        &name,
        rollout.metadata.resource_version.as_deref(),
    ) {
        // The cache has not caught up with this controller's own last write: deciding on the older
        // copy could repeat or undo what that write recorded. Its status event wakes nothing (see
        // `wakes`), so look again shortly.
        return Ok(Action::requeue(STALE_RETRY));
    }
    let status = rollout.status.clone().unwrap_or_default();

    // With a workloadRef, the Rollout as released: the Deployment's pod template in its spec.
    let resolved = match workload::resolve(ctx, rollout, &namespace).await? {
        Ok(resolved) => resolved,
        Err(problem) => {
            return invalid_spec(rollout, ctx, &status, &problem, Timestamp::now()).await;
        }
    };
    let workload_replicas = resolved.workload_replicas;
    let rollout: &Rollout = &resolved.rollout;

    let strategy = match strategy_of(rollout) {
        Ok(strategy) => strategy,
        Err(problem) => {
            return invalid_spec(rollout, ctx, &status, &problem, Timestamp::now()).await;
        }
    };
    let (templates, problem) = match check_objects(
        strategy,
        &rollout.spec.pre_deployment_checks,
        ctx,
        &namespace,
        &rollout.name_any(),
    ) {
        Ok(templates) => (templates, None),
        Err(problem) => (Templates::new(), Some(problem)),
    };
    // Argo Rollouts in the namespace: a Service or route one runs is refused; a selector
    // overlapping one's is said once in an Event.
    let conflicts = crate::argo::conflicts(
        &ctx.caches.argo_rollouts,
        rollout,
        &namespace,
        &observe::references(rollout),
    );
    let problem = problem.or(conflicts.problem);
    for (argo, message) in &conflicts.overlaps {
        let key = (rollout.uid().unwrap_or_default(), argo.clone());
        let first = ctx
            .argo_overlaps
            .lock()
            .is_ok_and(|mut announced| announced.insert(key));
        if first {
            apply::publish(ctx, rollout, true, "SelectorOverlapsArgoRollout", message);
        }
    }
    let template = rollout.spec.template.clone().unwrap_or_default();
    let hash = pod_template_hash(&serde_json::to_value(&template)?);
    // Mutable images are refused here too, for clusters without the admission policy.
    let digest = DigestRequirement {
        rollout: rollout.spec.require_image_digest,
        namespace: cache::requires_digest(&ctx.caches.namespaces, &namespace)
            .then(|| namespace.clone()),
    };
    let field = match &rollout.spec.workload_ref {
        Some(workload) => format!(
            "{} {} (spec.workloadRef) spec.template.spec",
            workload.kind, workload.name
        ),
        None => "spec.template.spec".to_owned(),
    };
    let problem = images::check(&template, &field, &digest).err().or(problem);

    // A takeover goes on only with a spec Sluice accepts (otherwise the InvalidSpec below says why).
    if problem.is_none()
        && let takeover::Outcome::Return(action) =
            takeover::run(ctx, rollout, &namespace, &hash, &status, strategy).await?
    {
        return Ok(action);
    }

    let uid = rollout.uid().unwrap_or_default();
    let caches = &ctx.caches;
    let labelled = cache::owned(
        &caches.replica_sets,
        &caches.replica_set_index,
        &namespace,
        &name,
    );
    // Every ReplicaSet labelled for this Rollout, owned or not yet (one adopted a moment ago may
    // still show its old owner here).
    if labelled.iter().any(|rs| {
        ctx.written.is_stale(
            Kind::ReplicaSet,
            &namespace,
            &rs.name_any(),
            rs.metadata.resource_version.as_deref(),
        )
    }) {
        // A ReplicaSet as it was before this controller's own last write to it (a size, a
        // scale-down time): deciding on it could undo that write. Its event wakes the Rollout.
        return Ok(Action::requeue(STALE_RETRY));
    }
    let owned: Vec<_> = labelled
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let views: Vec<ReplicaSetView> = owned.iter().filter_map(|rs| view(rs)).collect();
    // Each revision's ReplicaSet by name: `<rollout>-<hash>`, but for one adopted from Argo
    // Rollouts, which keeps the name it was given.
    let names: BTreeMap<String, String> = owned
        .iter()
        .filter_map(|rs| Some((view(rs)?.hash, rs.name_any())))
        .collect();
    if let Some(problem) = &problem
        && !in_flight(&status, &views)
    {
        // Nothing in flight: nothing moves until the spec is mended, and the Rollout says why.
        return invalid_spec(rollout, ctx, &status, problem, Timestamp::now()).await;
    }
    let runs = rollout_analysis::owned_runs(ctx, &namespace, rollout);
    // One clock read per reconcile: everything decided in it is decided at this moment.
    let now = Timestamp::now();
    let pods: Vec<_> = views
        .iter()
        .flat_map(|v| {
            cache::owned(
                &caches.pods,
                &caches.pod_index,
                &namespace,
                names
                    .get(&v.hash)
                    .map_or(&format!("{name}-{}", v.hash), |n| n),
            )
        })
        .filter_map(|pod| pod_view(&pod, now))
        .collect();
    let (pending, based_on) = take_request(ctx, rollout, &status).await?;
    let (actions, request, requester, request_reason) = match &pending {
        Pending::Act(request) => (
            request.actions,
            Some(request.id.as_str()),
            request.by.as_deref(),
            request.reason.as_deref(),
        ),
        Pending::None => (Actions::default(), None, None, None),
    };
    // Rollouts sharing a circuit breaker decide one at a time, each on the others' latest status.
    let group = crate::circuit::group(ctx, rollout, &namespace);
    let _decided_alone = match &group.lock {
        Some(lock) => Some(lock.clone().lock_owned().await),
        None => None,
    };
    if crate::circuit::stale(ctx, &group, &namespace) {
        return Ok(Action::requeue(STALE_RETRY));
    }
    let circuit = crate::circuit::inputs(ctx, &group, &namespace);
    // Adaptive plans and confidence scores read the Rollout's own releases.
    let reads_history = rollout.spec.strategy.canary.as_ref().is_some_and(|c| {
        c.adaptive.is_some() || c.steps.iter().any(|step| step.confidence.is_some())
    }) || rollout
        .spec
        .strategy
        .blue_green
        .as_ref()
        .is_some_and(|b| b.pre_promotion_confidence.is_some());
    let history = if reads_history {
        crate::circuit::releases_of(ctx, rollout, &namespace).0
    } else {
        Vec::new()
    };
    let images = images_of(&template);

    let gating = crate::release_gates::gating(&ctx.caches.gates, rollout);
    let hook_answers = ctx.webhooks.answers(&namespace, &name);
    let snapshot = Snapshot {
        name: &name,
        generation: rollout.metadata.generation.unwrap_or(0),
        spec: &rollout.spec,
        status: &status,
        current_hash: &hash,
        replica_sets: &views,
        runs: &runs,
        pods: &pods,
        actions,
        request,
        invalid_spec: problem.as_deref(),
        gating: &gating,
        workload_replicas,
        images: &images,
        requester,
        request_reason,
        circuit: &circuit,
        history: &history,
        plan_pin: rollout
            .annotations()
            .get(sluice_api::names::PLAN_ANNOTATION)
            .map(String::as_str),
        hook_answers: &hook_answers,
        now,
    };
    let plan = sluice_engine::decide(&snapshot, strategy.engine());
    // The Deployment taken over grows (its pods failing) with what the plan adds, and shrinks with
    // what it takes away.
    let workload_change = plan.workload_replicas.zip(workload_replicas);
    if let Some((wanted, seen)) = workload_change
        && wanted > seen
    {
        workload::scale(ctx, rollout, &namespace, wanted).await?;
    }
    let observed = Observed {
        views: &views,
        names: &names,
    };
    execute(rollout, ctx, &namespace, strategy, &hash, observed, &plan).await?;
    // A release this plan takes out of status (ended in it, or ended before with its record not yet
    // written) is recorded before the status that forgets it; the one status holds, after it.
    let replaced = plan.ended_release.as_ref().or_else(|| {
        let next = plan.status.release.as_ref().map(|r| r.number);
        status.release.as_ref().filter(|r| Some(r.number) != next)
    });
    if let Some(release) = replaced {
        release_record::mirror(ctx, rollout, &namespace, release).await?;
    }
    // The status is written once what the plan adds is in place and before anything is taken
    // away or started: a crash before it leaves the old status and everything it counts on (stable
    // at full size); a crash after it, a status that names each run it starts (created again under
    // the same name if missing, never forgotten and replaced) and surplus the next reconcile
    // removes. Conditional on the view it was decided on, so a stale view changes no more.
    if plan.status != status {
        write_status(ctx, rollout, &plan.status, based_on.as_deref()).await?;
        if !plan.runs.start.is_empty() {
            crate::failpoints::crash("analysisrun-recorded");
        }
        if plan.ended_release.is_some() {
            crate::failpoints::crash("release-replaced");
        }
    }
    let stable = plan.status.stable_rs.clone().unwrap_or_default();
    rollout_analysis::apply(
        ctx,
        rollout,
        &namespace,
        &templates,
        (&hash, &stable),
        &plan.runs,
    )
    .await?;
    // The webhook calls the plan wants, made outside the reconcile (their answers wake it); after
    // the status that records what earlier answers settled.
    ctx.webhooks.want(rollout, &namespace, &plan.webhooks);
    remove_surplus(ctx, rollout, &namespace, observed, &plan).await?;
    if let Some(release) = &plan.status.release {
        release_record::mirror(ctx, rollout, &namespace, release).await?;
    }
    if let Some((wanted, seen)) = workload_change
        && wanted < seen
    {
        workload::scale(ctx, rollout, &namespace, wanted).await?;
    }
    announce(ctx, rollout, &status, &plan);
    // The transitions this write recorded go to the notification sinks, outside the reconcile.
    ctx.notifier
        .offer(rollout, &namespace, plan.status.release.as_ref(), replaced);
    let mut after = plan
        .requeue_after
        .map_or(RESYNC, |d| d.min(RESYNC) + Duration::from_millis(50));
    if request.is_some() {
        // The request acted on is taken off the Rollout by the next reconcile (once this status
        // is in the cache); the status write wakes nothing, so look again shortly.
        after = after.min(REQUEST_CLEARED_AFTER);
    }
    Ok(Action::requeue(after))
}

/// The images of a pod template's containers and init containers, `name=image`, for the release
/// record.
fn images_of(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Vec<String> {
    let Some(spec) = template.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or_default()))
        .collect()
}
