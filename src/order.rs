//! The one order of objects and charts, shared by render output and apply: the stage table, kind ranks, and the chart dependency sort.

use serde::Serialize;

use crate::manifest::ObjectId;

/// The stage an object is applied in; stages run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// CRDs, Namespaces, ClusterRoles and ClusterRoleBindings: applied first, for every chart at once.
    ClusterDefinitions,
    /// `*Class` kinds (StorageClass, PriorityClass, IngressClass, RuntimeClass…): after the CRDs are Established.
    Classes,
    /// Everything else, chart by chart along the `dependsOn` graph.
    Workloads,
}

impl Stage {
    /// The stage of `id`.
    pub fn of(id: &ObjectId) -> Stage {
        match (id.group.as_str(), id.kind.as_str()) {
            ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("", "Namespace")
            | ("rbac.authorization.k8s.io", "ClusterRole")
            | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => Stage::ClusterDefinitions,
            (_, kind) if kind.ends_with("Class") => Stage::Classes,
            _ => Stage::Workloads,
        }
    }

    /// Short name used in messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ClusterDefinitions => "cluster-definitions",
            Stage::Classes => "classes",
            Stage::Workloads => "workloads",
        }
    }
}

/// True for a CRD (the applier waits for it to be Established before the next stage).
pub fn is_crd(id: &ObjectId) -> bool {
    id.group == "apiextensions.k8s.io" && id.kind == "CustomResourceDefinition"
}

/// Position of `id` in the stage table: CRDs, Namespaces, cluster RBAC, `*Class` kinds, everything else.
/// Render output and apply both sort by it (within the cluster-definitions stage it is the apply order).
pub fn rank(id: &ObjectId) -> u8 {
    match Stage::of(id) {
        Stage::ClusterDefinitions if is_crd(id) => 0,
        Stage::ClusterDefinitions if id.kind == "Namespace" => 1,
        Stage::ClusterDefinitions => 2,
        Stage::Classes => 3,
        Stage::Workloads => 4,
    }
}

/// A cycle in a dependency graph, spelled from the first node back to it (`a -> b -> a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle(pub Vec<String>);

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" -> "))
    }
}

/// Sort `nodes` (name, dependencies) so that every node comes after its dependencies; among nodes that
/// are ready at the same time, the one listed first goes first. Dependencies on names not in `nodes` are
/// ignored (the caller decides whether that is an error); a node that depends on itself is a cycle.
/// The result holds indices into `nodes`.
pub fn dependency_sort(nodes: &[(&str, Vec<&str>)]) -> Result<Vec<usize>, Cycle> {
    let index: std::collections::HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|(_, d)| d.iter().filter_map(|x| index.get(x).copied()).collect())
        .collect();
    let mut done = vec![false; nodes.len()];
    let mut out = Vec::with_capacity(nodes.len());
    while out.len() < nodes.len() {
        let next = (0..nodes.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        let Some(i) = next else {
            // Every remaining node waits on another remaining one: walk until a node repeats.
            let start = (0..nodes.len())
                .find(|&i| !done[i])
                .expect("a node remains");
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = *deps[cur]
                    .iter()
                    .find(|&&d| !done[d])
                    .expect("a remaining node waits on another");
                if let Some(pos) = path.iter().position(|&p| p == next) {
                    let mut cycle: Vec<String> = path[pos..]
                        .iter()
                        .map(|&p| nodes[p].0.to_string())
                        .collect();
                    cycle.push(nodes[next].0.to_string());
                    return Err(Cycle(cycle));
                }
                path.push(next);
                cur = next;
            }
        };
        done[i] = true;
        out.push(i);
    }
    Ok(out)
}

/// Order inside one chart's workload stage: config and identity before the things that use them
/// (Helm's install order, shortened), then by identity.
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "ResourceQuota" | "LimitRange" | "PodSecurityPolicy" | "PodDisruptionBudget" => 0,
        "ServiceAccount" | "Secret" | "ConfigMap" => 1,
        "PersistentVolume" | "PersistentVolumeClaim" => 2,
        "Role" | "RoleBinding" => 3,
        "Service" => 4,
        "DaemonSet" | "Pod" | "ReplicaSet" | "Deployment" | "StatefulSet" => 5,
        "Job" | "CronJob" => 6,
        "Ingress" | "APIService" => 7,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(group: &str, kind: &str) -> ObjectId {
        ObjectId {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: None,
            name: "x".into(),
        }
    }

    #[test]
    fn stages_follow_the_applier_invariants() {
        assert_eq!(
            Stage::of(&id("apiextensions.k8s.io", "CustomResourceDefinition")),
            Stage::ClusterDefinitions
        );
        assert_eq!(Stage::of(&id("", "Namespace")), Stage::ClusterDefinitions);
        assert_eq!(
            Stage::of(&id("rbac.authorization.k8s.io", "ClusterRole")),
            Stage::ClusterDefinitions
        );
        assert_eq!(
            Stage::of(&id("rbac.authorization.k8s.io", "ClusterRoleBinding")),
            Stage::ClusterDefinitions
        );
        assert_eq!(
            Stage::of(&id("storage.k8s.io", "StorageClass")),
            Stage::Classes
        );
        assert_eq!(
            Stage::of(&id("scheduling.k8s.io", "PriorityClass")),
            Stage::Classes
        );
        assert_eq!(
            Stage::of(&id("rbac.authorization.k8s.io", "Role")),
            Stage::Workloads
        );
        assert_eq!(Stage::of(&id("apps", "Deployment")), Stage::Workloads);
        assert!(Stage::ClusterDefinitions < Stage::Classes && Stage::Classes < Stage::Workloads);
    }

    #[test]
    fn dependencies_first_ties_in_input_order_and_cycles_spelled_out() {
        let nodes = vec![("web", vec!["db"]), ("db", vec![]), ("cache", vec![])];
        assert_eq!(dependency_sort(&nodes).unwrap(), vec![1, 0, 2]);
        let cyc = vec![
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec![]),
        ];
        assert_eq!(
            dependency_sort(&cyc).unwrap_err().to_string(),
            "a -> b -> c -> a"
        );
        // Unknown dependencies are ignored; depending on oneself is a cycle.
        assert_eq!(dependency_sort(&[("x", vec!["nope"])]).unwrap(), vec![0]);
        assert_eq!(
            dependency_sort(&[("x", vec!["x"])])
                .unwrap_err()
                .to_string(),
            "x -> x"
        );
    }

    #[test]
    fn rank_follows_the_stage_table() {
        let r = |g: &str, k: &str| rank(&id(g, k));
        assert!(r("apiextensions.k8s.io", "CustomResourceDefinition") < r("", "Namespace"));
        assert!(r("", "Namespace") < r("rbac.authorization.k8s.io", "ClusterRole"));
        assert!(
            r("rbac.authorization.k8s.io", "ClusterRole") < r("scheduling.k8s.io", "PriorityClass")
        );
        assert!(r("node.k8s.io", "RuntimeClass") < r("apps", "Deployment"));
        assert_eq!(
            r("rbac.authorization.k8s.io", "Role"),
            r("apps", "Deployment")
        );
    }

    #[test]
    fn config_goes_before_workloads() {
        assert!(kind_rank("ConfigMap") < kind_rank("Deployment"));
        assert!(kind_rank("ServiceAccount") < kind_rank("StatefulSet"));
        assert!(kind_rank("Service") < kind_rank("Deployment"));
        assert!(kind_rank("Deployment") < kind_rank("SomeCustomKind"));
    }
}
