//! The Plan: a RenderedSet split into stages and charts, the chart `dependsOn` graph checked for cycles,
//! and the objects that are never applied through the API (bootstrap static pods).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::order::{Stage, kind_rank};
use crate::manifest::{ObjectId, RenderedObject, RenderedSet};

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
    /// Split `set` into stages and charts; fails on a dependency cycle before anything is applied.
    pub fn new(set: &RenderedSet) -> Result<Plan, Error> {
        let order = chart_order(set)?;
        let mut plan = Plan::default();
        let mut by_chart: BTreeMap<String, Vec<PlannedObject>> = BTreeMap::new();
        for (
            id,
            RenderedObject {
                chart,
                template,
                object,
            },
        ) in &set.objects
        {
            let p = PlannedObject {
                id: id.clone(),
                chart: chart.clone(),
                template: template.clone(),
                object: object.clone(),
            };
            if is_static_pod(object) {
                plan.skipped.push(p);
                continue;
            }
            match Stage::of(id) {
                Stage::ClusterDefinitions => plan.cluster_definitions.push(p),
                Stage::Classes => plan.classes.push(p),
                Stage::Workloads => by_chart.entry(chart.clone()).or_default().push(p),
            }
        }
        // CRDs, then Namespaces, then cluster RBAC.
        plan.cluster_definitions
            .sort_by_key(|p| (definition_rank(&p.id), p.id.clone()));
        for name in order {
            let depends_on = set
                .charts
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.depends_on.clone())
                .unwrap_or_default();
            let mut objects = by_chart.remove(&name).unwrap_or_default();
            objects.sort_by_key(|p| (kind_rank(&p.id.kind), p.id.clone()));
            plan.charts.push(ChartPlan {
                name,
                depends_on,
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
        Ok(plan)
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

    /// Every chart name, including charts with objects only in the early stages.
    pub fn chart_names(&self) -> BTreeSet<String> {
        self.all_objects()
            .map(|o| o.chart.clone())
            .chain(self.charts.iter().map(|c| c.name.clone()))
            .collect()
    }
}

fn definition_rank(id: &ObjectId) -> u8 {
    match id.kind.as_str() {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        _ => 2,
    }
}

/// Charts in dependency order (dependencies first; ties in the render's order), or the first cycle found.
pub fn chart_order(set: &RenderedSet) -> Result<Vec<String>, Error> {
    let names: Vec<&str> = set.charts.iter().map(|c| c.name.as_str()).collect();
    let deps: BTreeMap<&str, Vec<&str>> = set
        .charts
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    for c in &set.charts {
        for d in &c.depends_on {
            if !deps.contains_key(d.as_str()) {
                return Err(Error::MissingDependency {
                    chart: c.name.clone(),
                    missing: d.clone(),
                });
            }
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = names.iter().map(|n| (*n, Mark::New)).collect();
    let mut out = Vec::new();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<String>,
    ) -> Result<(), Error> {
        match mark[n] {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Err(Error::Cycle(cycle));
            }
            Mark::New => {}
        }
        mark.insert(n, Mark::Active);
        stack.push(n);
        for d in &deps[n] {
            visit(d, deps, mark, stack, out)?;
        }
        stack.pop();
        mark.insert(n, Mark::Done);
        out.push(n.to_string());
        Ok(())
    }
    for n in &names {
        visit(n, &deps, &mut mark, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
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
        let err = Plan::new(&s).unwrap_err();
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
            Plan::new(&s).unwrap_err(),
            Error::Cycle(vec!["a".into(), "a".into()])
        );
    }

    #[test]
    fn missing_dependency_is_named() {
        let s = set(&[("a", &["nope"])], &[]);
        assert!(matches!(
            Plan::new(&s).unwrap_err(),
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
        let plan = Plan::new(&s).unwrap();
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
