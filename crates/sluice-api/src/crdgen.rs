//! CustomResourceDefinition generation.
//!
//! The CRDs under `crds/` are generated from the types here, never edited by hand; a test fails when
//! they drift. One adjustment is made to what kube derives: descriptions inside the embedded pod
//! template are dropped, because with them the Rollout CRD is too large for a client-side
//! `kubectl apply` (whose last-applied annotation is limited to 256 KiB). Sluice's own fields keep theirs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate, ErrorBudgetGate, Rollout};

/// A generated CRD with the file name it is committed under.
#[derive(Clone)]
pub struct GeneratedCrd {
    /// File name under `crds/`, e.g. `sluice.dev_rollouts.yaml`.
    pub file_name: String,
    /// The CRD as YAML.
    pub yaml: String,
}

/// All of Sluice's CRDs, as their API objects.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut rollout = Rollout::crd();
    for version in &mut rollout.spec.versions {
        let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        else {
            continue;
        };
        if let Some(template) = property(spec, &["template"]) {
            strip_nested_descriptions(template);
        }
        // The rule that the selector matches the template's labels iterates over both maps; the API
        // server refuses rules whose worst-case cost is unbounded, so bound the maps (and label values,
        // which Kubernetes already limits to 63 characters).
        for path in [
            &["selector", "matchLabels"][..],
            &["template", "metadata", "labels"][..],
        ] {
            if let Some(labels) = property(spec, path) {
                labels.max_properties = Some(MAX_LABELS);
                if let Some(JSONSchemaPropsOrBool::Schema(value)) =
                    labels.additional_properties.as_mut()
                {
                    value.max_length = Some(63);
                }
            }
        }
    }
    let mut analysis = [
        AnalysisTemplate::crd(),
        ClusterAnalysisTemplate::crd(),
        AnalysisRun::crd(),
    ];
    for crd in &mut analysis {
        for version in &mut crd.spec.versions {
            if let Some(root) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_job_spec_descriptions(root);
            }
        }
    }
    let [template, cluster_template, run] = analysis;
    vec![
        rollout,
        template,
        cluster_template,
        run,
        ErrorBudgetGate::crd(),
        crate::Release::crd(),
    ]
}

/// A job metric embeds Kubernetes' JobSpec with its pod template: its descriptions (Kubernetes'
/// own, in `kubectl explain job.spec`) would take the CRD past what `kubectl apply` can store.
fn strip_job_spec_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(spec) = property(schema, &["job", "spec"]) {
        strip_nested_descriptions(spec);
    }
    if let Some(props) = schema.properties.as_mut() {
        props.values_mut().for_each(strip_job_spec_descriptions);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_job_spec_descriptions(items);
    }
}

/// Most labels a Rollout's selector or pod template may carry.
pub const MAX_LABELS: i64 = 64;

/// The schema of the property at `path` below `schema`.
fn property<'a>(schema: &'a mut JSONSchemaProps, path: &[&str]) -> Option<&'a mut JSONSchemaProps> {
    path.iter().try_fold(schema, |schema, name| {
        schema.properties.as_mut()?.get_mut(*name)
    })
}

/// Removes descriptions below `schema`, keeping its own.
fn strip_nested_descriptions(schema: &mut JSONSchemaProps) {
    fn strip(schema: &mut JSONSchemaProps) {
        schema.description = None;
        strip_children(schema);
    }
    fn strip_children(schema: &mut JSONSchemaProps) {
        if let Some(props) = schema.properties.as_mut() {
            props.values_mut().for_each(strip);
        }
        if let Some(items) = schema.items.as_mut() {
            match items {
                JSONSchemaPropsOrArray::Schema(s) => strip(s),
                JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().for_each(strip),
            }
        }
        if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
            strip(s);
        }
        for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of]
            .into_iter()
            .flatten()
        {
            list.iter_mut().for_each(strip);
        }
    }
    strip_children(schema);
}

/// All of Sluice's CRDs as YAML, each with its file name.
pub fn generate() -> Result<Vec<GeneratedCrd>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let file_name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            let yaml = format!(
                "# Generated by `cargo xtask crdgen` from crates/sluice-api. Do not edit.\n{}",
                serde_yaml::to_string(&crd)?
            );
            Ok(GeneratedCrd { file_name, yaml })
        })
        .collect()
}

/// The admission policies, as YAML: for `crds/` (each policy with its binding, so that
/// `kubectl apply -f crds/` installs them) and for the chart (the policy alone; the chart writes
/// the binding from its values).
pub fn generate_policies() -> Result<(Vec<GeneratedCrd>, Vec<GeneratedCrd>), serde_yaml::Error> {
    let header = "# Generated by `cargo xtask crdgen` from crates/sluice-api. Do not edit.\n";
    let policy = serde_yaml::to_string(&crate::policy::immutable_images_policy())?;
    let binding = serde_yaml::to_string(&crate::policy::immutable_images_binding())?;
    Ok((
        vec![GeneratedCrd {
            file_name: "admission_sluice-immutable-images.yaml".to_owned(),
            yaml: format!("{header}{policy}---\n{binding}"),
        }],
        vec![GeneratedCrd {
            file_name: "immutable-images.yaml".to_owned(),
            yaml: format!("{header}{policy}"),
        }],
    ))
}
