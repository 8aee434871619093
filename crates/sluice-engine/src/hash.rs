//! The pod-template hash that names a revision.

use std::fmt::Write as _;

/// A short, stable hash of a pod template: FNV-1a (64 bits) over its canonical JSON (object keys
/// sorted), as ten lower-case hexadecimal digits. Equal templates give equal hashes across processes
/// and versions, so a restarted controller recognises its ReplicaSets.
pub fn pod_template_hash(template: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical(template, &mut canonical);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = String::with_capacity(10);
    let _ = write!(out, "{:010x}", hash >> 24);
    out
}

/// JSON with object keys sorted, whatever order the map keeps them in.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_templates_hash_alike_whatever_the_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"metadata":{"labels":{"app":"x"}},"spec":{"containers":[{"name":"a","image":"i:1"}]}}"#).expect("json");
        let b: serde_json::Value = serde_json::from_str(r#"{"spec":{"containers":[{"image":"i:1","name":"a"}]},"metadata":{"labels":{"app":"x"}}}"#).expect("json");
        assert_eq!(pod_template_hash(&a), pod_template_hash(&b));
        assert_eq!(pod_template_hash(&a).len(), 10);
        let c: serde_json::Value = serde_json::from_str(r#"{"metadata":{"labels":{"app":"x"}},"spec":{"containers":[{"name":"a","image":"i:2"}]}}"#).expect("json");
        assert_ne!(pod_template_hash(&a), pod_template_hash(&c));
    }
}
