//! Applying one RFC 6902 op to one object, recording what it changed in the object's field history.

use std::sync::Arc;

use json_patch::PatchOperation;
use serde_json::Value;

use crate::provenance::{FieldHistory, Origin, parent_pointer};

/// Where provenance of an op goes: the object's history, the op's sequence number, and its origin.
pub struct Recorder<'a> {
    pub history: &'a mut FieldHistory,
    pub seq: u32,
    pub origin: &'a Arc<Origin>,
}

/// How an op's path sits in the object before the op runs.
enum Slot {
    /// A map member or the root: the op changes the value at the path itself.
    Member,
    /// An array element: inserting or removing shifts the later elements.
    Element { array: String },
}

fn slot(obj: &Value, path: &str) -> Slot {
    match parent_pointer(path) {
        Some(parent) if obj.pointer(parent).is_some_and(Value::is_array) => Slot::Element {
            array: parent.to_string(),
        },
        _ => Slot::Member,
    }
}

fn last_token(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// Index an add at `path` (into `array`) inserted at, read after the op ran (`-` = the last element).
fn inserted_index(obj: &Value, array: &str, path: &str) -> Option<usize> {
    match last_token(path) {
        "-" => obj
            .pointer(array)
            .and_then(Value::as_array)
            .map(|a| a.len().saturating_sub(1)),
        t => t.parse().ok(),
    }
}

fn before(obj: &Value, history: &mut FieldHistory, path: &str) {
    match slot(obj, path) {
        Slot::Member => history.before_change(obj, path),
        Slot::Element { array } => history.before_change(obj, &array),
    }
}

/// Provenance of a value appearing at `path` (add, copy, or the arriving half of move).
fn record_arrival(
    obj: &Value,
    rec: &mut Recorder<'_>,
    was_element: Option<String>,
    path: &str,
    value: Value,
) {
    match was_element {
        Some(array) => {
            if let Some(i) = inserted_index(obj, &array, path) {
                let new_len = obj
                    .pointer(&array)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                rec.history
                    .shift_array(&array, i, 1, new_len.saturating_sub(1));
                rec.history
                    .record_set(rec.seq, rec.origin, &format!("{array}/{i}"), value);
            }
        }
        None => rec.history.record_set(rec.seq, rec.origin, path, value),
    }
}

/// Provenance of a value leaving `path` (remove, or the leaving half of move).
/// `was_element` is the array holding `path` and its length before the op.
fn record_departure(rec: &mut Recorder<'_>, was_element: Option<(String, usize)>, path: &str) {
    match was_element {
        Some((array, old_len)) => {
            if let Ok(i) = last_token(path).parse() {
                rec.history.shift_array(&array, i, -1, old_len);
            }
        }
        None => rec.history.record_removed(rec.seq, rec.origin, path),
    }
}

fn element_with_len(obj: &Value, path: &str) -> Option<(String, usize)> {
    element_array(obj, path).map(|a| {
        let len = obj
            .pointer(&a)
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        (a, len)
    })
}

fn element_array(obj: &Value, path: &str) -> Option<String> {
    match slot(obj, path) {
        Slot::Element { array } => Some(array),
        Slot::Member => None,
    }
}

/// Apply `op` to `obj`. On error `obj` is unchanged. With a recorder, the fields the op set,
/// removed, moved or copied are recorded (the op's path, and `from` for move).
pub fn apply_op(
    obj: &mut Value,
    op: &PatchOperation,
    recorder: Option<Recorder<'_>>,
) -> Result<(), json_patch::PatchError> {
    // json-patch's move removes `from` before it checks `path`: a failing move would leave the
    // value removed, so moves (rare) run against a snapshot.
    if let PatchOperation::Move(_) = op {
        let snapshot = obj.clone();
        return apply_op_inner(obj, op, recorder).inspect_err(|_| *obj = snapshot);
    }
    apply_op_inner(obj, op, recorder)
}

fn apply_op_inner(
    obj: &mut Value,
    op: &PatchOperation,
    recorder: Option<Recorder<'_>>,
) -> Result<(), json_patch::PatchError> {
    let Some(mut rec) = recorder else {
        return json_patch::patch(obj, std::slice::from_ref(op));
    };
    match op {
        PatchOperation::Test(_) => json_patch::patch(obj, std::slice::from_ref(op)),
        PatchOperation::Add(a) => {
            let path = a.path.as_str();
            let element = element_array(obj, path);
            before(obj, rec.history, path);
            json_patch::patch(obj, std::slice::from_ref(op))?;
            record_arrival(obj, &mut rec, element, path, a.value.clone());
            Ok(())
        }
        PatchOperation::Replace(r) => {
            let path = r.path.as_str();
            rec.history.before_change(obj, path);
            json_patch::patch(obj, std::slice::from_ref(op))?;
            rec.history
                .record_set(rec.seq, rec.origin, path, r.value.clone());
            Ok(())
        }
        PatchOperation::Remove(r) => {
            let path = r.path.as_str();
            let element = element_with_len(obj, path);
            before(obj, rec.history, path);
            json_patch::patch(obj, std::slice::from_ref(op))?;
            record_departure(&mut rec, element, path);
            Ok(())
        }
        PatchOperation::Copy(c) => {
            let path = c.path.as_str();
            let element = element_array(obj, path);
            let value = obj.pointer(c.from.as_str()).cloned();
            before(obj, rec.history, path);
            json_patch::patch(obj, std::slice::from_ref(op))?;
            record_arrival(obj, &mut rec, element, path, value.unwrap_or(Value::Null));
            Ok(())
        }
        PatchOperation::Move(m) => {
            let (from, path) = (m.from.as_str(), m.path.as_str());
            let from_element = element_with_len(obj, from);
            let value = obj.pointer(from).cloned();
            before(obj, rec.history, from);
            before(obj, rec.history, path);
            json_patch::patch(obj, std::slice::from_ref(op))?;
            if from == path {
                return Ok(());
            }
            // The destination is resolved against the object after the removal, as RFC 6902 says.
            let to_element = element_array(obj, path);
            // Moving a value up over its own parent replaces that parent (the arrival says it
            // all) — unless the parent is an array element: then the value is inserted before it
            // and the parent, less the value, shifts one place on.
            let over_parent =
                to_element.is_none() && (path.is_empty() || from.starts_with(&format!("{path}/")));
            if !over_parent {
                record_departure(&mut rec, from_element, from);
            }
            record_arrival(
                obj,
                &mut rec,
                to_element,
                path,
                value.unwrap_or(Value::Null),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn op(v: Value) -> PatchOperation {
        serde_json::from_value(v).unwrap()
    }

    fn origin(op_kind: &str) -> Arc<Origin> {
        Arc::new(Origin::Overlay {
            overlay: "o".into(),
            file: "overlays/o/overlay.yaml".into(),
            patch: 0,
            op: 0,
            op_kind: op_kind.into(),
            line: None,
            from: None,
        })
    }

    fn run(
        obj: &mut Value,
        h: &mut FieldHistory,
        seq: u32,
        o: Value,
    ) -> Result<(), json_patch::PatchError> {
        let kind = o["op"].as_str().unwrap().to_string();
        let origin = origin(&kind);
        apply_op(
            obj,
            &op(o),
            Some(Recorder {
                history: h,
                seq,
                origin: &origin,
            }),
        )
    }

    #[test]
    fn moving_an_element_up_before_its_array_keeps_the_rest_of_the_array() {
        // [[null, false]] -move /0/0 to /0-> [null, [false]]: `false` keeps its template origin.
        let mut obj = json!([[null, false]]);
        let base = Origin::Template {
            file: "t.yaml".into(),
            line: Some(1),
        };
        let mut h = FieldHistory::from_origins(BTreeMap::from([
            ("/0/0".to_string(), base.clone()),
            ("/0/1".to_string(), base.clone()),
        ]));
        run(
            &mut obj,
            &mut h,
            1,
            json!({"op": "move", "from": "/0/0", "path": "/0"}),
        )
        .unwrap();
        assert_eq!(obj, json!([null, [false]]));
        let chain = h.chain(&obj, "/1/0");
        assert_eq!(chain.last().unwrap().value, Some(json!(false)), "{chain:?}");
        assert_eq!(h.chain(&obj, "/0").last().unwrap().value, Some(Value::Null));
    }

    #[test]
    fn all_six_ops_apply_and_record() {
        let mut obj = json!({"spec": {"containers": [{"name": "a", "mem": "1Gi"}], "x": 1}});
        let base = Origin::Template {
            file: "t.yaml".into(),
            line: Some(3),
        };
        let mut h = FieldHistory::from_origins(BTreeMap::from([
            ("/spec/containers/0/mem".to_string(), base.clone()),
            ("/spec/x".to_string(), base.clone()),
        ]));
        run(
            &mut obj,
            &mut h,
            1,
            json!({"op": "test", "path": "/spec/x", "value": 1}),
        )
        .unwrap();
        run(
            &mut obj,
            &mut h,
            2,
            json!({"op": "replace", "path": "/spec/containers/0/mem", "value": "512Mi"}),
        )
        .unwrap();
        run(
            &mut obj,
            &mut h,
            3,
            json!({"op": "add", "path": "/spec/containers/0", "value": {"name": "b"}}),
        )
        .unwrap();
        // The original container moved to index 1 and its history went with it.
        let c = h.chain(&obj, "/spec/containers/1/mem");
        assert_eq!(
            c.iter()
                .map(|s| s.value.clone().unwrap())
                .collect::<Vec<_>>(),
            vec![json!("1Gi"), json!("512Mi")]
        );
        run(
            &mut obj,
            &mut h,
            4,
            json!({"op": "copy", "from": "/spec/x", "path": "/spec/y"}),
        )
        .unwrap();
        run(
            &mut obj,
            &mut h,
            5,
            json!({"op": "move", "from": "/spec/x", "path": "/spec/z"}),
        )
        .unwrap();
        run(
            &mut obj,
            &mut h,
            6,
            json!({"op": "remove", "path": "/spec/containers/0"}),
        )
        .unwrap();
        assert_eq!(
            obj,
            json!({"spec": {"containers": [{"name": "a", "mem": "512Mi"}], "y": 1, "z": 1}})
        );
        assert_eq!(
            h.chain(&obj, "/spec/containers/0/mem")
                .last()
                .unwrap()
                .value,
            Some(json!("512Mi"))
        );
        let x = h.chain(&obj, "/spec/x");
        assert_eq!(x.first().unwrap().value, Some(json!(1)));
        assert_eq!(x.last().unwrap().origin.step_kind(), "move");
        assert_eq!(x.last().unwrap().value, None);
        assert_eq!(
            h.chain(&obj, "/spec/z").last().unwrap().value,
            Some(json!(1))
        );
        assert_eq!(
            h.chain(&obj, "/spec/y").last().unwrap().origin.step_kind(),
            "copy"
        );
    }

    #[test]
    fn failing_op_leaves_object_unchanged() {
        let mut obj = json!({"a": [1, 2]});
        let mut h = FieldHistory::default();
        for bad in [
            json!({"op": "test", "path": "/a/0", "value": 9}),
            json!({"op": "replace", "path": "/b", "value": 1}),
            json!({"op": "remove", "path": "/a/5"}),
            json!({"op": "add", "path": "/x/y", "value": 1}),
            json!({"op": "move", "from": "/a", "path": "/a/0"}),
            json!({"op": "copy", "from": "/nope", "path": "/c"}),
        ] {
            assert!(run(&mut obj, &mut h, 1, bad.clone()).is_err(), "{bad}");
            assert_eq!(obj, json!({"a": [1, 2]}));
        }
    }
}
