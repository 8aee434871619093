//! Immutable releases: every image a release runs names one build. A mutable reference (`:latest`,
//! or no tag, which means latest) could run different code on each pod, and a rollback to it would
//! not bring back what ran before. Where a Rollout or its namespace asks for it, a tag is not
//! enough either: every image needs a digest.
//!
//! The same rules are enforced at `kubectl apply` by the ValidatingAdmissionPolicy in
//! `sluice_api::policy` (same words in its messages); the controller applies them again for
//! clusters without the policy, as an `InvalidSpec`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use sluice_api::policy::MUTABLE_MESSAGE;

/// What is wrong with an image reference, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutable {
    /// The tag `latest`.
    LatestTag,
    /// No tag and no digest: the registry serves `latest`.
    NoTag,
    /// A tag but no digest, where a digest is required.
    NoDigest,
}

/// Whether `image` names one build: a digest always does; a tag does unless it is `latest` or a
/// digest is required.
pub fn mutable(image: &str, require_digest: bool) -> Option<Mutable> {
    if image.contains('@') {
        return None;
    }
    // A tag follows the last colon after the last slash (`registry:5000/app` has a port, no tag).
    let tag = image
        .rfind(':')
        .filter(|colon| image.rfind('/').is_none_or(|slash| *colon > slash))
        .map(|colon| &image[colon + 1..]);
    match tag {
        None => Some(Mutable::NoTag),
        Some("latest") => Some(Mutable::LatestTag),
        Some(_) if require_digest => Some(Mutable::NoDigest),
        Some(_) => None,
    }
}

/// Where a release's images are required to carry a digest from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestRequirement {
    /// The Rollout's `spec.requireImageDigest`.
    pub rollout: bool,
    /// The namespace, if its [`REQUIRE_IMAGE_DIGEST_LABEL`](sluice_api::names::REQUIRE_IMAGE_DIGEST_LABEL)
    /// says `"true"`.
    pub namespace: Option<String>,
}

impl DigestRequirement {
    fn required(&self) -> bool {
        self.rollout || self.namespace.is_some()
    }

    fn who(&self) -> String {
        match &self.namespace {
            _ if self.rollout => "spec.requireImageDigest".to_owned(),
            Some(namespace) => format!(
                "namespace {namespace} (label {}=true)",
                sluice_api::names::REQUIRE_IMAGE_DIGEST_LABEL
            ),
            None => String::new(),
        }
    }
}

/// Checks every container and init container of `template` (at `field`, e.g.
/// `spec.template.spec`): `Err` names each container with a mutable image, its image, and what to
/// do, in the words of the admission policy.
pub fn check(
    template: &PodTemplateSpec,
    field: &str,
    digest: &DigestRequirement,
) -> Result<(), String> {
    let Some(spec) = template.spec.as_ref() else {
        return Ok(());
    };
    let containers = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
    };
    let offenders = |wanted: fn(Mutable) -> bool| {
        containers()
            .filter_map(|c| {
                let image = c.image.as_deref()?;
                mutable(image, digest.required())
                    .filter(|m| wanted(*m))
                    .map(|_| format!("container {:?} uses image {image:?}", c.name))
            })
            .collect::<Vec<_>>()
    };
    let moving = offenders(|m| m != Mutable::NoDigest);
    if !moving.is_empty() {
        return Err(format!("{field}: {}: {MUTABLE_MESSAGE}", moving.join("; ")));
    }
    let undigested = offenders(|m| m == Mutable::NoDigest);
    if !undigested.is_empty() {
        return Err(format!(
            "{field}: {}: {} requires a digest; pin each image as name@sha256:...",
            undigested.join("; "),
            digest.who()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn references_are_judged_as_registries_resolve_them() {
        for (image, verdict) in [
            ("nginx", Some(Mutable::NoTag)),
            ("nginx:latest", Some(Mutable::LatestTag)),
            ("registry:5000/team/app", Some(Mutable::NoTag)),
            ("registry:5000/team/app:latest", Some(Mutable::LatestTag)),
            ("registry:5000/team/app:1.2.3", None),
            ("nginx:1.27", None),
            ("nginx:latest-alpine", None),
            ("app@sha256:abc", None),
            ("app:latest@sha256:abc", None),
        ] {
            assert_eq!(mutable(image, false), verdict, "{image}");
        }
        assert_eq!(mutable("nginx:1.27", true), Some(Mutable::NoDigest));
        assert_eq!(mutable("nginx@sha256:abc", true), None);
        assert_eq!(mutable("nginx", true), Some(Mutable::NoTag));
    }

    fn template(images: &[(&str, &str)], init: &[(&str, &str)]) -> PodTemplateSpec {
        let containers = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(name, image)| serde_json::json!({"name": name, "image": image}))
                .collect::<Vec<_>>()
        };
        serde_json::from_value(serde_json::json!({
            "spec": {"containers": containers(images), "initContainers": containers(init)}
        }))
        .expect("template")
    }

    #[test]
    fn the_message_names_each_container_and_its_image() {
        let t = template(
            &[("web", "web:1"), ("proxy", "envoy:latest")],
            &[("init", "busybox")],
        );
        let problem =
            check(&t, "spec.template.spec", &DigestRequirement::default()).expect_err("mutable");
        assert_eq!(
            problem,
            format!(
                "spec.template.spec: container \"proxy\" uses image \"envoy:latest\"; container \"init\" uses image \"busybox\": {MUTABLE_MESSAGE}"
            )
        );
        let pinned = template(&[("web", "web:1")], &[]);
        assert!(check(&pinned, "f", &DigestRequirement::default()).is_ok());
        let by_namespace = DigestRequirement {
            rollout: false,
            namespace: Some("shop".to_owned()),
        };
        assert_eq!(
            check(&pinned, "f", &by_namespace).expect_err("digest"),
            "f: container \"web\" uses image \"web:1\": namespace shop (label sluice.dev/require-image-digest=true) requires a digest; pin each image as name@sha256:..."
        );
    }

    proptest! {
        /// A digest always pins; requiring a digest never accepts more.
        #[test]
        fn a_digest_pins_and_requiring_one_is_stricter(
            name in "[a-z]{1,8}(:[0-9]{1,5}/[a-z]{1,8})?(/[a-z]{1,8}){0,2}",
            tag in proptest::option::of("[a-z0-9.]{1,8}"),
            digest in proptest::option::of("[a-f0-9]{8}"),
        ) {
            let image = format!(
                "{name}{}{}",
                tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default(),
                digest.as_ref().map(|d| format!("@sha256:{d}")).unwrap_or_default()
            );
            if digest.is_some() {
                prop_assert_eq!(mutable(&image, true), None);
            }
            if mutable(&image, true).is_none() {
                prop_assert_eq!(mutable(&image, false), None);
            }
            if digest.is_none() && tag.is_none() {
                prop_assert_eq!(mutable(&image, false), Some(Mutable::NoTag));
            }
        }
    }
}
