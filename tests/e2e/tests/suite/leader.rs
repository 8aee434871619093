//! Leader election: of two controllers only the Lease holder reconciles, the other takes over when
//! the leader dies, and a leader cut off from the API server stops before it can be replaced.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_api::rollout::Rollout;
use sluice_e2e::proxy::{CuttableProxy, api_server_addr, kubeconfig_through};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("sluice-controller")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn healthy_on_image(api: &Api<Rollout>, image: &str) -> Result<()> {
    sluice_e2e::released_on(api, "web", image, WAIT).await
}

#[tokio::test]
async fn a_standby_controller_takes_over_when_the_leader_dies() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "leader").await?;
    let mut first = ControllerProcess::start_as(&ns.name, "first")?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    eventually("the first controller to hold the Lease", WAIT, || async {
        Ok((holder(&leases).await?.as_deref() == Some("first")).then_some(()))
    })
    .await?;
    let second = ControllerProcess::start_as(&ns.name, "second")?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let manifest = |image: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}]}}
            }
        })
    };
    let apply = |image: &'static str| {
        let api = api.clone();
        let manifest = manifest(image);
        async move {
            api.patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
        }
    };
    apply("registry.example/web:1.0.0").await?;
    healthy_on_image(&api, "registry.example/web:1.0.0").await?;
    // The standby says it waits once its caches are full, which may come after the release.
    let standby_log = eventually("the standby to wait for the Lease", WAIT, || async {
        let log = std::fs::read_to_string(&second.log).context("second controller's log")?;
        Ok(log.contains("waiting to become the leader").then_some(log))
    })
    .await?;
    ensure!(
        !standby_log.contains("became the leader"),
        "the standby did not wait:\n{standby_log}"
    );
    ensure!(
        !standby_log.contains("created ReplicaSet"),
        "the standby wrote:\n{standby_log}"
    );
    // The standby is Ready (its caches are full), so that with two replicas and a disruption
    // budget of one the leader's pod can still be evicted (a node drain would hang otherwise).
    eventually("the standby to be Ready", WAIT, || async {
        Ok(sluice_e2e::http_get(&second.http, "/readyz")
            .await
            .is_ok()
            .then_some(()))
    })
    .await?;

    // The leader dies without releasing the Lease; the standby takes over once it expires (10 s).
    first.kill()?;
    apply("registry.example/web:2.0.0").await?;
    healthy_on_image(&api, "registry.example/web:2.0.0").await?;
    assert_eq!(holder(&leases).await?.as_deref(), Some("second"));
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "partition").await?;
    // The first controller reaches the API server through a proxy that can cut the line.
    let proxy = CuttableProxy::start(api_server_addr()?).await?;
    let through_proxy = kubeconfig_through(&proxy, &ns.name)?;
    let mut first = ControllerProcess::start_with(&ns.name, "first", &through_proxy)?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    eventually("the first controller to hold the Lease", WAIT, || async {
        Ok((holder(&leases).await?.as_deref() == Some("first")).then_some(()))
    })
    .await?;
    let second = ControllerProcess::start_as(&ns.name, "second")?;
    eventually("the standby to be Ready", WAIT, || async {
        Ok(sluice_e2e::http_get(&second.http, "/readyz")
            .await
            .is_ok()
            .then_some(()))
    })
    .await?;

    // Partition the leader alone. It must stop before its Lease (10 s) can be taken over.
    let cut = std::time::Instant::now();
    proxy.cut();
    let exited = loop {
        if first.try_exited()? {
            break cut.elapsed();
        }
        ensure!(
            cut.elapsed() < WAIT,
            "the cut-off leader still runs {WAIT:?} after the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let taken = eventually("the standby to take the Lease over", WAIT, || async {
        Ok((holder(&leases).await?.as_deref() == Some("second")).then(|| cut.elapsed()))
    })
    .await?;
    println!(
        "partition: the cut-off leader stopped {exited:.1?} after the cut, the standby held the Lease {taken:.1?} after it"
    );
    ensure!(
        exited < taken,
        "the cut-off leader was still running when the standby took over ({exited:?} vs {taken:?})"
    );
    let log = std::fs::read_to_string(&first.log).context("the first controller's log")?;
    ensure!(
        log.contains("was not renewed within its renewal deadline"),
        "the first controller did not say why it stopped:\n{log}"
    );

    // Healed: the old leader is gone, so nothing of it writes again; the standby leads.
    proxy.heal();
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "web",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.0.0"}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}]}}
            }
        })),
    )
    .await?;
    healthy_on_image(&api, "registry.example/web:1.0.0").await?;
    assert_eq!(holder(&leases).await?.as_deref(), Some("second"));
    Ok(())
}
