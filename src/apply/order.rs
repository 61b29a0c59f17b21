//! Apply stages: which kinds go first (CRDs, Namespaces, cluster RBAC), which wait for CRDs, and the rest.

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
    fn config_goes_before_workloads() {
        assert!(kind_rank("ConfigMap") < kind_rank("Deployment"));
        assert!(kind_rank("ServiceAccount") < kind_rank("StatefulSet"));
        assert!(kind_rank("Service") < kind_rank("Deployment"));
        assert!(kind_rank("Deployment") < kind_rank("SomeCustomKind"));
    }
}
