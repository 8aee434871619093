//! The read path: one watch per kind feeds a local store that reconciles read instead of the API
//! server, and passes each change on to the controllers it wakes.
//!
//! Objects are trimmed on the way in (managed fields, the last-applied annotation, and per kind what
//! no decision reads), which is what keeps memory flat as the number of Rollouts grows. Kinds a
//! Rollout owns (ReplicaSets, AnalysisRuns) are also indexed by the Rollout that owns them, so a
//! reconcile finds its own objects without scanning every object of the kind.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Pod, PodCondition, PodStatus, Secret, Service, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api::analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
use sluice_api::{ErrorBudgetGate, Release, Rollout};

use crate::traffic::RouteKind;

/// Annotation `kubectl apply` keeps the whole last-applied object in: never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Object names by (namespace, owner name).
type NamesByOwner = HashMap<(String, String), BTreeSet<String>>;

/// The name of the object (in the same namespace) that owns an object, for an [`OwnerIndex`].
pub type OwnerOf<K> = fn(&K) -> Option<String>;

/// The Rollout named in an object's `sluice.dev/rollout` label (ReplicaSets and AnalysisRuns).
pub fn rollout_label<K: ResourceExt>(object: &K) -> Option<String> {
    object
        .labels()
        .get(sluice_api::names::ROLLOUT_LABEL)
        .cloned()
}

/// The ReplicaSet that controls a pod.
pub fn controlling_replica_set(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
}

/// The objects of one kind, by the namespace and name of the object that owns them (a Rollout, or a
/// pod's ReplicaSet).
#[derive(Clone, Default)]
pub struct OwnerIndex {
    by_owner: Arc<RwLock<NamesByOwner>>,
}

impl OwnerIndex {
    /// The names of the objects owned by `namespace`/`owner`.
    pub fn names(&self, namespace: &str, owner: &str) -> Vec<String> {
        self.by_owner
            .read()
            .map(|index| {
                index
                    .get(&(namespace.to_owned(), owner.to_owned()))
                    .map(|names| names.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    fn key<K: ResourceExt>(object: &K, owner: OwnerOf<K>) -> Option<(String, String)> {
        Some((object.namespace()?, owner(object)?))
    }

    fn insert<K: ResourceExt>(map: &mut NamesByOwner, object: &K, owner: OwnerOf<K>) {
        if let Some(key) = Self::key(object, owner) {
            map.entry(key).or_default().insert(object.name_any());
        }
    }

    fn remove<K: ResourceExt>(&self, object: &K, owner: OwnerOf<K>) {
        if let (Some(key), Ok(mut map)) = (Self::key(object, owner), self.by_owner.write())
            && let Some(names) = map.get_mut(&key)
        {
            names.remove(&object.name_any());
            if names.is_empty() {
                map.remove(&key);
            }
        }
    }
}

/// The stores reconciles read.
pub struct Caches {
    pub rollouts: Store<Rollout>,
    /// The Rollouts by the Services, routes and templates they name.
    pub rollout_references: ReferenceIndex,
    pub gates: Store<ErrorBudgetGate>,
    pub replica_sets: Store<ReplicaSet>,
    /// The ReplicaSets by the Rollout that owns them.
    pub replica_set_index: OwnerIndex,
    /// The pods of the Rollouts' ReplicaSets.
    pub pods: Store<Pod>,
    /// The pods by the ReplicaSet that controls them.
    pub pod_index: OwnerIndex,
    pub runs: Store<AnalysisRun>,
    /// The AnalysisRuns by the Rollout that owns them.
    pub run_index: OwnerIndex,
    pub services: Store<Service>,
    /// The routing objects routers read, by kind (empty where the kind's API is not installed).
    pub routes: HashMap<RouteKind, Store<DynamicObject>>,
    /// Argo Rollouts' Rollouts (where installed), trimmed to what they claim.
    pub argo_rollouts: Store<DynamicObject>,
    pub templates: Store<AnalysisTemplate>,
    pub cluster_templates: Store<ClusterAnalysisTemplate>,
    /// The Jobs of job metrics (labelled `sluice.dev/analysis-run`), trimmed to their outcome.
    pub jobs: Store<Job>,
    /// Every Deployment, by metadata only (name, uid, generation): which a Rollout's
    /// `workloadRef` names, and when its spec changes.
    pub deployments: Store<PartialObjectMeta<Deployment>>,
    /// The pod template and size of the Deployments Rollouts name, read once per generation.
    pub workloads: crate::workload::Templates,
    /// The Rollouts' release records (labelled `sluice.dev/rollout`); an ended one without its
    /// timeline, steps and analysis, which are never rewritten.
    pub releases: Store<Release>,
    /// The release records by the Rollout they belong to.
    pub release_index: OwnerIndex,
    /// The namespaces watched, by metadata: only the label that requires image digests.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The ConfigMaps `sluice-notifications` (one per namespace at most): the notification sinks.
    pub notification_sinks: Store<ConfigMap>,
    /// The Secrets open to analysis (labelled `sluice.dev/analysis-secret: "true"`, watched by that
    /// label), or `None` when the operator may not read Secrets (`--read-secrets=false`).
    pub secrets: Option<Store<Secret>>,
}

/// The writing ends of [`Caches`], for the watches.
pub struct Writers {
    pub rollouts: Writer<Rollout>,
    pub gates: Writer<ErrorBudgetGate>,
    pub replica_sets: Writer<ReplicaSet>,
    pub pods: Writer<Pod>,
    pub runs: Writer<AnalysisRun>,
    pub services: Writer<Service>,
    pub routes: Vec<(RouteKind, Writer<DynamicObject>)>,
    pub argo_rollouts: Writer<DynamicObject>,
    pub templates: Writer<AnalysisTemplate>,
    pub cluster_templates: Writer<ClusterAnalysisTemplate>,
    pub jobs: Writer<Job>,
    pub deployments: Writer<PartialObjectMeta<Deployment>>,
    pub releases: Writer<Release>,
    pub namespaces: Writer<PartialObjectMeta<Namespace>>,
    pub secrets: Writer<Secret>,
    pub notification_sinks: Writer<ConfigMap>,
}

impl Caches {
    /// Empty stores, filled once the watches start.
    pub fn new() -> (Self, Writers) {
        let (rollouts, rollouts_writer) = reflector::store();
        let (gates, gates_writer) = reflector::store();
        let (replica_sets, replica_sets_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (runs, runs_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let routes_writers: Vec<(RouteKind, Writer<DynamicObject>)> = RouteKind::ALL
            .into_iter()
            .map(|kind| (kind, Writer::new(kind.resource())))
            .collect();
        let routes = routes_writers
            .iter()
            .map(|(kind, writer)| (*kind, writer.as_reader()))
            .collect();
        let argo_rollouts_writer = Writer::new(crate::argo::resource());
        let argo_rollouts = argo_rollouts_writer.as_reader();
        let (templates, templates_writer) = reflector::store();
        let (cluster_templates, cluster_templates_writer) = reflector::store();
        let (jobs, jobs_writer) = reflector::store();
        let (deployments, deployments_writer) = reflector::store();
        let (releases, releases_writer) = reflector::store();
        let (namespaces, namespaces_writer) = reflector::store();
        let (notification_sinks, notification_sinks_writer) = reflector::store();
        let (secrets, secrets_writer) = reflector::store();
        (
            Self {
                rollouts,
                rollout_references: ReferenceIndex::default(),
                gates,
                replica_sets,
                replica_set_index: OwnerIndex::default(),
                pods,
                pod_index: OwnerIndex::default(),
                runs,
                run_index: OwnerIndex::default(),
                services,
                routes,
                argo_rollouts,
                templates,
                cluster_templates,
                jobs,
                deployments,
                workloads: Default::default(),
                releases,
                release_index: OwnerIndex::default(),
                namespaces,
                notification_sinks,
                secrets: Some(secrets),
            },
            Writers {
                rollouts: rollouts_writer,
                gates: gates_writer,
                replica_sets: replica_sets_writer,
                pods: pods_writer,
                runs: runs_writer,
                services: services_writer,
                routes: routes_writers,
                argo_rollouts: argo_rollouts_writer,
                templates: templates_writer,
                cluster_templates: cluster_templates_writer,
                jobs: jobs_writer,
                deployments: deployments_writer,
                releases: releases_writer,
                namespaces: namespaces_writer,
                notification_sinks: notification_sinks_writer,
                secrets: secrets_writer,
            },
        )
    }

    /// The routing object of `kind` `namespace`/`name`, if it exists.
    pub fn route(
        &self,
        kind: RouteKind,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<DynamicObject>> {
        self.routes
            .get(&kind)?
            .get(&ObjectRef::new_with(name, kind.resource()).within(namespace))
    }
}

/// What a kind's watch needs to know.
pub struct WatchSpec<K> {
    /// What to watch (an `Api<PartialObjectMeta<K>>` watches metadata only).
    pub api: Api<K>,
    pub config: watcher::Config,
    /// Drops what no reconcile reads.
    pub trim: fn(&mut K),
    /// Index the objects by their owner, into this index.
    pub owner: Option<(OwnerOf<K>, OwnerIndex)>,
    /// Index the objects by the objects they name, into this index (Rollouts).
    pub references: Option<(ReferencesOf<K>, ReferenceIndex)>,
    /// How many change streams to hand out, one per controller woken by the kind's changes.
    pub subscribers: usize,
    /// Changes are passed on only while this is set (the controllers run: this instance leads);
    /// before, only the store is kept, and the controllers start from what it holds.
    pub leading: Arc<AtomicBool>,
    /// Called with each deleted object, as its last state (e.g. to drop its metrics).
    pub on_delete: Option<OnDelete<K>>,
}

/// What a watch calls with each deleted object.
pub type OnDelete<K> = Arc<dyn Fn(&K) + Send + Sync>;

/// Starts watching into `writer`'s store: sends every object that changed (applied or deleted, and
/// every object again after a re-list) to each returned change stream, in the order seen. An update
/// that leaves the trimmed object as it was (a status field no decision reads, a resourceVersion)
/// is not sent: nothing that reads the store could decide differently. The store is updated before
/// a change is sent, so a reconcile woken by a change reads at least that. The streams are
/// unbounded: the first full list must complete (and the stores be ready) before the controllers
/// that drain them start, whatever the number of objects.
pub fn watch<K>(spec: WatchSpec<K>, writer: Writer<K>) -> Vec<mpsc::UnboundedReceiver<K>>
where
    K: Resource + Lookup<DynamicType = <K as Resource>::DynamicType>,
    K: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    <K as Resource>::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let (senders, changes): (Vec<_>, Vec<_>) = (0..spec.subscribers)
        .map(|_| mpsc::unbounded::<K>())
        .unzip();
    let trim = spec.trim;
    let kind = std::any::type_name::<K>();
    // `watch-lag-rollout` and so on: the fault tests' lagging cache (nothing without failpoints).
    let lag_point = format!(
        "watch-lag-{}",
        kind.rsplit("::").next().unwrap_or(kind).to_lowercase()
    );
    let events = watcher(spec.api, spec.config)
        .default_backoff()
        .modify(move |object| {
            strip_common(object.meta_mut());
            trim(object);
        })
        .then(move |event| {
            let lag = match &event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    crate::failpoints::lag(&lag_point)
                }
                _ => None,
            };
            async move {
                if let Some(lag) = lag {
                    tokio::time::sleep(lag).await;
                }
                event
            }
        })
        .reflect(writer);
    let owner = spec.owner;
    let references = spec.references;
    let leading = spec.leading;
    let on_delete = spec.on_delete;
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        // What each object looked like when last sent, by (namespace, name).
        let mut seen: HashMap<Key, u64> = HashMap::new();
        // Filled during a (re-)list, swapped in when it is complete, as the store does.
        let mut relisting: Option<(NamesByOwner, ReferenceMaps, HashMap<Key, u64>)> = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(%err, kind, "watch failed; retrying");
                    continue;
                }
            };
            let touched = match event {
                watcher::Event::Init => {
                    relisting = Some(Default::default());
                    None
                }
                watcher::Event::InitApply(object) => {
                    if let Some((owners, refs, hashes)) = relisting.as_mut() {
                        if let Some((owner_of, _)) = &owner {
                            OwnerIndex::insert(owners, &object, *owner_of);
                        }
                        if let Some((references_of, _)) = &references {
                            refs.insert(&object, references_of(&object));
                        }
                        hashes.insert(key_of(&object), content_hash(&object));
                    }
                    Some(object)
                }
                watcher::Event::InitDone => {
                    if let Some((owners, refs, hashes)) = relisting.take() {
                        if let Some((_, index)) = &owner
                            && let Ok(mut current) = index.by_owner.write()
                        {
                            *current = owners;
                        }
                        if let Some((_, index)) = &references
                            && let Ok(mut current) = index.maps.write()
                        {
                            *current = refs;
                        }
                        seen = hashes;
                    }
                    None
                }
                watcher::Event::Apply(object) => {
                    let hash = content_hash(&object);
                    if seen.insert(key_of(&object), hash) == Some(hash) {
                        None
                    } else {
                        if let Some((owner_of, index)) = &owner
                            && let Ok(mut map) = index.by_owner.write()
                        {
                            OwnerIndex::insert(&mut map, &object, *owner_of);
                        }
                        if let Some((references_of, index)) = &references
                            && let Ok(mut maps) = index.maps.write()
                        {
                            maps.insert(&object, references_of(&object));
                        }
                        Some(object)
                    }
                }
                watcher::Event::Delete(object) => {
                    seen.remove(&key_of(&object));
                    if let Some(on_delete) = &on_delete {
                        on_delete(&object);
                    }
                    if let Some((owner_of, index)) = &owner {
                        index.remove(&object, *owner_of);
                    }
                    if let Some((_, index)) = &references
                        && let Ok(mut maps) = index.maps.write()
                    {
                        maps.remove(&object);
                    }
                    Some(object)
                }
            };
            if let Some(object) = touched
                && leading.load(Ordering::Relaxed)
            {
                for sender in &senders {
                    // A controller that stopped is shutting down: nothing left to wake.
                    let _ = sender.unbounded_send(object.clone());
                }
            }
        }
    });
    changes
}

/// An object's (namespace, name).
type Key = (String, String);

/// A referenced object: its namespace (none if cluster-scoped) and what it is.
type Scoped = (Option<String>, Reference);

fn key_of<K: ResourceExt>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// A hash of what the store keeps of an object, but its resourceVersion.
fn content_hash<K: Resource + Serialize>(object: &K) -> u64 {
    use std::hash::Hasher;
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(meta) = value
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(value.to_string().as_bytes());
    hasher.finish()
}

/// An object a Rollout names, that wakes it when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// A Service in the Rollout's namespace.
    Service(String),
    /// A routing object (HTTPRoute, VirtualService, ...) in the Rollout's namespace.
    Route(RouteKind, String),
    /// An AnalysisTemplate in the Rollout's namespace.
    Template(String),
    /// A ClusterAnalysisTemplate.
    ClusterTemplate(String),
    /// A Deployment in the Rollout's namespace (`workloadRef`).
    Workload(String),
    /// The Argo Rollout in the Rollout's namespace it takes over (`sluice.dev/takeover-from`).
    TakeoverFrom(String),
}

impl Reference {
    /// The namespace the referenced object lives in, for a referrer in `namespace`.
    fn scope(&self, namespace: &str) -> Option<String> {
        match self {
            Self::ClusterTemplate(_) => None,
            _ => Some(namespace.to_owned()),
        }
    }
}

/// The objects an object names, for a [`ReferenceIndex`].
pub type ReferencesOf<K> = fn(&K) -> Vec<Reference>;

/// Referrers (namespace, name) by what they name (its namespace, or none if cluster-scoped), and
/// what each referrer names, to take it out again.
#[derive(Default)]
struct ReferenceMaps {
    referrers: HashMap<Scoped, BTreeSet<Key>>,
    named_by: HashMap<Key, Vec<Scoped>>,
}

impl ReferenceMaps {
    fn insert<K: ResourceExt>(&mut self, object: &K, references: Vec<Reference>) {
        self.remove(object);
        let referrer = key_of(object);
        let keys: Vec<Scoped> = references
            .into_iter()
            .map(|r| (r.scope(&referrer.0), r))
            .collect();
        for key in &keys {
            self.referrers
                .entry(key.clone())
                .or_default()
                .insert(referrer.clone());
        }
        if !keys.is_empty() {
            self.named_by.insert(referrer, keys);
        }
    }

    fn remove<K: ResourceExt>(&mut self, object: &K) {
        let referrer = key_of(object);
        for key in self.named_by.remove(&referrer).unwrap_or_default() {
            if let Some(referrers) = self.referrers.get_mut(&key) {
                referrers.remove(&referrer);
                if referrers.is_empty() {
                    self.referrers.remove(&key);
                }
            }
        }
    }
}

/// Which objects (Rollouts) name a Service, route or template: what a change to one wakes.
#[derive(Clone, Default)]
pub struct ReferenceIndex {
    maps: Arc<RwLock<ReferenceMaps>>,
}

impl ReferenceIndex {
    /// The referrers of `reference`, an object in `namespace` (`None`: cluster-scoped).
    pub fn referrers<K>(&self, namespace: Option<String>, reference: Reference) -> Vec<ObjectRef<K>>
    where
        K: Lookup,
        K::DynamicType: Default,
    {
        self.maps
            .read()
            .map(|maps| {
                maps.referrers
                    .get(&(namespace, reference))
                    .map(|referrers| {
                        referrers
                            .iter()
                            .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

/// What no reconcile reads on any kind.
fn strip_common(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Keeps nothing more.
pub fn keep_all<K>(_: &mut K) {}

/// A Deployment's metadata as a Rollout's `workloadRef` reads it: its name, uid and generation (a
/// change to its status or labels wakes nothing).
pub fn trim_deployment(deployment: &mut PartialObjectMeta<Deployment>) {
    let meta = &mut deployment.metadata;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.creation_timestamp = None;
}

/// A namespace as a release reads it: its name and whether it requires image digests (a change to
/// anything else wakes nothing).
pub fn trim_namespace(namespace: &mut PartialObjectMeta<Namespace>) {
    let meta = &mut namespace.metadata;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|key, _| key == sluice_api::names::REQUIRE_IMAGE_DIGEST_LABEL);
    }
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
}

/// Whether `namespace` requires every image its Rollouts release to carry a digest (its label
/// [`REQUIRE_IMAGE_DIGEST_LABEL`](sluice_api::names::REQUIRE_IMAGE_DIGEST_LABEL) is `"true"`).
pub fn requires_digest(namespaces: &Store<PartialObjectMeta<Namespace>>, namespace: &str) -> bool {
    namespaces
        .get(&ObjectRef::new(namespace))
        .and_then(|ns| {
            ns.metadata
                .labels
                .as_ref()?
                .get(sluice_api::names::REQUIRE_IMAGE_DIGEST_LABEL)
                .map(|v| v == "true")
        })
        .unwrap_or(false)
}

/// A ReplicaSet as a release decision sees it: its labels, owner, scale-down annotation, size and
/// availability; not its pod template, nor the status fields no decision reads (so that the
/// ReplicaSet controller's bookkeeping wakes nothing).
pub fn trim_replica_set(rs: &mut ReplicaSet) {
    if let Some(annotations) = rs.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == sluice_api::names::SCALE_DOWN_AT_ANNOTATION);
    }
    rs.metadata.generation = None;
    rs.spec = rs.spec.take().map(|spec| ReplicaSetSpec {
        replicas: spec.replicas,
        selector: spec.selector,
        ..ReplicaSetSpec::default()
    });
    rs.status = rs.status.take().map(|status| ReplicaSetStatus {
        available_replicas: status.available_replicas,
        ..ReplicaSetStatus::default()
    });
}

/// A pod as a decision sees it: its labels and annotations (role metadata), owner, creation and
/// deletion times, and since when it is Ready; not its spec or the rest of its status.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.generation = None;
    pod.metadata.finalizers = None;
    pod.spec = None;
    pod.status = pod.status.take().map(|status| PodStatus {
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    last_transition_time: c.last_transition_time,
                    ..PodCondition::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
}

/// An AnalysisRun as the controllers see it: once it has finished, with only each metric's last
/// measurement (the Rollout reads its phase, message and each metric's verdict, its release record
/// the measurement that decided it; the run's own reconciler no longer looks at it). A running run
/// is kept whole: its reconciler records the next measurement on it.
pub fn trim_run(run: &mut AnalysisRun) {
    if let Some(status) = run.status.as_mut()
        && status
            .phase
            .is_some_and(sluice_engine::analysis::is_completed)
    {
        // The last measurement of each metric stays: the release record shows what decided it.
        for result in &mut status.metric_results {
            let last = result.measurements.pop();
            result.measurements = last.into_iter().collect();
        }
    }
}

/// A Secret open to analysis as the controller keeps it: its name, labels, data and where its
/// values may be sent (`sluice.dev/destinations`).
pub fn trim_secret(secret: &mut Secret) {
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| key == sluice_api::names::SECRET_DESTINATIONS_ANNOTATION);
    }
}

/// A release record as the controller reads it back: an ended one is never rewritten (but for the
/// time stable was restored, which needs only its release's fields), so its timeline, steps and
/// analysis are not kept.
pub fn trim_release(record: &mut Release) {
    let release = &mut record.spec.release;
    if release.outcome.is_some() {
        release.timeline = Vec::new();
        release.steps = Vec::new();
        release.images = Vec::new();
        if release.restored_at.is_some() || release.aborted_by.is_none() {
            record.spec.analysis = Vec::new();
        }
    }
}

/// A job metric's Job as the controller sees it: its name, owner and outcome conditions.
pub fn trim_job(job: &mut Job) {
    job.metadata.annotations = None;
    job.metadata.generation = None;
    job.spec = None;
    job.status = job.status.take().map(|status| JobStatus {
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| matches!(c.type_.as_str(), "Complete" | "Failed"))
                .collect()
        }),
        ..JobStatus::default()
    });
}

/// A Service as the controller sees it: that it exists, and its selector.
pub fn trim_service(service: &mut Service) {
    service.metadata.annotations = None;
    service.metadata.labels = None;
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        selector: spec.selector,
        ..ServiceSpec::default()
    });
    service.status = None;
}

/// The objects of a store whose names the index lists, skipping any the store no longer has.
pub fn owned<K>(store: &Store<K>, index: &OwnerIndex, namespace: &str, owner: &str) -> Vec<Arc<K>>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    index
        .names(namespace, owner)
        .into_iter()
        .filter_map(|name| store.get(&ObjectRef::new(&name).within(namespace)))
        .collect()
}

/// One object of a store by namespace and name.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// A controller's trigger: every object the store holds now, then each change passed on. The store
/// is read after the controllers start leading, so nothing falls between the two (an object may come
/// twice, which costs one more reconcile).
pub fn as_trigger_from<K>(
    store: &Store<K>,
    changes: mpsc::UnboundedReceiver<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let now: Vec<K> = store.state().iter().map(|k| K::clone(k)).collect();
    futures::stream::iter(now).chain(changes).map(Ok)
}

/// A stream of changes as a controller's trigger takes it.
pub fn as_trigger<K>(
    changes: impl Stream<Item = K> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    changes.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(namespace: &str, name: &str) -> Service {
        let mut service = Service::default();
        service.metadata.namespace = Some(namespace.to_owned());
        service.metadata.name = Some(name.to_owned());
        service
    }

    fn referrers(index: &ReferenceIndex, namespace: Option<&str>, r: Reference) -> Vec<String> {
        index
            .referrers::<Service>(namespace.map(str::to_owned), r)
            .into_iter()
            .map(|o| format!("{}/{}", o.namespace.unwrap_or_default(), o.name))
            .collect()
    }

    #[test]
    fn referrers_follow_what_each_object_names_now() {
        let index = ReferenceIndex::default();
        let a = named("team-a", "web");
        let b = named("team-b", "web");
        if let Ok(mut maps) = index.maps.write() {
            maps.insert(&a, vec![Reference::Service("stable".into())]);
            maps.insert(
                &b,
                vec![
                    Reference::Service("stable".into()),
                    Reference::ClusterTemplate("checks".into()),
                ],
            );
        }
        let stable = || Reference::Service("stable".into());
        // A Service named the same in another namespace is another Service.
        assert_eq!(referrers(&index, Some("team-a"), stable()), ["team-a/web"]);
        assert_eq!(referrers(&index, Some("team-b"), stable()), ["team-b/web"]);
        assert_eq!(
            referrers(&index, None, Reference::ClusterTemplate("checks".into())),
            ["team-b/web"]
        );
        // Naming something else drops the old reference; deletion drops them all.
        if let Ok(mut maps) = index.maps.write() {
            maps.insert(&a, vec![Reference::Service("other".into())]);
            maps.remove(&b);
        }
        assert!(referrers(&index, Some("team-a"), stable()).is_empty());
        assert!(referrers(&index, Some("team-b"), stable()).is_empty());
        assert_eq!(
            referrers(&index, Some("team-a"), Reference::Service("other".into())),
            ["team-a/web"]
        );
        assert!(index.maps.read().is_ok_and(|m| m.named_by.len() == 1));
    }

    #[test]
    fn only_what_survives_trimming_counts_as_a_change() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some("web-abc".into());
        rs.metadata.resource_version = Some("1".into());
        rs.status = Some(ReplicaSetStatus {
            replicas: 1,
            available_replicas: Some(1),
            observed_generation: Some(1),
            ..ReplicaSetStatus::default()
        });
        let mut bookkeeping = rs.clone();
        bookkeeping.metadata.resource_version = Some("2".into());
        if let Some(status) = bookkeeping.status.as_mut() {
            status.observed_generation = Some(2);
            status.fully_labeled_replicas = Some(1);
        }
        let mut availability = rs.clone();
        if let Some(status) = availability.status.as_mut() {
            status.available_replicas = Some(0);
        }
        for object in [&mut rs, &mut bookkeeping, &mut availability] {
            trim_replica_set(object);
        }
        assert_eq!(content_hash(&rs), content_hash(&bookkeeping));
        assert_ne!(content_hash(&rs), content_hash(&availability));
    }
}
