//! Field provenance: for every JSON pointer of every rendered object, what set its value.
//!
//! Flow: the chart engine hands over one [`Origin`] per pointer it knows (template line, values
//! key) as step 0; each overlay op that changes a pointer appends a record on that pointer (the op
//! path; `move` records a removal at `from` too). A field's chain is the records of the pointer and
//! of its parents, oldest first, so replacing `/spec/x` shows up in the chain of `/spec/x/y`.
//!
//! Guarantees: recording is cheap — step-0 values are not copied until an overlay is about to
//! change them, and work per op is proportional to the pointers below the op path.
//! Caveat: removing an array element forgets the history of that element (later elements shift).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::manifest::ObjectId;

/// What set a field's value at one step of the render.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum Origin {
    /// Written by a chart template (file relative to the repo root; line in the template when known).
    Template { file: String, line: Option<usize> },
    /// Written by a chart template, but by which line is not known: the key appears on several
    /// lines that could have produced the value, and some lie in loops or in branches whose
    /// conditions pailot does not evaluate (docs/provenance.md). `candidates` are those lines.
    TemplateUncertain {
        file: String,
        candidates: Vec<usize>,
    },
    /// Taken from a values key (file that set the final value of that key, and the dotted key).
    Values {
        file: String,
        key: String,
        template: String,
        line: Option<usize>,
    },
    /// Set by an overlay patch op (`file` holds the op: the overlay file or its patch file).
    #[serde(rename_all = "camelCase")]
    Overlay {
        overlay: String,
        file: String,
        patch: usize,
        op: usize,
        op_kind: String,
        /// Line of the op in `file`, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
        /// Source pointer of a `move` or `copy`.
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
}

impl Origin {
    /// Short name of the step kind: `template`, `values`, or the op (`replace`, `add`, ...).
    pub fn step_kind(&self) -> &str {
        match self {
            Origin::Template { .. } | Origin::TemplateUncertain { .. } => "template",
            Origin::Values { .. } => "values",
            Origin::Overlay { op_kind, .. } => op_kind,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Template {
                file,
                line: Some(l),
            } => write!(f, "{file}:{l}"),
            Origin::Template { file, line: None } => write!(f, "{file}"),
            Origin::TemplateUncertain { file, candidates } => {
                let lines: Vec<String> = candidates.iter().map(usize::to_string).collect();
                write!(
                    f,
                    "{file}: line unknown, a loop or condition decides it (candidate lines {})",
                    lines.join(", ")
                )
            }
            Origin::Values {
                file,
                key,
                template,
                line,
            } => {
                write!(f, "{file} key {key} via {template}")?;
                if let Some(l) = line {
                    write!(f, ":{l}")?;
                }
                Ok(())
            }
            Origin::Overlay {
                overlay,
                file,
                patch,
                op,
                from,
                line,
                ..
            } => {
                let overlay_file = format!("overlays/{overlay}/overlay.yaml");
                write!(f, "{overlay_file} patch {patch} op {op}")?;
                if *file != overlay_file {
                    write!(f, " ({file}")?;
                    if let Some(l) = line {
                        write!(f, ":{l}")?;
                    }
                    write!(f, ")")?;
                }
                if let Some(from) = from {
                    write!(f, " from {from}")?;
                }
                Ok(())
            }
        }
    }
}

/// One step in a field's history: who set it, and to what (`None` when the field was absent or removed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub origin: Origin,
    pub value: Option<Value>,
}

/// Value recorded by one step.
#[derive(Clone, Debug, PartialEq)]
enum Recorded {
    /// Not copied: the object still holds the value this step set (nothing changed it since).
    Current,
    Set(Value),
    Removed,
}

#[derive(Clone, Debug, PartialEq)]
struct Record {
    /// 0 for the chart engine's step; then one number per overlay op, increasing.
    seq: u32,
    origin: Arc<Origin>,
    value: Recorded,
}

/// History of every recorded pointer of one object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldHistory {
    fields: BTreeMap<String, Vec<Record>>,
}

/// Parent pointer of `p` (`/a/b` → `/a`, `/a` → ``); `None` for the root.
pub fn parent_pointer(p: &str) -> Option<&str> {
    if p.is_empty() {
        None
    } else {
        p.rfind('/').map(|i| &p[..i])
    }
}

/// Range of keys strictly below `p` in a pointer-keyed BTreeMap: (`p/`, `p0`).
fn below(p: &str) -> (String, String) {
    (format!("{p}/"), format!("{p}0"))
}

impl FieldHistory {
    /// Step 0 of every pointer, from the chart engine.
    pub fn from_origins(origins: BTreeMap<String, Origin>) -> Self {
        let fields = origins
            .into_iter()
            .map(|(p, o)| {
                (
                    p,
                    vec![Record {
                        seq: 0,
                        origin: Arc::new(o),
                        value: Recorded::Current,
                    }],
                )
            })
            .collect();
        FieldHistory { fields }
    }

    /// Step 0 of every pointer, sharing one allocation per distinct origin through `interner`
    /// (many leaves share a template line or values file; a render keeps one copy of each).
    pub fn from_origins_interned(
        origins: BTreeMap<String, Origin>,
        interner: &mut std::collections::HashSet<Arc<Origin>>,
    ) -> Self {
        let fields = origins
            .into_iter()
            .map(|(p, o)| {
                let origin = match interner.get(&o) {
                    Some(shared) => shared.clone(),
                    None => {
                        let shared = Arc::new(o);
                        interner.insert(shared.clone());
                        shared
                    }
                };
                (
                    p,
                    vec![Record {
                        seq: 0,
                        origin,
                        value: Recorded::Current,
                    }],
                )
            })
            .collect();
        FieldHistory { fields }
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Copy the values an op at `target` is about to change (records at `target` and below, and the
    /// nearest parent record, copied down to `target`). Call before changing `obj` at `target`.
    pub fn before_change(&mut self, obj: &Value, target: &str) {
        let (lo, hi) = below(target);
        let here = self.fields.get_key_value(target).into_iter();
        let lazy: Vec<String> = here
            .chain(self.fields.range(lo..hi))
            .filter(|(_, rs)| rs.iter().any(|r| r.value == Recorded::Current))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &lazy {
            let current = obj.pointer(k);
            if let Some(records) = self.fields.get_mut(k) {
                for r in records.iter_mut().filter(|r| r.value == Recorded::Current) {
                    r.value = current.map_or(Recorded::Removed, |v| Recorded::Set(v.clone()));
                }
            }
        }
        if self.fields.contains_key(target) {
            return;
        }
        // The nearest parent with a record decides what `target` held: copy its open step down.
        let mut p = parent_pointer(target);
        while let Some(parent) = p {
            if let Some(records) = self.fields.get(parent) {
                if let Some(last) = records.last()
                    && last.value == Recorded::Current
                    && let Some(v) = obj.pointer(target)
                {
                    let rec = Record {
                        seq: last.seq,
                        origin: last.origin.clone(),
                        value: Recorded::Set(v.clone()),
                    };
                    self.fields.insert(target.to_string(), vec![rec]);
                }
                return;
            }
            p = parent_pointer(parent);
        }
    }

    /// Record that op `seq` (`origin`) set `pointer` to `value`.
    pub fn record_set(&mut self, seq: u32, origin: &Arc<Origin>, pointer: &str, value: Value) {
        self.fields
            .entry(pointer.to_string())
            .or_default()
            .push(Record {
                seq,
                origin: origin.clone(),
                value: Recorded::Set(value),
            });
    }

    /// Record that op `seq` (`origin`) removed `pointer`.
    pub fn record_removed(&mut self, seq: u32, origin: &Arc<Origin>, pointer: &str) {
        self.fields
            .entry(pointer.to_string())
            .or_default()
            .push(Record {
                seq,
                origin: origin.clone(),
                value: Recorded::Removed,
            });
    }

    /// Renumber records below array `array` after an insert (`delta` = 1) or removal (`delta` = -1)
    /// at `index` of an array that had `old_len` elements: elements after the change point move by
    /// `delta` and take their history along (parents' steps are copied down to each moving element
    /// first, so they keep describing the element, not the position); a removed element's records
    /// are dropped.
    pub fn shift_array(&mut self, array: &str, index: usize, delta: isize, old_len: usize) {
        let first_moving = if delta < 0 { index + 1 } else { index };
        if first_moving < old_len && self.has_records_at_or_above(array) {
            for j in first_moving..old_len {
                let key = format!("{array}/{j}");
                let inherited = self.inherited(&key);
                if inherited.is_empty() {
                    continue;
                }
                let records = self.fields.entry(key).or_default();
                for r in inherited {
                    if !records.iter().any(|x| x.seq == r.seq) {
                        records.push(r);
                    }
                }
                records.sort_by_key(|r| r.seq);
            }
        }
        let (lo, hi) = below(array);
        let affected: Vec<String> = self
            .fields
            .range(lo.clone()..hi)
            .filter(|(k, _)| element_index(&k[lo.len()..]).is_some_and(|i| i >= index))
            .map(|(k, _)| k.clone())
            .collect();
        let mut moved = Vec::with_capacity(affected.len());
        for k in affected {
            let rest = &k[lo.len()..];
            let (idx_str, tail) = rest
                .split_once('/')
                .map_or((rest, ""), |(a, _)| (a, &rest[a.len()..]));
            let Ok(i) = idx_str.parse::<usize>() else {
                continue;
            };
            let records = self.fields.remove(&k).unwrap_or_default();
            if delta < 0 && i == index {
                continue;
            }
            let new_i = (i as isize + delta).max(0) as usize;
            moved.push((format!("{lo}{new_i}{tail}"), records));
        }
        self.fields.extend(moved);
    }

    fn has_records_at_or_above(&self, pointer: &str) -> bool {
        let mut p = Some(pointer);
        while let Some(k) = p {
            if self.fields.contains_key(k) {
                return true;
            }
            p = parent_pointer(k);
        }
        false
    }

    /// The parents' records of `key`, as they apply to `key` (one per step; the deepest parent wins).
    fn inherited(&self, key: &str) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        let mut p = parent_pointer(key);
        while let Some(a) = p {
            if let Some(records) = self.fields.get(a) {
                for r in records {
                    if out.iter().any(|x| x.seq == r.seq) {
                        continue;
                    }
                    let value = match &r.value {
                        Recorded::Current => Recorded::Current,
                        Recorded::Set(v) => v
                            .pointer(&key[a.len()..])
                            .map_or(Recorded::Removed, |v| Recorded::Set(v.clone())),
                        Recorded::Removed => Recorded::Removed,
                    };
                    out.push(Record {
                        seq: r.seq,
                        origin: r.origin.clone(),
                        value,
                    });
                }
            }
            p = parent_pointer(a);
        }
        out
    }

    /// The steps that set `pointer` (and its parents), oldest first, with the value each step gave it.
    pub fn chain(&self, obj: &Value, pointer: &str) -> Vec<Step> {
        // (seq, depth, record, key): the deepest key wins among records of one step.
        let mut found: BTreeMap<u32, (usize, &Record, &str)> = BTreeMap::new();
        let mut key = Some(pointer);
        let mut depth = usize::MAX;
        while let Some(k) = key {
            if let Some(records) = self.fields.get(k) {
                for r in records {
                    found.entry(r.seq).or_insert((depth, r, k));
                }
            }
            depth -= 1;
            key = parent_pointer(k);
        }
        found
            .into_values()
            .map(|(_, r, k)| Step {
                origin: (*r.origin).clone(),
                value: match &r.value {
                    Recorded::Current => obj.pointer(pointer).cloned(),
                    Recorded::Set(v) => v.pointer(&pointer[k.len()..]).cloned(),
                    Recorded::Removed => None,
                },
            })
            .collect()
    }

    /// Every pointer worth explaining at or below `pointer`: the leaves of `obj` there (empty
    /// maps/lists count as leaves) plus recorded pointers that no longer exist (removed fields).
    pub fn pointers_under(&self, obj: &Value, pointer: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = obj.pointer(pointer) {
            leaves(v, &mut pointer.to_string(), &mut out);
        }
        let (lo, hi) = below(pointer);
        let recorded = self
            .fields
            .get_key_value(pointer)
            .into_iter()
            .chain(self.fields.range(lo..hi));
        for (k, _) in recorded {
            if obj.pointer(k).is_none() {
                out.push(k.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn element_index(rest: &str) -> Option<usize> {
    rest.split('/').next()?.parse().ok()
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn leaves(v: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push('/');
                path.push_str(&escape(k));
                leaves(child, path, out);
                path.truncate(len);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                path.push('/');
                path.push_str(&i.to_string());
                leaves(child, path, out);
                path.truncate(len);
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Provenance of all objects of a render, by object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    pub objects: BTreeMap<ObjectId, FieldHistory>,
    /// Per object, the fields whose value was decrypted from a sops file (kept in every
    /// [`crate::render::ProvenanceMode`]: output masking needs them).
    pub secrets: crate::mask::SecretFields,
}

impl Provenance {
    /// The chain of steps for `pointer` in object `id` (whose final form is `obj`), oldest first.
    pub fn chain(&self, id: &ObjectId, obj: &Value, pointer: &str) -> Vec<Step> {
        self.objects
            .get(id)
            .map(|h| h.chain(obj, pointer))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpl(line: usize) -> Origin {
        Origin::Template {
            file: "charts/zk/templates/zk.yaml".into(),
            line: Some(line),
        }
    }
    fn ov(patch: usize, op: usize, kind: &str) -> Arc<Origin> {
        Arc::new(Origin::Overlay {
            overlay: "lowmem".into(),
            file: "overlays/lowmem/overlay.yaml".into(),
            patch,
            op,
            op_kind: kind.into(),
            line: None,
            from: None,
        })
    }

    #[test]
    fn replace_keeps_the_base_value_in_the_chain() {
        let mut obj = json!({"spec": {"mem": "1Gi", "cpu": "1"}});
        let mut h = FieldHistory::from_origins(BTreeMap::from([
            ("/spec/mem".to_string(), tmpl(42)),
            ("/spec/cpu".to_string(), tmpl(43)),
        ]));
        h.before_change(&obj, "/spec/mem");
        obj["spec"]["mem"] = json!("512Mi");
        h.record_set(1, &ov(2, 0, "replace"), "/spec/mem", json!("512Mi"));
        let c = h.chain(&obj, "/spec/mem");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].origin, tmpl(42));
        assert_eq!(c[0].value, Some(json!("1Gi")));
        assert_eq!(c[1].value, Some(json!("512Mi")));
        assert_eq!(c[1].origin.step_kind(), "replace");
        let c = h.chain(&obj, "/spec/cpu");
        assert_eq!(
            c,
            vec![Step {
                origin: tmpl(43),
                value: Some(json!("1"))
            }]
        );
    }

    #[test]
    fn parent_replace_shows_in_child_chain_and_parent_base_is_copied_down() {
        let mut obj = json!({"spec": {"res": {"mem": "1Gi", "cpu": "1"}}});
        let mut h = FieldHistory::from_origins(BTreeMap::from([("/spec".to_string(), tmpl(1))]));
        h.before_change(&obj, "/spec/res/mem");
        obj["spec"]["res"]["mem"] = json!("2Gi");
        h.record_set(1, &ov(0, 0, "replace"), "/spec/res/mem", json!("2Gi"));
        let c = h.chain(&obj, "/spec/res/mem");
        assert_eq!(
            c.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            vec![Some(json!("1Gi")), Some(json!("2Gi"))]
        );
        // The untouched sibling still reads its value from the object.
        assert_eq!(h.chain(&obj, "/spec/res/cpu")[0].value, Some(json!("1")));
        // A later replace of the parent appears in the child's chain with the sub-value.
        h.before_change(&obj, "/spec/res");
        obj["spec"]["res"] = json!({"mem": "3Gi"});
        h.record_set(2, &ov(1, 0, "add"), "/spec/res", json!({"mem": "3Gi"}));
        let c = h.chain(&obj, "/spec/res/mem");
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].value, Some(json!("3Gi")));
        let c = h.chain(&obj, "/spec/res/cpu");
        assert_eq!(c.last().unwrap().value, None);
        assert!(
            h.pointers_under(&obj, "/spec/res")
                .contains(&"/spec/res/mem".to_string())
        );
    }

    #[test]
    fn removal_and_array_shift() {
        let mut obj = json!({"c": [{"n": "a"}, {"n": "b"}]});
        let mut h = FieldHistory::from_origins(BTreeMap::from([
            ("/c/0/n".to_string(), tmpl(1)),
            ("/c/1/n".to_string(), tmpl(2)),
        ]));
        // Insert at index 0: the old elements move to 1 and 2.
        h.before_change(&obj, "/c");
        obj["c"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"n": "z"}));
        h.shift_array("/c", 0, 1, 2);
        h.record_set(1, &ov(0, 0, "add"), "/c/0", json!({"n": "z"}));
        assert_eq!(h.chain(&obj, "/c/2/n")[0].origin, tmpl(2));
        assert_eq!(h.chain(&obj, "/c/2/n")[0].value, Some(json!("b")));
        assert_eq!(
            h.chain(&obj, "/c/0/n").last().unwrap().value,
            Some(json!("z"))
        );
        // Remove index 1 ("a"): "b" moves back to 1.
        h.before_change(&obj, "/c");
        obj["c"].as_array_mut().unwrap().remove(1);
        h.shift_array("/c", 1, -1, 3);
        assert_eq!(h.chain(&obj, "/c/1/n")[0].origin, tmpl(2));
        // Map removal is recorded and listed.
        let mut obj = json!({"a": {"b": 1}});
        let mut h = FieldHistory::from_origins(BTreeMap::from([("/a/b".to_string(), tmpl(5))]));
        h.before_change(&obj, "/a/b");
        obj["a"].as_object_mut().unwrap().remove("b");
        h.record_removed(1, &ov(0, 0, "remove"), "/a/b");
        let c = h.chain(&obj, "/a/b");
        assert_eq!(c[0].value, Some(json!(1)));
        assert_eq!(c[1].value, None);
        assert_eq!(
            h.pointers_under(&obj, ""),
            vec!["/a".to_string(), "/a/b".to_string()]
        );
    }
}
