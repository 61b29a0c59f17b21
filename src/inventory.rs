//! The inventory of what pailot applied: a kubectl ApplySet (KEP-3659) parent Secret and its member labels.
//!
//! The parent is a Secret named `applyset-<cluster name>` in the Cluster file's `namespace` (the one rule
//! every command and the daemon use, [`Inventory::of`]; a parent an earlier version left in `kube-system`
//! is adopted where it is, see `apply::locate_inventory`) that carries the ApplySet id label and the tooling / contains-group-kinds / additional-namespaces annotations.
//! Members carry `applyset.kubernetes.io/part-of: <id>` and `pailot.dev/chart: <chart>`; the member list is
//! what the cluster holds with that label, so an object is forgotten only once its deletion is confirmed.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::manifest::ObjectId;

/// Label on the parent: the ApplySet id.
pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
/// Label on every member: the id of the ApplySet it belongs to.
pub const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";
/// Annotation on the parent: `<tool>/<version>`.
pub const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
/// Annotation on the parent: sorted, comma-separated `Kind.group` of every member kind.
pub const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Annotation on the parent: sorted, comma-separated namespaces of members outside the parent's namespace.
pub const NAMESPACES_ANNOTATION: &str = "applyset.kubernetes.io/additional-namespaces";
/// pailot's own label on every member: the chart that rendered it.
pub const CHART_LABEL: &str = "pailot.dev/chart";
/// Where earlier versions of pailot put the parent (the CLI's old default); a parent found there is adopted.
pub const LEGACY_NAMESPACES: [&str; 1] = ["kube-system"];

/// Why an existing parent cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The parent exists but another tool manages it.
    #[error(
        "ApplySet parent Secret/{namespace}/{name} is managed by tooling {tooling:?}, not pailot"
    )]
    ForeignTooling {
        namespace: String,
        name: String,
        tooling: String,
    },
    /// The parent exists with an id label that does not match its name and namespace.
    #[error("ApplySet parent Secret/{namespace}/{name} has id label {got:?}, expected {want:?}")]
    WrongId {
        namespace: String,
        name: String,
        got: String,
        want: String,
    },
}

/// A group and kind, written `Kind.group` (`Deployment.apps`, `ConfigMap`) as the ApplySet annotations do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    /// The group kind of an object.
    pub fn of(id: &ObjectId) -> Self {
        GroupKind {
            group: id.group.clone(),
            kind: id.kind.clone(),
        }
    }

    /// Parse `Kind.group` (the group may itself contain dots) or `Kind`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        Some(match s.split_once('.') {
            Some((kind, group)) => GroupKind {
                kind: kind.to_string(),
                group: group.to_string(),
            },
            None => GroupKind {
                kind: s.to_string(),
                group: String::new(),
            },
        })
    }
}

impl std::fmt::Display for GroupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// Where the parent lives and what it is called; computes the ApplySet id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// Parent Secret name: `applyset-<cluster name>`.
    pub name: String,
    /// Parent Secret namespace.
    pub namespace: String,
}

impl Inventory {
    /// The inventory of `cluster`: `Secret/<cluster.namespace>/applyset-<cluster.name>`.
    pub fn of(cluster: &crate::cluster::Cluster) -> Self {
        Inventory::for_cluster(&cluster.name, &cluster.namespace)
    }

    /// The parent Secret's identity.
    pub fn parent_id(&self) -> ObjectId {
        ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
        }
    }

    /// `Secret/<namespace>/<name>`, as messages show it.
    pub fn parent_name(&self) -> String {
        self.parent_id().to_string()
    }

    /// The inventory of cluster `cluster_name`, with its parent in `namespace`.
    pub fn for_cluster(cluster_name: &str, namespace: &str) -> Self {
        Inventory {
            name: format!("applyset-{cluster_name}"),
            namespace: namespace.to_string(),
        }
    }

    /// KEP-3659 id: `applyset-` + base64url-nopad(sha256(`<name>.<namespace>.Secret.`)) + `-v1`.
    pub fn id(&self) -> String {
        applyset_id(&self.name, &self.namespace, "Secret", "")
    }

    /// `applyset.kubernetes.io/part-of=<id>`: the selector for every member.
    pub fn member_selector(&self) -> String {
        format!("{PART_OF_LABEL}={}", self.id())
    }

    /// Check that an existing parent (`metadata` of the live Secret) is ours.
    pub fn check_parent(&self, live: &Value) -> Result<(), Error> {
        let meta = &live["metadata"];
        if let Some(tooling) = meta["annotations"][TOOLING_ANNOTATION].as_str() {
            let base = tooling.split('/').next().unwrap_or("");
            if base != "pailot" {
                return Err(Error::ForeignTooling {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    tooling: tooling.to_string(),
                });
            }
        }
        if let Some(got) = meta["labels"][ID_LABEL].as_str()
            && got != self.id()
        {
            return Err(Error::WrongId {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                got: got.to_string(),
                want: self.id(),
            });
        }
        Ok(())
    }

    /// The parent Secret to server-side apply, listing `group_kinds` and `namespaces` (the parent's own
    /// namespace is left out of `additional-namespaces`, as the KEP says).
    pub fn parent_object(
        &self,
        group_kinds: &BTreeSet<GroupKind>,
        namespaces: &BTreeSet<String>,
    ) -> Value {
        let gks: Vec<String> = group_kinds
            .iter()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let nss: Vec<&str> = namespaces
            .iter()
            .map(String::as_str)
            .filter(|n| *n != self.namespace)
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": { ID_LABEL: self.id() },
                "annotations": {
                    TOOLING_ANNOTATION: format!("pailot/v{}", crate::VERSION),
                    GROUP_KINDS_ANNOTATION: gks.join(","),
                    NAMESPACES_ANNOTATION: nss.join(","),
                },
            },
            "type": "Opaque",
        })
    }
}

/// What a live parent records: its group kinds and namespaces (its own namespace included).
pub fn recorded(live: &Value) -> (BTreeSet<GroupKind>, BTreeSet<String>) {
    let ann = &live["metadata"]["annotations"];
    let gks = ann[GROUP_KINDS_ANNOTATION]
        .as_str()
        .unwrap_or("")
        .split(',')
        .filter_map(GroupKind::parse)
        .collect();
    let mut nss: BTreeSet<String> = ann[NAMESPACES_ANNOTATION]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(ns) = live["metadata"]["namespace"].as_str() {
        nss.insert(ns.to_string());
    }
    (gks, nss)
}

/// KEP-3659 ApplySet id of a parent object.
pub fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Add the member labels (part-of and chart) to a rendered object.
pub fn label_member(object: &mut Value, id: &str, chart: &str) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("labels is an object");
    labels.insert(PART_OF_LABEL.to_string(), Value::String(id.to_string()));
    labels.insert(CHART_LABEL.to_string(), Value::String(chart.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_follows_the_kep_formula() {
        let inv = Inventory::for_cluster("demo", "kube-system");
        let id = inv.id();
        assert!(id.starts_with("applyset-") && id.ends_with("-v1"), "{id}");
        let digest = Sha256::digest(b"applyset-demo.kube-system.Secret.");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{b64}-v1"));
        assert_eq!(b64.len(), 43);
        assert!(!b64.contains('=') && !b64.contains('+') && !b64.contains('/'));
    }

    #[test]
    fn id_matches_an_independently_computed_value() {
        // Computed outside Rust: printf 'demo.kube-system.Secret.' | sha256sum | xxd -r -p | basenc --base64url | tr -d =
        assert_eq!(
            applyset_id("demo", "kube-system", "Secret", ""),
            KNOWN_DEMO_ID
        );
    }
    const KNOWN_DEMO_ID: &str =
        include_str!("../tests/fixtures/apply/applyset-id-demo.txt").trim_ascii();

    #[test]
    fn parent_lists_sorted_group_kinds_and_other_namespaces() {
        let inv = Inventory::for_cluster("c1", "kube-system");
        let gks: BTreeSet<GroupKind> = [
            "Deployment.apps",
            "ConfigMap",
            "CustomResourceDefinition.apiextensions.k8s.io",
        ]
        .iter()
        .filter_map(|s| GroupKind::parse(s))
        .collect();
        let nss: BTreeSet<String> = ["pai", "kube-system", "default"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = inv.parent_object(&gks, &nss);
        assert_eq!(
            p["metadata"]["annotations"][GROUP_KINDS_ANNOTATION],
            "ConfigMap,CustomResourceDefinition.apiextensions.k8s.io,Deployment.apps"
        );
        assert_eq!(
            p["metadata"]["annotations"][NAMESPACES_ANNOTATION],
            "default,pai"
        );
        assert_eq!(p["metadata"]["labels"][ID_LABEL], inv.id());
        assert_eq!(p["metadata"]["name"], "applyset-c1");
        let (g2, n2) = recorded(&p);
        assert_eq!(g2, gks);
        assert_eq!(n2, nss);
    }

    #[test]
    fn foreign_tooling_is_refused() {
        let inv = Inventory::for_cluster("c1", "kube-system");
        let mut p = inv.parent_object(&BTreeSet::new(), &BTreeSet::new());
        assert_eq!(inv.check_parent(&p), Ok(()));
        p["metadata"]["annotations"][TOOLING_ANNOTATION] = json!("kubectl/v1.37.2");
        assert!(matches!(
            inv.check_parent(&p),
            Err(Error::ForeignTooling { .. })
        ));
        p["metadata"]["annotations"][TOOLING_ANNOTATION] = json!("pailot/v0.1.0");
        p["metadata"]["labels"][ID_LABEL] = json!("applyset-x-v1");
        assert!(matches!(inv.check_parent(&p), Err(Error::WrongId { .. })));
    }

    #[test]
    fn members_get_both_labels() {
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        label_member(&mut o, "applyset-x-v1", "grafana");
        assert_eq!(o["metadata"]["labels"][PART_OF_LABEL], "applyset-x-v1");
        assert_eq!(o["metadata"]["labels"][CHART_LABEL], "grafana");
    }
}
