//! Rendered Kubernetes objects: their identity (`ObjectId`) and the set one render produces.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::provenance::Provenance;

/// Identity of a Kubernetes object: group, version, kind, namespace, name.
///
/// Ordering is the deterministic output order within one stage (see `render`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (and for namespaced objects before defaulting).
    pub namespace: Option<String>,
    pub name: String,
}

/// Why a document is not a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectIdError {
    #[error("document is not a mapping")]
    NotAMapping,
    #[error("missing or empty {0}")]
    Missing(&'static str),
}

impl ObjectId {
    /// Read the identity of `obj` (`apiVersion`, `kind`, `metadata.name`, `metadata.namespace`).
    pub fn of(obj: &Value) -> Result<Self, ObjectIdError> {
        let map = obj.as_object().ok_or(ObjectIdError::NotAMapping)?;
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(ObjectIdError::Missing("apiVersion"))?;
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(ObjectIdError::Missing("kind"))?;
        let meta = map.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(ObjectIdError::Missing("metadata.name"))?;
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        Ok(ObjectId {
            group,
            version,
            kind: kind.to_string(),
            namespace,
            name: name.to_string(),
        })
    }

    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Kind/namespace/name`, or `Kind/name` when cluster-scoped: the form every message uses.
    pub fn display_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// One rendered object and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderedObject {
    /// Name of the chart that rendered it.
    pub chart: String,
    /// Template file, relative to the repository root (e.g. `charts/zookeeper/templates/zookeeper.yaml`).
    pub template: String,
    /// The final object after values and overlay patches.
    pub object: Value,
}

/// A chart taking part in a render, with its dependencies (`dependsOn`), in dependency order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChartInfo {
    pub name: String,
    pub version: String,
    pub depends_on: Vec<String>,
}

/// Everything one render produced: objects by identity, the charts, and field provenance.
///
/// Serialized (between a render helper and the daemon) with the objects as a list (JSON maps need
/// string keys) and, of the provenance, only the fields decrypted from sops files (what masking needs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RenderedSet {
    #[serde(with = "objects_as_list")]
    pub objects: BTreeMap<ObjectId, RenderedObject>,
    /// Charts included by the overlays, in a dependency-respecting, deterministic order.
    pub charts: Vec<ChartInfo>,
    #[serde(with = "secrets_only", default)]
    pub provenance: Provenance,
}

mod secrets_only {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{ObjectId, Provenance};

    pub fn serialize<S: Serializer>(p: &Provenance, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.secrets.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Provenance, D::Error> {
        let list = Vec::<(ObjectId, std::collections::BTreeSet<String>)>::deserialize(d)?;
        Ok(Provenance {
            secrets: list.into_iter().collect(),
            ..Default::default()
        })
    }
}

mod objects_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{ObjectId, RenderedObject};

    pub fn serialize<S: Serializer>(
        objects: &BTreeMap<ObjectId, RenderedObject>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(objects.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ObjectId, RenderedObject>, D::Error> {
        Ok(Vec::<(ObjectId, RenderedObject)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// Annotation marking a Pod that `pailot bootstrap` writes into the kubelet's static pod directory;
/// such objects count in `budget` and `preflight` but are never applied through the API.
pub const STATIC_POD_ANNOTATION: &str = "pailot.dev/static-pod";

/// True when `object` carries `pailot.dev/static-pod: "true"` (a YAML `true` counts too).
pub fn is_static_pod(object: &Value) -> bool {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(STATIC_POD_ANNOTATION))
        .is_some_and(|v| v.as_str() == Some("true") || v.as_bool() == Some(true))
}
