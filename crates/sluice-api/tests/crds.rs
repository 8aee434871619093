//! The committed CRDs match the types, and stay usable with a plain `kubectl apply`.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let generated = sluice_api::crdgen::generate().expect("CRDs serialize");
    let mut drifted = Vec::new();
    for crd in &generated {
        let committed = std::fs::read_to_string(dir.join(&crd.file_name)).unwrap_or_default();
        if committed != crd.yaml {
            drifted.push(crd.file_name.as_str());
        }
    }
    assert!(
        drifted.is_empty(),
        "crds/ is out of date for {drifted:?}: run `cargo xtask crdgen` and commit the result"
    );
}

#[test]
fn every_crd_fits_a_client_side_apply() {
    // `kubectl apply` stores the whole object in an annotation limited to 256 KiB.
    for crd in sluice_api::crdgen::crds() {
        let size = serde_json::to_vec(&crd).expect("CRD serializes").len();
        assert!(
            size < 200 * 1024,
            "{} is {size} bytes as JSON",
            crd.spec.names.kind
        );
    }
}

#[test]
fn every_sluice_field_has_a_description() {
    fn walk(
        path: &str,
        schema: &serde_json::Value,
        inside_pod_template: bool,
        missing: &mut Vec<String>,
    ) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                let in_template = inside_pod_template
                    || child_path.ends_with("spec.template")
                    || child_path.ends_with("job.spec");
                let is_meta = name == "metadata" && path.is_empty();
                if !in_template && !is_meta && child.get("description").is_none() {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, in_template, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, inside_pod_template, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in sluice_api::crdgen::crds() {
        let crd = serde_json::to_value(&crd).expect("CRD serializes");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(&kind, schema, false, &mut missing);
    }
    // Fields of Kubernetes' own types (selectors, conditions) are documented by k8s-openapi.
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:#?}"
    );
}
