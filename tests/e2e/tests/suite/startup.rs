//! A controller started with many Rollouts already in its namespace: more than any buffer between
//! its watches and its controllers holds, which once kept the first full list from completing.

use std::time::Duration;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const ROLLOUTS: usize = 1100;

#[tokio::test]
async fn a_controller_starting_beside_many_rollouts_gets_ready_and_settles_them() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "startup").await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    futures::stream::iter(0..ROLLOUTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("web-{i}");
                let manifest = json!({
                    "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}},
                        "strategy": {"canary": {}}
                    }
                });
                api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&manifest))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(50)
        .try_collect::<Vec<()>>()
        .await?;

    let controller = ControllerProcess::start(&ns.name)?;
    eventually(
        "/readyz after the first full lists",
        Duration::from_secs(60),
        || async {
            Ok(sluice_e2e::http_get(&controller.http, "/readyz")
                .await
                .ok()
                .filter(|b| b == "ok"))
        },
    )
    .await?;
    eventually(
        &format!("all {ROLLOUTS} Rollouts Healthy"),
        Duration::from_secs(120),
        || async {
            let healthy = api
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|r| {
                    r.status.as_ref().is_some_and(|s| {
                        s.phase == Some(RolloutPhase::Healthy)
                            && s.observed_generation == r.metadata.generation
                    })
                })
                .count();
            Ok((healthy == ROLLOUTS).then_some(()))
        },
    )
    .await
}
