//! Prune decisions: which inventory members to delete, which to keep, and when to refuse a prune at all.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::inventory::PART_OF_LABEL;
use crate::manifest::ObjectId;

/// Annotation that lets pailot prune a protected kind (Namespace, PVC, PV, CRD) object.
pub const PRUNE_ANNOTATION: &str = "pailot.dev/prune";

/// Prune limits and overrides.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prune protected kinds too (`--prune-protected`).
    pub allow_protected: bool,
    /// Allow a prune above the mass-prune threshold (`--allow-mass-prune`).
    pub allow_mass_prune: bool,
    /// A prune is "mass" when it deletes more than this many objects…
    pub max_objects: usize,
    /// …and more than this share of the inventory.
    pub max_fraction: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_protected: false,
            allow_mass_prune: false,
            max_objects: 10,
            max_fraction: 0.25,
        }
    }
}

/// Why a prune is refused as a whole.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// Too many deletions at once. The text says what the limit is; how to allow it depends on the
    /// caller (a flag for `pailot apply`, a config key for the daemon), so the caller says that.
    #[error(
        "refusing to prune {count} of the {inventory} objects in the inventory: a prune may delete at most {max_objects} objects, or at most {pct:.0} % of the inventory"
    )]
    MassPrune {
        count: usize,
        inventory: usize,
        max_objects: usize,
        pct: f64,
    },
}

/// A live member of the inventory, as listed from the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: ObjectId,
    /// The live object's labels and annotations (`metadata`).
    pub metadata: Value,
    /// The whole live object (as listed, at the kind's preferred version).
    pub object: Value,
}

/// What happens to one member that is no longer rendered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision", content = "reason")]
pub enum Decision {
    /// Delete it.
    Delete,
    /// Keep it, for this reason (reported as `skipped`).
    Keep(String),
}

/// The prune part of a Plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunePlan {
    pub delete: Vec<ObjectId>,
    pub keep: Vec<(ObjectId, String)>,
    /// Set when the whole prune is off (empty render); the reason.
    pub disabled: Option<String>,
}

/// True for the kinds pailot never prunes without permission.
pub fn is_protected(id: &ObjectId) -> bool {
    matches!(
        (id.group.as_str(), id.kind.as_str()),
        ("", "Namespace")
            | ("", "PersistentVolumeClaim")
            | ("", "PersistentVolume")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// Identity without the version: a member listed at another version is still the same object.
fn key(id: &ObjectId) -> (String, String, Option<String>, String) {
    (
        id.group.clone(),
        id.kind.clone(),
        id.namespace.clone(),
        id.name.clone(),
    )
}

/// The chart label of a member's metadata (`pailot.dev/chart`), or "".
pub fn chart_label(metadata: &Value) -> String {
    metadata["labels"][crate::inventory::CHART_LABEL]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The chart of member `id` among `members`, or "".
pub fn chart_of(members: &[Member], id: &ObjectId) -> String {
    members
        .iter()
        .find(|m| &m.id == id)
        .map(|m| chart_label(&m.metadata))
        .unwrap_or_default()
}

/// Decide the fate of every member not in `desired`.
///
/// Guarantees: only members that still carry `part-of: <applyset_id>` are ever deleted; nothing is deleted when
/// `desired` is empty; protected kinds are kept unless allowed; a mass prune is an error unless allowed.
pub fn plan(
    applyset_id: &str,
    desired: &BTreeSet<ObjectId>,
    members: &[Member],
    config: &Config,
) -> Result<PrunePlan, Error> {
    let mut out = PrunePlan::default();
    if desired.is_empty() {
        out.disabled = Some("the render is empty; pailot never prunes everything".to_string());
        return Ok(out);
    }
    let desired: BTreeSet<_> = desired.iter().map(key).collect();
    for m in members {
        if desired.contains(&key(&m.id)) {
            continue;
        }
        if m.metadata["labels"][PART_OF_LABEL].as_str() != Some(applyset_id) {
            continue; // no longer ours: someone removed the label
        }
        if is_protected(&m.id)
            && !config.allow_protected
            && m.metadata["annotations"][PRUNE_ANNOTATION].as_str() != Some("allow")
        {
            out.keep.push((
                m.id.clone(),
                format!("{} is protected from prune (annotate {PRUNE_ANNOTATION}: allow or pass --prune-protected)", m.id.kind),
            ));
            continue;
        }
        out.delete.push(m.id.clone());
    }
    let count = out.delete.len();
    let inventory = members.len();
    if !config.allow_mass_prune
        && count > config.max_objects
        && (count as f64) > config.max_fraction * (inventory as f64)
    {
        return Err(Error::MassPrune {
            count,
            inventory,
            max_objects: config.max_objects,
            pct: config.max_fraction * 100.0,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "applyset-abc-v1";

    fn oid(kind: &str, name: &str) -> ObjectId {
        let group = if kind == "Deployment" { "apps" } else { "" };
        ObjectId {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: Some("n".into()),
            name: name.into(),
        }
    }
    fn member(kind: &str, name: &str, labels: Value, annotations: Value) -> Member {
        Member {
            id: oid(kind, name),
            metadata: json!({"labels": labels, "annotations": annotations}),
            object: Value::Null,
        }
    }
    fn ours(kind: &str, name: &str) -> Member {
        member(kind, name, json!({PART_OF_LABEL: ID}), json!({}))
    }

    #[test]
    fn deletes_only_unrendered_members_that_still_carry_the_label() {
        let desired = BTreeSet::from([oid("ConfigMap", "keep")]);
        let members = vec![
            ours("ConfigMap", "keep"),
            ours("ConfigMap", "gone"),
            member(
                "ConfigMap",
                "relabelled",
                json!({PART_OF_LABEL: "applyset-other-v1"}),
                json!({}),
            ),
            member("ConfigMap", "unlabelled", json!({}), json!({})),
        ];
        let p = plan(ID, &desired, &members, &Config::default()).unwrap();
        assert_eq!(p.delete, vec![oid("ConfigMap", "gone")]);
        assert!(p.keep.is_empty());
    }

    #[test]
    fn version_does_not_matter_for_identity() {
        let mut d = oid("Deployment", "web");
        d.version = "v1beta1".into();
        let p = plan(
            ID,
            &BTreeSet::from([d]),
            &[ours("Deployment", "web")],
            &Config::default(),
        )
        .unwrap();
        assert!(p.delete.is_empty());
    }

    #[test]
    fn empty_render_prunes_nothing() {
        let members = vec![ours("ConfigMap", "a"), ours("ConfigMap", "b")];
        let p = plan(ID, &BTreeSet::new(), &members, &Config::default()).unwrap();
        assert!(p.delete.is_empty());
        assert!(p.disabled.is_some());
    }

    #[test]
    fn protected_kinds_need_permission() {
        let desired = BTreeSet::from([oid("ConfigMap", "x")]);
        let members = vec![
            ours("Namespace", "n1"),
            ours("PersistentVolumeClaim", "data"),
            member(
                "PersistentVolumeClaim",
                "scratch",
                json!({PART_OF_LABEL: ID}),
                json!({PRUNE_ANNOTATION: "allow"}),
            ),
        ];
        let p = plan(ID, &desired, &members, &Config::default()).unwrap();
        assert_eq!(p.delete, vec![oid("PersistentVolumeClaim", "scratch")]);
        assert_eq!(p.keep.len(), 2);
        let all = plan(
            ID,
            &desired,
            &members,
            &Config {
                allow_protected: true,
                ..Config::default()
            },
        )
        .unwrap();
        assert_eq!(all.delete.len(), 3);
    }

    #[test]
    fn mass_prune_needs_both_thresholds_and_the_flag_overrides() {
        let desired = BTreeSet::from([oid("ConfigMap", "keep")]);
        // 11 of 12: above 10 and above 25 % -> refused.
        let mut members: Vec<Member> = (0..11)
            .map(|i| ours("ConfigMap", &format!("c{i}")))
            .collect();
        members.push(ours("ConfigMap", "keep"));
        let err = plan(ID, &desired, &members, &Config::default()).unwrap_err();
        assert!(matches!(
            err,
            Error::MassPrune {
                count: 11,
                inventory: 12,
                ..
            }
        ));
        // The engine says what the limit is; the caller says how to allow it (a flag or a config key).
        assert_eq!(
            err.to_string(),
            "refusing to prune 11 of the 12 objects in the inventory: a prune may delete at most 10 objects, or at most 25 % of the inventory"
        );
        assert_eq!(
            plan(
                ID,
                &desired,
                &members,
                &Config {
                    allow_mass_prune: true,
                    ..Config::default()
                }
            )
            .unwrap()
            .delete
            .len(),
            11
        );
        // 11 of 100: above 10 but only 11 % -> allowed.
        let mut big = members.clone();
        big.extend((0..88).map(|i| ours("Secret", &format!("s{i}"))));
        let desired_big: BTreeSet<ObjectId> = std::iter::once(oid("ConfigMap", "keep"))
            .chain((0..88).map(|i| oid("Secret", &format!("s{i}"))))
            .collect();
        assert_eq!(
            plan(ID, &desired_big, &big, &Config::default())
                .unwrap()
                .delete
                .len(),
            11
        );
        // 10 of 11: 91 % but not above 10 -> allowed.
        let small: Vec<Member> = members[1..].to_vec();
        assert_eq!(
            plan(ID, &desired, &small, &Config::default())
                .unwrap()
                .delete
                .len(),
            10
        );
    }
}
