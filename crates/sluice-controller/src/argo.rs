//! Argo Rollouts in the same cluster: what its Rollouts (`argoproj.io`) claim, so that a Sluice
//! Rollout never writes a Service or route one of them runs, and says so when its selector would
//! select the same pods as one.
//!
//! Argo's Rollouts are watched only where their CRD is installed, trimmed to their selector, pod
//! labels, Services and routes. A Sluice Rollout taking one over (`sluice.dev/takeover-from`) may
//! of course share all of them with it.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use sluice_api::names::TAKEOVER_ANNOTATION;
use sluice_api::rollout::Rollout;

use crate::cache::Reference;

/// Argo Rollouts' Rollout.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// Keeps what conflicts are judged from: the selector, the pod labels, the Services and routing.
pub fn trim(rollout: &mut DynamicObject) {
    rollout.metadata.managed_fields = None;
    rollout.metadata.annotations = None;
    rollout.metadata.labels = None;
    let spec = &rollout.data["spec"];
    let canary = &spec["strategy"]["canary"];
    let blue_green = &spec["strategy"]["blueGreen"];
    rollout.data = json!({"spec": {
        "selector": spec["selector"],
        "template": {"metadata": {"labels": spec["template"]["metadata"]["labels"]}},
        "strategy": {
            "canary": {
                "stableService": canary["stableService"],
                "canaryService": canary["canaryService"],
                "trafficRouting": canary["trafficRouting"],
            },
            "blueGreen": {
                "activeService": blue_green["activeService"],
                "previewService": blue_green["previewService"],
            },
        },
    }});
}

/// The Services and routes an Argo Rollout runs, as `Kind/name`.
fn claims(spec: &Value) -> BTreeSet<String> {
    let mut claims = BTreeSet::new();
    let mut add = |kind: &str, name: &Value| {
        if let Some(name) = name.as_str() {
            claims.insert(format!("{kind}/{name}"));
        }
    };
    let canary = &spec["strategy"]["canary"];
    let blue_green = &spec["strategy"]["blueGreen"];
    for service in [
        &canary["stableService"],
        &canary["canaryService"],
        &blue_green["activeService"],
        &blue_green["previewService"],
    ] {
        add("Service", service);
    }
    let routing = &canary["trafficRouting"];
    let gateway = &routing["plugins"]["argoproj-labs/gatewayAPI"];
    add("HTTPRoute", &gateway["httpRoute"]);
    for route in gateway["httpRoutes"].as_array().into_iter().flatten() {
        add("HTTPRoute", &route["name"]);
    }
    let istio = &routing["istio"];
    add("VirtualService", &istio["virtualService"]["name"]);
    for service in istio["virtualServices"].as_array().into_iter().flatten() {
        add("VirtualService", &service["name"]);
    }
    add("DestinationRule", &istio["destinationRule"]["name"]);
    let nginx = &routing["nginx"];
    add("Ingress", &nginx["stableIngress"]);
    for ingress in nginx["stableIngresses"].as_array().into_iter().flatten() {
        add("Ingress", ingress);
    }
    claims
}

/// Whether every `matchLabels` entry of `selector` is among `labels` (a selector with only
/// expressions is not judged).
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector["matchLabels"]
        .as_object()
        .filter(|m| !m.is_empty())
    else {
        return false;
    };
    wanted
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// What Argo Rollouts in the Rollout's namespace claim that it names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Conflicts {
    /// A Service or route of an Argo Rollout's that this Rollout names: it is not written (the
    /// Rollout's spec is refused until mended).
    pub problem: Option<String>,
    /// Argo Rollouts whose selector selects this Rollout's pods, or whose pods this one's selects,
    /// with the sentence for the Event.
    pub overlaps: BTreeMap<String, String>,
}

/// The conflicts of `rollout` (naming `references`) with the Argo Rollouts in `namespace`.
pub fn conflicts(
    store: &Store<DynamicObject>,
    rollout: &Rollout,
    namespace: &str,
    references: &[Reference],
) -> Conflicts {
    let mut conflicts = Conflicts::default();
    let taken_over = rollout.annotations().get(TAKEOVER_ANNOTATION);
    let ours: BTreeSet<String> = references
        .iter()
        .filter_map(|reference| match reference {
            Reference::Service(name) => Some(format!("Service/{name}")),
            Reference::Route(kind, name) => Some(format!("{}/{name}", kind.resource().kind)),
            _ => None,
        })
        .collect();
    let our_selector = serde_json::to_value(&rollout.spec.selector).unwrap_or_default();
    let our_labels = serde_json::to_value(
        rollout
            .spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()),
    )
    .unwrap_or_default();
    for argo in store.state() {
        if argo.namespace().as_deref() != Some(namespace) {
            continue;
        }
        let name = argo.name_any();
        if taken_over == Some(&name) {
            continue;
        }
        let spec = &argo.data["spec"];
        if conflicts.problem.is_none()
            && let Some(shared) = claims(spec).intersection(&ours).next()
        {
            conflicts.problem = Some(format!(
                "{shared} is run by Argo Rollout {name} (argoproj.io): Sluice never writes what another controller runs; name one of its own, or take {name} over (kubectl sluice migrate --takeover {name})"
            ));
        }
        let argo_labels = &spec["template"]["metadata"]["labels"];
        if selects(&spec["selector"], &our_labels) || selects(&our_selector, argo_labels) {
            conflicts.overlaps.insert(
                name.clone(),
                format!(
                    "the selector of Argo Rollout {name} (argoproj.io) and this Rollout's select each other's pods: Sluice leaves Argo's ReplicaSets, Services and routes alone, but a Service selecting by these labels reaches both; give each its own labels"
                ),
            );
        }
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::RouteKind;

    fn argo(name: &str, spec: Value) -> DynamicObject {
        let mut object = DynamicObject::new(name, &resource()).within("shop");
        object.data = json!({"spec": spec});
        trim(&mut object);
        object
    }

    fn sluice(labels: Value) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}},
                     "strategy": {"canary": {}}}
        }))
        .unwrap_or_else(|err| panic!("{err}"))
    }

    fn store(objects: Vec<DynamicObject>) -> Store<DynamicObject> {
        let mut writer = kube::runtime::reflector::store::Writer::new(resource());
        for object in objects {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
        }
        writer.as_reader()
    }

    #[test]
    fn a_service_or_route_an_argo_rollout_runs_is_refused_unless_taken_over() {
        let argo = argo(
            "api",
            json!({
                "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api"}}},
                "strategy": {"canary": {"stableService": "shared", "trafficRouting": {
                    "plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "api-route"}}}}}
            }),
        );
        let store = store(vec![argo]);
        let rollout = sluice(json!({"app": "web"}));
        let service = [Reference::Service("shared".to_owned())];
        let found = conflicts(&store, &rollout, "shop", &service);
        assert!(
            found
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("Service/shared is run by Argo Rollout api")),
            "{found:?}"
        );
        let route = [Reference::Route(
            RouteKind::HttpRoute,
            "api-route".to_owned(),
        )];
        assert!(
            conflicts(&store, &rollout, "shop", &route)
                .problem
                .is_some()
        );
        assert!(
            conflicts(&store, &rollout, "other", &service)
                .problem
                .is_none()
        );
        let mut taking_over = rollout.clone();
        taking_over
            .annotations_mut()
            .insert(TAKEOVER_ANNOTATION.to_owned(), "api".to_owned());
        assert_eq!(
            conflicts(&store, &taking_over, "shop", &service),
            Conflicts::default()
        );
    }

    #[test]
    fn selectors_that_select_each_others_pods_are_an_overlap() {
        let store = store(vec![argo(
            "legacy",
            json!({
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "track": "argo"}}},
            }),
        )]);
        let overlapping = conflicts(&store, &sluice(json!({"app": "web"})), "shop", &[]);
        assert!(
            overlapping.overlaps.contains_key("legacy"),
            "{overlapping:?}"
        );
        let apart = conflicts(&store, &sluice(json!({"app": "shop-web"})), "shop", &[]);
        assert!(apart.overlaps.is_empty(), "{apart:?}");
    }
}
