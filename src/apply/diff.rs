//! Compare a desired (dry-run) object with the live one: normalization, per-field changes, field owners,
//! and Secret masking.

use serde::Serialize;
use serde_json::{Map, Value};

/// Metadata fields the API server owns; never a difference.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

/// Shown instead of a Secret value.
pub const MASK: &str = "*** (secret value hidden)";

/// The object without what the server owns (status, managedFields, resourceVersion…), for comparison.
pub fn normalize(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            if meta
                .get("annotations")
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                meta.remove("annotations");
            }
        }
    }
    o
}

/// One field that differs; values are masked for Secrets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    /// JSON pointer of the field (`/spec/replicas`).
    pub path: String,
    /// Live value (`None`: absent).
    pub live: Option<Value>,
    /// Value after apply (`None`: removed).
    pub desired: Option<Value>,
    /// Other field managers that own this field in the live object (e.g. `kubectl` after `kubectl scale`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_managers: Vec<String>,
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn walk(path: &str, live: Option<&Value>, desired: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (live, desired) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(&format!("{path}/{}", escape(k)), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}/{i}"), Some(x), Some(y), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path: path.to_string(),
            live: a.cloned(),
            desired: b.cloned(),
            other_managers: Vec::new(),
        }),
    }
}

/// Per-field differences between `live` and `desired` (both normalized here), owners filled in from `live`,
/// Secret `data`/`stringData` values masked.
pub fn field_changes(live: &Value, desired: &Value, own_manager: &str) -> Vec<FieldChange> {
    let (l, d) = (normalize(live), normalize(desired));
    let mut out = Vec::new();
    walk("", Some(&l), Some(&d), &mut out);
    let secret = desired["kind"] == "Secret" && desired["apiVersion"] == "v1";
    for c in &mut out {
        c.other_managers = owners(live, &c.path)
            .into_iter()
            .filter(|m| m != own_manager)
            .collect();
        if secret && (c.path.starts_with("/data") || c.path.starts_with("/stringData")) {
            c.live = c.live.as_ref().map(|_| Value::String(MASK.into()));
            c.desired = c.desired.as_ref().map(|_| Value::String(MASK.into()));
        }
    }
    out
}

/// Field managers whose `fieldsV1` in `live.metadata.managedFields` cover `pointer`.
pub fn owners(live: &Value, pointer: &str) -> Vec<String> {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut out = Vec::new();
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(manager) = entry["manager"].as_str() else {
            continue;
        };
        if covers(&entry["fieldsV1"], live, &tokens) && !out.iter().any(|m| m == manager) {
            out.push(manager.to_string());
        }
    }
    out
}

/// Walk a fieldsV1 set along `tokens`, following `f:` keys and `k:`/`v:` list keys matched against `obj`.
fn covers(set: &Value, obj: &Value, tokens: &[String]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return set.is_object();
    };
    let Some(node) = set.as_object() else {
        return false;
    };
    if let Some(next) = node.get(&format!("f:{first}")) {
        return covers(next, &obj[first.as_str()], rest);
    }
    if let (Ok(i), Some(items)) = (first.parse::<usize>(), obj.as_array()) {
        let Some(item) = items.get(i) else {
            return false;
        };
        for (k, next) in node {
            let matched = if let Some(key) = k.strip_prefix("k:") {
                serde_json::from_str::<Map<String, Value>>(key)
                    .is_ok_and(|key| key.iter().all(|(f, v)| item.get(f) == Some(v)))
            } else if let Some(v) = k.strip_prefix("v:") {
                serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
            } else {
                k == &format!("i:{i}")
            };
            if matched {
                return covers(next, item, rest);
            }
        }
    }
    false
}

/// Annotation with the hash of the object pailot last applied; with [`is_subset`] it lets a no-op re-apply skip
/// the dry run.
pub const DESIRED_HASH_ANNOTATION: &str = "pailot.dev/desired-hash";

/// Hex sha256 of the object's canonical JSON (keys sorted), first 32 hex digits.
pub fn desired_hash(obj: &Value) -> String {
    use sha2::{Digest, Sha256};
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), canonical(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let text = serde_json::to_string(&canonical(obj)).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))[..32].to_string()
}

/// True when every field `desired` sets has that value in `live` (what the API server adds is ignored).
///
/// Caveat: a field removed from `desired` is not seen here; the desired-hash annotation covers that.
/// A Secret's `stringData` is compared with `live.data` (base64).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    fn sub(d: &Value, l: Option<&Value>) -> bool {
        match (d, l) {
            (Value::Null, None) => true,
            (Value::Object(dm), Some(Value::Object(lm))) => {
                dm.iter().all(|(k, v)| sub(v, lm.get(k)))
            }
            (Value::Object(dm), None) => dm.is_empty(),
            (Value::Array(da), Some(Value::Array(la))) => {
                da.len() == la.len() && da.iter().zip(la).all(|(x, y)| sub(x, Some(y)))
            }
            (Value::Number(a), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
            (d, Some(l)) => d == l,
            _ => false,
        }
    }
    let secret = desired["kind"] == "Secret" && desired["apiVersion"] == "v1";
    if secret && let Some(string_data) = desired.get("stringData").and_then(Value::as_object) {
        use base64::Engine;
        let mut d = desired.clone();
        let map = d.as_object_mut().expect("desired is an object");
        map.remove("stringData");
        let data = map
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                let text = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                data.insert(
                    k.clone(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
        return sub(&d, Some(live));
    }
    sub(desired, Some(live))
}

/// Render a value for a one-line diff.
pub fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live_scaled() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "n", "resourceVersion": "9", "generation": 3,
                "managedFields": [
                    {"manager": "pailot", "operation": "Apply", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {"f:image": {}}}}}}}},
                    {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                ], "labels": {"app": "web"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}},
            "status": {"replicas": 5}
        })
    }

    #[test]
    fn scale_shows_field_and_other_manager() {
        let live = live_scaled();
        let mut desired = live.clone();
        desired["spec"]["replicas"] = json!(1);
        desired["metadata"]["resourceVersion"] = json!("10");
        let changes = field_changes(&live, &desired, "pailot");
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].path, "/spec/replicas");
        assert_eq!(changes[0].live, Some(json!(5)));
        assert_eq!(changes[0].desired, Some(json!(1)));
        assert_eq!(changes[0].other_managers, vec!["kubectl".to_string()]);
    }

    #[test]
    fn list_items_are_matched_by_key() {
        let live = live_scaled();
        assert_eq!(
            owners(&live, "/spec/template/spec/containers/0/image"),
            vec!["pailot".to_string()]
        );
        assert!(owners(&live, "/spec/template/spec/containers/0/args").is_empty());
    }

    #[test]
    fn server_fields_are_ignored() {
        let live = live_scaled();
        let mut d = live.clone();
        d["metadata"]["managedFields"] = json!([]);
        d["metadata"]["resourceVersion"] = json!("11");
        d["status"] = json!({"replicas": 1});
        assert!(field_changes(&live, &d, "pailot").is_empty());
        assert_eq!(normalize(&live), normalize(&d));
    }

    #[test]
    fn subset_ignores_server_defaults_but_not_drift() {
        let live = live_scaled();
        let mut desired = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "n", "labels": {"app": "web"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}});
        assert!(is_subset(&desired, &live));
        desired["spec"]["replicas"] = json!(1);
        assert!(!is_subset(&desired, &live));
        desired["spec"]["replicas"] = json!(5);
        desired["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "web", "image": "nginx:2"}]);
        assert!(!is_subset(&desired, &live));
    }

    #[test]
    fn subset_reads_secret_string_data_as_base64_data() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "b2xk"}, "type": "Opaque"});
        let same = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "old"}});
        let other = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "new"}});
        assert!(is_subset(&same, &live));
        assert!(!is_subset(&other, &live));
    }

    #[test]
    fn hash_ignores_key_order() {
        let a = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let b = json!({"b": {"d": 3, "c": 2}, "a": 1});
        assert_eq!(desired_hash(&a), desired_hash(&b));
        assert_ne!(desired_hash(&a), desired_hash(&json!({"a": 2})));
    }

    #[test]
    fn secret_values_are_masked() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "b2xk"}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "bmV3", "token": "dA=="}});
        let changes = field_changes(&live, &desired, "pailot");
        assert_eq!(changes.len(), 2);
        let text = serde_json::to_string(&changes).unwrap();
        assert!(
            !text.contains("b2xk") && !text.contains("bmV3") && !text.contains("dA=="),
            "{text}"
        );
        assert_eq!(changes[1].live, None);
        assert_eq!(changes[1].desired, Some(json!(MASK)));
    }
}
