//! Mistakes a user could make are refused at `kubectl apply` time by the real API server, with a
//! message that names the field and says what is allowed.

use anyhow::{Result, bail};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use sluice_e2e::{TestNamespace, client, install_crds};

/// One invalid manifest: a valid base with `patch` merged in (RFC 7386), and what the refusal must say.
struct Case {
    name: &'static str,
    base: fn() -> Value,
    patch: Value,
    /// The field path the error must name.
    field: &'static str,
    /// A fragment of the explanation.
    says: &'static str,
}

fn canary_rollout() -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "checkout"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": {"metadata": {"labels": {"app": "checkout"}},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/checkout:1.0.0"}]}},
            "strategy": {"canary": {
                "canaryService": "checkout-canary", "stableService": "checkout-stable",
                "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 60}, {"pause": {}}]
            }}
        }
    })
}

fn blue_green_rollout() -> Value {
    let mut rollout = canary_rollout();
    rollout["spec"]["strategy"] = json!({"blueGreen": {"activeService": "ledger-active", "previewService": "ledger-preview"}});
    rollout
}

fn analysis_template() -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "error-rate"},
        "spec": {"metrics": [{
            "name": "error-rate", "interval": "1m", "count": 5,
            "successCondition": "result[0] < 0.01",
            "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "vector(0)"}}
        }]}
    })
}

fn cluster_analysis_template() -> Value {
    let mut template = analysis_template();
    template["kind"] = json!("ClusterAnalysisTemplate");
    template
}

fn analysis_run() -> Value {
    let mut run = analysis_template();
    run["kind"] = json!("AnalysisRun");
    run
}

fn gate() -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ErrorBudgetGate", "metadata": {"name": "checkout-slo"},
        "spec": {
            "selector": {"matchLabels": {"team": "payments"}},
            "objective": 99.9, "window": "28d",
            "sli": {"events": {
                "errorQuery": "sum(increase(http_requests_total{code=~\"5..\"}[{{window}}]))",
                "totalQuery": "sum(increase(http_requests_total[{{window}}]))"
            }},
            "prometheus": {"address": "http://prometheus:9090"}
        }
    })
}

fn prometheus_provider(extra: Value) -> Value {
    let mut provider = json!({"address": "http://prometheus:9090", "query": "vector(0)"});
    merge(&mut provider, &extra);
    json!({"spec": {"metrics": [{"name": "error-rate", "successCondition": "result[0] < 0.01", "provider": {"prometheus": provider}}]}})
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            // More digits than a duration can hold would be read as zero or overflow.
            name: "a duration too long to read",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "error-rate", "interval": "9999999999h",
                "successCondition": "result[0] < 0.01",
                "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "vector(0)"}}}]}}),
            field: "spec.metrics[0].interval",
            says: "must be a duration such as 30s",
        },
        Case {
            // As a JSON merge patch that replaces `containers` would leave it: the ReplicaSet made
            // from it would be refused, so the Rollout is refused first.
            name: "a container without an image",
            base: canary_rollout,
            patch: json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}}),
            field: "spec.template.spec.containers",
            says: "needs an image",
        },
        Case {
            name: "both strategies",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"blueGreen": {"activeService": "a"}}}}),
            field: "spec.strategy",
            says: "exactly one of spec.strategy.canary or spec.strategy.blueGreen",
        },
        Case {
            name: "no strategy",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": null}}}),
            field: "spec.strategy",
            says: "exactly one of spec.strategy.canary or spec.strategy.blueGreen",
        },
        Case {
            name: "weight above 100",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 150}]}}}}),
            field: "spec.strategy.canary.steps[0].setWeight",
            says: "setWeight must be between 0 and 100",
        },
        Case {
            name: "negative weight",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 10}, {"setWeight": -5}]}}}}),
            field: "spec.strategy.canary.steps[1].setWeight",
            says: "setWeight must be between 0 and 100",
        },
        Case {
            name: "step with two actions",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}}}),
            field: "spec.strategy.canary.steps[0]",
            says: "a step sets exactly one of setWeight, pause",
        },
        Case {
            name: "pause duration in words",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"pause": {"duration": "5 minutes"}}]}}}}),
            field: "spec.strategy.canary.steps[0].pause.duration",
            says: "duration such as 30s",
        },
        Case {
            name: "maxSurge not a percentage",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"maxSurge": "lots"}}}}),
            field: "spec.strategy.canary.maxSurge",
            says: "percentage such as 25%",
        },
        Case {
            name: "maxSurge and maxUnavailable both zero",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"maxSurge": 0, "maxUnavailable": "0%"}}}}),
            field: "spec.strategy.canary.maxSurge",
            says: "must not both be zero",
        },
        Case {
            name: "canary and stable Service the same",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"canaryService": "checkout-stable"}}}}),
            field: "spec.strategy.canary.canaryService",
            says: "must be different Services",
        },
        Case {
            name: "traffic routing without Services",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"stableService": null, "trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}}}}}}),
            field: "spec.strategy.canary.trafficRouting",
            says: "trafficRouting needs both canaryService and stableService",
        },
        Case {
            name: "two traffic routers",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}, "nginx": {"stableIngress": "checkout"}}}}}}),
            field: "spec.strategy.canary.trafficRouting",
            says: "set exactly one of trafficRouting.gatewayAPI, trafficRouting.istio or trafficRouting.nginx",
        },
        Case {
            name: "an Istio VirtualService in another namespace",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"istio": {"virtualService": {"name": "checkout.mesh"}}}}}}}),
            field: "spec.strategy.canary.trafficRouting.istio.virtualService.name",
            says: "Sluice writes only in the Rollout's namespace",
        },
        Case {
            name: "Istio subsets that are the same",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"istio": {"virtualService": {"name": "checkout"}, "destinationRule": {"name": "checkout", "canarySubsetName": "v", "stableSubsetName": "v"}}}}}}}),
            field: "spec.strategy.canary.trafficRouting.istio.destinationRule.canarySubsetName",
            says: "canarySubsetName and stableSubsetName must differ",
        },
        Case {
            name: "NGINX without a stable Ingress",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"nginx": {"annotationPrefix": "nginx.ingress.kubernetes.io"}}}}}}),
            field: "spec.strategy.canary.trafficRouting.nginx",
            says: "set exactly one of nginx.stableIngress or nginx.stableIngresses",
        },
        Case {
            name: "template and workloadRef",
            base: canary_rollout,
            patch: json!({"spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"}}}),
            field: "spec",
            says: "exactly one of spec.template or spec.workloadRef",
        },
        Case {
            name: "workloadRef to a StatefulSet",
            base: canary_rollout,
            patch: json!({"spec": {"template": null, "workloadRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "checkout"}}}),
            field: "spec.workloadRef",
            says: "workloadRef must name an apps/v1 Deployment",
        },
        Case {
            name: "a web metric with a body and no method",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "result == 1", "provider": {
                "web": {"url": "http://health.default.svc/x", "body": "{}"}}}]}}),
            field: "spec.metrics[0].provider.web.body",
            says: "a body needs method POST or PUT",
        },
        Case {
            name: "a job metric with a condition",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "result == 1", "provider": {
                "job": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}]}}),
            field: "spec.metrics[0].successCondition",
            says: "a job metric is judged by its Job",
        },
        Case {
            name: "a web metric URL without a scheme",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "result == 1", "provider": {
                "web": {"url": "health.default.svc/x"}}}]}}),
            field: "spec.metrics[0].provider.web.url",
            says: "url must start with http:// or https://",
        },
        Case {
            name: "a web metric retargeted by a Host header",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "result == 1", "provider": {
                "web": {"url": "http://health.default.svc/x",
                        "headers": [{"key": "HOST", "value": "metadata.google.internal"}]}}}]}}),
            field: "spec.metrics[0].provider.web.headers[0].key",
            says: "a Host header is not allowed",
        },
        Case {
            name: "a Prometheus query retargeted by a Host header",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "result[0] < 1", "provider": {
                "prometheus": {"address": "http://prometheus:9090", "query": "vector(0)",
                               "headers": [{"key": "host", "value": "other"}]}}}]}}),
            field: "spec.metrics[0].provider.prometheus.headers[0].key",
            says: "a Host header is not allowed",
        },
        Case {
            name: "an NGINX snippet through additionalIngressAnnotations",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"nginx": {
                "stableIngress": "checkout",
                "additionalIngressAnnotations": {"configuration-snippet": "return 200;"}}}}}}}),
            field: "spec.strategy.canary.trafficRouting.nginx.additionalIngressAnnotations",
            says: "may name only canary-by-header",
        },
        Case {
            name: "an NGINX snippet through canaryIngressAnnotations",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"nginx": {
                "stableIngress": "checkout",
                "canaryIngressAnnotations": {"nginx.ingress.kubernetes.io/server-snippet": "x"}}}}}}}),
            field: "spec.strategy.canary.trafficRouting.nginx.canaryIngressAnnotations",
            says: "nor snippets",
        },
        Case {
            name: "negative replicas",
            base: canary_rollout,
            patch: json!({"spec": {"replicas": -1}}),
            field: "spec.replicas",
            says: "must be 0 or more",
        },
        Case {
            name: "deadline not above minReadySeconds",
            base: canary_rollout,
            patch: json!({"spec": {"minReadySeconds": 900, "progressDeadlineSeconds": 600}}),
            field: "spec.progressDeadlineSeconds",
            says: "must be greater than spec.minReadySeconds",
        },
        Case {
            name: "setCanaryScale weight above 100",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"gatewayAPI": {"httpRoute": "r"}}, "steps": [{"setCanaryScale": {"weight": 200}}]}}}}),
            field: "spec.strategy.canary.steps[0].setCanaryScale.weight",
            says: "weight must be between 0 and 100",
        },
        Case {
            name: "setCanaryScale with two sizes",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"trafficRouting": {"gatewayAPI": {"httpRoute": "r"}}, "steps": [{"setCanaryScale": {"weight": 20, "replicas": 2}}]}}}}),
            field: "spec.strategy.canary.steps[0].setCanaryScale",
            says: "exactly one of weight, replicas or matchTrafficWeight",
        },
        Case {
            name: "background analysis starting past the last step",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"analysis": {"templates": [{"templateName": "t"}], "startingStep": 9}}}}}),
            field: "spec.strategy.canary.analysis.startingStep",
            says: "must be the index of one of the steps",
        },
        Case {
            name: "analysis step without templates",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"analysis": {"templates": []}}]}}}}),
            field: "spec.strategy.canary.steps[0].analysis.templates",
            says: "at least 1 items",
        },
        Case {
            name: "mirror route without traffic routing",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setMirrorRoute": {"name": "shadow", "percentage": 50}}]}}}}),
            field: "spec.strategy.canary.steps",
            says: "each setHeaderRoute and setMirrorRoute step names a route in trafficRouting.managedRoutes",
        },
        Case {
            name: "header route not in managedRoutes",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}, "managedRoutes": [{"name": "other"}]},
                "steps": [{"setHeaderRoute": {"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}}]}}}}),
            field: "spec.strategy.canary.steps",
            says: "each setHeaderRoute and setMirrorRoute step names a route in trafficRouting.managedRoutes",
        },
        Case {
            name: "managed routes with NGINX",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {
                "trafficRouting": {"nginx": {"stableIngress": "checkout"}, "managedRoutes": [{"name": "beta"}]}}}}}),
            field: "spec.strategy.canary.trafficRouting.managedRoutes",
            says: "managedRoutes need trafficRouting.gatewayAPI or trafficRouting.istio",
        },
        Case {
            name: "a header match with two kinds of value",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}, "managedRoutes": [{"name": "beta"}]},
                "steps": [{"setHeaderRoute": {"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes", "prefix": "y"}}]}}]}}}}),
            field: "spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerValue",
            says: "set exactly one of exact, prefix or regex",
        },
        Case {
            name: "managed routes named twice",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}, "managedRoutes": [{"name": "beta"}, {"name": "beta"}]}}}}}),
            field: "spec.strategy.canary.trafficRouting.managedRoutes",
            says: "managedRoutes names must be unique",
        },
        // Fields the controller does not act on yet are refused, never stored and skipped.
        Case {
            name: "dynamicStableScale without a router",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"dynamicStableScale": true}}}}),
            field: "spec.strategy.canary.dynamicStableScale",
            says: "dynamicStableScale needs trafficRouting",
        },
        Case {
            name: "minPodsPerReplicaSet without a router",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"minPodsPerReplicaSet": 2}}}}),
            field: "spec.strategy.canary.minPodsPerReplicaSet",
            says: "minPodsPerReplicaSet needs trafficRouting",
        },
        Case {
            // Only metadata is read: any other path would never resolve and fail the run.
            name: "a fieldRef outside metadata",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"analysis": {
                "templates": [{"templateName": "error-rate"}],
                "args": [{"name": "image", "valueFrom": {"fieldRef": {"fieldPath": "spec.template.spec.containers[0].image"}}}]}}}}}),
            field: "fieldPath",
            says: "should match '^metadata",
        },
        Case {
            // Only metadata is read: any other path would never resolve and fail the run.
            name: "a fieldRef outside metadata",
            base: canary_rollout,
            patch: json!({"spec": {"strategy": {"canary": {"analysis": {
                "templates": [{"templateName": "error-rate"}],
                "args": [{"name": "image", "valueFrom": {"fieldRef": {"fieldPath": "spec.template.spec.containers[0].image"}}}]}}}}}),
            field: "fieldPath",
            says: "should match '^metadata",
        },
        Case {
            name: "rollbackWindow (not supported yet)",
            base: canary_rollout,
            patch: json!({"spec": {"rollbackWindow": {"revisions": 3}}}),
            field: "spec.rollbackWindow",
            says: "rollbackWindow is not supported yet",
        },
        Case {
            name: "blue-green preview equals active",
            base: blue_green_rollout,
            patch: json!({"spec": {"strategy": {"blueGreen": {"previewService": "ledger-active"}}}}),
            field: "spec.strategy.blueGreen.previewService",
            says: "previewService must differ from activeService",
        },
        Case {
            name: "blue-green without an active Service",
            base: blue_green_rollout,
            patch: json!({"spec": {"strategy": {"blueGreen": {"activeService": null}}}}),
            field: "spec.strategy.blueGreen.activeService",
            says: "Required value",
        },
        Case {
            name: "metric with two providers",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "true", "provider": {
                "prometheus": {"address": "http://p:9090", "query": "up"},
                "baseline": {"prometheus": {"address": "http://p:9090"}, "metrics": [{"name": "e", "latency": {"bucketQuery": "q"}}]}}}]}}),
            field: "spec.metrics[0].provider",
            says: "a metric sets exactly one provider",
        },
        Case {
            name: "metric without a provider",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "true", "provider": {}}]}}),
            field: "spec.metrics[0].provider",
            says: "a metric sets exactly one provider",
        },
        Case {
            name: "negative failureLimit",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "failureLimit": -1, "successCondition": "true",
                "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].failureLimit",
            says: "failureLimit must be 0 or more",
        },
        Case {
            name: "negative consecutiveErrorLimit",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "consecutiveErrorLimit": -2, "successCondition": "true",
                "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].consecutiveErrorLimit",
            says: "consecutiveErrorLimit must be 0 or more",
        },
        Case {
            name: "interval in words",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "interval": "every minute", "successCondition": "true",
                "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].interval",
            says: "duration such as 30s",
        },
        Case {
            // A tight loop of queries and status writes.
            name: "interval under a second",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "interval": "500ms", "count": 3, "successCondition": "true",
                "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].interval",
            says: "must be at least 1s",
        },
        Case {
            name: "duplicate metric names",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [
                {"name": "m", "successCondition": "true", "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}},
                {"name": "m", "successCondition": "true", "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics",
            says: "metric names must be unique",
        },
        Case {
            name: "prometheus metric without conditions",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].successCondition",
            says: "needs a successCondition or a failureCondition",
        },
        Case {
            name: "count above 1 without interval",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "count": 3, "successCondition": "true",
                "provider": {"prometheus": {"address": "http://p:9090", "query": "up"}}}]}}),
            field: "spec.metrics[0].interval",
            says: "interval is required when count is more than 1",
        },
        Case {
            name: "address without a scheme",
            base: analysis_template,
            patch: prometheus_provider(json!({"address": "prometheus:9090"})),
            field: "spec.metrics[0].provider.prometheus.address",
            says: "address must be an http:// or https:// URL",
        },
        Case {
            name: "two authentication methods",
            base: analysis_template,
            patch: prometheus_provider(json!({"authentication": {
                "basic": {"usernameSecretRef": {"name": "s", "key": "u"}, "passwordSecretRef": {"name": "s", "key": "p"}},
                "bearer": {"tokenSecretRef": {"name": "s", "key": "t"}}}})),
            field: "spec.metrics[0].provider.prometheus.authentication",
            says: "exactly one of authentication.basic or authentication.bearer",
        },
        Case {
            name: "query timeout too long",
            base: analysis_template,
            patch: prometheus_provider(json!({"timeout": 3600})),
            field: "spec.metrics[0].provider.prometheus.timeout",
            says: "timeout must be between 1 and 600 seconds",
        },
        Case {
            name: "dry run of an unknown metric",
            base: analysis_template,
            patch: json!({"spec": {"dryRun": [{"metricName": "latency"}]}}),
            field: "spec.dryRun",
            says: "must name one of the metrics",
        },
        Case {
            name: "baseline marginal score above pass score",
            base: analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "provider": {"baseline": {
                "prometheus": {"address": "http://p:9090"}, "passScore": 80, "marginalScore": 90,
                "metrics": [{"name": "e", "latency": {"bucketQuery": "q"}}]}}}]}}),
            field: "spec.metrics[0].provider.baseline.marginalScore",
            says: "marginalScore must not be above passScore",
        },
        Case {
            name: "cluster template metric with two providers",
            base: cluster_analysis_template,
            patch: json!({"spec": {"metrics": [{"name": "m", "successCondition": "true", "provider": {}}]}}),
            field: "spec.metrics[0].provider",
            says: "a metric sets exactly one provider",
        },
        Case {
            name: "analysis run without metrics",
            base: analysis_run,
            patch: json!({"spec": {"metrics": []}}),
            field: "spec.metrics",
            says: "at least 1 items",
        },
        Case {
            name: "objective of 100",
            base: gate,
            patch: json!({"spec": {"objective": 100}}),
            field: "spec.objective",
            says: "objective must be strictly between 0 and 100",
        },
        Case {
            name: "objective of 0",
            base: gate,
            patch: json!({"spec": {"objective": 0}}),
            field: "spec.objective",
            says: "objective must be strictly between 0 and 100",
        },
        Case {
            name: "freeze above unfreeze",
            base: gate,
            patch: json!({"spec": {"thresholds": {"freezeBelow": 20, "unfreezeAbove": 15, "warnBelow": 25}}}),
            field: "spec.thresholds.unfreezeAbove",
            says: "unfreezeAbove must be above thresholds.freezeBelow",
        },
        Case {
            name: "critical-only above freeze",
            base: gate,
            patch: json!({"spec": {"thresholds": {"criticalOnlyBelow": 12}}}),
            field: "spec.thresholds.criticalOnlyBelow",
            says: "criticalOnlyBelow must be below thresholds.freezeBelow",
        },
        Case {
            name: "warn below freeze",
            base: gate,
            patch: json!({"spec": {"thresholds": {"warnBelow": 5}}}),
            field: "spec.thresholds.warnBelow",
            says: "warnBelow must not be below thresholds.freezeBelow",
        },
        Case {
            name: "threshold above 100",
            base: gate,
            patch: json!({"spec": {"thresholds": {"warnBelow": 130}}}),
            field: "spec.thresholds.warnBelow",
            says: "must be between 0 and 100",
        },
        Case {
            name: "window in words",
            base: gate,
            patch: json!({"spec": {"window": "4 weeks"}}),
            field: "spec.window",
            says: "Prometheus duration such as 5m",
        },
        Case {
            name: "two SLI sources",
            base: gate,
            patch: json!({"spec": {"sli": {"sloth": {"service": "checkout", "slo": "availability"}}}}),
            field: "spec.sli",
            says: "sli sets exactly one of events, sloth or pyrra",
        },
        Case {
            name: "SLI query without {{window}}",
            base: gate,
            patch: json!({"spec": {"sli": {"events": {"totalQuery": "sum(http_requests_total)"}}}}),
            field: "spec.sli.events",
            says: "must both use {{window}}",
        },
        Case {
            name: "burn-rate short window not shorter",
            base: gate,
            patch: json!({"spec": {"burnRateAlerts": [{"longWindow": "1h", "shortWindow": "2h", "factor": 14.4}]}}),
            field: "spec.burnRateAlerts[0].shortWindow",
            says: "shortWindow must be shorter than longWindow",
        },
        Case {
            name: "burn-rate factor of zero",
            base: gate,
            patch: json!({"spec": {"burnRateAlerts": [{"longWindow": "1h", "shortWindow": "5m", "factor": 0}]}}),
            field: "spec.burnRateAlerts[0].factor",
            says: "factor must be greater than 0",
        },
        Case {
            name: "retries on a confirm-rollout webhook",
            base: canary_rollout,
            patch: json!({"spec": {"webhooks": [{"name": "approve", "type": "confirm-rollout",
                                                  "url": "http://gate.ci/approve", "retries": 3}]}}),
            field: "spec.webhooks[0].retries",
            says: "retries applies to pre-rollout and post-rollout webhooks only",
        },
        Case {
            name: "webhook timeout over 5m",
            base: canary_rollout,
            patch: json!({"spec": {"webhooks": [{"name": "smoke", "type": "pre-rollout",
                                                  "url": "http://tests.ci/run", "timeout": "10m"}]}}),
            field: "spec.webhooks[0].timeout",
            says: "must be at most 5m",
        },
        Case {
            name: "webhook URL without a scheme",
            base: canary_rollout,
            patch: json!({"spec": {"webhooks": [{"name": "smoke", "type": "pre-rollout",
                                                  "url": "tests.ci/run"}]}}),
            field: "spec.webhooks[0].url",
            says: "must be an http:// or https:// URL",
        },
        Case {
            name: "webhook of an unknown type",
            base: canary_rollout,
            patch: json!({"spec": {"webhooks": [{"name": "load", "type": "rollout",
                                                  "url": "http://tests.ci/load"}]}}),
            field: "spec.webhooks[0].type",
            says: "Unsupported value",
        },
        Case {
            name: "evaluation interval in days",
            base: gate,
            patch: json!({"spec": {"evaluationInterval": "1d"}}),
            field: "spec.evaluationInterval",
            says: "duration such as 30s",
        },
    ]
}

/// RFC 7386 JSON merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn api_for(client: &kube::Client, namespace: &str, manifest: &Value) -> Api<DynamicObject> {
    let kind = manifest["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    if kind == "ClusterAnalysisTemplate" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_message_naming_the_field() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "validation").await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // Every base is valid, so each refusal below is due to its patch alone.
    for base in [
        canary_rollout,
        blue_green_rollout,
        analysis_template,
        cluster_analysis_template,
        analysis_run,
        gate,
    ] {
        let manifest = base();
        let object: DynamicObject = serde_json::from_value(manifest.clone())?;
        if let Err(err) = api_for(&client, &ns.name, &manifest)
            .create(&dry_run, &object)
            .await
        {
            bail!("base {} was refused: {err}", manifest["kind"]);
        }
    }

    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let mut manifest = (case.base)();
        merge(&mut manifest, &case.patch);
        let object: DynamicObject = serde_json::from_value(manifest.clone())?;
        match api_for(&client, &ns.name, &manifest)
            .create(&dry_run, &object)
            .await
        {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(kube::Error::Api(status)) => {
                let message = status.message.clone();
                if status.code != 422
                    || !message.contains(case.field)
                    || !message.contains(case.says)
                {
                    failures.push(format!(
                        "{}: expected 422 naming {:?} and saying {:?}, got {}: {message}",
                        case.name, case.field, case.says, status.code
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: {other}", case.name)),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    eprintln!(
        "{} invalid manifests refused with the expected messages",
        cases.len()
    );
    Ok(())
}

#[tokio::test]
async fn rollout_selector_is_immutable() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "immutable").await?;
    let manifest = canary_rollout();
    let api = api_for(&client, &ns.name, &manifest);
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(manifest)?)
        .await?;
    let mut changed = serde_json::to_value(&created)?;
    changed["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    changed["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    match api
        .replace(
            "checkout",
            &PostParams::default(),
            &serde_json::from_value(changed)?,
        )
        .await
    {
        Ok(_) => bail!("a selector change was accepted"),
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains("spec.selector"),
                "{}",
                status.message
            );
            assert!(
                status.message.contains("spec.selector is immutable"),
                "{}",
                status.message
            );
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}
