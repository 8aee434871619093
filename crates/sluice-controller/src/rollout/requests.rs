//! People's requests (`kubectl sluice promote`, `abort`, ...), carried by the `sluice.dev/action`
//! annotation, and acted on exactly once whatever fails in between.
//!
//! A request is first *claimed*: its value `abort` becomes `abort#<id>` (a JSON patch that tests the
//! old value, so a request is claimed once however stale the cache). The claimed request is acted on
//! and its id recorded in `status.handledRequest` by the same status write that records its effect.
//! A claimed request whose id the status does not hold yet (the controller died, a write failed, the
//! reconcile timed out) is acted on by the next reconcile; one the status holds is done, and is taken
//! off the Rollout. Nothing is lost on an error, and nothing is done twice.

use kube::ResourceExt;
use kube::api::{Api, Patch};
use serde_json::json;
use sluice_api::names::{
    ACTION_ANNOTATION, REQUEST_REASON_ANNOTATION, REQUESTED_BY_ANNOTATION, RolloutAction,
};
use sluice_api::rollout::{Rollout, RolloutStatus};
use sluice_engine::release::Actions;
use tracing::info;

use crate::error::Error;
use crate::{Context, writer};

/// The request a reconcile acts on: what it asks and its id, recorded in status once acted on.
pub(super) struct Request {
    pub actions: Actions,
    pub id: String,
    /// Who made it, as the request says ([`REQUESTED_BY_ANNOTATION`]).
    pub by: Option<String>,
    /// Why, as the request says ([`REQUEST_REASON_ANNOTATION`]).
    pub reason: Option<String>,
}

/// What the Rollout's annotation asks of this reconcile.
pub(super) enum Pending {
    /// No request, or one already acted on (taken off the Rollout here).
    None,
    /// A request to act on now.
    Act(Request),
}

/// The JSON pointer of the request annotation.
fn pointer() -> String {
    annotation_pointer(ACTION_ANNOTATION)
}

fn annotation_pointer(annotation: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        annotation.replace('~', "~0").replace('/', "~1")
    )
}

/// The JSON patch that takes a request (`raw`) off the Rollout, with who made it.
fn take_off(rollout: &Rollout, raw: &str) -> serde_json::Value {
    let mut ops = vec![
        json!({"op": "test", "path": pointer(), "value": raw}),
        json!({"op": "remove", "path": pointer()}),
    ];
    for annotation in [REQUESTED_BY_ANNOTATION, REQUEST_REASON_ANNOTATION] {
        if rollout.annotations().contains_key(annotation) {
            ops.push(json!({"op": "remove", "path": annotation_pointer(annotation)}));
        }
    }
    serde_json::Value::Array(ops)
}

/// Reads the Rollout's request and claims it if it is new. Returns the request to act on, and the
/// resourceVersion the reconcile now stands on (the claim's, if it made one).
pub(super) async fn take_request(
    ctx: &Context,
    rollout: &Rollout,
    status: &RolloutStatus,
) -> Result<(Pending, Option<String>), Error> {
    let based_on = rollout.metadata.resource_version.clone();
    let Some(raw) = rollout.annotations().get(ACTION_ANNOTATION).cloned() else {
        return Ok((Pending::None, based_on));
    };
    let (action, id) = match raw.split_once('#') {
        Some((action, _)) => (action.to_owned(), raw.clone()),
        None => {
            let id = format!("{raw}#{}", based_on.clone().unwrap_or_default());
            (raw.clone(), id)
        }
    };
    let claimed = raw.contains('#');
    if claimed && status.handled_request.as_deref() == Some(raw.as_str()) {
        // Acted on and recorded: take it off, unless someone replaced it meanwhile.
        let patch = take_off(rollout, &raw);
        patch_rollout(ctx, rollout, patch, "(clearing a handled request) ").await?;
        return Ok((Pending::None, based_on));
    }
    let Ok(parsed) = action.parse::<RolloutAction>() else {
        // Not a request Sluice knows: take it off and say so.
        let patch = take_off(rollout, &raw);
        patch_rollout(ctx, rollout, patch, "(clearing an unknown request) ").await?;
        let known: Vec<&str> = RolloutAction::ALL.iter().map(|a| a.as_str()).collect();
        super::apply::publish(
            ctx,
            rollout,
            true,
            "UnknownRequest",
            &format!(
                "{ACTION_ANNOTATION}: {action:?} is not a request Sluice knows ({}); removed",
                known.join(", ")
            ),
        );
        return Ok((Pending::None, based_on));
    };
    let based_on = if claimed {
        based_on
    } else {
        let patch = json!([{"op": "test", "path": pointer(), "value": raw},
                           {"op": "replace", "path": pointer(), "value": id}]);
        let claimed = patch_rollout(ctx, rollout, patch, "(claiming a request) ").await?;
        let Some(claimed) = claimed else {
            // Claimed by an earlier reconcile: this copy is older than the claim.
            return Ok((Pending::None, based_on));
        };
        info!(
            request = raw.as_str(),
            id = id.as_str(),
            "claimed the request"
        );
        claimed.metadata.resource_version
    };
    Ok((
        Pending::Act(Request {
            actions: Actions::from(Some(parsed)),
            id,
            by: rollout.annotations().get(REQUESTED_BY_ANNOTATION).cloned(),
            reason: rollout
                .annotations()
                .get(REQUEST_REASON_ANNOTATION)
                .cloned(),
        }),
        based_on,
    ))
}

/// Applies a JSON patch to the Rollout's metadata and remembers the resourceVersion it got. `None`
/// when its test failed: the annotation is gone or holds another request (seen on a later look).
async fn patch_rollout(
    ctx: &Context,
    rollout: &Rollout,
    patch: serde_json::Value,
    what: &str,
) -> Result<Option<Rollout>, Error> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_default();
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    match Api::<Rollout>::namespaced(ctx.client.clone(), &namespace)
        .patch(&name, &writer(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(patched) => {
            ctx.written.wrote(
                crate::written::Kind::Rollout,
                &namespace,
                &name,
                patched.metadata.resource_version.as_deref(),
            );
            Ok(Some(patched))
        }
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => Ok(None),
        Err(source) => Err(Error::Write {
            object: format!("{what}Rollout {name}"),
            source,
        }),
    }
}
