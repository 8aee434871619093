//! What the page is sent of each object: the parts it draws, without the pod template, managed
//! fields or anything that changes without the page having something new to show (resourceVersion),
//! so an unchanged view is not sent again.

use serde_json::{Map, Value, json};
use sluice_api::names::ROLLOUT_LABEL;
use sluice_api::rollout::POD_TEMPLATE_HASH_LABEL;

/// The kinds the dashboard watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Rollout,
    AnalysisRun,
    ErrorBudgetGate,
    Release,
    ReplicaSet,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Rollout,
        Kind::AnalysisRun,
        Kind::ErrorBudgetGate,
        Kind::Release,
        Kind::ReplicaSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rollout => "Rollout",
            Kind::AnalysisRun => "AnalysisRun",
            Kind::ErrorBudgetGate => "ErrorBudgetGate",
            Kind::Release => "Release",
            Kind::ReplicaSet => "ReplicaSet",
        }
    }
}

/// The view of `object` (a Kubernetes object as JSON) the page is sent.
pub fn view(kind: Kind, object: &Value) -> Value {
    let metadata = metadata(kind, &object["metadata"]);
    match kind {
        Kind::Rollout => {
            let mut spec = object["spec"].clone();
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("template");
            }
            json!({"metadata": metadata, "spec": spec, "status": object["status"]})
        }
        Kind::AnalysisRun => {
            let metrics: Vec<Value> = object["spec"]["metrics"]
                .as_array()
                .map(|metrics| metrics.iter().map(metric).collect())
                .unwrap_or_default();
            json!({
                "metadata": metadata,
                "spec": {"metrics": metrics, "dryRun": object["spec"]["dryRun"]},
                "status": object["status"],
            })
        }
        Kind::ErrorBudgetGate => json!({
            "metadata": metadata,
            "spec": {
                "objective": object["spec"]["objective"],
                "window": object["spec"]["window"],
                "selector": object["spec"]["selector"],
            },
            "status": object["status"],
        }),
        Kind::Release => json!({"metadata": metadata, "spec": object["spec"]}),
        Kind::ReplicaSet => json!({
            "metadata": metadata,
            "revision": object["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL],
            "spec": {"replicas": object["spec"]["replicas"]},
            "status": {
                "replicas": object["status"]["replicas"],
                "readyReplicas": object["status"]["readyReplicas"],
                "availableReplicas": object["status"]["availableReplicas"],
            },
        }),
    }
}

/// Name, namespace, creation time, the owner's name and the labels and annotations the page uses.
fn metadata(kind: Kind, metadata: &Value) -> Value {
    let mut out = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "generation",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field) {
            out.insert(field.to_owned(), value.clone());
        }
    }
    let keep = |key: &str| match kind {
        Kind::ReplicaSet => key == ROLLOUT_LABEL || key == POD_TEMPLATE_HASH_LABEL,
        _ => key.starts_with("sluice.dev/"),
    };
    for field in ["labels", "annotations"] {
        let kept: Map<String, Value> = metadata[field]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| keep(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if !kept.is_empty() {
            out.insert(field.to_owned(), Value::Object(kept));
        }
    }
    if let Some(owner) = metadata["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|owner| owner["controller"] == json!(true))
    {
        out.insert(
            "owner".to_owned(),
            json!({"kind": owner["kind"], "name": owner["name"]}),
        );
    }
    Value::Object(out)
}

/// A metric of a run: its conditions, and the thresholds they compare the result with.
fn metric(metric: &Value) -> Value {
    let mut thresholds = Vec::new();
    for (field, verdict) in [
        ("successCondition", "success"),
        ("failureCondition", "failure"),
    ] {
        if let Some(condition) = metric[field].as_str() {
            for (op, value) in thresholds_of(condition) {
                thresholds.push(json!({"verdict": verdict, "op": op, "value": value}));
            }
        }
    }
    json!({
        "name": metric["name"],
        "interval": metric["interval"],
        "count": metric["count"],
        "successCondition": metric["successCondition"],
        "failureCondition": metric["failureCondition"],
        "thresholds": thresholds,
    })
}

/// The comparisons of the result with a number in a condition (`result[0] < 0.01`,
/// `len(result) > 0 && result >= 0.95`, `0.5 > result`), as `(operator, number)` with the result on
/// the left. Conditions are CEL; only these simple comparisons can be drawn as a line.
pub fn thresholds_of(condition: &str) -> Vec<(&'static str, f64)> {
    const OPERATORS: [(&str, &str, &str); 4] = [
        ("<=", "<=", ">="),
        (">=", ">=", "<="),
        ("<", "<", ">"),
        (">", ">", "<"),
    ];
    let is_result = |side: &str| {
        matches!(
            side,
            "result" | "result[0]" | "double(result[0])" | "double(result)"
        )
    };
    let mut found = Vec::new();
    for clause in condition.split(&['&', '|'][..]) {
        let clause = clause.trim().trim_matches(|c| c == '(' || c == ')').trim();
        for (token, left_op, right_op) in OPERATORS {
            let Some((left, right)) = clause.split_once(token) else {
                continue;
            };
            let (left, right) = (left.trim(), right.trim());
            if right.starts_with('=') {
                // `<=` seen as `<`: the longer operator is tried first and would have matched.
                continue;
            }
            if is_result(left)
                && let Ok(value) = right.parse::<f64>()
            {
                found.push((left_op, value));
            } else if is_result(right)
                && let Ok(value) = left.parse::<f64>()
            {
                found.push((right_op, value));
            }
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_read_from_simple_comparisons_only() {
        assert_eq!(
            thresholds_of("len(result) > 0 && result[0] < 0.01"),
            vec![("<", 0.01)]
        );
        assert_eq!(thresholds_of("result >= 0.95"), vec![(">=", 0.95)]);
        assert_eq!(thresholds_of("0.5 > result[0]"), vec![("<", 0.5)]);
        assert_eq!(
            thresholds_of("result[0] > 1 || result[0] <= -1"),
            vec![(">", 1.0), ("<=", -1.0)]
        );
        assert!(thresholds_of("result[0] < args.limit").is_empty());
        assert!(thresholds_of("result.all(r, r < 5)").is_empty());
    }

    #[test]
    fn a_rollout_is_sent_without_its_template_managed_fields_or_resource_version() {
        let rollout = json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42",
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "sluice.dev/action": "abort"}},
            "spec": {"replicas": 3, "template": {"spec": {}}, "strategy": {"canary": {"steps": []}}},
            "status": {"phase": "Healthy"},
        });
        assert_eq!(
            view(Kind::Rollout, &rollout),
            json!({
                "metadata": {"name": "web", "namespace": "shop",
                             "annotations": {"sluice.dev/action": "abort"}},
                "spec": {"replicas": 3, "strategy": {"canary": {"steps": []}}},
                "status": {"phase": "Healthy"},
            })
        );
    }

    #[test]
    fn a_run_names_its_rollout_and_the_thresholds_of_its_metrics() {
        let run = json!({
            "metadata": {"name": "web-abc-1", "namespace": "shop",
                         "labels": {"sluice.dev/rollout": "web", "team": "a"},
                         "ownerReferences": [{"kind": "Rollout", "name": "web", "controller": true}]},
            "spec": {"metrics": [{"name": "errors", "successCondition": "result[0] < 0.05",
                                  "provider": {"prometheus": {"query": "q"}}}]},
        });
        let view = view(Kind::AnalysisRun, &run);
        assert_eq!(view["metadata"]["owner"]["name"], "web");
        assert_eq!(
            view["metadata"]["labels"],
            json!({"sluice.dev/rollout": "web"})
        );
        assert_eq!(
            view["spec"]["metrics"][0]["thresholds"],
            json!([{"verdict": "success", "op": "<", "value": 0.05}])
        );
        assert!(view["spec"]["metrics"][0].get("provider").is_none());
    }
}
