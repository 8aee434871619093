//! `kubectl sluice migrate`: Argo Rollouts manifests converted to Sluice's.
//!
//! Rollouts, AnalysisTemplates, ClusterAnalysisTemplates and AnalysisRuns move from
//! `argoproj.io/v1alpha1` to `sluice.dev/v1alpha1` (field names and meanings are Argo's; conditions
//! in Argo's expression language are read as they are). The Gateway API plugin's configuration
//! becomes `trafficRouting.gatewayAPI`. Every field Sluice's schema does not have, and every field
//! it has but refuses (said by [`REFUSED`]), is dropped and reported with its path: nothing is
//! carried that `kubectl apply` would refuse or that the controller would not act on. Other
//! documents (Services, routes, Ingresses) pass through unchanged.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// What could not be carried, at its path in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The document, as `Kind/name`.
    pub document: String,
    /// A JSON-pointer-like path (`spec.strategy.canary.steps[2].experiment`).
    pub path: String,
    /// Why.
    pub why: String,
}

/// The kinds Sluice has, by Argo Rollouts' kind.
const KINDS: [&str; 4] = [
    "Rollout",
    "AnalysisTemplate",
    "ClusterAnalysisTemplate",
    "AnalysisRun",
];

/// Fields Sluice's schema has but refuses when set (with a message at `kubectl apply`), and when:
/// (path, refused when the value is this boolean, or any value when `None`, why).
const REFUSED: [(&str, Option<bool>, &str); 1] = [(
    "spec.rollbackWindow",
    None,
    "not supported yet: a rollback runs the steps and analysis like any release",
)];

/// The name Argo Rollouts' Gateway API plugin is configured under.
const GATEWAY_API_PLUGIN: &str = "argoproj-labs/gatewayAPI";

/// The openAPI schemas of Sluice's kinds, by kind.
pub(crate) fn schemas() -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for crd in sluice_api::crdgen::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .context("a CRD without a schema")?;
        out.insert(kind, serde_json::to_value(schema)?);
    }
    Ok(out)
}

/// Converts one document; what could not be carried is added to `dropped`. `None`: the document is
/// an Argo Rollouts kind Sluice does not have (it is dropped whole).
pub fn convert(
    mut doc: Value,
    schemas: &BTreeMap<String, Value>,
    dropped: &mut Vec<Dropped>,
) -> Option<Value> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let document = format!("{kind}/{name}");
    if !api_version.starts_with("argoproj.io/") {
        return Some(doc);
    }
    if !KINDS.contains(&kind.as_str()) {
        dropped.push(Dropped {
            document,
            path: String::new(),
            why: format!("Sluice has no {kind} (not supported yet)"),
        });
        return None;
    }
    doc["apiVersion"] = json!("sluice.dev/v1alpha1");
    if kind == "Rollout" {
        gateway_api_plugin(&mut doc, &document, dropped);
    }
    for (path, when, why) in REFUSED {
        let pointer = format!("/{}", path.replace('.', "/"));
        let refused = doc
            .pointer(&pointer)
            .is_some_and(|v| when.is_none_or(|w| v.as_bool() == Some(w)));
        if refused && let Some((parent, key)) = pointer.rsplit_once('/') {
            if let Some(fields) = doc.pointer_mut(parent).and_then(Value::as_object_mut) {
                fields.remove(key);
            }
            dropped.push(Dropped {
                document: document.clone(),
                path: path.to_owned(),
                why: why.to_owned(),
            });
        }
    }
    if let Some(schema) = schemas.get(&kind) {
        prune(&mut doc, schema, "", &document, dropped);
    }
    // What pruning emptied would be refused as it stands: a step that sets nothing (an experiment
    // step), a trafficRouting without a router. They go too (already reported).
    if let Some(canary) = doc
        .pointer_mut("/spec/strategy/canary")
        .and_then(Value::as_object_mut)
    {
        if let Some(Value::Array(steps)) = canary.get_mut("steps") {
            steps.retain(|step| step.as_object().is_none_or(|s| !s.is_empty()));
        }
        if canary
            .get("trafficRouting")
            .and_then(Value::as_object)
            .is_some_and(|routing| routing.keys().all(|k| k == "managedRoutes"))
        {
            canary.remove("trafficRouting");
        }
    }
    // `status` is the controller's to write.
    if let Some(fields) = doc.as_object_mut() {
        fields.remove("status");
    }
    Some(doc)
}

/// `trafficRouting.plugins["argoproj-labs/gatewayAPI"]` becomes `trafficRouting.gatewayAPI`.
fn gateway_api_plugin(doc: &mut Value, document: &str, dropped: &mut Vec<Dropped>) {
    let Some(routing) = doc
        .pointer_mut("/spec/strategy/canary/trafficRouting")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(Value::Object(mut plugins)) = routing.remove("plugins") else {
        return;
    };
    let base = "spec.strategy.canary.trafficRouting.plugins";
    if let Some(config) = plugins.remove(GATEWAY_API_PLUGIN) {
        let routes: Vec<String> = match (&config["httpRoute"], &config["httpRoutes"]) {
            (Value::String(route), _) => vec![route.clone()],
            (_, Value::Array(routes)) => routes
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        match routes.split_first() {
            Some((first, rest)) => {
                routing.insert("gatewayAPI".to_owned(), json!({"httpRoute": first}));
                for route in rest {
                    dropped.push(Dropped {
                        document: document.to_owned(),
                        path: format!("{base}.{GATEWAY_API_PLUGIN}.httpRoutes"),
                        why: format!("Sluice sets one HTTPRoute; {route:?} is not carried"),
                    });
                }
            }
            None => dropped.push(Dropped {
                document: document.to_owned(),
                path: format!("{base}.{GATEWAY_API_PLUGIN}"),
                why: "no httpRoute named".to_owned(),
            }),
        }
        if let Some(fields) = config.as_object() {
            for key in fields.keys() {
                if !matches!(key.as_str(), "httpRoute" | "httpRoutes" | "namespace") {
                    dropped.push(Dropped {
                        document: document.to_owned(),
                        path: format!("{base}.{GATEWAY_API_PLUGIN}.{key}"),
                        why: "not supported by Sluice's Gateway API router".to_owned(),
                    });
                }
            }
            if fields.contains_key("namespace") {
                dropped.push(Dropped {
                    document: document.to_owned(),
                    path: format!("{base}.{GATEWAY_API_PLUGIN}.namespace"),
                    why: "Sluice routes through an HTTPRoute in the Rollout's namespace".to_owned(),
                });
            }
        }
    }
    for plugin in plugins.keys() {
        dropped.push(Dropped {
            document: document.to_owned(),
            path: format!("{base}.{plugin}"),
            why: "Sluice has no such router (not supported yet)".to_owned(),
        });
    }
}

/// Drops every field `schema` does not have, recording each.
fn prune(
    value: &mut Value,
    schema: &Value,
    path: &str,
    document: &str,
    dropped: &mut Vec<Dropped>,
) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true && schema["properties"].is_null() {
        return;
    }
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            if properties.is_none() && additional.is_object() {
                for (key, child) in fields.iter_mut() {
                    prune(
                        child,
                        additional,
                        &format!("{path}.{key}"),
                        document,
                        dropped,
                    );
                }
                return;
            }
            let Some(properties) = properties else {
                return;
            };
            let mut unknown = Vec::new();
            for (key, child) in fields.iter_mut() {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match properties.get(key) {
                    Some(child_schema) => {
                        prune(child, child_schema, &child_path, document, dropped)
                    }
                    // The API server's own metadata fields are not in a CRD's schema.
                    None if path.is_empty()
                        && matches!(
                            key.as_str(),
                            "apiVersion" | "kind" | "metadata" | "status"
                        ) => {}
                    None => unknown.push((key.clone(), child_path)),
                }
            }
            for (key, child_path) in unknown {
                fields.remove(&key);
                dropped.push(Dropped {
                    document: document.to_owned(),
                    path: child_path,
                    why: "Sluice has no such field (not supported yet)".to_owned(),
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prune(
                    item,
                    &schema["items"],
                    &format!("{path}[{i}]"),
                    document,
                    dropped,
                );
            }
        }
        _ => {}
    }
}

/// Converts a stream of YAML documents (`---` separated) to YAML; what was dropped is returned too.
pub fn convert_yaml(text: &str) -> Result<(String, Vec<Dropped>)> {
    let schemas = schemas()?;
    let mut dropped = Vec::new();
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("reading a YAML document")?;
        if value.is_null() {
            continue;
        }
        // A List (as `kubectl get -o yaml` writes) is converted item by item.
        let items = if value["kind"] == "List" {
            value["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            if let Some(converted) = convert(item, &schemas, &mut dropped) {
                out.push(serde_yaml::to_string(&converted)?);
            }
        }
    }
    Ok((out.join("---\n"), dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(doc: Value) -> (Option<Value>, Vec<Dropped>) {
        let schemas = schemas().expect("schemas");
        let mut dropped = Vec::new();
        let out = convert(doc, &schemas, &mut dropped);
        (out, dropped)
    }

    fn argo_rollout(canary: Value) -> Value {
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
                "strategy": {"canary": canary}
            },
            "status": {"phase": "Healthy"}
        })
    }

    #[test]
    fn a_gateway_api_plugin_rollout_becomes_a_sluice_rollout() {
        let (out, dropped) = converted(argo_rollout(json!({
            "canaryService": "web-canary", "stableService": "web-stable",
            "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "web", "namespace": "shop"}}},
            "steps": [{"setWeight": 20}, {"pause": {}}]
        })));
        let out = out.expect("a Rollout");
        assert_eq!(out["apiVersion"], "sluice.dev/v1alpha1");
        assert_eq!(
            out["spec"]["strategy"]["canary"]["trafficRouting"],
            json!({"gatewayAPI": {"httpRoute": "web"}})
        );
        assert!(out.get("status").is_none());
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].path.ends_with("namespace"));
    }

    #[test]
    fn what_sluice_lacks_is_dropped_and_said() {
        let (out, dropped) = converted(argo_rollout(json!({
            "steps": [{"setWeight": 20}, {"experiment": {"templates": []}}],
            "trafficRouting": {"alb": {"ingress": "web"}},
        })));
        let out = out.expect("a Rollout");
        let paths: Vec<&str> = dropped.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.strategy.canary.steps[1].experiment",
                "spec.strategy.canary.trafficRouting.alb",
            ]
        );
        assert_eq!(
            out["spec"]["strategy"]["canary"]["steps"],
            json!([{"setWeight": 20}]),
            "the emptied step and router are gone"
        );
        assert!(out["spec"]["strategy"]["canary"]["trafficRouting"].is_null());
        let (none, dropped) = converted(
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Experiment",
                                               "metadata": {"name": "e"}}),
        );
        assert!(none.is_none());
        assert_eq!(dropped[0].document, "Experiment/e");
    }

    #[test]
    fn other_documents_pass_through_and_yaml_round_trips() -> Result<()> {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: rate}\n\
                    spec:\n  metrics:\n  - name: rate\n    successCondition: result[0] < 0.01\n    \
                    provider: {prometheus: {address: 'http://prometheus:9090', query: vector(0)}}\n";
        let (yaml, dropped) = convert_yaml(text)?;
        assert!(dropped.is_empty(), "{dropped:?}");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(Value::deserialize)
            .collect::<Result<_, _>>()?;
        assert_eq!(docs[0]["kind"], "Service");
        assert_eq!(docs[1]["apiVersion"], "sluice.dev/v1alpha1");
        assert_eq!(
            docs[1]["spec"]["metrics"][0]["successCondition"],
            "result[0] < 0.01"
        );
        Ok(())
    }
}
