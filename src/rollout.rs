//! Rollout feasibility: host-port workloads whose update strategy needs more machines than can take them.
//!
//! A pod that binds host ports (`hostNetwork: true`, or a container port with `hostPort`) fits at most
//! once per machine. A Deployment's RollingUpdate starts `maxSurge` new pods before it stops old ones
//! (defaults: `maxSurge: 25%` rounded up, so 1 for one replica), and a DaemonSet with `maxSurge > 0`
//! starts the new pod beside the old one on the same node. When the machines a workload may run on
//! cannot hold `replicas + surge` of its pods, the surge pod never gets its port and the rollout
//! stalls: on one node every template change deadlocks. `pailot lint` reports these as warnings.

use serde_json::Value;

use crate::budget::node_matches;
use crate::cluster::Cluster;
use crate::manifest::RenderedSet;

/// One workload that cannot roll out (or not even run) on the cluster's machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutWarning {
    /// `Kind/namespace/name`.
    pub object: String,
    pub chart: String,
    /// What goes wrong and what to change, as a sentence.
    pub message: String,
}

/// Whether a pod spec binds host ports: host networking, or any container port with a `hostPort`.
pub fn uses_host_ports(spec: &Value) -> bool {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return true;
    }
    ["containers", "initContainers"].iter().any(|k| {
        spec.get(*k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("ports").and_then(Value::as_array))
            .flatten()
            .any(|p| p.get("hostPort").and_then(Value::as_u64).unwrap_or(0) > 0)
    })
}

/// An `IntOrString` rollout bound resolved against `total` (`25%` of 3 is 1 rounded up, as the
/// Deployment controller rounds `maxSurge`).
fn resolve_surge(v: Option<&Value>, default_percent: u64, total: u64) -> u64 {
    let percent = |p: u64| (p * total).div_ceil(100);
    match v {
        None => percent(default_percent),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => match s.strip_suffix('%').map(str::parse::<u64>) {
            Some(Ok(p)) => percent(p),
            _ => s.parse().unwrap_or(0),
        },
        Some(_) => 0,
    }
}

/// The surge of a Deployment (`Recreate`: none) or DaemonSet (default none) update.
fn surge(kind: &str, obj: &Value, replicas: u64) -> u64 {
    let (strategy, default_percent) = match kind {
        "Deployment" => (obj.pointer("/spec/strategy"), 25),
        "DaemonSet" => (obj.pointer("/spec/updateStrategy"), 0),
        _ => return 0,
    };
    let kind_of = strategy.and_then(|s| s.get("type")).and_then(Value::as_str);
    if matches!(kind_of, Some("Recreate" | "OnDelete")) {
        return 0;
    }
    let bound = strategy.and_then(|s| s.pointer("/rollingUpdate/maxSurge"));
    resolve_surge(bound, default_percent, replicas)
}

/// Host-port workloads of `set` that cannot roll out on `cluster`'s machines.
pub fn check(cluster: &Cluster, set: &RenderedSet) -> Vec<RolloutWarning> {
    let mut out = Vec::new();
    for (id, ro) in &set.objects {
        let obj = &ro.object;
        let Some(spec) = obj.pointer("/spec/template/spec") else {
            continue;
        };
        if !matches!(id.kind.as_str(), "Deployment" | "DaemonSet") || !uses_host_ports(spec) {
            continue;
        }
        let eligible: Vec<&str> = cluster
            .machines
            .iter()
            .filter(|m| node_matches(spec, m))
            .map(|m| m.name.as_str())
            .collect();
        if eligible.is_empty() {
            // `budget` reports pods no machine can take.
            continue;
        }
        let how = if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            "hostNetwork"
        } else {
            "hostPort"
        };
        let fix = "use `strategy: {type: Recreate}` or \
                   `rollingUpdate: {maxSurge: 0, maxUnavailable: 1}`";
        let message = if id.kind == "DaemonSet" {
            let surge = surge("DaemonSet", obj, eligible.len() as u64);
            if surge == 0 {
                continue;
            }
            format!(
                "binds host ports ({how}) and updates with maxSurge {surge}: the new pod is started \
                 beside the old one on the same machine, never gets the port, and the rollout stalls; \
                 use `updateStrategy: {{rollingUpdate: {{maxSurge: 0, maxUnavailable: 1}}}}`"
            )
        } else {
            let replicas = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let surge = surge("Deployment", obj, replicas);
            let machines = format!(
                "{} machine{} ({})",
                eligible.len(),
                if eligible.len() == 1 { "" } else { "s" },
                eligible.join(", ")
            );
            if replicas > eligible.len() as u64 {
                format!(
                    "binds host ports ({how}) and asks for {replicas} replicas, but only {machines} \
                     can take it: at most one pod per machine ever runs"
                )
            } else if replicas + surge > eligible.len() as u64 {
                format!(
                    "binds host ports ({how}) and rolls out with maxSurge {surge} over {replicas} \
                     replica{}: a rollout needs {} machines, but only {machines} can take it, so the \
                     new pod never gets the port and the rollout stalls; {fix}",
                    if replicas == 1 { "" } else { "s" },
                    replicas + surge
                )
            } else {
                continue;
            }
        };
        out.push(RolloutWarning {
            object: id.display_name(),
            chart: ro.chart.clone(),
            message,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn surge_defaults_and_rounding() {
        let d = |s: Value| json!({"spec": {"strategy": s}});
        assert_eq!(surge("Deployment", &json!({"spec": {}}), 1), 1);
        assert_eq!(surge("Deployment", &json!({"spec": {}}), 4), 1);
        assert_eq!(surge("Deployment", &json!({"spec": {}}), 5), 2);
        assert_eq!(surge("Deployment", &d(json!({"type": "Recreate"})), 3), 0);
        assert_eq!(
            surge(
                "Deployment",
                &d(json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})),
                1
            ),
            0
        );
        assert_eq!(
            surge(
                "Deployment",
                &d(json!({"rollingUpdate": {"maxSurge": "50%"}})),
                3
            ),
            2
        );
        assert_eq!(surge("DaemonSet", &json!({"spec": {}}), 3), 0);
        assert_eq!(
            surge(
                "DaemonSet",
                &json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}),
                3
            ),
            1
        );
    }

    #[test]
    fn host_ports_from_host_network_or_host_port() {
        assert!(uses_host_ports(&json!({"hostNetwork": true})));
        assert!(uses_host_ports(
            &json!({"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080}]}]})
        ));
        assert!(!uses_host_ports(
            &json!({"containers": [{"ports": [{"containerPort": 80}]}]})
        ));
    }
}
