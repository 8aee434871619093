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
use std::sync::{Arc, RwLock};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sluice_api::analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
use sluice_api::{ErrorBudgetGate, Rollout};

/// Annotation `kubectl apply` keeps the whole last-applied object in: never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Object names by (namespace, owning Rollout).
type NamesByOwner = HashMap<(String, String), BTreeSet<String>>;

/// The objects of one kind, by the namespace and name of the Rollout that owns them.
#[derive(Clone, Default)]
pub struct OwnerIndex {
    by_owner: Arc<RwLock<NamesByOwner>>,
}

impl OwnerIndex {
    /// The names of the objects labelled as owned by Rollout `namespace`/`owner`.
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

    fn key<K: ResourceExt>(object: &K, label: &str) -> Option<(String, String)> {
        Some((object.namespace()?, object.labels().get(label)?.clone()))
    }

    fn insert<K: ResourceExt>(map: &mut NamesByOwner, object: &K, label: &str) {
        if let Some(key) = Self::key(object, label) {
            map.entry(key).or_default().insert(object.name_any());
        }
    }

    fn remove<K: ResourceExt>(&self, object: &K, label: &str) {
        if let (Some(key), Ok(mut map)) = (Self::key(object, label), self.by_owner.write())
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
    pub gates: Store<ErrorBudgetGate>,
    pub replica_sets: Store<ReplicaSet>,
    /// The ReplicaSets by the Rollout that owns them.
    pub replica_set_index: OwnerIndex,
    pub runs: Store<AnalysisRun>,
    /// The AnalysisRuns by the Rollout that owns them.
    pub run_index: OwnerIndex,
    pub services: Store<Service>,
    /// HTTPRoutes (empty where the Gateway API is not installed).
    pub routes: Store<DynamicObject>,
    pub templates: Store<AnalysisTemplate>,
    pub cluster_templates: Store<ClusterAnalysisTemplate>,
}

/// The writing ends of [`Caches`], for the watches.
pub struct Writers {
    pub rollouts: Writer<Rollout>,
    pub gates: Writer<ErrorBudgetGate>,
    pub replica_sets: Writer<ReplicaSet>,
    pub runs: Writer<AnalysisRun>,
    pub services: Writer<Service>,
    pub routes: Writer<DynamicObject>,
    pub templates: Writer<AnalysisTemplate>,
    pub cluster_templates: Writer<ClusterAnalysisTemplate>,
}

impl Caches {
    /// Empty stores, filled once the watches start.
    pub fn new() -> (Self, Writers) {
        let (rollouts, rollouts_writer) = reflector::store();
        let (gates, gates_writer) = reflector::store();
        let (replica_sets, replica_sets_writer) = reflector::store();
        let (runs, runs_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let routes_writer = Writer::new(crate::traffic::gateway_api::http_route_resource());
        let routes = routes_writer.as_reader();
        let (templates, templates_writer) = reflector::store();
        let (cluster_templates, cluster_templates_writer) = reflector::store();
        (
            Self {
                rollouts,
                gates,
                replica_sets,
                replica_set_index: OwnerIndex::default(),
                runs,
                run_index: OwnerIndex::default(),
                services,
                routes,
                templates,
                cluster_templates,
            },
            Writers {
                rollouts: rollouts_writer,
                gates: gates_writer,
                replica_sets: replica_sets_writer,
                runs: runs_writer,
                services: services_writer,
                routes: routes_writer,
                templates: templates_writer,
                cluster_templates: cluster_templates_writer,
            },
        )
    }

    /// The HTTPRoute `namespace`/`name`, if it exists.
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.routes.get(
            &ObjectRef::new_with(name, crate::traffic::gateway_api::http_route_resource())
                .within(namespace),
        )
    }
}

/// What a kind's watch needs to know.
pub struct WatchSpec<K> {
    pub api: Api<K>,
    pub config: watcher::Config,
    /// Drops what no reconcile reads.
    pub trim: fn(&mut K),
    /// Index the objects by the Rollout named in this label, into this index.
    pub owner: Option<(&'static str, OwnerIndex)>,
    /// How many change streams to hand out, one per controller woken by the kind's changes.
    pub subscribers: usize,
}

/// Starts watching into `writer`'s store: sends every object that changed (applied or deleted, and
/// every object again after a re-list) to each returned change stream, in the order seen. The store
/// is updated before a change is sent, so a reconcile woken by a change reads at least that. The
/// streams are unbounded: the first full list must complete (and the stores be ready) before the
/// controllers that drain them start, whatever the number of objects.
pub fn watch<K>(spec: WatchSpec<K>, writer: Writer<K>) -> Vec<mpsc::UnboundedReceiver<K>>
where
    K: Resource + Lookup<DynamicType = <K as Resource>::DynamicType>,
    K: Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    <K as Resource>::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let (senders, changes): (Vec<_>, Vec<_>) = (0..spec.subscribers)
        .map(|_| mpsc::unbounded::<K>())
        .unzip();
    let trim = spec.trim;
    let events = watcher(spec.api, spec.config)
        .default_backoff()
        .modify(move |object| {
            strip_common(object.meta_mut());
            trim(object);
        })
        .reflect(writer);
    let kind = std::any::type_name::<K>();
    let owner = spec.owner;
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        // Filled during a (re-)list, swapped in when it is complete, as the store does.
        let mut relisting: Option<NamesByOwner> = None;
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
                    relisting = Some(HashMap::new());
                    None
                }
                watcher::Event::InitApply(object) => {
                    if let (Some((label, _)), Some(map)) = (&owner, relisting.as_mut()) {
                        OwnerIndex::insert(map, &object, label);
                    }
                    Some(object)
                }
                watcher::Event::InitDone => {
                    if let (Some((_, index)), Some(map)) = (&owner, relisting.take())
                        && let Ok(mut current) = index.by_owner.write()
                    {
                        *current = map;
                    }
                    None
                }
                watcher::Event::Apply(object) => {
                    if let Some((label, index)) = &owner
                        && let Ok(mut map) = index.by_owner.write()
                    {
                        OwnerIndex::insert(&mut map, &object, label);
                    }
                    Some(object)
                }
                watcher::Event::Delete(object) => {
                    if let Some((label, index)) = &owner {
                        index.remove(&object, label);
                    }
                    Some(object)
                }
            };
            if let Some(object) = touched {
                for sender in &senders {
                    // A controller that stopped is shutting down: nothing left to wake.
                    let _ = sender.unbounded_send(object.clone());
                }
            }
        }
    });
    changes
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

/// A ReplicaSet as a release decision sees it: its labels, owner, scale-down annotation, size and
/// availability; not its pod template.
pub fn trim_replica_set(rs: &mut ReplicaSet) {
    if let Some(annotations) = rs.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == sluice_api::names::SCALE_DOWN_AT_ANNOTATION);
    }
    rs.spec = rs.spec.take().map(|spec| ReplicaSetSpec {
        replicas: spec.replicas,
        min_ready_seconds: spec.min_ready_seconds,
        selector: spec.selector,
        template: None,
    });
    rs.status = rs.status.take().map(|status| ReplicaSetStatus {
        replicas: status.replicas,
        available_replicas: status.available_replicas,
        ready_replicas: status.ready_replicas,
        observed_generation: status.observed_generation,
        ..ReplicaSetStatus::default()
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

/// An HTTPRoute as the controller sees it: its rules' backendRefs (name, kind, weight, at their
/// positions, which the weight patches address) and Sluice's own annotation.
pub fn trim_route(route: &mut DynamicObject) {
    if let Some(annotations) = route.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == sluice_api::names::ROUTE_IN_FLIGHT_ANNOTATION);
    }
    route.metadata.labels = None;
    let rules: Vec<serde_json::Value> = route.data["spec"]["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|rule| {
                    let refs: Vec<serde_json::Value> = rule["backendRefs"]
                        .as_array()
                        .map(|refs| {
                            refs.iter()
                                .map(|r| {
                                    serde_json::json!({
                                        "name": r["name"],
                                        "kind": r["kind"],
                                        "weight": r["weight"],
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    serde_json::json!({ "backendRefs": refs })
                })
                .collect()
        })
        .unwrap_or_default();
    route.data = serde_json::json!({ "spec": { "rules": rules } });
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

/// A stream of changes as a controller's trigger takes it.
pub fn as_trigger<K>(
    changes: mpsc::UnboundedReceiver<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    changes.map(Ok)
}
