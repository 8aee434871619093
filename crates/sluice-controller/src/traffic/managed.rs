//! Managed routes (header and mirror routes, as Argo Rollouts' `managedRoutes`): the routes a
//! release adds ahead of the user's, in `managedRoutes` order, and removes when it ends. Shared by
//! the routers whose objects hold an ordered list of named routes (Gateway API rules, Istio HTTP
//! routes): where the managed routes stand, what a JSON patch must do to put the wanted ones first,
//! and where each of the user's routes is after it.

use serde_json::{Value, json};

/// Whether `stored` holds everything `wanted` says (the API server may have added defaults): objects
/// by key, arrays element by element with the same length, numbers by value (`100` is `100.0`).
pub fn holds(wanted: &Value, stored: &Value) -> bool {
    match (wanted, stored) {
        (Value::Object(w), Value::Object(s)) => w
            .iter()
            .all(|(k, v)| v.is_null() || s.get(k).is_some_and(|sv| holds(v, sv))),
        (Value::Array(w), Value::Array(s)) => {
            w.len() == s.len() && w.iter().zip(s).all(|(w, s)| holds(w, s))
        }
        (Value::Number(w), Value::Number(s)) => w.as_f64() == s.as_f64(),
        _ => wanted == stored,
    }
}

/// The JSON patch operations that put `wanted` first in the list at `path` (which exists when
/// `exists`), replacing the managed routes there (those named in `managed`), and where each route
/// of the list is after them (`None`: a managed route, taken out).
pub struct Layout {
    pub ops: Vec<Value>,
    pub moved: Vec<Option<usize>>,
}

/// See [`Layout`]. Nothing is written when the managed routes are already the wanted ones, first
/// and in order.
pub fn layout(
    path: &str,
    current: Option<&Vec<Value>>,
    managed: &[&str],
    wanted: &[Value],
) -> Layout {
    let empty = Vec::new();
    let routes = current.unwrap_or(&empty);
    let is_managed = |route: &Value| {
        route["name"]
            .as_str()
            .is_some_and(|name| managed.contains(&name))
    };
    let present: Vec<(usize, &Value)> = routes
        .iter()
        .enumerate()
        .filter(|(_, r)| is_managed(r))
        .collect();
    let in_place = present.len() == wanted.len()
        && present
            .iter()
            .zip(wanted)
            .enumerate()
            .all(|(position, ((i, stored), want))| *i == position && holds(want, stored));
    let mut rank = 0;
    let moved = routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            if is_managed(route) {
                None
            } else if in_place {
                Some(i)
            } else {
                rank += 1;
                Some(wanted.len() + rank - 1)
            }
        })
        .collect();
    let mut ops = Vec::new();
    if !in_place {
        if current.is_none() {
            ops.push(json!({"op": "add", "path": path, "value": wanted}));
        } else {
            for (i, route) in present.iter().rev() {
                ops.push(json!({"op": "test", "path": format!("{path}/{i}/name"), "value": route["name"]}));
                ops.push(json!({"op": "remove", "path": format!("{path}/{i}")}));
            }
            for (position, want) in wanted.iter().enumerate() {
                ops.push(json!({"op": "add", "path": format!("{path}/{position}"), "value": want}));
            }
        }
    }
    Layout { ops, moved }
}

/// Whether a route is one of the managed ones.
pub fn is_managed(route: &Value, managed: &[&str]) -> bool {
    route["name"]
        .as_str()
        .is_some_and(|name| managed.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_added_by_the_api_server_still_hold() {
        let wanted = json!({"name": "h", "matches": [{"headers": [{"name": "x", "value": "1"}]}], "weight": 100.0});
        let stored = json!({"name": "h", "matches": [{"headers": [{"name": "x", "value": "1", "type": "Exact"}],
                            "path": {"type": "PathPrefix", "value": "/"}}], "weight": 100});
        assert!(holds(&wanted, &stored));
        assert!(!holds(&stored, &wanted));
        let shorter = json!({"name": "h", "matches": [], "weight": 100});
        assert!(!holds(&wanted, &shorter));
    }

    #[test]
    fn wanted_routes_go_first_and_the_users_move_behind_them() {
        let current = vec![
            json!({"name": "user-a"}),
            json!({"name": "mirror"}),
            json!({"name": "user-b"}),
        ];
        let wanted = vec![json!({"name": "header"}), json!({"name": "mirror", "x": 1})];
        let layout = layout(
            "/spec/rules",
            Some(&current),
            &["header", "mirror"],
            &wanted,
        );
        assert_eq!(layout.moved, vec![Some(2), None, Some(3)]);
        assert_eq!(
            layout.ops,
            vec![
                json!({"op": "test", "path": "/spec/rules/1/name", "value": "mirror"}),
                json!({"op": "remove", "path": "/spec/rules/1"}),
                json!({"op": "add", "path": "/spec/rules/0", "value": {"name": "header"}}),
                json!({"op": "add", "path": "/spec/rules/1", "value": {"name": "mirror", "x": 1}}),
            ]
        );
        let mut patched = json!({"spec": {"rules": current}});
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(layout.ops)).expect("patch");
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(
            patched["spec"]["rules"],
            json!([{"name": "header"}, {"name": "mirror", "x": 1}, {"name": "user-a"}, {"name": "user-b"}])
        );
    }

    #[test]
    fn routes_already_in_place_are_not_written() {
        let current = vec![
            json!({"name": "mirror", "x": 1, "y": 2}),
            json!({"name": "user"}),
        ];
        let wanted = vec![json!({"name": "mirror", "x": 1})];
        let layout = layout("/spec/http", Some(&current), &["mirror"], &wanted);
        assert!(layout.ops.is_empty());
        assert_eq!(layout.moved, vec![None, Some(1)]);
        // Taking every managed route away.
        let gone = super::layout("/spec/http", Some(&current), &["mirror"], &[]);
        assert_eq!(gone.moved, vec![None, Some(0)]);
        assert_eq!(gone.ops.len(), 2);
    }
}
