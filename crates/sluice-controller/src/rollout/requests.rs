//! People's requests (`kubectl sluice promote`, `abort`, ...), carried by an annotation and taken
//! off the Rollout before they are acted on.

use kube::ResourceExt;
use kube::api::{Api, Patch};
use serde_json::json;
use sluice_api::rollout::Rollout;
use sluice_engine::release::Actions;
use tracing::info;

use sluice_api::names::{ACTION_ANNOTATION, RolloutAction};

use crate::error::Error;
use crate::{Context, writer};

/// Takes a person's request off the Rollout before acting on it, if it is still there: the watch
/// cache may hand the controller a copy of the Rollout from before an earlier reconcile removed it,
/// and a request must be acted on once (two promotes would skip a step). Returns false if the request
/// was already taken. A controller that dies between taking and acting drops the request; the person
/// sees nothing happen and asks again, which is safer than acting twice.
pub(super) async fn claim_request(
    ctx: &Context,
    namespace: &str,
    name: &str,
    raw: &str,
) -> Result<bool, Error> {
    let patch = json!([
        {"op": "test", "path": "/metadata/annotations/sluice.dev~1action", "value": raw},
        {"op": "remove", "path": "/metadata/annotations/sluice.dev~1action"}
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    match Api::<Rollout>::namespaced(ctx.client.clone(), namespace)
        .patch(name, &writer(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(claimed) => {
            ctx.written.wrote(
                namespace,
                name,
                claimed.metadata.resource_version.as_deref(),
            );
            info!(request = raw, "took the request");
            Ok(true)
        }
        // The test failed: the annotation is gone or holds another request (seen on a later look).
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => Ok(false),
        Err(source) => Err(Error::Write {
            object: format!("(taking the request off) Rollout {name}"),
            source,
        }),
    }
}

pub(super) fn parse_actions(rollout: &Rollout) -> (Actions, Option<String>) {
    let raw = rollout.annotations().get(ACTION_ANNOTATION).cloned();
    let action = raw.as_deref().and_then(|r| r.parse::<RolloutAction>().ok());
    (Actions::from(action), raw)
}
