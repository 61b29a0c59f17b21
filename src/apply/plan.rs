//! The Plan: a RenderedSet labelled as members of one inventory, split into stages and charts, the chart
//! `dependsOn` graph checked for cycles, and the objects never applied through the API (bootstrap static pods).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::diff;
use crate::inventory::{self, GroupKind, Inventory};
use crate::manifest::{ChartInfo, ObjectId, RenderedObject, RenderedSet};
use crate::order::{Stage, kind_rank};

/// Annotation that marks an object bootstrap writes as a static pod manifest; pailot never applies it.
pub use crate::manifest::{STATIC_POD_ANNOTATION, is_static_pod};

/// Why a RenderedSet cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The charts' `dependsOn` form a cycle; the cycle is spelled out `a -> b -> a`.
    #[error("chart dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A chart depends on a chart that is not part of the render.
    #[error("chart {chart:?} depends on {missing:?}, which is not part of this render")]
    MissingDependency { chart: String, missing: String },
}

/// One object to apply, in the chart and stage it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedObject {
    pub id: ObjectId,
    pub chart: String,
    pub template: String,
    pub object: Value,
}

/// A chart's share of the workload stage, with the charts it waits for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChartPlan {
    pub name: String,
    pub depends_on: Vec<String>,
    #[serde(skip)]
    pub objects: Vec<PlannedObject>,
}

/// What one apply will do, decided before touching the cluster.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Objects of the cluster-definitions stage (all charts), in apply order.
    pub cluster_definitions: Vec<PlannedObject>,
    /// Objects of the classes stage (all charts).
    pub classes: Vec<PlannedObject>,
    /// Charts in a dependency-respecting order, each with its workload objects.
    pub charts: Vec<ChartPlan>,
    /// Objects that are never applied through the API (static pods), reported as skipped.
    pub skipped: Vec<PlannedObject>,
}

impl Plan {
    /// Split `set` into stages and charts, each object labelled as a member of `inv` and stamped with
    /// the hash of what is applied; fails on a dependency cycle before anything is applied.
    pub fn new(set: &RenderedSet, inv: &Inventory) -> Result<Plan, Error> {
        let order = chart_order(set)?;
        let applyset_id = inv.id();
        let objects = set.objects.iter().map(
            |(
                id,
                RenderedObject {
                    chart,
                    template,
                    object,
                },
            )| {
                let mut object = object.clone();
                prepare(&mut object, &applyset_id, chart);
                PlannedObject {
                    id: id.clone(),
                    chart: chart.clone(),
                    template: template.clone(),
                    object,
                }
            },
        );
        let charts: Vec<ChartInfo> = order
            .iter()
            .filter_map(|n| set.charts.iter().find(|c| &c.name == n).cloned())
            .collect();
        Ok(Plan::from_objects(objects, &charts))
    }

    /// A plan of objects already prepared (labelled and stamped), with `charts` in the order to
    /// apply them: what `new` builds, and what a kept plan is thawed into.
    pub fn from_objects(
        objects: impl IntoIterator<Item = PlannedObject>,
        charts: &[ChartInfo],
    ) -> Plan {
        let mut plan = Plan::default();
        let mut by_chart: BTreeMap<String, Vec<PlannedObject>> = BTreeMap::new();
        for p in objects {
            if is_static_pod(&p.object) {
                plan.skipped.push(p);
                continue;
            }
            match Stage::of(&p.id) {
                Stage::ClusterDefinitions => plan.cluster_definitions.push(p),
                Stage::Classes => plan.classes.push(p),
                Stage::Workloads => by_chart.entry(p.chart.clone()).or_default().push(p),
            }
        }
        // CRDs, then Namespaces, then cluster RBAC.
        plan.cluster_definitions
            .sort_by_key(|p| (crate::order::rank(&p.id), p.id.clone()));
        plan.classes.sort_by_key(|p| p.id.clone());
        for c in charts {
            let mut objects = by_chart.remove(&c.name).unwrap_or_default();
            objects.sort_by_key(|p| (kind_rank(&p.id.kind), p.id.clone()));
            plan.charts.push(ChartPlan {
                name: c.name.clone(),
                depends_on: c.depends_on.clone(),
                objects,
            });
        }
        // Objects of a chart missing from `charts` still get applied, after the known ones.
        for (name, mut objects) in by_chart {
            objects.sort_by_key(|p| (kind_rank(&p.id.kind), p.id.clone()));
            plan.charts.push(ChartPlan {
                name,
                depends_on: Vec::new(),
                objects,
            });
        }
        plan
    }

    /// Every object that will be applied, in plan order.
    pub fn applied_objects(&self) -> impl Iterator<Item = &PlannedObject> {
        self.cluster_definitions
            .iter()
            .chain(&self.classes)
            .chain(self.charts.iter().flat_map(|c| &c.objects))
    }

    /// Every object the render holds, applied or skipped.
    pub fn all_objects(&self) -> impl Iterator<Item = &PlannedObject> {
        self.applied_objects().chain(&self.skipped)
    }

    /// Group kinds and namespaces of the objects applied through the API (what the parent records).
    pub fn scope(&self) -> (BTreeSet<GroupKind>, BTreeSet<String>) {
        let mut gks = BTreeSet::new();
        let mut nss = BTreeSet::new();
        for o in self.applied_objects() {
            gks.insert(GroupKind::of(&o.id));
            if let Some(ns) = &o.id.namespace {
                nss.insert(ns.clone());
            }
        }
        (gks, nss)
    }

    /// Every chart name, including charts with objects only in the early stages.
    pub fn chart_names(&self) -> BTreeSet<String> {
        self.all_objects()
            .map(|o| o.chart.clone())
            .chain(self.charts.iter().map(|c| c.name.clone()))
            .collect()
    }
}

/// Label an object as a member of the ApplySet and stamp the hash of what is applied.
fn prepare(object: &mut Value, applyset_id: &str, chart: &str) {
    inventory::label_member(object, applyset_id, chart);
    let hash = diff::desired_hash(object);
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(ann) = ann.as_object_mut() {
            ann.insert(diff::DESIRED_HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
}

/// Charts in dependency order (dependencies first; ties in the render's order), or the first cycle found.
pub fn chart_order(set: &RenderedSet) -> Result<Vec<String>, Error> {
    for c in &set.charts {
        for d in &c.depends_on {
            if !set.charts.iter().any(|o| &o.name == d) {
                return Err(Error::MissingDependency {
                    chart: c.name.clone(),
                    missing: d.clone(),
                });
            }
        }
    }
    let nodes: Vec<(&str, Vec<&str>)> = set
        .charts
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let order = crate::order::dependency_sort(&nodes).map_err(|c| Error::Cycle(c.0))?;
    Ok(order.into_iter().map(|i| nodes[i].0.to_string()).collect())
}

/// Charts that depend, directly or not, on `chart` (used for uninstall order and failure propagation).
pub fn dependents(plan: &Plan, chart: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for c in &plan.charts {
            if !out.contains(&c.name) && c.depends_on.iter().any(|d| d == chart || out.contains(d))
            {
                out.insert(c.name.clone());
                changed = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_inventory() -> Inventory {
        Inventory::for_cluster("t", "default")
    }
    use crate::manifest::ChartInfo;
    use serde_json::json;

    fn set(charts: &[(&str, &[&str])], objects: &[(&str, Value)]) -> RenderedSet {
        let mut s = RenderedSet::default();
        for (n, d) in charts {
            s.charts.push(ChartInfo {
                name: n.to_string(),
                version: "1.0.0".into(),
                depends_on: d.iter().map(|x| x.to_string()).collect(),
            });
        }
        for (chart, obj) in objects {
            s.objects.insert(
                ObjectId::of(obj).unwrap(),
                RenderedObject {
                    chart: chart.to_string(),
                    template: format!("charts/{chart}/templates/a.yaml"),
                    object: obj.clone(),
                },
            );
        }
        s
    }

    #[test]
    fn cycle_is_spelled_out() {
        let s = set(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])], &[]);
        let err = Plan::new(&s, &test_inventory()).unwrap_err();
        assert_eq!(
            err,
            Error::Cycle(vec!["a".into(), "c".into(), "b".into(), "a".into()])
        );
        assert_eq!(err.to_string(), "chart dependency cycle: a -> c -> b -> a");
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let s = set(&[("a", &["a"])], &[]);
        assert_eq!(
            Plan::new(&s, &test_inventory()).unwrap_err(),
            Error::Cycle(vec!["a".into(), "a".into()])
        );
    }

    #[test]
    fn missing_dependency_is_named() {
        let s = set(&[("a", &["nope"])], &[]);
        assert!(matches!(
            Plan::new(&s, &test_inventory()).unwrap_err(),
            Error::MissingDependency { .. }
        ));
    }

    #[test]
    fn dependencies_come_first_and_objects_are_staged() {
        let s = set(
            &[("web", &["db"]), ("db", &[]), ("crds", &[])],
            &[
                (
                    "web",
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "n"}}),
                ),
                (
                    "web",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "n"}}),
                ),
                (
                    "db",
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}),
                ),
                (
                    "crds",
                    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "xs.example.com"}}),
                ),
                (
                    "crds",
                    json!({"apiVersion": "example.com/v1", "kind": "X", "metadata": {"name": "x1", "namespace": "n"}}),
                ),
                (
                    "db",
                    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}}),
                ),
                (
                    "db",
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "apiserver", "namespace": "kube-system", "annotations": {"pailot.dev/static-pod": "true"}}}),
                ),
            ],
        );
        let plan = Plan::new(&s, &test_inventory()).unwrap();
        let names: Vec<&str> = plan.charts.iter().map(|c| c.name.as_str()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("db") < pos("web"));
        let defs: Vec<&str> = plan
            .cluster_definitions
            .iter()
            .map(|o| o.id.kind.as_str())
            .collect();
        assert_eq!(defs, ["CustomResourceDefinition", "Namespace"]);
        assert_eq!(plan.classes.len(), 1);
        let web = &plan.charts[pos("web")];
        let kinds: Vec<&str> = web.objects.iter().map(|o| o.id.kind.as_str()).collect();
        assert_eq!(kinds, ["ConfigMap", "Deployment"]);
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].id.name, "apiserver");
        assert_eq!(plan.applied_objects().count(), 6);
        assert_eq!(dependents(&plan, "db"), BTreeSet::from(["web".to_string()]));
    }
}
