//! Values layering (chart defaults, overlays, cluster file) and validation against the chart's schema.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::Chart;
use crate::diag::InputError;

/// One layer of values, in merge order (later wins).
#[derive(Clone, Debug, PartialEq)]
pub struct ValueLayer {
    /// File the layer comes from, relative to the repository root.
    pub file: String,
    /// Where in `file` the values live, e.g. `values.zookeeper` (empty for a whole values.yaml).
    pub key_prefix: String,
    pub values: Value,
    /// JSON pointers (in `values`) of the values that were decrypted from a sops file.
    pub secret: BTreeSet<String>,
}

/// The merged values of one chart, and which layer file set each node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergedValues {
    pub values: Value,
    /// JSON pointer in `values` (every node, maps included) -> file of the last layer that set it.
    pub origin: BTreeMap<String, String>,
    /// JSON pointers of the merged leaves whose value was decrypted from a sops file.
    pub secret: BTreeSet<String>,
}

impl MergedValues {
    /// File of the layer that set `pointer`, or of its nearest ancestor that has one.
    pub fn origin_of(&self, pointer: &str) -> Option<&str> {
        let mut p = pointer;
        loop {
            if let Some(f) = self.origin.get(p) {
                return Some(f);
            }
            if p.is_empty() {
                return None;
            }
            p = match p.rfind('/') {
                Some(i) => &p[..i],
                None => "",
            };
        }
    }
}

/// Escape one JSON pointer segment (RFC 6901).
pub fn escape_segment(s: &str) -> String {
    if s.contains('~') || s.contains('/') {
        s.replace('~', "~0").replace('/', "~1")
    } else {
        s.to_string()
    }
}

/// Merge `layers` in order: maps merge recursively, lists and scalars replace, and a `null`
/// in any layer after the first deletes the key (the first layer's nulls are kept as defaults).
pub fn merge_values(layers: &[ValueLayer]) -> MergedValues {
    let mut merged = MergedValues {
        values: Value::Object(Map::new()),
        origin: BTreeMap::new(),
        secret: BTreeSet::new(),
    };
    for (i, layer) in layers.iter().enumerate() {
        if i == 0 {
            merged.values = match &layer.values {
                Value::Null => Value::Object(Map::new()),
                v => v.clone(),
            };
            let mut ptr = String::new();
            record_origin(&merged.values, &mut ptr, &layer.file, &mut merged.origin);
            continue;
        }
        let mut ptr = String::new();
        merge_into(
            &mut merged.values,
            &layer.values,
            &mut ptr,
            &layer.file,
            &mut merged.origin,
        );
    }
    // A decrypted leaf stays secret while the layer that set it is still the one the merge kept.
    for layer in layers.iter().filter(|l| !l.secret.is_empty()) {
        for p in &layer.secret {
            if merged.origin.get(p) == Some(&layer.file) && merged.values.pointer(p).is_some() {
                merged.secret.insert(p.clone());
            }
        }
    }
    merged
}

/// A values file outside a chart (a cluster's or an overlay's `valuesFiles` entry): values per
/// chart (`"*"` = every chart), possibly decrypted from a sops file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValuesFile {
    /// Repository-relative path.
    pub file: String,
    /// Chart name (or `"*"`) -> values.
    pub charts: BTreeMap<String, Value>,
    /// Pointers (`/<chart>/key/...`) of the values that were encrypted in the file.
    pub secret: BTreeSet<String>,
}

impl ValuesFile {
    /// Read `rel` (repository-relative; decrypted when it is a sops file) as a map chart -> values.
    /// `from` names the file that refers to it, for a missing file.
    pub fn read(
        repo_root: &Path,
        rel: &str,
        keyring: &crate::sops::Keyring,
        from: &str,
        place: &str,
    ) -> Result<ValuesFile, InputError> {
        // Confined like every repository read: a symlink out of the repository is refused.
        let root = crate::confine::Root::new(repo_root, "the repository", ".")?;
        let text = root.read_text(&repo_root.join(rel), rel).map_err(|e| {
            InputError::new(from, format!("values file {rel}: {}", e.message)).place(place)
        })?;
        let (value, secret) = match crate::sops::decrypt_file(&text, rel, keyring)? {
            Some(mut docs) if docs.len() == 1 => {
                let d = docs.remove(0);
                (d.value, d.secret)
            }
            Some(_) => {
                return Err(InputError::new(
                    rel,
                    "a values file holds one YAML document",
                ));
            }
            None => (
                super::yaml::parse_yaml_document(&text, rel)?,
                BTreeSet::new(),
            ),
        };
        let charts = match value {
            Value::Null => BTreeMap::new(),
            Value::Object(m) => m.into_iter().collect(),
            _ => {
                return Err(InputError::new(
                    rel,
                    "a values file is a mapping of chart names to values",
                ));
            }
        };
        Ok(ValuesFile {
            file: rel.to_string(),
            charts,
            secret,
        })
    }

    /// The layers of this file for `chart`: `"*"` then the chart's own key.
    pub fn layers(&self, chart: &str) -> Vec<ValueLayer> {
        ["*", chart]
            .into_iter()
            .filter_map(|key| {
                let values = self.charts.get(key)?;
                let prefix = format!("/{}", escape_segment(key));
                let secret = self
                    .secret
                    .iter()
                    .filter_map(|p| p.strip_prefix(&prefix))
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    .map(str::to_string)
                    .collect();
                Some(ValueLayer {
                    file: self.file.clone(),
                    key_prefix: key.to_string(),
                    values: values.clone(),
                    secret,
                })
            })
            .collect()
    }
}

fn record_origin(v: &Value, ptr: &mut String, file: &str, origin: &mut BTreeMap<String, String>) {
    origin.insert(ptr.clone(), file.to_string());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&escape_segment(k));
                record_origin(child, ptr, file, origin);
                ptr.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                record_origin(child, ptr, file, origin);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

fn remove_origin_under(ptr: &str, origin: &mut BTreeMap<String, String>) {
    let prefix = format!("{ptr}/");
    let doomed: Vec<String> = origin
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        origin.remove(&k);
    }
    origin.remove(ptr);
}

fn merge_into(
    base: &mut Value,
    layer: &Value,
    ptr: &mut String,
    file: &str,
    origin: &mut BTreeMap<String, String>,
) {
    match (base, layer) {
        (Value::Object(bm), Value::Object(lm)) => {
            origin.insert(ptr.clone(), file.to_string());
            for (k, lv) in lm {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&escape_segment(k));
                if lv.is_null() {
                    bm.remove(k);
                    remove_origin_under(ptr, origin);
                } else {
                    match bm.get_mut(k) {
                        Some(bv) if bv.is_object() && lv.is_object() => {
                            merge_into(bv, lv, ptr, file, origin)
                        }
                        _ => {
                            remove_origin_under(ptr, origin);
                            let clean = strip_nulls(lv);
                            record_origin(&clean, ptr, file, origin);
                            bm.insert(k.clone(), clean);
                        }
                    }
                }
                ptr.truncate(len);
            }
        }
        (base, Value::Null) => {
            let _ = base;
        }
        (base, layer) => {
            remove_origin_under(ptr, origin);
            let clean = strip_nulls(layer);
            record_origin(&clean, ptr, file, origin);
            *base = clean;
        }
    }
}

/// A value from a later layer, with null map entries dropped (they delete nothing that exists).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Validate the FINAL merged values against the chart's `values.schema.json` (when it has one).
///
/// The error names the chart (object), the JSON pointer in the values, and the layer file
/// that set the offending key; it never quotes the offending value (it may be a secret).
pub fn validate_values(chart: &Chart, merged: &MergedValues) -> Result<(), InputError> {
    let Some(schema) = &chart.schema else {
        return Ok(());
    };
    let schema_file = format!("{}/values.schema.json", chart.rel_dir);
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        InputError::new(&schema_file, format!("invalid JSON Schema: {e}"))
            .object(format!("chart {}", chart.meta.name))
    })?;
    let mut errors: Vec<(String, String)> = validator
        .iter_errors(&merged.values)
        // Never quote the value: it may be a password bound for a Secret. The pointer and line say where it is.
        .map(|e| {
            (
                e.instance_path().as_str().to_string(),
                e.masked_with("the value").to_string(),
            )
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort();
    let (pointer, mut message) = errors.swap_remove(0);
    // The validator quotes the offending value: never a decrypted one.
    if crate::mask::touches(&pointer, &merged.secret) {
        message =
            "the value (decrypted from an encrypted file, not shown) does not match the schema"
                .into();
    }
    let layer = merged
        .origin_of(&pointer)
        .unwrap_or(&schema_file)
        .to_string();
    let more = if errors.is_empty() {
        String::new()
    } else {
        format!(" (and {} more)", errors.len())
    };
    let mut err = InputError::new(
        layer.clone(),
        format!("values do not match {schema_file}: {message}{more}"),
    );
    if let Some(line) = line_in_layer(chart, &layer, &pointer) {
        err = err.at(line, 1);
    }
    Err(err
        .pointer(if pointer.is_empty() {
            "/".to_string()
        } else {
            pointer
        })
        .object(format!("chart {}", chart.meta.name)))
}

/// Best-effort line of `pointer` in the layer file `layer` (repo-relative): each key of the
/// pointer is looked for as `key:` at or after the previous key's line.
fn line_in_layer(chart: &Chart, layer: &str, pointer: &str) -> Option<usize> {
    let depth = chart.rel_dir.split('/').filter(|s| !s.is_empty()).count();
    let mut root = chart.dir.clone();
    for _ in 0..depth {
        root = root.parent()?.to_path_buf();
    }
    let text = crate::confine::Root::new(&root, "the repository", ".")
        .ok()?
        .read_text(&root.join(layer), layer)
        .ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut cursor = 0;
    let mut found = None;
    for seg in pointer.split('/').skip(1) {
        if seg.parse::<usize>().is_ok() {
            continue;
        }
        let key = seg.replace("~1", "/").replace("~0", "~");
        let hit = (cursor..lines.len()).find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            [
                format!("{key}:"),
                format!("\"{key}\":"),
                format!("'{key}':"),
            ]
            .iter()
            .any(|k| {
                t.starts_with(k.as_str())
                    || t.contains(&format!("{{{k}"))
                    || t.contains(&format!(", {k}"))
            })
        })?;
        cursor = hit;
        found = Some(hit + 1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(file: &str, v: Value) -> ValueLayer {
        ValueLayer {
            file: file.into(),
            key_prefix: String::new(),
            values: v,
            secret: BTreeSet::new(),
        }
    }

    #[test]
    fn maps_merge_lists_and_scalars_replace_null_deletes() {
        let m = merge_values(&[
            layer(
                "charts/a/values.yaml",
                json!({"a": {"x": 1, "y": [1, 2], "z": "keep"}, "gone": 3, "nul": null}),
            ),
            layer(
                "overlays/o/overlay.yaml",
                json!({"a": {"x": 2, "y": [9]}, "gone": null, "new": {"n": null, "m": 1}}),
            ),
        ]);
        assert_eq!(
            m.values,
            json!({"a": {"x": 2, "y": [9], "z": "keep"}, "nul": null, "new": {"m": 1}})
        );
        assert_eq!(m.origin["/a/x"], "overlays/o/overlay.yaml");
        assert_eq!(m.origin["/a/z"], "charts/a/values.yaml");
        assert_eq!(m.origin["/a/y/0"], "overlays/o/overlay.yaml");
        assert!(!m.origin.contains_key("/a/y/1"));
        assert!(!m.origin.contains_key("/gone"));
        assert_eq!(
            m.origin_of("/a/y/0/deeper"),
            Some("overlays/o/overlay.yaml")
        );
    }

    #[test]
    fn a_decrypted_value_stays_secret_until_a_later_layer_replaces_it() {
        let mut enc = layer(
            "clusters/s.sops.yaml",
            json!({"pw": "x", "db": {"pw": "y"}, "list": ["a"]}),
        );
        enc.secret = ["/pw", "/db/pw", "/list/0"].map(String::from).into();
        let m = merge_values(&[layer("v", json!({"pw": "default"})), enc.clone()]);
        assert_eq!(m.secret, enc.secret);
        let later = layer("o", json!({"db": {"pw": "plain"}, "list": ["b"]}));
        let m = merge_values(&[layer("v", json!({})), enc, later]);
        assert_eq!(m.secret.into_iter().collect::<Vec<_>>(), ["/pw"]);
    }

    #[test]
    fn values_file_layers_are_rerooted_per_chart() {
        let f = ValuesFile {
            file: "c.sops.yaml".into(),
            charts: [
                ("*".to_string(), json!({"a": 1})),
                ("web".to_string(), json!({"pw": "x"})),
            ]
            .into(),
            secret: ["/web/pw", "/*/a"].map(String::from).into(),
        };
        let layers = f.layers("web");
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].secret.iter().collect::<Vec<_>>(), ["/a"]);
        assert_eq!(layers[1].secret.iter().collect::<Vec<_>>(), ["/pw"]);
        assert!(f.layers("other")[0].key_prefix == "*");
    }

    #[test]
    fn scalar_replaced_by_map_and_back() {
        let m = merge_values(&[
            layer("v", json!({"a": 1})),
            layer("o1", json!({"a": {"b": 2}})),
            layer("o2", json!({"a": 3})),
        ]);
        assert_eq!(m.values, json!({"a": 3}));
        assert!(!m.origin.contains_key("/a/b"));
        assert_eq!(m.origin["/a"], "o2");
    }
}
