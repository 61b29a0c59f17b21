//! Secret fields of rendered objects (Secret data; values decrypted from sops files) and hiding them.
//!
//! Which fields hold a decrypted value is decided by provenance, not by looking for the plaintext
//! in output: the render runs a second time, for the charts that read encrypted values, with
//! every decrypted leaf replaced by a [`placeholder`] of the same type, and overlay patches run on
//! both; a field whose value differs between the two depends on a secret. A Secret's `data` and
//! `stringData` are secret by type. Caveat: a field that depends only on a secret's length or
//! presence is not detected (the placeholder keeps both).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::apply::ApplyReport;
use crate::manifest::ObjectId;

/// Shown instead of a secret value (the same text `pailot diff` uses for Secret data).
pub const MASK: &str = crate::apply::diff::MASK;

/// JSON pointers, per object, of the fields whose value came from an encrypted file.
pub type SecretFields = BTreeMap<ObjectId, BTreeSet<String>>;

/// A value of the same type and structure as `v`, different in every scalar: strings rotate
/// letters and digits (`a`→`b`, `9`→`0`; other characters stay, so formats survive), numbers
/// change, booleans flip.
pub fn placeholder(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(rotate(s)),
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i ^ 1)
            } else if let Some(u) = n.as_u64() {
                Value::from(u ^ 1)
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                let g = if f + 1.0 != f {
                    f + 1.0
                } else if f != 0.0 {
                    -f
                } else {
                    1.0
                };
                serde_json::Number::from_f64(g).map_or(Value::Null, Value::Number)
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(placeholder).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), placeholder(v))).collect())
        }
        Value::Null => Value::String("x".into()),
    }
}

fn rotate(s: &str) -> String {
    if !s.chars().any(|c| c.is_ascii_alphanumeric()) {
        return "x".repeat(s.chars().count().max(1));
    }
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => (c as u8 + 1) as char,
            c => c,
        })
        .collect()
}

/// `doc` with the values at `pointers` replaced by their [`placeholder`].
pub fn substitute(doc: &Value, pointers: &BTreeSet<String>) -> Value {
    let mut out = doc.clone();
    for p in pointers {
        if let Some(v) = out.pointer_mut(p) {
            *v = placeholder(v);
        }
    }
    out
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Pointers where `real` and `shadow` differ: leaves whose values differ, and whole subtrees
/// whose shape differs (a key only on one side, arrays of different length, different types).
pub fn differences(real: &Value, shadow: &Value) -> BTreeSet<String> {
    fn walk(a: &Value, b: &Value, ptr: &mut String, out: &mut BTreeSet<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&escape(k));
                    match (x.get(k), y.get(k)) {
                        (Some(v), Some(w)) => walk(v, w, ptr, out),
                        // A key on one side only: its presence depends on a secret.
                        _ => {
                            out.insert(ptr.clone());
                        }
                    }
                    ptr.truncate(len);
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&i.to_string());
                    walk(v, w, ptr, out);
                    ptr.truncate(len);
                }
            }
            (a, b) if a == b => {}
            _ => {
                out.insert(ptr.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(real, shadow, &mut String::new(), &mut out);
    out
}

/// Whether `obj` is a core `v1` Secret, whose `data`/`stringData` values are secret by type.
pub fn is_secret_kind(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// Every secret field of `obj`: `provenance` (from the render) plus each key of a Secret's
/// `data` and `stringData`.
pub fn secret_pointers(obj: &Value, provenance: Option<&BTreeSet<String>>) -> BTreeSet<String> {
    let mut out = provenance.cloned().unwrap_or_default();
    if is_secret_kind(obj) {
        for field in ["data", "stringData"] {
            if let Some(m) = obj.get(field).and_then(Value::as_object) {
                for k in m.keys() {
                    out.insert(format!("/{field}/{}", escape(k)));
                }
            }
        }
    }
    out
}

/// Whether the value at `pointer` holds or contains a secret: `pointer` is one of `secrets`,
/// below one, or above one.
pub fn touches(pointer: &str, secrets: &BTreeSet<String>) -> bool {
    secrets.iter().any(|s| {
        s == pointer
            || (pointer.starts_with(s.as_str()) && pointer.as_bytes().get(s.len()) == Some(&b'/'))
            || (s.starts_with(pointer) && s.as_bytes().get(pointer.len()) == Some(&b'/'))
            || pointer.is_empty()
    })
}

/// `value` (found at `at` in its object) with every secret inside it replaced by [`MASK`];
/// the whole value when `at` is itself secret or below a secret.
pub fn mask_value(value: &Value, at: &str, secrets: &BTreeSet<String>) -> Value {
    if secrets.iter().any(|s| {
        s == at || (at.starts_with(s.as_str()) && at.as_bytes().get(s.len()) == Some(&b'/'))
    }) {
        return Value::String(MASK.into());
    }
    let mut out = value.clone();
    for s in secrets {
        if let Some(rest) = s.strip_prefix(at)
            && rest.starts_with('/')
            && let Some(v) = out.pointer_mut(rest)
        {
            *v = Value::String(MASK.into());
        }
    }
    out
}

/// Mask the secret fields of `obj` in place; returns how many values were hidden.
pub fn mask_object(obj: &mut Value, provenance: Option<&BTreeSet<String>>) -> usize {
    let secrets = secret_pointers(obj, provenance);
    let mut n = 0;
    for p in &secrets {
        if let Some(v) = obj.pointer_mut(p) {
            *v = Value::String(MASK.into());
            n += 1;
        }
    }
    n
}

/// Hide secret values in the per-field changes of a dry-run report (`pailot diff`, drift records):
/// Secret data is masked already; this adds the fields that came from encrypted files.
pub fn mask_report(report: &mut ApplyReport, secrets: &SecretFields) {
    for o in &mut report.objects {
        let Some(fields) = secrets.get(&o.id) else {
            continue;
        };
        for c in &mut o.changes {
            if !touches(&c.path, fields) {
                continue;
            }
            c.live = c.live.as_ref().map(|v| mask_value(v, &c.path, fields));
            c.desired = c.desired.as_ref().map(|v| mask_value(v, &c.path, fields));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_differ_in_every_scalar_and_keep_shape() {
        for v in [
            json!("hunter2"),
            json!(""),
            json!("!!"),
            json!("zZ9"),
            json!(7),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!(true),
        ] {
            assert_ne!(placeholder(&v), v);
        }
        assert_eq!(placeholder(&json!("a-b.c9")), json!("b-c.d0"));
        assert_eq!(placeholder(&json!({"a": [1]})), json!({"a": [0]}));
    }

    #[test]
    fn differences_are_leaves_or_changed_shapes() {
        let real = json!({"a": 1, "b": {"c": "x", "d": "y"}, "l": [1, 2], "m": {"k": 1}});
        let shadow = json!({"a": 1, "b": {"c": "z", "d": "y"}, "l": [1], "m": {"j": 1}});
        let d: Vec<String> = differences(&real, &shadow).into_iter().collect();
        assert_eq!(d, ["/b/c", "/l", "/m/j", "/m/k"]);
    }

    #[test]
    fn secret_data_and_provenance_are_masked() {
        let mut obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "eA=="}, "stringData": {"b/c": "x"}});
        assert_eq!(mask_object(&mut obj, None), 2);
        assert_eq!(obj["data"]["a"], json!(MASK));
        assert_eq!(obj["stringData"]["b/c"], json!(MASK));
        let mut cm = json!({"kind": "ConfigMap", "data": {"url": "https://u:p@h", "plain": "1"}});
        let p = BTreeSet::from(["/data/url".to_string()]);
        assert_eq!(mask_object(&mut cm, Some(&p)), 1);
        assert_eq!(cm["data"]["plain"], json!("1"));
    }

    #[test]
    fn values_above_and_below_a_secret_are_masked() {
        let s = BTreeSet::from(["/spec/env/1/value".to_string()]);
        let env = json!([{"name": "A", "value": "1"}, {"name": "P", "value": "pw"}]);
        assert_eq!(
            mask_value(&env, "/spec/env", &s),
            json!([{"name": "A", "value": "1"}, {"name": "P", "value": MASK}])
        );
        assert_eq!(
            mask_value(&json!("pw"), "/spec/env/1/value", &s),
            json!(MASK)
        );
        assert!(touches("/spec", &s));
        assert!(!touches("/spec/env/0", &s));
    }
}
