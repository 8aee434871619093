//! The Rollout reconciler: snapshot → validate → decide (sluice-engine) → execute → status.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_api::rollout::{
    BlueGreenStrategy, CanaryStrategy, POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase,
    RolloutStatus,
};
use sluice_engine::conditions::{self, ConditionStatus};
use sluice_engine::hash::pod_template_hash;
use sluice_engine::release::{Actions, Plan, ReplicaSetView, Snapshot};
use sluice_engine::replicas;
use sluice_engine::restart::{self, PodView};
use sluice_engine::runs::RunView;
use tracing::{info, instrument, warn};

use sluice_api::names::{
    ACTION_ANNOTATION, ROLLOUT_LABEL, ROUTE_IN_FLIGHT_ANNOTATION, RolloutAction,
    SCALE_DOWN_AT_ANNOTATION, TEMPLATE_ANNOTATION,
};

use crate::cache;
use crate::error::Error;
use crate::rollout_analysis;
use crate::{Context, FIELD_MANAGER, writer};

/// How long to wait before looking again when nothing is scheduled. Every change a decision reads
/// wakes the Rollout through a watch; this is only a safety net (as Argo Rollouts' resync), and a
/// settled Rollout's look costs no request.
const RESYNC: Duration = Duration::from_secs(900);
/// How often to look at pods while a restart replaces them (pods are not watched).
const RESTART_POLL: Duration = Duration::from_secs(1);
/// A reconcile that takes longer is abandoned and retried: an API request that never answers (the
/// client's own read timeout is minutes) must not leave a release unattended. Abandoning one midway
/// is as safe as a crash: the next reconcile starts again from status and what it observes.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_rollout(&rollout, &ctx))
        .await
        .unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

pub fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = rollout.namespace().unwrap_or_default(), rollout = rollout.name_any(), %error, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.metric_label().to_owned(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

/// What of a Rollout wakes its reconcile: its spec (generation), labels, annotations (people's
/// requests) and deletion. Its status does not: the controller is its only writer, and a plan stands
/// on its own, so the controller's own status write never needs to wake it again.
pub fn wakes(rollout: &Rollout) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &rollout.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &meta.uid,
        meta.generation,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The Rollouts in the namespace of a Service that name it (canary, stable, active or preview).
pub fn referencing_service(
    rollouts: &Store<Rollout>,
    service: &Service,
) -> Vec<ObjectRef<Rollout>> {
    let name = service.name_any();
    referencing(rollouts, &service.namespace(), |rollout| {
        let strategy = &rollout.spec.strategy;
        strategy.canary.as_ref().is_some_and(|c| {
            c.canary_service.as_deref() == Some(name.as_str())
                || c.stable_service.as_deref() == Some(name.as_str())
        }) || strategy.blue_green.as_ref().is_some_and(|b| {
            b.active_service == name || b.preview_service.as_deref() == Some(name.as_str())
        })
    })
}

/// The Rollouts in the namespace of an HTTPRoute that route traffic through it.
pub fn referencing_route(
    rollouts: &Store<Rollout>,
    route: &DynamicObject,
) -> Vec<ObjectRef<Rollout>> {
    let name = route.name_any();
    referencing(rollouts, &route.namespace(), |rollout| {
        rollout
            .spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.traffic_routing.as_ref())
            .is_some_and(|t| t.gateway_api.http_route == name)
    })
}

/// The Rollouts that name an analysis template (`cluster`: a ClusterAnalysisTemplate, named from any
/// namespace).
pub fn referencing_template(
    rollouts: &Store<Rollout>,
    namespace: &Option<String>,
    name: &str,
    cluster: bool,
) -> Vec<ObjectRef<Rollout>> {
    let names_it = |refs: &[sluice_api::common::AnalysisTemplateRef]| {
        refs.iter()
            .any(|r| r.template_name == name && r.cluster_scope == cluster)
    };
    let matches = |rollout: &Rollout| {
        let strategy = &rollout.spec.strategy;
        strategy.canary.as_ref().is_some_and(|c| {
            rollout_analysis::template_refs(c)
                .iter()
                .any(|(_, refs)| names_it(refs))
        }) || strategy.blue_green.as_ref().is_some_and(|b| {
            rollout_analysis::blue_green_template_refs(b)
                .iter()
                .any(|(_, refs)| names_it(refs))
        })
    };
    if cluster {
        rollouts
            .state()
            .iter()
            .filter(|r| matches(r))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    } else {
        referencing(rollouts, namespace, matches)
    }
}

/// The Rollouts in `namespace` for which `matches` holds.
fn referencing(
    rollouts: &Store<Rollout>,
    namespace: &Option<String>,
    matches: impl Fn(&Rollout) -> bool,
) -> Vec<ObjectRef<Rollout>> {
    rollouts
        .state()
        .iter()
        .filter(|r| r.namespace() == *namespace && matches(r))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Takes a person's request off the Rollout before acting on it, if it is still there: the watch
/// cache may hand the controller a copy of the Rollout from before an earlier reconcile removed it,
/// and a request must be acted on once (two promotes would skip a step). Returns false if the request
/// was already taken. A controller that dies between taking and acting drops the request; the person
/// sees nothing happen and asks again, which is safer than acting twice.
async fn claim_request(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    raw: &str,
) -> Result<bool, Error> {
    let patch = json!([
        {"op": "test", "path": "/metadata/annotations/sluice.dev~1action", "value": raw},
        {"op": "remove", "path": "/metadata/annotations/sluice.dev~1action"}
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    match Api::<Rollout>::namespaced(client.clone(), namespace)
        .patch(name, &writer(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            info!(request = raw, "took the request");
            Ok(true)
        }
        // The test failed: the annotation is gone or holds another request (seen on a later look).
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

fn parse_actions(rollout: &Rollout) -> (Actions, Option<String>) {
    let raw = rollout.annotations().get(ACTION_ANNOTATION).cloned();
    let action = raw.as_deref().and_then(|r| r.parse::<RolloutAction>().ok());
    (Actions::from(action), raw)
}

#[instrument(skip_all, fields(namespace = rollout.namespace().unwrap_or_default(), rollout = rollout.name_any()))]
async fn reconcile_rollout(rollout: &Rollout, ctx: &Context) -> Result<Action, Error> {
    let name = rollout.name_any();
    let namespace = rollout
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if rollout.metadata.deletion_timestamp.is_some() {
        // Owned ReplicaSets go with it through garbage collection.
        return Ok(Action::await_change());
    }
    let status = rollout.status.clone().unwrap_or_default();
    let client = ctx.client.clone();

    let strategy = match check_spec(rollout, ctx, &namespace) {
        Ok(strategy) => strategy,
        Err(problem) => {
            return invalid_spec(rollout, ctx, &status, &problem, Timestamp::now()).await;
        }
    };
    let template = rollout.spec.template.clone().unwrap_or_default();
    let hash = pod_template_hash(&serde_json::to_value(&template)?);

    let uid = rollout.uid().unwrap_or_default();
    let caches = &ctx.caches;
    let views: Vec<ReplicaSetView> = cache::owned(
        &caches.replica_sets,
        &caches.replica_set_index,
        &namespace,
        &name,
    )
    .iter()
    .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
    .filter_map(|rs| view(rs))
    .collect();
    let runs: Vec<RunView> = rollout_analysis::owned_runs(ctx, &namespace, rollout)
        .iter()
        .map(rollout_analysis::view)
        .collect();
    // One clock read per reconcile: everything decided in it is decided at this moment.
    let now = Timestamp::now();
    let (mut actions, raw_action) = parse_actions(rollout);
    if let Some(raw) = raw_action
        && !claim_request(&client, &namespace, &name, &raw).await?
    {
        // Already taken by an earlier reconcile: this copy of the Rollout is older than the removal.
        actions = Actions::default();
    }

    let mut status_in = status.clone();
    conditions::set(
        &mut status_in.conditions,
        "InvalidSpec",
        ConditionStatus::False,
        "SpecValid",
        "the spec is valid",
        now,
        rollout.metadata.generation.unwrap_or(0),
    );
    let gating = crate::release_gates::gating(&ctx.caches.gates, rollout);
    let snapshot = Snapshot {
        name: &name,
        generation: rollout.metadata.generation.unwrap_or(0),
        spec: &rollout.spec,
        status: &status_in,
        current_hash: &hash,
        replica_sets: &views,
        runs: &runs,
        actions,
        gating: &gating,
        now,
    };
    let mut plan = sluice_engine::decide(&snapshot, strategy.engine());
    execute(rollout, ctx, &namespace, strategy, &hash, &views, &plan).await?;
    let stable = plan.status.stable_rs.clone().unwrap_or_default();
    if let Err(problem) =
        rollout_analysis::apply(ctx, rollout, &namespace, &hash, &stable, &plan.runs).await?
    {
        return invalid_spec(rollout, ctx, &status, &problem, now).await;
    }
    if let Some(again) = restart(
        rollout,
        ctx,
        &namespace,
        strategy,
        &views,
        &mut plan,
        snapshot.now,
    )
    .await?
    {
        plan.requeue_after = Some(plan.requeue_after.map_or(again, |d| d.min(again)));
    }

    if plan.status != status {
        let patch = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "Rollout",
            "status": plan.status,
        });
        Api::<Rollout>::namespaced(client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    if let Some(phase) = plan.status.phase {
        ctx.metrics.set_phase(&namespace, &name, phase);
    }
    if plan.status.abort && !status.abort {
        ctx.metrics
            .aborts
            .get_or_create(&crate::metrics::RolloutLabels {
                namespace: namespace.clone(),
                rollout: name.clone(),
            })
            .inc();
    }
    for event in &plan.events {
        info!(reason = event.reason, note = %event.message, "transition");
        publish(ctx, rollout, event.warning, event.reason, &event.message).await;
    }
    Ok(Action::requeue(plan.requeue_after.map_or(RESYNC, |d| {
        d.min(RESYNC) + Duration::from_millis(50)
    })))
}

/// Replaces pods created before the restart in force (the later of `spec.restartAt` and the last
/// `kubectl sluice restart`), evicting a few at a time. Returns when to look again, while a restart
/// is under way or due.
async fn restart(
    rollout: &Rollout,
    ctx: &Context,
    namespace: &str,
    strategy: Strategy<'_>,
    views: &[ReplicaSetView],
    plan: &mut Plan,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let requested = [
        rollout.spec.restart_at.as_ref(),
        plan.status.restart_requested_at.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.0)
    .max();
    let Some(target) = requested else {
        return Ok(None);
    };
    let done_up_to = plan.status.restarted_at.as_ref().map(|t| t.0);
    // One already completed is not repeated; one in the future waits for its time.
    if done_up_to.is_some_and(|done| done >= target) {
        return Ok(None);
    }
    if target > now {
        let wait = Duration::try_from(target.duration_since(now)).unwrap_or(RESTART_POLL);
        return Ok(Some(wait));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let hashes: Vec<&str> = views.iter().map(|v| v.hash.as_str()).collect();
    let selector = pod_selector(rollout);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let min_ready = rollout.spec.min_ready_seconds.unwrap_or(0);
    let seen: Vec<PodView> = listed
        .iter()
        .filter(|p| {
            p.labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .is_some_and(|h| hashes.contains(&h.as_str()))
        })
        .map(|p| PodView {
            name: p.name_any(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            available: pod_available(p, min_ready, now),
            terminating: p.metadata.deletion_timestamp.is_some(),
        })
        .collect();
    let wanted: i32 = plan.scale.values().sum();
    let max_unavailable = strategy.max_unavailable(rollout.spec.replicas);
    let restart = restart::plan(target, &seen, wanted, max_unavailable);
    for name in &restart.evict {
        match pods.evict(name, &EvictParams::default()).await {
            Ok(_) => info!(pod = name.as_str(), "evicted for the restart"),
            // A PodDisruptionBudget may refuse for now (429); the next look tries again.
            Err(err) => warn!(pod = name.as_str(), %err, "eviction refused for now"),
        }
    }
    // Done when the pods say so and the ReplicaSets agree (their status lags the pods a little).
    let replica_sets_available: i32 = views.iter().map(|v| v.available).sum();
    if restart.done && replica_sets_available >= wanted {
        plan.status.restarted_at = Some(Time(target));
        plan.events.push(sluice_engine::events::Event {
            warning: false,
            reason: "RolloutRestarted",
            message: format!("every pod was created after {target}"),
        });
        return Ok(None);
    }
    Ok(Some(RESTART_POLL))
}

/// The label selector of the Rollout's pods, as a list query takes it.
fn pod_selector(rollout: &Rollout) -> String {
    rollout
        .spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ready for at least `min_ready_seconds`, as the ReplicaSet controller counts availability.
fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .is_some_and(|c| {
            let since = c.last_transition_time.as_ref().map_or(now, |t| t.0);
            since
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                    min_ready_seconds,
                )))
                .is_ok_and(|ready_at| ready_at <= now)
        })
}

fn view(rs: &ReplicaSet) -> Option<ReplicaSetView> {
    let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
    Some(ReplicaSetView {
        hash,
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
        scale_down_at: rs
            .annotations()
            .get(SCALE_DOWN_AT_ANNOTATION)
            .and_then(|t| Timestamp::from_str(t).ok()),
        created: rs
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    })
}

/// What only the controller can check, read from the caches: the strategy, or what is wrong with
/// the spec (a user error to report, not a failure).
fn check_spec<'a>(
    rollout: &'a Rollout,
    ctx: &Context,
    namespace: &str,
) -> Result<Strategy<'a>, String> {
    if rollout.spec.template.is_none() {
        return Err(
            "spec.workloadRef is not supported by this version of Sluice; set spec.template"
                .to_owned(),
        );
    }
    let caches = &ctx.caches;
    let service_exists = |name: &str| cache::get(&caches.services, namespace, name).is_some();
    let canary = match (
        &rollout.spec.strategy.canary,
        &rollout.spec.strategy.blue_green,
    ) {
        (Some(canary), _) => canary,
        (None, Some(blue_green)) => {
            for (field, service) in [
                ("activeService", Some(&blue_green.active_service)),
                ("previewService", blue_green.preview_service.as_ref()),
            ] {
                if let Some(service) = service
                    && !service_exists(service)
                {
                    return Err(format!(
                        "Service {service:?} named in spec.strategy.blueGreen.{field} does not exist in namespace {namespace}"
                    ));
                }
            }
            for (field, refs) in rollout_analysis::blue_green_template_refs(blue_green) {
                rollout_analysis::templates(caches, namespace, refs, &field)?;
            }
            return Ok(Strategy::BlueGreen(blue_green));
        }
        (None, None) => {
            return Err("spec.strategy sets neither canary nor blueGreen".to_owned());
        }
    };
    for (field, service) in [
        ("canaryService", &canary.canary_service),
        ("stableService", &canary.stable_service),
    ] {
        if let Some(service) = service
            && !service_exists(service)
        {
            return Err(format!(
                "Service {service:?} named in spec.strategy.canary.{field} does not exist in namespace {namespace}"
            ));
        }
    }
    if let Some(routing) = &canary.traffic_routing {
        let route_name = &routing.gateway_api.http_route;
        let Some(route) = caches.route(namespace, route_name) else {
            return Err(format!(
                "HTTPRoute {route_name:?} named in spec.strategy.canary.trafficRouting.gatewayAPI.httpRoute does not exist in namespace {namespace}"
            ));
        };
        for service in [&canary.canary_service, &canary.stable_service]
            .into_iter()
            .flatten()
        {
            if backend_positions(&route, service).is_empty() {
                return Err(format!(
                    "HTTPRoute {route_name:?} has no backendRef for Service {service:?}; add it (weight 0 for the canary) so Sluice can shift traffic"
                ));
            }
        }
    }
    for (field, refs) in rollout_analysis::template_refs(canary) {
        rollout_analysis::templates(caches, namespace, refs, &field)?;
    }
    Ok(Strategy::Canary(canary))
}

/// A Rollout's release strategy, with what the executor needs from either kind.
#[derive(Clone, Copy)]
pub(crate) enum Strategy<'a> {
    Canary(&'a CanaryStrategy),
    BlueGreen(&'a BlueGreenStrategy),
}

impl<'a> Strategy<'a> {
    /// The strategy as the engine takes it.
    fn engine(self) -> sluice_engine::Strategy<'a> {
        match self {
            Self::Canary(c) => sluice_engine::Strategy::Canary(c),
            Self::BlueGreen(b) => sluice_engine::Strategy::BlueGreen(b),
        }
    }

    /// The Service that selects the stable (canary) or active (blue-green) version.
    fn stable_service(&self) -> Option<&String> {
        match self {
            Self::Canary(c) => c.stable_service.as_ref(),
            Self::BlueGreen(b) => Some(&b.active_service),
        }
    }

    /// The Service that selects the canary (canary) or preview (blue-green) version.
    fn canary_service(&self) -> Option<&String> {
        match self {
            Self::Canary(c) => c.canary_service.as_ref(),
            Self::BlueGreen(b) => b.preview_service.as_ref(),
        }
    }

    fn traffic_routing(&self) -> Option<&sluice_api::rollout::TrafficRouting> {
        match self {
            Self::Canary(c) => c.traffic_routing.as_ref(),
            Self::BlueGreen(_) => None,
        }
    }

    /// Pods that may be missing during a restart.
    fn max_unavailable(&self, replicas: i32) -> i32 {
        let (surge, unavailable) = match self {
            Self::Canary(c) => (c.max_surge.as_ref(), c.max_unavailable.as_ref()),
            Self::BlueGreen(_) => (None, None),
        };
        replicas::surge_and_unavailable(replicas, surge, unavailable).1
    }
}

/// Records an InvalidSpec condition and event, and changes nothing else: stable keeps serving.
async fn invalid_spec(
    rollout: &Rollout,
    ctx: &Context,
    status: &RolloutStatus,
    problem: &str,
    now: Timestamp,
) -> Result<Action, Error> {
    let mut next = status.clone();
    let generation = rollout.metadata.generation.unwrap_or(0);
    let already = conditions::get(&next.conditions, "InvalidSpec")
        .is_some_and(|c| c.status == "True" && c.message == problem);
    conditions::set(
        &mut next.conditions,
        "InvalidSpec",
        ConditionStatus::True,
        "InvalidSpec",
        problem,
        now,
        generation,
    );
    conditions::set(
        &mut next.conditions,
        "Stalled",
        ConditionStatus::True,
        "InvalidSpec",
        problem,
        now,
        generation,
    );
    conditions::set(
        &mut next.conditions,
        "Ready",
        ConditionStatus::False,
        "InvalidSpec",
        problem,
        now,
        generation,
    );
    next.phase = Some(RolloutPhase::Degraded);
    next.message = Some(format!("invalid spec: {problem}"));
    next.observed_generation = Some(generation);
    if !already {
        warn!(problem, "invalid spec");
        let patch = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "status": next});
        let namespace = rollout.namespace().unwrap_or_default();
        Api::<Rollout>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &rollout.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        publish(ctx, rollout, true, "InvalidSpec", problem).await;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

async fn publish(ctx: &Context, rollout: &Rollout, warning: bool, reason: &str, message: &str) {
    ctx.publish(&rollout.object_ref(&()), warning, reason, reason, message)
        .await;
}

/// Gateway API's HTTPRoute, used untyped (the gateway-api crate is on another kube version).
pub fn http_route_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    ApiResource::from_gvk_with_plural(&gvk, "httproutes")
}

fn http_routes(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &http_route_resource())
}

/// (rule, backendRef) index pairs of the route's backendRefs that name `service`.
fn backend_positions(route: &DynamicObject, service: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let rules = route.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        for (j, backend) in rule["backendRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let kind_ok = backend["kind"].as_str().is_none_or(|k| k == "Service");
            if kind_ok && backend["name"].as_str() == Some(service) {
                out.push((i, j));
            }
        }
    }
    out
}

/// Applies a plan in the order that keeps traffic on pods that exist: scale up, then Services and
/// route weights, then scale down.
async fn execute(
    rollout: &Rollout,
    ctx: &Context,
    namespace: &str,
    strategy: Strategy<'_>,
    hash: &str,
    views: &[ReplicaSetView],
    plan: &Plan,
) -> Result<(), Error> {
    let client = ctx.client.clone();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let observed: BTreeMap<&str, &ReplicaSetView> =
        views.iter().map(|v| (v.hash.as_str(), v)).collect();
    let name_of = |h: &str| format!("{}-{h}", rollout.name_any());

    if plan.create_current {
        let replicas = plan.scale.get(hash).copied().unwrap_or(0);
        let rs = build_replica_set(rollout, hash, replicas)?;
        replica_sets
            .patch(
                &name_of(hash),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&rs),
            )
            .await?;
        info!(hash, replicas, "created ReplicaSet");
    }
    let scale = |h: &str, n: i32| {
        let replica_sets = replica_sets.clone();
        let name = name_of(h);
        async move {
            let patch = json!({"spec": {"replicas": n}});
            replica_sets
                .patch(&name, &writer(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    };
    for (h, n) in &plan.scale {
        if let Some(current) = observed.get(h.as_str())
            && *n > current.replicas
        {
            scale(h, *n).await?;
        }
    }
    for (h, at) in &plan.scale_down_at {
        if observed.contains_key(h.as_str()) {
            let value = at.map(|t| t.to_string());
            let patch = json!({"metadata": {"annotations": {SCALE_DOWN_AT_ANNOTATION: value}}});
            replica_sets
                .patch(&name_of(h), &writer(), &Patch::Merge(&patch))
                .await?;
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for (service, target) in [
        (strategy.stable_service(), &plan.traffic.stable_hash),
        (strategy.canary_service(), &plan.traffic.canary_hash),
    ] {
        let Some(service) = service else { continue };
        // Point a Service only at a ReplicaSet that exists, so it never selects nothing by mistake.
        if !observed.contains_key(target.as_str()) && target != hash {
            continue;
        }
        if let Some(svc) = cache::get(&ctx.caches.services, namespace, service) {
            let current = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL));
            if current != Some(target) {
                let patch = json!({"spec": {"selector": {POD_TEMPLATE_HASH_LABEL: target}}});
                services
                    .patch(service, &writer(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }
    if let (Some(routing), Some(canary_service), Some(stable_service)) = (
        strategy.traffic_routing(),
        strategy.canary_service(),
        strategy.stable_service(),
    ) {
        let routes = http_routes(&client, namespace);
        let route_name = &routing.gateway_api.http_route;
        if let Some(route) = ctx.caches.route(namespace, route_name) {
            let weight = plan.traffic.canary_weight;
            let mut ops = Vec::new();
            for (service, w) in [(canary_service, weight), (stable_service, 100 - weight)] {
                for (i, j) in backend_positions(&route, service) {
                    let current =
                        route.data["spec"]["rules"][i]["backendRefs"][j]["weight"].as_i64();
                    if current != Some(i64::from(w)) {
                        let path = format!("/spec/rules/{i}/backendRefs/{j}");
                        ops.push(
                            json!({"op": "test", "path": format!("{path}/name"), "value": service}),
                        );
                        ops.push(
                            json!({"op": "add", "path": format!("{path}/weight"), "value": w}),
                        );
                    }
                }
            }
            if !ops.is_empty() {
                let patch: json_patch::Patch =
                    serde_json::from_value(serde_json::Value::Array(ops))?;
                routes
                    .patch(route_name, &writer(), &Patch::<()>::Json(patch))
                    .await?;
                info!(
                    route = route_name.as_str(),
                    canary_weight = weight,
                    "set route weights"
                );
            }
            let in_flight = plan.traffic.canary_hash != plan.traffic.stable_hash;
            let marked = route.annotations().contains_key(ROUTE_IN_FLIGHT_ANNOTATION);
            if in_flight != marked {
                let value = in_flight.then(|| rollout.name_any());
                let patch =
                    json!({"metadata": {"annotations": {ROUTE_IN_FLIGHT_ANNOTATION: value}}});
                routes
                    .patch(route_name, &writer(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }

    for (h, n) in &plan.scale {
        if let Some(current) = observed.get(h.as_str())
            && *n < current.replicas
        {
            scale(h, *n).await?;
        }
    }
    for h in &plan.delete {
        info!(
            hash = h.as_str(),
            "deleting a ReplicaSet beyond revisionHistoryLimit"
        );
        replica_sets
            .delete(&name_of(h), &DeleteParams::background())
            .await?;
    }
    label_roles(rollout, &client, namespace, strategy, plan).await?;
    Ok(())
}

/// Puts each role's metadata (`stableMetadata`/`canaryMetadata`, `activeMetadata`/`previewMetadata`)
/// on the pods that hold the role, and takes it off pods that no longer do.
async fn label_roles(
    rollout: &Rollout,
    client: &kube::Client,
    namespace: &str,
    strategy: Strategy<'_>,
    plan: &Plan,
) -> Result<(), Error> {
    let (first, second) = match strategy {
        Strategy::Canary(c) => (c.stable_metadata.as_ref(), c.canary_metadata.as_ref()),
        Strategy::BlueGreen(b) => (b.active_metadata.as_ref(), b.preview_metadata.as_ref()),
    };
    if first.is_none() && second.is_none() {
        return Ok(());
    }
    // The first role wins where both name the same version (no release in flight).
    let mut roles = vec![(plan.traffic.stable_hash.as_str(), first)];
    if plan.traffic.canary_hash != plan.traffic.stable_hash {
        roles.push((plan.traffic.canary_hash.as_str(), second));
    }
    let role_labels: Vec<&String> = [first, second]
        .into_iter()
        .flatten()
        .flat_map(|m| m.labels.keys())
        .collect();
    let role_annotations: Vec<&String> = [first, second]
        .into_iter()
        .flatten()
        .flat_map(|m| m.annotations.keys())
        .collect();
    let selector = pod_selector(rollout);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let Some(hash) = pod.labels().get(POD_TEMPLATE_HASH_LABEL) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let wanted = roles.iter().find(|(h, _)| h == hash).and_then(|(_, m)| *m);
        let mut labels = serde_json::Map::new();
        let mut annotations = serde_json::Map::new();
        for key in &role_labels {
            let want = wanted.and_then(|m| m.labels.get(*key));
            if pod.labels().get(*key) != want {
                labels.insert((*key).clone(), json!(want));
            }
        }
        for key in &role_annotations {
            let want = wanted.and_then(|m| m.annotations.get(*key));
            if pod.annotations().get(*key) != want {
                annotations.insert((*key).clone(), json!(want));
            }
        }
        if labels.is_empty() && annotations.is_empty() {
            continue;
        }
        let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
        pods.patch(&pod.name_any(), &writer(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// The ReplicaSet of one revision: the Rollout's template with the hash label, owned by the Rollout.
fn build_replica_set(
    rollout: &Rollout,
    hash: &str,
    replicas: i32,
) -> Result<serde_json::Value, Error> {
    let mut template = serde_json::to_value(rollout.spec.template.clone().unwrap_or_default())?;
    template["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    let selector: &LabelSelector = &rollout.spec.selector;
    let mut selector = serde_json::to_value(selector)?;
    selector["matchLabels"][POD_TEMPLATE_HASH_LABEL] = json!(hash);
    let mut labels = rollout
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    labels.insert(ROLLOUT_LABEL.to_owned(), rollout.name_any());
    let owner = rollout.controller_owner_ref(&());
    let original = serde_json::to_string(&rollout.spec.template)?;
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", rollout.name_any()),
            "labels": labels,
            "annotations": {TEMPLATE_ANNOTATION: original},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": rollout.spec.min_ready_seconds.unwrap_or(0),
            "selector": selector,
            "template": template,
        }
    }))
}
