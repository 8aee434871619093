//! Faults a release must survive and make visible: a write the API server refuses becomes a
//! condition and an Event on the Rollout (shown by `kubectl get`), while stable keeps serving, and the
//! release carries on once the cause is gone; a gate whose status is no longer refreshed is not
//! trusted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, ResourceQuota, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_api::ErrorBudgetGate;
use sluice_api::rollout::{Rollout, RolloutPhase};
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, eventually, install_crds,
};

use crate::canary::{
    apply, create_routing, healthy_on, rollout, route_weights, routed_canary, wait_status,
};

const WAIT: Duration = Duration::from_secs(60);

/// Each ReplicaSet of the namespace with its wanted replicas.
pub(crate) async fn replica_sets(client: &Client, ns: &str) -> Result<BTreeMap<String, i32>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|rs| {
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            (rs.name_any(), replicas)
        })
        .collect())
}

#[tokio::test]
async fn a_refused_write_is_a_condition_and_an_event_and_stable_keeps_serving() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "refused").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!({"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]});
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", steps.clone()),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    let stable = first.stable_rs.clone().unwrap_or_default();

    // A quota of one ReplicaSet: the next revision's ReplicaSet is refused by the API server.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    quotas
        .patch(
            "one-replicaset",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "one-replicaset"},
                "spec": {"hard": {"count/replicasets.apps": "1"}}
            })),
        )
        .await?;
    eventually("the quota to count the ReplicaSet", WAIT, || async {
        let quota = quotas.get("one-replicaset").await?;
        let used = quota
            .status
            .and_then(|s| s.used)
            .and_then(|u| u.get("count/replicasets.apps").map(|q| q.0.clone()));
        Ok((used.as_deref() == Some("1")).then_some(()))
    })
    .await?;

    apply(
        &api,
        &rollout("web", 2, "registry.example/web:2.0.0", steps),
    )
    .await?;
    let refused = wait_status(&api, "web", "the refusal to be reported", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ReconcileError" && c.status == "True")
    })
    .await?;
    let condition = refused
        .conditions
        .iter()
        .find(|c| c.type_ == "ReconcileError")
        .cloned()
        .context("no ReconcileError condition")?;
    println!(
        "refused: phase {:?}, condition {} {}: {}",
        refused.phase, condition.status, condition.reason, condition.message
    );
    ensure!(condition.reason == "WriteRefused", "reason: {condition:?}");
    ensure!(
        condition.message.contains("ReplicaSet web-")
            && condition.message.contains("exceeded quota"),
        "the condition names neither the object nor the API server's words: {condition:?}"
    );
    ensure!(
        refused.phase == Some(RolloutPhase::Degraded)
            && refused
                .message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota")),
        "kubectl get would not show it: phase {:?}, message {:?}",
        refused.phase,
        refused.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = eventually("a ReconcileError Event", WAIT, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ReconcileError")))
    })
    .await?;
    ensure!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exceeded quota")),
        "the Event does not say why: {event:?}"
    );
    let sets = replica_sets(&client, &ns.name).await?;
    ensure!(
        sets.get(&format!("web-{stable}")) == Some(&2) && sets.len() == 1,
        "stable does not keep serving at full size alone: {sets:?}"
    );

    // The cause gone, the retried reconcile carries the release through and the condition goes.
    quotas
        .delete("one-replicaset", &DeleteParams::default())
        .await?;
    let done = wait_status(
        &api,
        "web",
        "the release to finish after the quota went",
        |s| {
            s.phase == Some(RolloutPhase::Healthy)
                && s.stable_rs.as_deref() != Some(stable.as_str())
        },
    )
    .await?;
    ensure!(
        done.conditions.iter().all(|c| c.type_ != "ReconcileError"),
        "the condition stayed after a reconcile succeeded: {:?}",
        done.conditions
    );
    Ok(())
}

#[tokio::test]
async fn a_gate_whose_last_evaluation_is_too_old_holds_instead_of_trusting_open() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "stale-gate").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let gates: Api<ErrorBudgetGate> = Api::namespaced(client.clone(), &ns.name);
    gates
        .patch(
            "slo",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "slo"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "objective": 99.9, "window": "28d", "evaluationInterval": "1m",
                    "sli": {"events": {
                        "errorQuery": "sum(increase(errors_total[{{window}}]))",
                        "totalQuery": "sum(increase(requests_total[{{window}}]))"
                    }},
                    "prometheus": {"address": "http://127.0.0.1:9"}
                }
            })),
        )
        .await?;
    let evaluated = eventually("the gate's first evaluation", WAIT, || async {
        let gate = gates.get("slo").await?;
        Ok(gate.status.is_some().then_some(gate))
    })
    .await?;
    // A status that says Open, last evaluated ten minutes ago and next due in an hour: as a gate
    // whose evaluations stopped reaching the API server would look. The gate's reconciler leaves it.
    let ago = |minutes: i64| {
        k8s_openapi::jiff::Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(minutes))
            .map(|t| t.to_string())
    };
    gates
        .patch_status(
            "slo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": evaluated.metadata.generation,
                "state": "Open", "reason": "BudgetHealthy", "message": "80.0% of budget left",
                "budgetRemainingPercent": 80.0,
                "lastEvaluationTime": ago(-10)?, "nextEvaluationTime": ago(60)?
            }})),
        )
        .await?;

    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!({"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]});
    // The gate selects Rollouts by their own labels.
    let labelled = |image: &str| {
        let mut manifest = rollout("web", 1, image, steps.clone());
        manifest["metadata"]["labels"] = json!({"app": "web"});
        manifest
    };
    apply(&api, &labelled("registry.example/web:1.0.0")).await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    apply(&api, &labelled("registry.example/web:2.0.0")).await?;
    let held = wait_status(&api, "web", "the new revision to be held", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ReleaseHeld" && c.status == "True")
    })
    .await?;
    let condition = held
        .conditions
        .iter()
        .find(|c| c.type_ == "ReleaseHeld")
        .context("ReleaseHeld")?;
    println!("held: {}: {}", condition.reason, condition.message);
    ensure!(
        condition.reason == "ErrorBudgetUnknown"
            && condition.message.contains("not evaluated since"),
        "held for another reason: {condition:?}"
    );
    ensure!(
        held.stable_rs == first.stable_rs,
        "stable moved while held: {held:?}"
    );
    Ok(())
}

/// A ValidatingAdmissionPolicy (and its binding) refusing any change to a Service's selector in
/// `ns`: the writes an abort makes to its canary Service fail until it is deleted.
async fn refuse_selector_changes(client: &Client, ns: &str) -> Result<()> {
    let name = format!("{ns}-frozen-selectors");
    for (plural, manifest) in [
        (
            "validatingadmissionpolicies",
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["UPDATE"], "resources": ["services"]}]},
                    "validations": [{"expression": "object.spec.selector == oldObject.spec.selector",
                                     "message": "selectors are frozen for this test"}]
                }
            }),
        ),
        (
            "validatingadmissionpolicybindings",
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name, "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                }
            }),
        ),
    ] {
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
            plural,
        );
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&manifest),
        )
        .await?;
    }
    // The policy takes a moment to be in force: until a selector change is refused (dry run).
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually("the admission policy to be in force", WAIT, || async {
        let probe = services
            .patch(
                "web-canary",
                &PatchParams {
                    dry_run: true,
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({"spec": {"selector": {"e2e.sluice.dev/probe": "x"}}})),
            )
            .await;
        Ok(probe.is_err().then_some(()))
    })
    .await
}

async fn allow_selector_changes(client: &Client, ns: &str) -> Result<()> {
    let name = format!("{ns}-frozen-selectors");
    for (kind, plural) in [
        (
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
        ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    ] {
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
            plural,
        );
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        api.delete(&name, &DeleteParams::default()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_request_whose_reconcile_fails_is_carried_out_once_the_failure_is_gone() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "lost-request").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    sluice_e2e::create_services(
        &client,
        &ns.name,
        &[("web", "web-stable"), ("web", "web-canary")],
    )
    .await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canary = json!({"canaryService": "web-canary", "stableService": "web-stable",
        "steps": [{"setWeight": 50}, {"pause": {}}]});
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:1.0.0", canary.clone()),
    )
    .await?;
    wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:2.0.0", canary),
    )
    .await?;
    wait_status(&api, "web", "the release to pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;

    // The abort's first write after taking the request (the canary Service onto stable) is refused.
    refuse_selector_changes(&client, &ns.name).await?;
    let abort = json!({"metadata": {"annotations": {"sluice.dev/action": "abort"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&abort))
        .await?;
    let failing = wait_status(&api, "web", "the refused write to be reported", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "ReconcileError" && c.status == "True")
    })
    .await?;
    ensure!(!failing.abort, "aborted although the write was refused");
    let claimed = api
        .get("web")
        .await?
        .annotations()
        .get("sluice.dev/action")
        .cloned()
        .unwrap_or_default();
    println!("while failing: request annotation {claimed:?}");
    ensure!(
        claimed.starts_with("abort#"),
        "the request is no longer on the Rollout while it could not be carried out: {claimed:?}"
    );

    // The failure gone, a retried reconcile carries the abort out, once.
    allow_selector_changes(&client, &ns.name).await?;
    let aborted = wait_status(&api, "web", "the abort once the writes go through", |s| {
        s.abort
    })
    .await?;
    ensure!(
        aborted.handled_request.as_deref() == Some(claimed.as_str()),
        "the status does not record the request: {:?}",
        aborted.handled_request
    );
    eventually("the handled request to be taken off", WAIT, || async {
        let ro = api.get("web").await?;
        Ok((!ro.annotations().contains_key("sluice.dev/action")).then_some(()))
    })
    .await?;
    Ok(())
}

/// A routed canary (`setWeight: 50`, then a pause for a person) whose second revision waits at 50%,
/// with the controller running (with `failpoints` set, if any); returns the first revision's status
/// too.
async fn routed_release_paused_at_half(
    prefix: &str,
    failpoints: Option<&str>,
) -> Result<(
    Client,
    TestNamespace,
    ControllerProcess,
    Api<Rollout>,
    sluice_api::rollout::RolloutStatus,
)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let controller = match failpoints {
        Some(failpoints) => ControllerProcess::start_failing(&ns.name, failpoints)?,
        None => ControllerProcess::start(&ns.name)?,
    };
    create_routing(&client, &ns.name).await?;
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    apply(
        &api,
        &rollout(
            "web",
            2,
            "registry.example/web:1.0.0",
            routed_canary(steps.clone()),
        ),
    )
    .await?;
    let first = wait_status(&api, "web", "the first revision to be healthy", |s| {
        healthy_on(s, None)
    })
    .await?;
    apply(
        &api,
        &rollout("web", 2, "registry.example/web:2.0.0", routed_canary(steps)),
    )
    .await?;
    wait_status(&api, "web", "the release to pause at 50%", |s| {
        s.phase == Some(RolloutPhase::Paused)
    })
    .await?;
    Ok((client, ns, controller, api, first))
}

#[tokio::test]
async fn a_service_deleted_mid_release_aborts_it_back_to_stable_instead_of_freezing_it()
-> Result<()> {
    let (client, ns, _controller, api, first) =
        routed_release_paused_at_half("invalid-mid-release", None).await?;
    eventually("half the traffic on the canary", WAIT, || async {
        Ok((route_weights(&client, &ns.name).await? == (50, 50)).then_some(()))
    })
    .await?;

    // The canary Service goes mid-release: the release cannot go on, and must not stay at 50%.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .delete("web-canary", &DeleteParams::default())
        .await?;
    let aborted = wait_status(&api, "web", "the release to be aborted", |s| s.abort).await?;
    println!("aborted: {:?}", aborted.message);
    ensure!(
        aborted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("web-canary") && m.contains("does not exist")),
        "the Rollout does not say why: {:?}",
        aborted.message
    );
    ensure!(
        aborted
            .conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec" && c.status == "True"),
        "no InvalidSpec condition: {:?}",
        aborted.conditions
    );
    eventually("all traffic back on stable", WAIT, || async {
        Ok((route_weights(&client, &ns.name).await? == (100, 0)).then_some(()))
    })
    .await?;
    ensure!(
        aborted.stable_rs == first.stable_rs,
        "stable changed: {:?}",
        aborted.stable_rs
    );
    Ok(())
}

/// The request annotation once the controller has claimed it, and the status recording it handled.
async fn handled(api: &Api<Rollout>, request: &str) -> Result<String> {
    eventually(&format!("{request} to be handled"), WAIT, || async {
        let rollout = api.get("web").await?;
        let status = rollout.status.clone().unwrap_or_default();
        Ok(status
            .handled_request
            .filter(|id| id.starts_with(&format!("{request}#")))
            .filter(|_| {
                rollout
                    .annotations()
                    .get("sluice.dev/action")
                    .is_none_or(|a| a != request)
            }))
    })
    .await
}

#[tokio::test]
async fn a_burst_of_abort_and_retry_requests_never_undoes_an_abort() -> Result<()> {
    burst_of_abort_and_retry("request-burst", None).await
}

/// The same burst with the controller's Rollout cache held 400 ms behind the API server, so that
/// reconciles woken by the route's and ReplicaSets' changes see the Rollout as it was before the
/// controller's own last write: none of them may act on that older copy.
#[tokio::test]
async fn a_burst_of_requests_against_a_lagging_cache_never_undoes_an_abort() -> Result<()> {
    burst_of_abort_and_retry("request-lag", Some("watch-lag-rollout=return(400)")).await
}

/// Abort and retry, each sent the moment the one before is taken; fails if the canary gets traffic
/// while an abort stands.
async fn burst_of_abort_and_retry(prefix: &str, failpoints: Option<&str>) -> Result<()> {
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let (client, ns, _controller, api, _) =
        routed_release_paused_at_half(prefix, failpoints).await?;

    // Every weight the route takes, with when it was seen.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(Instant, i64)>>> = Default::default();
    let log = seen.clone();
    let gvk = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    );
    tokio::spawn(async move {
        let mut stream =
            std::pin::pin!(watcher(routes, watcher::Config::default()).applied_objects());
        while let Some(Ok(route)) = stream.next().await {
            let canary = route.data["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["name"] == "web-canary"))
                .and_then(|r| r["weight"].as_i64())
                .unwrap_or(-1);
            if let Ok(mut seen) = log.lock() {
                seen.push((Instant::now(), canary));
            }
        }
    });

    // Abort and retry in quick succession, each sent the moment the one before is taken.
    let rounds = 8;
    let mut aborted_spans: Vec<(Instant, Option<Instant>)> = Vec::new();
    for _ in 0..rounds {
        for request in ["abort", "retry"] {
            eventually("the request slot to be free", WAIT, || async {
                let rollout = api.get("web").await?;
                Ok((!rollout.annotations().contains_key("sluice.dev/action")).then_some(()))
            })
            .await?;
            if request == "retry"
                && let Some(last) = aborted_spans.last_mut()
            {
                // The retry may move traffic as soon as it is sent.
                last.1 = Some(Instant::now());
            }
            let patch = json!({"metadata": {"annotations": {"sluice.dev/action": request}}});
            api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            handled(&api, request).await?;
            if request == "abort" {
                aborted_spans.push((Instant::now(), None));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Once an abort is recorded, the canary gets no traffic until the retry that follows is sent.
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let undone: Vec<_> = aborted_spans
        .iter()
        .filter_map(|(from, to)| {
            seen.iter()
                .find(|(at, canary)| at > from && to.is_none_or(|to| *at < to) && *canary > 0)
                .map(|(_, canary)| *canary)
        })
        .collect();
    println!(
        "{prefix}: {rounds} abort/retry rounds: {} route changes seen, {} aborts undone",
        seen.len(),
        undone.len()
    );
    ensure!(
        undone.is_empty(),
        "an abort was undone: canary weights {undone:?} after it"
    );
    Ok(())
}
