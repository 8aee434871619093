//! Immutable images: the admission policy refuses mutable references at `kubectl apply`, naming
//! the container and the image; the controller refuses what the policy cannot see (a Deployment's
//! template taken over by `workloadRef`, a namespace that starts requiring digests) as an
//! InvalidSpec, with stable kept at full size.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{apply, rollout, wait_status};

const DIGEST: &str = "sha256:4b7e1c3c9f5d1e0a2b6c8d7e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2";

/// Installs the admission policy and its binding as `crds/` carries them, and waits until the API
/// server enforces them.
pub(crate) async fn install_image_policy(client: &Client, ns: &str) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let policy = sluice_api::policy::immutable_images_policy();
    let binding = sluice_api::policy::immutable_images_binding();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(&policy.name_any(), &params, &Patch::Apply(&policy))
        .await
        .context("applying the policy")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(&binding.name_any(), &params, &Patch::Apply(&binding))
        .await
        .context("applying the binding")?;
    // The API server picks policies up within a second or so: probe with a dry run until refused.
    let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let probe = rollout(
        "probe",
        1,
        "registry.example/web:latest",
        json!({"steps": []}),
    );
    let mut dry = PatchParams::apply(FIELD_MANAGER).force();
    dry.dry_run = true;
    eventually(
        "the image policy to be enforced",
        Duration::from_secs(30),
        || {
            let (api, probe, dry) = (api.clone(), probe.clone(), dry.clone());
            async move {
                match api.patch("probe", &dry, &Patch::Apply(&probe)).await {
                    Err(kube::Error::Api(e)) if e.code == 422 => Ok(Some(())),
                    Err(other) => Err(other.into()),
                    Ok(_) => Ok(None),
                }
            }
        },
    )
    .await
}

/// What the API server says to an apply of `manifest`: `Ok` if accepted, the refusal otherwise.
async fn refusal(api: &Api<Rollout>, manifest: &serde_json::Value) -> Result<Option<String>> {
    match apply(api, manifest).await {
        Ok(()) => Ok(None),
        Err(error) => match error.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(e)) if e.code == 422 => Ok(Some(e.message.clone())),
            _ => Err(error),
        },
    }
}

async fn label_namespace(client: &Client, ns: &str, value: Option<&str>) -> Result<()> {
    let patch = json!({"metadata": {"labels": {"sluice.dev/require-image-digest": value}}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn mutable_images_are_refused_at_apply_with_the_container_and_image_named() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "images-apply").await?;
    install_image_policy(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"steps": [{"setWeight": 50}]});

    for (image, shown) in [
        ("registry.example/web:latest", "registry.example/web:latest"),
        ("registry.example/web", "registry.example/web"),
        ("registry:5000/web", "registry:5000/web"),
    ] {
        let refused = refusal(&api, &rollout("web", 2, image, canary.clone()))
            .await?
            .with_context(|| format!("{image} was accepted"))?;
        ensure!(
            refused.contains(&format!(
                "spec.template.spec: container \"app\" uses image \"{shown}\": a mutable image reference"
            )),
            "{image}: {refused}"
        );
    }
    // An init container is named too, and each offender is listed.
    let mut two = rollout("web", 2, "registry.example/web:1.0.0", canary.clone());
    two["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "registry.example/migrate:latest"}]);
    let refused = refusal(&api, &two)
        .await?
        .context("init container accepted")?;
    ensure!(
        refused.contains("container \"migrate\" uses image \"registry.example/migrate:latest\""),
        "{refused}"
    );
    // Pinned by tag or by digest: accepted.
    for image in [
        "registry.example/web:1.0.0".to_owned(),
        format!("registry.example/web@{DIGEST}"),
    ] {
        let refused = refusal(&api, &rollout("web", 2, &image, canary.clone())).await?;
        ensure!(refused.is_none(), "{image} refused: {refused:?}");
    }
    // The Rollout asks for digests: a tag is no longer enough.
    let mut strict = rollout("strict", 1, "registry.example/web:1.0.0", canary.clone());
    strict["spec"]["requireImageDigest"] = json!(true);
    let refused = refusal(&api, &strict).await?.context("tag accepted")?;
    ensure!(
        refused.contains("container \"app\" uses image \"registry.example/web:1.0.0\": spec.requireImageDigest requires a digest"),
        "{refused}"
    );
    // So does the namespace; a Rollout written before the label may still be annotated (only a
    // spec that changes is judged), but not changed.
    label_namespace(&client, &ns.name, Some("true")).await?;
    let refused = eventually(
        "the namespace label to count",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            let manifest = rollout("other", 1, "registry.example/web:1.0.0", canary.clone());
            async move { refusal(&api, &manifest).await }
        },
    )
    .await?;
    ensure!(
        refused.contains(&format!(
            "namespace {} (label sluice.dev/require-image-digest=true) requires a digest",
            ns.name
        )),
        "{refused}"
    );
    crate::canary::request(&api, "web", "pause").await?;
    Ok(())
}

#[tokio::test]
async fn the_controller_refuses_what_the_policy_cannot_see_and_stable_keeps_serving() -> Result<()>
{
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "images-controller").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);

    // A Deployment's template with a mutable image, taken over by workloadRef: nothing released.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "legacy"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "legacy"}},
            "template": {"metadata": {"labels": {"app": "legacy"}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/legacy:latest"}]}}
        }
    });
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .patch(
            "legacy",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&deployment),
        )
        .await?;
    apply(
        &api,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "legacy"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "legacy"}},
                "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "legacy"},
                "strategy": {"canary": {"steps": []}}
            }
        }),
    )
    .await?;
    let status = wait_status(
        &api,
        "legacy",
        "InvalidSpec for the Deployment's image",
        |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "InvalidSpec" && c.status == "True")
        },
    )
    .await?;
    ensure!(
        status.message.as_deref().is_some_and(|m| m.contains(
            "Deployment legacy (spec.workloadRef) spec.template.spec: container \"app\" uses image \"registry.example/legacy:latest\": a mutable image reference"
        )),
        "{:?}",
        status.message
    );
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("sluice.dev/rollout=legacy"))
        .await?;
    ensure!(
        replica_sets.items.is_empty(),
        "a ReplicaSet was created for a mutable image"
    );

    // A released Rollout whose namespace starts requiring digests: held as InvalidSpec naming the
    // namespace, stable at full size; pinned by digest, it goes on.
    apply(
        &api,
        &rollout(
            "web",
            2,
            "registry.example/web:1.0.0",
            json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
        ),
    )
    .await?;
    wait_status(&api, "web", "web healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
    })
    .await?;
    label_namespace(&client, &ns.name, Some("true")).await?;
    let status = wait_status(&api, "web", "InvalidSpec naming the namespace", |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("requires a digest"))
    })
    .await?;
    ensure!(
        status.message.as_deref().is_some_and(|m| m.contains(&format!(
            "container \"app\" uses image \"registry.example/web:1.0.0\": namespace {} (label sluice.dev/require-image-digest=true) requires a digest",
            ns.name
        ))),
        "{:?}",
        status.message
    );
    let stable = Api::<ReplicaSet>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("sluice.dev/rollout=web"))
        .await?;
    let sizes: Vec<i32> = stable
        .items
        .iter()
        .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .collect();
    if sizes != [2] {
        bail!("stable is not kept at full size: {sizes:?}");
    }
    // Unlabelled again, the hold lifts.
    label_namespace(&client, &ns.name, None).await?;
    wait_status(&api, "web", "InvalidSpec cleared", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "False")
    })
    .await?;
    Ok(())
}
