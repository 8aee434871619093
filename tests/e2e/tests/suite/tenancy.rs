//! A tenant with rights in one namespace gains nothing through Sluice: a Secret its RBAC hides stays
//! hidden whatever it writes, and values read from Secrets it may use never appear in what Sluice
//! records or says.

use std::time::Duration;

use crate::analysis::apply;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_api::analysis::{AnalysisPhase, AnalysisRun};
use sluice_api::rollout::Rollout;
use sluice_e2e::{
    ControllerProcess, FIELD_MANAGER, TestNamespace, client, client_as, eventually, install_crds,
};

const WAIT: Duration = Duration::from_secs(60);
/// In a Secret the tenant may not read.
const HIDDEN: &str = "hidden-Value-7Q2";
/// In a Secret open to analysis, which the tenant may use but not read.
const OPENED: &str = "opened-Value-9K4";

/// A ServiceAccount `tenant` that may do anything with Sluice's objects in `ns` and read its
/// Events, but not its Secrets; and a client acting as it.
async fn tenant(client: &Client, ns: &str) -> Result<Client> {
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "tenant"},
        "rules": [
            {"apiGroups": ["sluice.dev"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]}
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "tenant"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
               "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]}),
    ];
    for object in objects {
        let kind = object["kind"].as_str().context("kind")?;
        let api_version = object["apiVersion"].as_str().context("apiVersion")?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            group, version, kind,
        ));
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource);
        let name = object["metadata"]["name"].as_str().context("name")?;
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
    }
    let tenant = client_as(&format!("system:serviceaccount:{ns}:tenant")).await?;
    // The API server's authorizer learns of new RBAC objects from a watch: wait until it has.
    let runs: Api<AnalysisRun> = Api::namespaced(tenant.clone(), ns);
    eventually("the tenant's Role to take effect", WAIT, || async {
        Ok(runs.list(&ListParams::default()).await.ok().map(|_| ()))
    })
    .await?;
    Ok(tenant)
}

/// A run of one metric with an argument read from `secret`, in `query`.
fn run_reading(name: &str, labels: Value, secret: &str, query: &str) -> Result<Value> {
    Ok(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}],
            "metrics": [{
                "name": "probe", "count": 1, "consecutiveErrorLimit": 0,
                "successCondition": "result[0] == 1",
                "provider": {"prometheus": {"address": prometheus_url()?, "query": query}}
            }]
        }
    }))
}

fn prometheus_url() -> Result<String> {
    std::env::var("SLUICE_E2E_PROMETHEUS_URL").context("SLUICE_E2E_PROMETHEUS_URL is not set")
}

/// The run once finished, as the tenant reads it.
pub(crate) async fn finished(runs: &Api<AnalysisRun>, name: &str) -> Result<AnalysisRun> {
    eventually(&format!("run {name} to finish"), WAIT, || async {
        let run = runs.get(name).await?;
        let done = run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| !matches!(p, AnalysisPhase::Pending | AnalysisPhase::Running));
        Ok(done.then_some(run))
    })
    .await
}

fn message(run: &AnalysisRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tenant_reads_no_secret_through_sluice_and_secret_values_never_show() -> Result<()> {
    let admin = client().await?;
    install_crds(&admin).await?;
    let ns = TestNamespace::create(&admin, "tenancy").await?;
    let controller = ControllerProcess::start(&ns.name)?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    apply(
        &secrets,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hidden"},
                "stringData": {"token": HIDDEN}}),
    )
    .await?;
    apply(
        &secrets,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "opened", "labels": {"sluice.dev/analysis-secret": "true"}, "annotations": {"sluice.dev/destinations": "127.0.0.1"}},
                "stringData": {"token": OPENED}}),
    )
    .await?;
    let tenant = tenant(&admin, &ns.name).await?;
    // The tenant's own RBAC hides the Secrets.
    match Api::<Secret>::namespaced(tenant.clone(), &ns.name)
        .get("hidden")
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("the tenant may read the Secret: {other:?}"),
    }
    let runs: Api<AnalysisRun> = Api::namespaced(tenant.clone(), &ns.name);
    let inside_a_label = r#"label_replace(vector(1), "token", "{{args.token}}", "", "")"#;
    let standalone = json!({"sluice.dev/standalone": "true"});

    // 1. A run no Rollout owns, not marked to run on its own: refused, nothing read.
    apply(
        &runs,
        &run_reading("unowned", json!({}), "hidden", inside_a_label)?,
    )
    .await?;
    let unowned = finished(&runs, "unowned").await?;
    ensure!(
        message(&unowned).contains("no Rollout owns this run"),
        "{}",
        message(&unowned)
    );

    // 2. Marked to run on its own, reading a Secret not open to analysis: an Error naming the
    //    label, the same whether or not the Secret exists.
    apply(
        &runs,
        &run_reading("closed", standalone.clone(), "hidden", inside_a_label)?,
    )
    .await?;
    apply(
        &runs,
        &run_reading(
            "absent",
            standalone.clone(),
            "no-such-secret",
            inside_a_label,
        )?,
    )
    .await?;
    let closed = finished(&runs, "closed").await?;
    let absent = finished(&runs, "absent").await?;
    ensure!(
        message(&closed).contains("is not open to analysis")
            && message(&closed).contains("sluice.dev/analysis-secret=true"),
        "{}",
        message(&closed)
    );
    ensure!(
        message(&closed).replace("hidden", "X") == message(&absent).replace("no-such-secret", "X"),
        "a closed Secret and a missing one read differently: {:?} / {:?}",
        message(&closed),
        message(&absent)
    );

    // 3. A Secret open to analysis is used, never shown: the query as sent is recorded redacted,
    //    and a failed query that carried the value gives no server words (which quote pieces).
    apply(
        &runs,
        &run_reading("opened", standalone.clone(), "opened", inside_a_label)?,
    )
    .await?;
    apply(
        &runs,
        &run_reading(
            "opened-broken",
            standalone.clone(),
            "opened",
            // Carries the value in a string, and fails at the server (an invalid regular
            // expression): the server's answer could quote the query.
            r#"label_replace(vector(1), "token", "{{args.token}}", "", "(")"#,
        )?,
    )
    .await?;
    let opened = finished(&runs, "opened").await?;
    let status = opened.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(AnalysisPhase::Successful),
        "{status:?}"
    );
    let query = status.metric_results[0].measurements[0]
        .metadata
        .get("query")
        .cloned()
        .unwrap_or_default();
    ensure!(query.contains(r#""token", "***""#), "{query}");
    let broken = finished(&runs, "opened-broken").await?;
    ensure!(
        message(&broken).contains("withheld"),
        "{}",
        message(&broken)
    );

    // 4. Through a Rollout: its template's argument reads the hidden Secret; the run is an
    //    Error, the release aborts, and nothing of the value shows.
    let templates: Api<sluice_api::AnalysisTemplate> = Api::namespaced(tenant.clone(), &ns.name);
    apply(
        &templates,
        &json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "probe"},
                "spec": {
                    "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "hidden", "key": "token"}}}],
                    "metrics": [{"name": "probe", "count": 1,
                                 "successCondition": "result[0] == 1",
                                 "provider": {"prometheus": {"address": prometheus_url()?, "query": inside_a_label}}}]
                }}),
    )
    .await?;
    let rollouts: Api<Rollout> = Api::namespaced(tenant.clone(), &ns.name);
    let rollout = |image: &str| {
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app", "image": image}]}},
                        "strategy": {"canary": {"steps": [
                            {"setWeight": 50},
                            {"analysis": {"templates": [{"templateName": "probe"}]}}]}}}})
    };
    apply(&rollouts, &rollout("registry.example/web:1.0.0")).await?;
    eventually("the first revision to be stable", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok(status.stable_rs.is_some().then_some(()))
    })
    .await?;
    apply(&rollouts, &rollout("registry.example/web:2.0.0")).await?;
    let aborted = eventually("the release to abort", WAIT, || async {
        let status = rollouts.get("web").await?.status.unwrap_or_default();
        Ok(status.abort.then_some(status))
    })
    .await?;
    ensure!(
        aborted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("not open to analysis")),
        "{:?}",
        aborted.message
    );

    // 5. Through an error-budget gate: its Prometheus credentials read the hidden Secret; the gate
    //    says so and reads nothing.
    let gates: Api<sluice_api::ErrorBudgetGate> = Api::namespaced(tenant.clone(), &ns.name);
    apply(
        &gates,
        &json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "slo"},
                "spec": {
                    "selector": {"matchLabels": {"app": "other"}},
                    "objective": 99.0, "window": "1h", "evaluationInterval": "2s",
                    "sli": {"events": {"errorQuery": "sum(increase(up{job=\"none\"}[{{window}}]))", "totalQuery": "sum(increase(up[{{window}}]))"}},
                    "prometheus": {"address": prometheus_url()?, "authentication": {"basic": {
                        "usernameSecretRef": {"name": "hidden", "key": "token"},
                        "passwordSecretRef": {"name": "hidden", "key": "token"}}}}
                }}),
    )
    .await?;
    eventually("the gate to say the Secret is not open", WAIT, || async {
        let gate = gates.get("slo").await?;
        Ok(serde_json::to_string(&gate.status)?
            .contains("is not open to analysis")
            .then_some(()))
    })
    .await?;

    // Nowhere the tenant can look, nor in the controller's log, is either value.
    let mut seen = String::new();
    for run in runs.list(&ListParams::default()).await?.items {
        seen.push_str(&serde_json::to_string(&run)?);
    }
    for rollout in rollouts.list(&ListParams::default()).await?.items {
        seen.push_str(&serde_json::to_string(&rollout)?);
    }
    for gate in gates.list(&ListParams::default()).await?.items {
        seen.push_str(&serde_json::to_string(&gate)?);
    }
    // Events are sent by a background task: give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Api<Event> = Api::namespaced(tenant.clone(), &ns.name);
    for event in events.list(&ListParams::default()).await?.items {
        seen.push_str(&serde_json::to_string(&event)?);
    }
    let log = std::fs::read_to_string(&controller.log)?;
    for (name, value) in [("hidden", HIDDEN), ("opened", OPENED)] {
        ensure!(
            !seen.contains(value),
            "the {name} Secret's value is visible to the tenant"
        );
        ensure!(
            !log.contains(value),
            "the {name} Secret's value is in the controller's log"
        );
    }
    println!(
        "tenancy: 5 routes to a Secret tried (unowned run, closed Secret, open Secret, Rollout, \
         gate); {} bytes of runs, Rollouts, gates and Events and {} bytes of log searched, no \
         value found",
        seen.len(),
        log.len()
    );
    drop(controller);
    Ok(())
}

/// A plain HTTP server on loopback that answers every request with a redirect to `to`.
fn redirecting_server(to: &'static str) -> Result<String> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Ok(address)
}

#[tokio::test]
async fn a_provider_address_the_policy_denies_is_an_error_naming_the_rule() -> Result<()> {
    let admin = client().await?;
    install_crds(&admin).await?;
    let ns = TestNamespace::create(&admin, "address-policy").await?;
    // Allowed: 127.0.0.1 only (the test cluster's Prometheus), as every e2e controller.
    let _controller = ControllerProcess::start(&ns.name)?;
    let runs: Api<AnalysisRun> = Api::namespaced(admin.clone(), &ns.name);
    let run = |name: &str, address: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {"metrics": [{
                "name": "probe", "count": 1, "consecutiveErrorLimit": 0,
                "successCondition": "result[0] == 1",
                "provider": {"prometheus": {"address": address, "query": "vector(1)", "timeout": 2}}
            }]}
        })
    };
    let redirect = redirecting_server("http://169.254.169.254/api/v1/query")?;
    let cases = [
        (
            "metadata",
            "http://169.254.169.254".to_owned(),
            vec!["link-local", "127.0.0.1/32"],
        ),
        (
            "outside",
            "http://prometheus.example.com:9090".to_owned(),
            vec!["prometheus.example.com", "no host rule allows it"],
        ),
        (
            "redirect",
            redirect,
            vec![
                "redirected to http://169.254.169.254/api/v1/query",
                "never follows redirects",
            ],
        ),
        ("allowed", prometheus_url()?, vec![]),
    ];
    for (name, address, _) in &cases {
        apply(&runs, &run(name, address)).await?;
    }
    for (name, _, expected) in &cases {
        let run = finished(&runs, name).await?;
        let status = run.status.clone().unwrap_or_default();
        let said = status.metric_results[0].measurements[0]
            .message
            .clone()
            .unwrap_or_default();
        println!("{name}: {:?} {said}", status.phase);
        if expected.is_empty() {
            ensure!(status.phase == Some(AnalysisPhase::Successful), "{said}");
            continue;
        }
        ensure!(status.phase == Some(AnalysisPhase::Error), "{name}: {said}");
        for words in expected {
            ensure!(
                said.contains(words),
                "{name}: {said:?} does not say {words:?}"
            );
        }
    }
    Ok(())
}

/// An argument (a Rollout's, an annotation read through `fieldRef`) cannot rewrite a template's
/// query: inside a string it stays a string, and where it could change the query's shape it is
/// refused, naming the placeholder.
#[tokio::test]
async fn an_argument_cannot_rewrite_a_templates_query() -> Result<()> {
    let admin = client().await?;
    install_crds(&admin).await?;
    let ns = TestNamespace::create(&admin, "injection").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let runs: Api<AnalysisRun> = Api::namespaced(admin.clone(), &ns.name);
    let run = |name: &str, query: &str, arg: &str, value: &str| -> Result<Value> {
        Ok(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {"sluice.dev/standalone": "true"}},
            "spec": {
                "args": [{"name": arg, "value": value}],
                "metrics": [{
                    "name": "errors", "count": 1, "consecutiveErrorLimit": 0,
                    "failureCondition": "result[0] >= 1",
                    "provider": {"prometheus": {"address": prometheus_url()?, "query": query}}
                }]
            }
        }))
    };
    // The platform's query answers 5 (failing) unless its job has targets; the value tries to
    // close the label, subtract 100 and comment the rest out.
    apply(
        &runs,
        &run(
            "label",
            r#"(count(up{job="{{args.job}}"}) or vector(0)) + 5"#,
            "job",
            r#"prometheus"}) or vector(0)) - 100 #"#,
        )?,
    )
    .await?;
    apply(
        &runs,
        &run(
            "bare",
            r#"up{job="prometheus"} offset {{args.offset}}"#,
            "offset",
            "1m or vector(0)",
        )?,
    )
    .await?;
    let label = finished(&runs, "label").await?;
    let status = label.status.clone().unwrap_or_default();
    let measurement = &status.metric_results[0].measurements[0];
    println!(
        "label: {:?} value {:?}, query sent {:?}",
        status.phase,
        measurement.value,
        measurement.metadata.get("query")
    );
    ensure!(
        status.phase == Some(AnalysisPhase::Failed),
        "the value rewrote the query: {status:?}"
    );
    let bare = finished(&runs, "bare").await?;
    println!("bare: {}", message(&bare));
    ensure!(
        bare.status.as_ref().and_then(|s| s.phase) == Some(AnalysisPhase::Error)
            && message(&bare).contains("{{args.offset}}")
            && message(&bare).contains("outside a string"),
        "{}",
        message(&bare)
    );
    Ok(())
}

/// A value read from a Secret goes only where the Secret's annotation `sluice.dev/destinations`
/// lets it: a tenant who may use a Secret meant for the cluster's Prometheus cannot have its token
/// or an argument read from it sent to a server of its own (here one on this machine, which the
/// controller's address policy allows). Before, both reached that server.
#[tokio::test]
async fn a_secrets_values_go_only_to_the_destinations_it_names() -> Result<()> {
    let admin = client().await?;
    install_crds(&admin).await?;
    let ns = TestNamespace::create(&admin, "destinations").await?;
    let _controller = ControllerProcess::start(&ns.name)?;
    let own = sluice_e2e::http::TestServer::start().await?;
    own.answer(
        "/api/v1/query",
        sluice_e2e::http::Answer::json(
            200,
            json!({"status": "success", "data": {"resultType": "vector",
                   "result": [{"metric": {}, "value": [0, "1"]}]}}),
        ),
    );
    own.answer(
        "/health",
        sluice_e2e::http::Answer::json(200, json!({"ok": 1})),
    );
    apply(
        &Api::<Secret>::namespaced(admin.clone(), &ns.name),
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "bound",
                             "labels": {"sluice.dev/analysis-secret": "true"},
                             "annotations": {"sluice.dev/destinations": "prometheus.monitoring.svc"}},
                "stringData": {"token": OPENED}}),
    )
    .await?;
    let tenant = tenant(&admin, &ns.name).await?;
    let runs: Api<AnalysisRun> = Api::namespaced(tenant.clone(), &ns.name);
    let standalone = json!({"sluice.dev/standalone": "true"});
    // Its token as a Prometheus bearer token, and as an argument in a web metric's header.
    apply(
        &runs,
        &json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
                "metadata": {"name": "bearer", "labels": standalone},
                "spec": {"metrics": [{"name": "up", "count": 1, "consecutiveErrorLimit": 0,
                    "successCondition": "result[0] == 1",
                    "provider": {"prometheus": {"address": own.address, "query": "vector(1)",
                        "authentication": {"bearer": {"tokenSecretRef": {"name": "bound", "key": "token"}}}}}}]}}),
    )
    .await?;
    apply(
        &runs,
        &json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
                "metadata": {"name": "header", "labels": standalone},
                "spec": {
                    "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "bound", "key": "token"}}}],
                    "metrics": [{"name": "health", "count": 1, "consecutiveErrorLimit": 0,
                        "successCondition": "result.ok == 1",
                        "provider": {"web": {"url": format!("{}/health", own.address),
                            "headers": [{"key": "Authorization", "value": "Bearer {{args.token}}"}]}}}]}}),
    )
    .await?;
    for name in ["bearer", "header"] {
        let run = finished(&runs, name).await?;
        let said = message(&run);
        println!("{name}: {said}");
        ensure!(
            run.status.as_ref().and_then(|s| s.phase) == Some(AnalysisPhase::Error)
                && said.contains("may not be sent to 127.0.0.1")
                && said.contains("prometheus.monitoring.svc")
                && !said.contains(OPENED),
            "{name}: {said}"
        );
    }
    let carried: Vec<String> = own
        .received()
        .into_iter()
        .filter(|r| r.head.contains(OPENED) || r.body.contains(OPENED))
        .map(|r| r.path)
        .collect();
    ensure!(
        carried.is_empty(),
        "the token reached the tenant's server: {carried:?}"
    );
    Ok(())
}
