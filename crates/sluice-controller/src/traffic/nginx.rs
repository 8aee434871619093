//! NGINX Ingress (as Argo Rollouts): while a release is in flight, a canary Ingress beside each
//! stable Ingress, owned by the Rollout: the stable Ingress's paths that send to the stable
//! Service, sent to the canary Service, with NGINX's `canary` and `canary-weight` annotations (and
//! any more the Rollout asks for, such as `canary-by-header`). The stable Ingress is only read. The
//! canary Ingress is written with server-side apply when it differs from what it should be, and
//! deleted when the release ends.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_api::names::ROLLOUT_LABEL;
use sluice_api::rollout::NginxRouting;
use sluice_engine::release::Traffic;
use tracing::info;

use super::{RouteKind, TrafficRouter};
use crate::cache::{self, Caches, Reference};
use crate::error::{Error, Writing};
use crate::{Context, FIELD_MANAGER};

/// NGINX's annotation prefix unless the Rollout names another.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io";

/// The NGINX canary annotations a Rollout may add (`additionalIngressAnnotations`), as Argo Rollouts
/// documents them; anything else of NGINX's (a snippet above all) is not a tenant's to set through
/// the operator.
const ALLOWED_CANARY_ANNOTATIONS: [&str; 5] = [
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight-total",
];

/// The ingress class annotation older Ingresses use instead of `ingressClassName`.
const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// A canary's NGINX routing and the two Services it sends to.
pub struct Nginx<'a> {
    pub spec: &'a NginxRouting,
    pub canary_service: &'a str,
    pub stable_service: &'a str,
}

/// The canary Ingress of `stable` for `rollout`, named as Argo Rollouts names it.
pub fn canary_ingress_name(rollout: &str, stable: &str) -> String {
    format!("{rollout}-{stable}-canary")
}

impl Nginx<'_> {
    fn stable_ingresses(&self) -> Vec<&str> {
        self.spec
            .stable_ingress
            .iter()
            .chain(self.spec.stable_ingresses.iter().flatten())
            .map(String::as_str)
            .collect()
    }

    /// The annotations the canary Ingress carries at `weight`.
    fn annotations(&self, stable: &DynamicObject, weight: i32) -> BTreeMap<String, String> {
        let prefix = self
            .spec
            .annotation_prefix
            .as_deref()
            .unwrap_or(DEFAULT_ANNOTATION_PREFIX);
        let mut annotations = BTreeMap::new();
        if let Some(class) = stable.annotations().get(INGRESS_CLASS_ANNOTATION) {
            annotations.insert(INGRESS_CLASS_ANNOTATION.to_owned(), class.clone());
        }
        // Refused at apply too: only NGINX's canary annotations, and no snippet of any kind.
        for (key, value) in &self.spec.additional_ingress_annotations {
            if ALLOWED_CANARY_ANNOTATIONS.contains(&key.as_str()) {
                annotations.insert(format!("{prefix}/{key}"), value.clone());
            }
        }
        annotations.extend(
            self.spec
                .canary_ingress_annotations
                .iter()
                .filter(|(key, _)| {
                    !key.contains("snippet")
                        && !key.starts_with(&format!("{DEFAULT_ANNOTATION_PREFIX}/"))
                        && !key.starts_with(&format!("{prefix}/"))
                })
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        annotations.insert(format!("{prefix}/canary"), "true".to_owned());
        annotations.insert(format!("{prefix}/canary-weight"), weight.to_string());
        annotations
    }

    /// The stable Ingress's rules reduced to the paths that send to the stable Service, sent to
    /// the canary Service instead; or the problem.
    fn canary_spec(&self, stable: &DynamicObject) -> Result<Value, String> {
        let mut rules = Vec::new();
        for rule in stable.data["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let paths: Vec<Value> = rule["http"]["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["backend"]["service"]["name"].as_str() == Some(self.stable_service))
                .map(|p| {
                    let mut path = p.clone();
                    path["backend"]["service"]["name"] = json!(self.canary_service);
                    path
                })
                .collect();
            if !paths.is_empty() {
                let mut canary_rule = json!({"http": {"paths": paths}});
                if let Some(host) = rule["host"].as_str() {
                    canary_rule["host"] = json!(host);
                }
                rules.push(canary_rule);
            }
        }
        if rules.is_empty() {
            return Err(format!(
                "Ingress {:?} has no path with a backend to Service {:?}; Sluice copies those paths into the canary Ingress",
                stable.name_any(),
                self.stable_service
            ));
        }
        let mut spec = json!({ "rules": rules });
        if let Some(class) = stable.data["spec"]["ingressClassName"].as_str() {
            spec["ingressClassName"] = json!(class);
        }
        Ok(spec)
    }

    /// The stable Ingress and the name of its canary, checked: the problem, said for the user.
    fn checked(
        &self,
        caches: &Caches,
        namespace: &str,
        rollout: &str,
        stable: &str,
    ) -> Result<(std::sync::Arc<DynamicObject>, String), String> {
        let Some(ingress) = caches.route(RouteKind::Ingress, namespace, stable) else {
            return Err(format!(
                "Ingress {stable:?} named in spec.strategy.canary.trafficRouting.nginx does not exist in namespace {namespace}"
            ));
        };
        self.canary_spec(&ingress)?;
        let canary = canary_ingress_name(rollout, stable);
        if canary.len() > 253 {
            return Err(format!(
                "the canary Ingress name {canary:?} is longer than 253 characters: shorten the Rollout's or the Ingress's name"
            ));
        }
        if let Some(existing) = caches.route(RouteKind::Ingress, namespace, &canary)
            && existing.labels().get(ROLLOUT_LABEL).map(String::as_str) != Some(rollout)
        {
            return Err(format!(
                "Ingress {canary:?} exists and is not this Rollout's canary Ingress: rename or delete it so Sluice can create its own"
            ));
        }
        Ok((ingress, canary))
    }
}

impl TrafficRouter for Nginx<'_> {
    fn references(&self, rollout: &str) -> Vec<Reference> {
        self.stable_ingresses()
            .into_iter()
            .flat_map(|stable| {
                [
                    Reference::Route(RouteKind::Ingress, stable.to_owned()),
                    Reference::Route(RouteKind::Ingress, canary_ingress_name(rollout, stable)),
                ]
            })
            .collect()
    }

    fn check(&self, caches: &Caches, namespace: &str, rollout: &str) -> Result<(), String> {
        for stable in self.stable_ingresses() {
            self.checked(caches, namespace, rollout, stable)?;
        }
        Ok(())
    }

    async fn set_weight(
        &self,
        ctx: &Context,
        namespace: &str,
        rollout: &str,
        traffic: &Traffic,
    ) -> Result<(), Error> {
        let in_flight = traffic.canary_hash != traffic.stable_hash;
        let ingresses: Api<DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            namespace,
            &RouteKind::Ingress.resource(),
        );
        let owner = cache::get(&ctx.caches.rollouts, namespace, rollout);
        for stable in self.stable_ingresses() {
            // The check refused a configuration Sluice cannot put in force; nothing is written.
            let Ok((stable_ingress, canary)) =
                self.checked(&ctx.caches, namespace, rollout, stable)
            else {
                continue;
            };
            let existing = ctx.caches.route(RouteKind::Ingress, namespace, &canary);
            if !in_flight {
                if existing.is_some() {
                    match ingresses.delete(&canary, &DeleteParams::default()).await {
                        Ok(_) => info!(ingress = canary, "deleted the canary Ingress"),
                        Err(kube::Error::Api(status)) if status.code == 404 => {}
                        Err(e) => {
                            return Err(e).writing(|| format!("the canary Ingress {canary}"));
                        }
                    }
                }
                continue;
            }
            let Some(owner) = &owner else { continue };
            let Ok(spec) = self.canary_spec(&stable_ingress) else {
                continue;
            };
            let annotations = self.annotations(&stable_ingress, traffic.canary_weight);
            let up_to_date = existing.as_ref().is_some_and(|e| {
                annotations
                    .iter()
                    .all(|(k, v)| e.annotations().get(k) == Some(v))
                    && super::managed::holds(&spec, &e.data["spec"])
            });
            if up_to_date {
                continue;
            }
            let owner_reference = json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
                "name": rollout, "uid": owner.uid(),
                "controller": true, "blockOwnerDeletion": true,
            });
            let manifest = json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {
                    "name": canary,
                    "labels": {ROLLOUT_LABEL: rollout},
                    "annotations": annotations,
                    "ownerReferences": [owner_reference],
                },
                "spec": spec,
            });
            ingresses
                .patch(
                    &canary,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&manifest),
                )
                .await
                .writing(|| format!("the canary Ingress {canary}"))?;
            info!(
                ingress = canary,
                canary_weight = traffic.canary_weight,
                "set the canary Ingress"
            );
        }
        Ok(())
    }
}

/// An Ingress as the controller sees it: its labels, annotations and spec (a canary Ingress is a
/// copy of its stable Ingress's rules); not its status.
pub fn trim_ingress(ingress: &mut DynamicObject) {
    ingress.data = json!({"spec": ingress.data["spec"]});
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "ns",
                         "annotations": {"kubernetes.io/ingress.class": "nginx", "other": "x"}},
            "spec": spec
        }))
        .expect("ingress")
    }

    fn path(service: &str) -> Value {
        json!({"path": "/", "pathType": "Prefix",
               "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    fn routing() -> NginxRouting {
        NginxRouting {
            stable_ingress: Some("web".to_owned()),
            stable_ingresses: None,
            annotation_prefix: None,
            additional_ingress_annotations: BTreeMap::from([(
                "canary-by-header".to_owned(),
                "X-Canary".to_owned(),
            )]),
            canary_ingress_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn the_canary_ingress_copies_the_stable_paths_to_the_canary_service() {
        let spec = routing();
        let router = Nginx {
            spec: &spec,
            canary_service: "web-canary",
            stable_service: "web-stable",
        };
        let stable = ingress(json!({"ingressClassName": "nginx", "rules": [
            {"host": "web.example", "http": {"paths": [path("web-stable"), path("api")]}},
            {"host": "api.example", "http": {"paths": [path("api")]}}]}));
        let canary = router.canary_spec(&stable).expect("spec");
        assert_eq!(
            canary,
            json!({"ingressClassName": "nginx", "rules": [
                {"host": "web.example", "http": {"paths": [path("web-canary")]}}]})
        );
        let annotations = router.annotations(&stable, 20);
        assert_eq!(
            annotations,
            BTreeMap::from(
                [
                    ("kubernetes.io/ingress.class", "nginx"),
                    ("nginx.ingress.kubernetes.io/canary", "true"),
                    ("nginx.ingress.kubernetes.io/canary-weight", "20"),
                    ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
        let elsewhere = ingress(json!({"rules": [{"http": {"paths": [path("api")]}}]}));
        let err = router.canary_spec(&elsewhere).expect_err("refused");
        assert!(err.contains("no path with a backend to Service"), "{err}");
    }
}
