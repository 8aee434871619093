//! The ValidatingAdmissionPolicy that refuses mutable images in a Rollout at `kubectl apply`: the
//! tag `latest` or no tag always, and no digest where the Rollout (`spec.requireImageDigest`) or its
//! namespace (label [`REQUIRE_IMAGE_DIGEST_LABEL`]) asks for one. The controller enforces the same
//! rules (`sluice_engine::images`), in the same words, for clusters without the policy.
//!
//! Only a change to the spec is judged: the controller's own metadata writes to a Rollout released
//! before the policy was installed are not refused.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};

use crate::names::REQUIRE_IMAGE_DIGEST_LABEL;

/// The policy's name, and its binding's.
pub const IMMUTABLE_IMAGES_POLICY: &str = "sluice-immutable-images";

/// The CEL test that image string `x` is a mutable reference: no digest, and no tag (none after the
/// last slash) or the tag `latest`.
fn mutable(x: &str) -> String {
    format!(
        "!{x}.contains('@') && ({x}.lastIndexOf(':') <= {x}.lastIndexOf('/') || {x}.substring({x}.lastIndexOf(':') + 1) == 'latest')"
    )
}

/// A CEL list of `container "name" uses image "image"` for each container and init container whose
/// image meets `test` (a CEL test of `x`).
fn offenders(test: &dyn Fn(&str) -> String) -> String {
    let list = |field: &str| {
        format!(
            "object.spec.template.spec.{field}.filter(c, has(c.image) && {}).map(c, 'container \"' + c.name + '\" uses image \"' + c.image + '\"')",
            test("c.image")
        )
    };
    format!(
        "has(object.spec.template) && has(object.spec.template.spec) ? {} + (has(object.spec.template.spec.initContainers) ? {} : []) : []",
        list("containers"),
        list("initContainers")
    )
}

/// The policy. Its binding ([`immutable_images_binding`]) says what a violation does.
pub fn immutable_images_policy() -> ValidatingAdmissionPolicy {
    let require_digest = format!(
        "(has(object.spec.requireImageDigest) && object.spec.requireImageDigest) || (namespaceObject != null && has(namespaceObject.metadata.labels) && '{REQUIRE_IMAGE_DIGEST_LABEL}' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['{REQUIRE_IMAGE_DIGEST_LABEL}'] == 'true')"
    );
    let who = format!(
        "(has(object.spec.requireImageDigest) && object.spec.requireImageDigest ? 'spec.requireImageDigest' : 'namespace ' + namespaceObject.metadata.name + ' (label {REQUIRE_IMAGE_DIGEST_LABEL}=true)')"
    );
    let value = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": IMMUTABLE_IMAGES_POLICY,
            "annotations": {
                "sluice.dev/description": "Refuses Rollouts whose images are mutable references (the tag latest, or no tag), and images without a digest where the Rollout or its namespace requires one."
            }
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["sluice.dev"],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["rollouts"]
                }]
            },
            // Only a new or changed spec is judged.
            "matchConditions": [{
                "name": "spec-written",
                "expression": "oldObject == null || object.spec != oldObject.spec"
            }],
            "variables": [
                {"name": "mutableImages", "expression": offenders(&mutable)},
                {"name": "requireDigest", "expression": require_digest},
                {"name": "undigestedImages", "expression": offenders(&|x| format!("!{x}.contains('@')"))}
            ],
            "validations": [
                {
                    "expression": "size(variables.mutableImages) == 0",
                    "messageExpression": format!(
                        "'spec.template.spec: ' + variables.mutableImages.join('; ') + ': {}'",
                        crate::policy::MUTABLE_MESSAGE
                    ),
                    "reason": "Invalid"
                },
                {
                    "expression": "!variables.requireDigest || size(variables.undigestedImages) == 0",
                    "messageExpression": format!(
                        "'spec.template.spec: ' + variables.undigestedImages.join('; ') + ': ' + {who} + ' requires a digest; pin each image as name@sha256:...'"
                    ),
                    "reason": "Invalid"
                }
            ]
        }
    });
    serde_json::from_value(value).unwrap_or_else(|e| panic!("the policy is well formed: {e}"))
}

/// What a mutable reference is and what to do about it (the controller says it in the same words).
pub const MUTABLE_MESSAGE: &str = "a mutable image reference (the tag latest, or no tag, which means latest); pin a version tag or a digest (name@sha256:...)";

/// The policy's binding: violations are refused (`Deny`) in every namespace.
pub fn immutable_images_binding() -> ValidatingAdmissionPolicyBinding {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": IMMUTABLE_IMAGES_POLICY},
        "spec": {
            "policyName": IMMUTABLE_IMAGES_POLICY,
            "validationActions": ["Deny"]
        }
    }))
    .unwrap_or_else(|e| panic!("the binding is well formed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_and_binding_are_well_formed() {
        let policy = immutable_images_policy();
        let spec = policy.spec.expect("spec");
        assert_eq!(spec.validations.map(|v| v.len()), Some(2));
        assert_eq!(
            immutable_images_binding().spec.and_then(|s| s.policy_name),
            Some(IMMUTABLE_IMAGES_POLICY.to_owned())
        );
    }
}
