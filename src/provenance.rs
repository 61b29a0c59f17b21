//! Field provenance: for every JSON pointer of every rendered object, what set its value.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::manifest::ObjectId;

/// What set a field's value at one step of the render.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum Origin {
    /// Written by a chart template (file relative to the repo root; line in the template when known).
    Template { file: String, line: Option<usize> },
    /// Taken from a values key (file that set the final value of that key, and the dotted key).
    Values { file: String, key: String, template: String, line: Option<usize> },
    /// Set by an overlay patch op.
    Overlay { overlay: String, file: String, patch: usize, op: usize, op_kind: String },
}

/// One step in a field's history: who set it, and to what (`None` when the step removed it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub origin: Origin,
    pub value: Option<Value>,
}

/// Provenance chains of all objects of a render, keyed by object and JSON pointer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Provenance {
    pub objects: BTreeMap<ObjectId, BTreeMap<String, Vec<Step>>>,
}

impl Provenance {
    /// The chain of steps for `pointer` in `id`, oldest first.
    pub fn chain(&self, id: &ObjectId, pointer: &str) -> Option<&[Step]> {
        self.objects.get(id)?.get(pointer).map(Vec::as_slice)
    }
}
