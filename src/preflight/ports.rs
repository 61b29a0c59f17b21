//! Ports a machine needs free: the control plane's, plus hostPorts and hostNetwork ports of pods placed on it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cluster::{Cluster, Machine, Role};
use crate::manifest::RenderedSet;

/// Annotation marking the `kubernetes` chart's control-plane static pods.
pub use crate::manifest::STATIC_POD_ANNOTATION;

/// A TCP port this machine needs, and every reason it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredPort {
    pub port: u16,
    /// Who needs it (`kube-apiserver`, `Deployment/default/pylon hostPort`), sorted and deduplicated.
    pub needed_by: Vec<String>,
    /// Process names (`/proc/<pid>/comm`) that may legitimately hold it once the host is bootstrapped.
    pub expected_owners: Vec<String>,
}

/// The control-plane ports: (port, component, process name as `comm` shows it, k8s-master only).
fn control_plane_ports(cluster: &Cluster) -> Vec<(u16, &'static str, &'static str, bool)> {
    vec![
        (
            cluster.kubernetes.api_server_port,
            "kube-apiserver",
            "kube-apiserver",
            true,
        ),
        (2379, "etcd client", "etcd", true),
        (2380, "etcd peer", "etcd", true),
        (10250, "kubelet", "kubelet", false),
        // comm is cut to 15 characters.
        (10257, "kube-controller-manager", "kube-controller", true),
        (10259, "kube-scheduler", "kube-scheduler", true),
    ]
}

/// Every port `machine` needs free before bootstrap (see module doc), in port order.
///
/// Placement is judged from the pod spec alone: a static pod lands on k8s-master machines; other pods
/// land here unless `nodeName` names another machine or the `nodeSelector` / required node affinity
/// rule it out (`budget::node_matches`). Taints are not evaluated (a pod that could land here counts).
pub fn required_ports(
    cluster: &Cluster,
    machine: &Machine,
    set: &RenderedSet,
) -> Vec<RequiredPort> {
    let mut ports: BTreeMap<u16, (Vec<String>, Vec<String>)> = BTreeMap::new();
    // An adopted control plane and its kubelets are already running, under names pailot cannot know.
    let external = cluster.control_plane == crate::cluster::ControlPlane::External;
    for (port, what, comm, master_only) in control_plane_ports(cluster) {
        if external || (master_only && !machine.has(Role::K8sMaster)) {
            continue;
        }
        let e = ports.entry(port).or_default();
        e.0.push(what.to_string());
        e.1.push(comm.to_string());
    }
    for (id, rendered) in &set.objects {
        let obj = &rendered.object;
        let Some(spec) = pod_spec(&id.kind, obj) else {
            continue;
        };
        let is_static = crate::manifest::is_static_pod(obj);
        if is_static {
            if !machine.has(Role::K8sMaster) {
                continue;
            }
        } else {
            let elsewhere = spec
                .get("nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| n != machine.name);
            if elsewhere || !crate::budget::node_matches(spec, machine) {
                continue;
            }
        }
        let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
        let containers = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec.get(*k).and_then(Value::as_array))
            .flatten();
        for c in containers {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                if proto != "TCP" {
                    continue;
                }
                let port = match (p.get("hostPort").and_then(Value::as_u64), host_network) {
                    (Some(hp), _) => Some((hp, "hostPort")),
                    (None, true) => p
                        .get("containerPort")
                        .and_then(Value::as_u64)
                        .map(|cp| (cp, "hostNetwork")),
                    _ => None,
                };
                let Some((port, how)) = port else { continue };
                let Ok(port) = u16::try_from(port) else {
                    continue;
                };
                if port == 0 {
                    continue;
                }
                ports
                    .entry(port)
                    .or_default()
                    .0
                    .push(format!("{id} container {cname} {how}"));
                if is_static {
                    // The static pod's own process holds it once bootstrapped; its comm is the command name.
                    if let Some(cmd) = c.pointer("/command/0").and_then(Value::as_str) {
                        let comm: String = cmd
                            .rsplit('/')
                            .next()
                            .unwrap_or(cmd)
                            .chars()
                            .take(15)
                            .collect();
                        ports.entry(port).or_default().1.push(comm);
                    }
                }
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, (mut needed_by, mut expected_owners))| {
            needed_by.sort();
            needed_by.dedup();
            expected_owners.sort();
            expected_owners.dedup();
            RequiredPort {
                port,
                needed_by,
                expected_owners,
            }
        })
        .collect()
}

/// The pod spec of a workload object, if it has one.
fn pod_spec<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    let ptr = match kind {
        "Pod" => "/spec",
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return None,
    };
    obj.pointer(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ObjectId, RenderedObject};
    use serde_json::json;

    fn cluster(roles: &str) -> Cluster {
        let text = format!(
            "apiVersion: pailot.dev/v1\nkind: Cluster\nname: t\nmachines:\n  - name: n1\n    address: 10.0.0.1\n    roles: [{roles}]\n    capacity: {{memory: 16Gi, cpu: \"4\"}}\n"
        );
        serde_saphyr::from_str(&text).unwrap()
    }

    fn set(objs: Vec<Value>) -> RenderedSet {
        let mut s = RenderedSet::default();
        for o in objs {
            let id = ObjectId::of(&o).unwrap();
            s.objects.insert(
                id,
                RenderedObject {
                    chart: "c".into(),
                    template: "t".into(),
                    object: o,
                },
            );
        }
        s
    }

    fn deployment(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
               "spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn worker_needs_kubelet_and_placed_host_ports_only() {
        let c = cluster("pai-worker");
        let s = set(vec![
            deployment(
                "a",
                json!({"nodeSelector": {"pai-worker": "true"},
                "containers": [{"name": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
            ),
            deployment(
                "b",
                json!({"nodeSelector": {"pai-master": "true"}, "hostNetwork": true,
                "containers": [{"name": "y", "ports": [{"containerPort": 9090}]}]}),
            ),
            deployment(
                "c",
                json!({"hostNetwork": true,
                "containers": [{"name": "z", "ports": [{"containerPort": 9100}, {"containerPort": 53, "protocol": "UDP"}]}]}),
            ),
            deployment(
                "d",
                json!({"containers": [{"name": "w", "ports": [{"containerPort": 3000}]}]}),
            ),
        ]);
        let ports: Vec<u16> = required_ports(&c, &c.machines[0], &s)
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, vec![8080, 9100, 10250]);
    }

    #[test]
    fn static_pods_count_on_masters_with_their_process_as_owner() {
        let c = cluster("k8s-master, pai-master");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "etcd", "namespace": "kube-system", "annotations": {STATIC_POD_ANNOTATION: "true"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "etcd", "command": ["etcd", "--x"],
                "ports": [{"containerPort": 2381}]}]}});
        let r = required_ports(&c, &c.machines[0], &set(vec![pod.clone()]));
        let p: Vec<u16> = r.iter().map(|p| p.port).collect();
        assert_eq!(p, vec![2379, 2380, 2381, 6443, 10250, 10257, 10259]);
        assert_eq!(r[2].expected_owners, vec!["etcd".to_string()]);
        let w = cluster("pai-worker");
        let r = required_ports(&w, &w.machines[0], &set(vec![pod]));
        assert_eq!(r.iter().map(|p| p.port).collect::<Vec<_>>(), vec![10250]);
    }
}
