//! Host-port workloads roll out on one node: a template change completes with the chart's update strategy
//! (real scheduler, which refuses a second pod on a taken host port; kwok plays the kubelet).

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::Api;
use ::kube::api::{ListParams, Patch, PatchParams};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::kube::{TestNamespace, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const TAINT: &str = "pailot.test/rollout";

/// The Deployments of `clusters/single-node.yaml` that bind host ports, keyed by name.
fn host_port_deployments() -> BTreeMap<String, Value> {
    let req = pailot::render::RenderRequest {
        repo_root: crate::harness::repo_root(),
        cluster_file: "clusters/single-node.yaml".into(),
        overlays: None,
        revision: None,
        // The shipped clusters read clusters/example.secrets.sops.yaml, encrypted to the test key.
        age_keys: pailot::sops::AgeKeys::File(
            crate::harness::repo_root().join("tests/fixtures/sops/test-key.txt"),
        ),
    };
    let (_, set) = pailot::render::render(&req).unwrap_or_else(|e| panic!("{e}"));
    set.objects
        .into_iter()
        .filter(|(id, ro)| {
            id.kind == "Deployment"
                && ro
                    .object
                    .pointer("/spec/template/spec")
                    .is_some_and(pailot::rollout::uses_host_ports)
        })
        .map(|(id, ro)| (id.name, ro.object))
        .collect()
}

/// `obj` moved into the test namespace and pinned to `node` (which only it tolerates), with what a
/// namespace of its own lacks (service accounts, pull secrets) left out: the pod spec keeps its host
/// network, ports and update strategy.
fn pinned(mut obj: Value, ns: &str, node: &str, name: &str) -> Value {
    obj["metadata"] = json!({"name": name, "namespace": ns});
    let spec = &mut obj["spec"]["template"]["spec"];
    let spec = spec.as_object_mut().unwrap();
    spec.remove("affinity");
    spec.remove("serviceAccountName");
    spec.remove("imagePullSecrets");
    spec.remove("priorityClassName");
    spec.insert(
        "nodeSelector".into(),
        json!({"kubernetes.io/hostname": node}),
    );
    spec.insert(
        "tolerations".into(),
        json!([{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}]),
    );
    obj
}

async fn fake_node(ns: &TestNamespace, name: &str) {
    ns.create_fake_node(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": TAINT, "value": ns.name, "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}
        }
    }))
    .await;
    let nodes = Api::<Node>::all(ns.client.clone());
    wait_for(&format!("node {name} Ready"), WAIT, || async {
        let n = nodes.get(name).await.map_err(|e| e.to_string())?;
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            Ok(())
        } else {
            Err(format!("{:?}", n.status))
        }
    })
    .await;
}

/// Whether the Deployment finished rolling out its current template: every replica updated and
/// available, no old replica left.
fn rolled_out(d: &Deployment) -> Result<(), String> {
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if st.observed_generation.unwrap_or(0) >= generation
        && st.updated_replicas == Some(want)
        && st.available_replicas == Some(want)
        && st.replicas == Some(want)
    {
        Ok(())
    } else {
        Err(format!("generation {generation}, status {st:?}"))
    }
}

async fn restart(api: &Api<Deployment>, name: &str) {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "pailot.test/restarted": "1"
    }}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("change the template of {name}: {e}"));
}

#[test]
fn shipped_clusters_lint_without_rollout_warnings() {
    let r = crate::harness::pailot(&["lint"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let warnings: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[tokio::test]
async fn host_port_deployments_roll_out_on_one_node() {
    let deployments = host_port_deployments();
    for want in [
        "prometheus-deployment",
        "grafana",
        "alertmanager",
        "watchdog",
        "kubernetes-dashboard",
    ] {
        assert!(
            deployments.contains_key(want),
            "{want} is not a host-port Deployment of the render: {:?}",
            deployments.keys()
        );
    }
    let Some(ns) = TestNamespace::new("rollout").await else {
        return;
    };
    // One node for the charts' Deployments as rendered, one for a control copy of prometheus with
    // the RollingUpdate default (maxSurge 25% = 1): proof that the scheduler really refuses a second
    // pod on a taken host port here, so the charts' rollouts pass for the right reason.
    let node = format!("{}-node", ns.name);
    let control_node = format!("{}-ctl", ns.name);
    fake_node(&ns, &node).await;
    fake_node(&ns, &control_node).await;
    let api = ns.api::<Deployment>();
    let pp = PatchParams::apply("pailot-test").force();
    let mut control = pinned(
        deployments["prometheus-deployment"].clone(),
        &ns.name,
        &control_node,
        "control",
    );
    control["spec"].as_object_mut().unwrap().remove("strategy");
    let mut all: Vec<(String, Value)> = deployments
        .iter()
        .map(|(name, obj)| (name.clone(), pinned(obj.clone(), &ns.name, &node, name)))
        .collect();
    all.push(("control".into(), control));
    for (name, obj) in &all {
        api.patch(name, &pp, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }
    for (name, _) in &all {
        wait_for(&format!("{name} available"), WAIT, || async {
            rolled_out(&api.get(name).await.map_err(|e| e.to_string())?)
        })
        .await;
    }

    for (name, _) in &all {
        restart(&api, name).await;
    }
    // One deadline for all: each rollout takes seconds when it can complete at all.
    let mut pending: Vec<&String> = all
        .iter()
        .map(|(n, _)| n)
        .filter(|n| *n != "control")
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for name in pending {
            if !matches!(api.get(name).await.map(|d| rolled_out(&d)), Ok(Ok(()))) {
                still.push(name);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stalled: Vec<String> = pending
        .iter()
        .map(|name| {
            let obj = &all.iter().find(|(n, _)| n == *name).unwrap().1;
            let strategy = obj["spec"].get("strategy").cloned().unwrap_or(Value::Null);
            format!("{name} (strategy {strategy})")
        })
        .collect();
    assert!(
        stalled.is_empty(),
        "rollouts stalled on one node: {stalled:?}"
    );

    // The control's new pod stays Pending: the old pod holds the ports and is never stopped.
    let pods = ns.api::<Pod>();
    let why = wait_for(
        "control's surge pod refused for its host ports",
        WAIT,
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=prometheus"))
                .await
                .map_err(|e| e.to_string())?;
            let on_control: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.name.starts_with("control-"))
                })
                .collect();
            let refused = on_control.iter().find_map(|p| {
                p.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
                    .message
                    .clone()
            });
            match refused {
                Some(m) if on_control.len() == 2 => Ok(m),
                _ => Err(format!(
                    "{} control pods, none refused yet",
                    on_control.len()
                )),
            }
        },
    )
    .await;
    assert!(why.contains("free ports"), "{why}");
    assert!(
        rolled_out(&api.get("control").await.unwrap()).is_err(),
        "the control Deployment must not complete its rollout"
    );
}
