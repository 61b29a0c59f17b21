//! Overlay patch application: random RFC 6902 ops on a Kubernetes-shaped object. The op applies
//! the same with and without provenance recording, a failing op leaves the object as it was,
//! and the recorded field history answers every query without panicking.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pailot::overlay::PatchOp;
use pailot::provenance::{FieldHistory, Origin};
use serde_json::{Value, json};

const SEGMENTS: &[&str] = &[
    "spec", "template", "containers", "0", "1", "2", "-", "metadata", "labels", "name",
    "resources", "requests", "memory", "a~1b", "~0", "", "x", "replicas", "01", "999",
];

fn pointer(u: &mut Unstructured<'_>) -> Result<String> {
    let depth = u.int_in_range(0..=6)?;
    let mut p = String::new();
    for _ in 0..depth {
        p.push('/');
        if u.ratio(1, 8)? {
            p.push_str(u.arbitrary::<&str>()?);
        } else {
            p.push_str(u.choose(SEGMENTS)?);
        }
    }
    Ok(p)
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Value::Null,
        1 => json!(u.arbitrary::<bool>()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => json!(u.arbitrary::<String>()?),
        4 if depth < 3 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        5 if depth < 3 => {
            let n = u.int_in_range(0..=3)?;
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                m.insert(u.choose(SEGMENTS)?.to_string(), value(u, depth + 1)?);
            }
            Value::Object(m)
        }
        _ => json!("512Mi"),
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<PatchOp> {
    let path = pointer(u)?;
    Ok(match u.int_in_range(0..=5)? {
        0 => PatchOp::Add { path, value: value(u, 0)? },
        1 => PatchOp::Remove { path },
        2 => PatchOp::Replace { path, value: value(u, 0)? },
        3 => PatchOp::Move { from: pointer(u)?, path },
        4 => PatchOp::Copy { from: pointer(u)?, path },
        _ => PatchOp::Test { path, value: value(u, 0)? },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut plain = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"a/b": "1"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "main", "resources": {"requests": {"memory": "1Gi"}}},
            {"name": "side"}
        ]}}}
    });
    let mut recorded = plain.clone();
    let mut history = FieldHistory::default();
    let origin = Arc::new(Origin::Template { file: "t.yaml".into(), line: Some(1) });
    let mut seq = 0;
    // Unstructured yields default values forever once its data runs out: bound the ops.
    for _ in 0..16 {
        if u.is_empty() {
            break;
        }
        let Ok(op) = op(&mut u) else {
            break;
        };
        let Ok(compiled) = op.compile() else {
            continue;
        };
        seq += 1;
        let before = plain.clone();
        let a = pailot::overlay::patch::apply_op(&mut plain, &compiled, None);
        let recorder = pailot::overlay::patch::Recorder { history: &mut history, seq, origin: &origin };
        let b = pailot::overlay::patch::apply_op(&mut recorded, &compiled, Some(recorder));
        assert_eq!(a.is_ok(), b.is_ok(), "{op:?}");
        assert_eq!(plain, recorded, "{op:?}");
        if a.is_err() {
            assert_eq!(plain, before, "a failing op changed the object: {op:?}");
        }
    }
    for p in history.pointers_under(&recorded, "") {
        let _ = history.chain(&recorded, &p);
    }
});
