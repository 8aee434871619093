//! Template checks: each AnalysisTemplate and ClusterAnalysisTemplate gets a `Valid` condition saying
//! whether its metrics can be measured (a provider each, conditions that parse and give true or false,
//! see [`sluice_analysis::check_template`]), with a Warning Event when a problem is new. A Rollout
//! runs the same check on the templates it names before it decides (`rollout_analysis::templates`),
//! so an invalid template holds a release before any pod whether or not this status is written yet.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use sluice_api::analysis::{AnalysisTemplateSpec, AnalysisTemplateStatus};
use sluice_api::{AnalysisTemplate, ClusterAnalysisTemplate};
use sluice_engine::conditions::{self, ConditionStatus};
use tracing::{info, warn};

use crate::error::Error;
use crate::{Context, FIELD_MANAGER};

/// The condition this module writes.
pub const CONDITION_VALID: &str = "Valid";

pub fn error_policy<K: ResourceExt>(template: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(template = template.name_any(), %error, "template check failed");
    Action::requeue(ctx.backoffs.failed(
        "AnalysisTemplate",
        &template.namespace().unwrap_or_default(),
        &template.name_any(),
    ))
}

pub async fn reconcile_namespaced(
    template: Arc<AnalysisTemplate>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = template
        .namespace()
        .ok_or_else(|| Error::NoNamespace(template.name_any()))?;
    let api = Api::<AnalysisTemplate>::namespaced(ctx.client.clone(), &namespace);
    check(
        template.as_ref(),
        &template.spec,
        template.status.as_ref(),
        api,
        &ctx,
    )
    .await
}

pub async fn reconcile_cluster(
    template: Arc<ClusterAnalysisTemplate>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api = Api::<ClusterAnalysisTemplate>::all(ctx.client.clone());
    check(
        template.as_ref(),
        &template.spec.template,
        template.status.as_ref(),
        api,
        &ctx,
    )
    .await
}

/// The status a template whose check found `checked` deserves, from `before`: only the `Valid`
/// condition and the generation move.
pub fn status_for(
    checked: Result<(), String>,
    before: Option<&AnalysisTemplateStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> AnalysisTemplateStatus {
    let mut status = before.cloned().unwrap_or_default();
    let (valid, reason, message) = match checked {
        Ok(()) => (
            ConditionStatus::True,
            "Valid",
            "every metric names a provider and its conditions can be evaluated".to_owned(),
        ),
        Err(problem) => (ConditionStatus::False, "InvalidSpec", problem),
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_VALID,
        valid,
        reason,
        &message,
        now,
        generation.unwrap_or(0),
    );
    status.observed_generation = generation;
    status
}

async fn check<K>(
    template: &K,
    spec: &AnalysisTemplateSpec,
    before: Option<&AnalysisTemplateStatus>,
    api: Api<K>,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    if template.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Conditions are evaluated in a child process (see sluice_analysis::evaluator), once per text.
    let checked = sluice_analysis::check_template_conditions(spec)
        .await
        .map_err(Error::Evaluator)?;
    ctx.backoffs.succeeded(
        "AnalysisTemplate",
        template.meta().namespace.as_deref().unwrap_or_default(),
        template.meta().name.as_deref().unwrap_or_default(),
    );
    let status = status_for(
        checked,
        before,
        template.meta().generation,
        Timestamp::now(),
    );
    // Our own status write wakes this reconcile too: it then finds nothing to change.
    if before == Some(&status) {
        return Ok(Action::await_change());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &template.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let invalid = |s: Option<&AnalysisTemplateStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_VALID))
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone())
    };
    if let Some(problem) = invalid(Some(&status))
        && invalid(before).as_ref() != Some(&problem)
    {
        info!(template = template.name_any(), %problem, "template is invalid");
        ctx.publish(
            &template.object_ref(&()),
            true,
            "InvalidSpec",
            "Check",
            &problem,
        );
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(condition: &str) -> AnalysisTemplateSpec {
        serde_json::from_value(json!({"metrics": [{
            "name": "errors", "successCondition": condition,
            "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "up"}}
        }]}))
        .expect("spec")
    }

    async fn checked(spec: &AnalysisTemplateSpec) -> Result<(), String> {
        // These tests are about the status, not the child process: evaluate here.
        let _ = sluice_analysis::evaluator::set_evaluator(
            sluice_analysis::evaluator::Evaluator::InProcess,
        );
        sluice_analysis::check_template_conditions(spec)
            .await
            .expect("evaluated")
    }

    #[tokio::test]
    async fn a_valid_template_is_valid_and_an_unchanged_one_keeps_its_status() {
        let at = Timestamp::from_second(1_700_000_000).expect("time");
        let template = spec("all(result, {# < 1})");
        let first = status_for(checked(&template).await, None, Some(1), at);
        let valid = &first.conditions[0];
        assert_eq!(
            (valid.type_.as_str(), valid.status.as_str()),
            ("Valid", "True")
        );
        let later = Timestamp::from_second(1_700_000_100).expect("time");
        let again = status_for(checked(&template).await, Some(&first), Some(1), later);
        assert_eq!(again, first, "a settled template's status does not move");
    }

    #[tokio::test]
    async fn an_invalid_condition_names_the_metric_field_and_function() {
        let at = Timestamp::from_second(1_700_000_000).expect("time");
        let status = status_for(checked(&spec("p99(result) < 1")).await, None, Some(2), at);
        let valid = &status.conditions[0];
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", "InvalidSpec")
        );
        for word in ["errors", "successCondition", "p99"] {
            assert!(valid.message.contains(word), "{}", valid.message);
        }
        assert_eq!(status.observed_generation, Some(2));
    }
}
