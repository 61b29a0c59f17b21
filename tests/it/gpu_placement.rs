//! GPU placement on a mixed cluster: the gpu overlay's GPU consumers land only on the GPU machine, the
//! CPU machine keeps its CPU services (own control plane with one GPU and one CPU fake node).

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::Api;
use ::kube::api::{ListParams, PostParams};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use serde_json::json;

use crate::harness::{pailot, repo_root};
use crate::kube::{PrivateCluster, client_for, skip_cluster, wait_for};

const WAIT: Duration = Duration::from_secs(120);
const CLUSTER_FILE: &str = "clusters/two-node-gpu.yaml";
const GPU_NODE: &str = "pai-gpu-1";
const CPU_NODE: &str = "pai-cpu-1";

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn runtime_class(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.runtime_class_name.as_deref()
}

fn claims_gpu(p: &Pod) -> bool {
    p.spec.iter().flat_map(|s| &s.containers).any(|c| {
        let r = c.resources.as_ref();
        let has =
            |m: Option<&BTreeMap<String, _>>| m.is_some_and(|m| m.contains_key("nvidia.com/gpu"));
        r.is_some_and(|r| has(r.limits.as_ref()) || has(r.requests.as_ref()))
    })
}

fn chart_of(p: &Pod) -> String {
    let labels = p.metadata.labels.clone().unwrap_or_default();
    labels.get("app").cloned().unwrap_or_default()
}

#[tokio::test]
async fn gpu_consumers_land_only_on_the_gpu_machine_of_a_mixed_cluster() {
    if skip_cluster() {
        eprintln!("skipped: PAILOT_SKIP_CLUSTER=1");
        return;
    }
    // The fake nodes carry the labels bootstrap would set from the cluster file.
    let cluster =
        pailot::render::load_cluster(&repo_root().join(CLUSTER_FILE), CLUSTER_FILE).unwrap();
    let nodes_file = repo_root().join("tests/cluster/nodes/two-node-gpu.yaml");
    let dir = tempfile::tempdir().unwrap();
    let cp = {
        let (dir, nodes_file) = (dir.path().to_path_buf(), nodes_file.clone());
        tokio::task::spawn_blocking(move || {
            PrivateCluster::start_with_nodes_file(&dir, "gpu", &nodes_file)
        })
        .await
        .unwrap()
    };
    let client = client_for(&cp.kubeconfig()).await;
    let nodes = Api::<Node>::all(client.clone());
    for m in &cluster.machines {
        let node = nodes.get(&m.name).await.unwrap();
        let have = node.metadata.labels.unwrap_or_default();
        for (k, v) in m.node_labels() {
            assert_eq!(
                have.get(&k),
                Some(&v),
                "{}: tests/cluster/nodes/two-node-gpu.yaml must carry bootstrap's label {k}={v}",
                m.name
            );
        }
    }

    let kc = cp.kubeconfig();
    let r = pailot(&[
        "apply",
        "-c",
        CLUSTER_FILE,
        "--kubeconfig",
        kc.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    // A pod that only names the nvidia runtime, and prefers the CPU machine, still gets the GPU one:
    // the RuntimeClass's scheduling.nodeSelector is added to every pod that uses it.
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "runtime-class-probe", "labels": {"app": "runtime-class-probe"}},
        "spec": {
            "runtimeClassName": "nvidia",
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [CPU_NODE]}
                ]}}
            ]}},
            "containers": [{"name": "c", "image": "registry.invalid/probe:1"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &probe)
        .await
        .unwrap_or_else(|e| panic!("create runtime-class-probe: {e}"));

    // Every pod of the render is scheduled (none left Pending for want of a GPU or a port).
    let all = Api::<Pod>::all(client.clone());
    let placed = wait_for("every pod scheduled", WAIT, || async {
        let list = all
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let waiting: Vec<String> = list
            .items
            .iter()
            .filter(|p| node_of(p).is_none())
            .map(|p| {
                let why = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                    .and_then(|c| c.message.clone())
                    .unwrap_or_default();
                format!("{} ({why})", p.metadata.name.clone().unwrap_or_default())
            })
            .collect();
        let apps: Vec<String> = list.items.iter().map(chart_of).collect();
        // Each chart's DaemonSets create their pods independently: wait for all of them (one per
        // machine the DaemonSet selects), not for the first one of each chart.
        let expected = [
            ("nvidia-device-plugin", 1),
            ("job-exporter", 2),
            ("hadoop-node-manager", 2),
        ];
        if !waiting.is_empty() {
            Err(format!("unscheduled: {waiting:?}"))
        } else if !expected
            .iter()
            .all(|(e, n)| apps.iter().filter(|a| a.as_str() == *e).count() == *n)
        {
            Err(format!("not every GPU chart's pods exist yet: {apps:?}"))
        } else {
            Ok(list.items)
        }
    })
    .await;

    let mut wrong = Vec::new();
    let on = |app: &str| -> Vec<(String, Option<String>, bool)> {
        placed
            .iter()
            .filter(|p| chart_of(p) == app)
            .map(|p| {
                (
                    node_of(p).unwrap_or("").to_string(),
                    runtime_class(p).map(str::to_string),
                    claims_gpu(p),
                )
            })
            .collect()
    };
    for p in &placed {
        let name = p.metadata.name.clone().unwrap_or_default();
        if (runtime_class(p) == Some("nvidia") || claims_gpu(p)) && node_of(p) != Some(GPU_NODE) {
            wrong.push(format!(
                "{name} uses the GPU runtime or claims a GPU on {:?}",
                node_of(p)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "GPU consumers off the GPU machine: {wrong:?}"
    );

    // The device plugin runs only where GPUs are; the NVIDIA runtime is asked for only there.
    let plugin = on("nvidia-device-plugin");
    assert_eq!(
        plugin,
        vec![(GPU_NODE.to_string(), Some("nvidia".to_string()), false)],
        "nvidia-device-plugin pods (node, runtimeClass, claims a GPU)"
    );
    // job-exporter watches every machine: with the NVIDIA runtime on the GPU one, without on the CPU one.
    let mut exporters = on("job-exporter");
    exporters.sort();
    assert_eq!(
        exporters,
        vec![
            (CPU_NODE.to_string(), None, false),
            (GPU_NODE.to_string(), Some("nvidia".to_string()), false)
        ],
        "job-exporter pods (node, runtimeClass, claims a GPU)"
    );
    // Every worker runs a NodeManager; only the GPU machine's uses the runtime and claims its GPUs.
    let mut managers = on("hadoop-node-manager");
    managers.sort();
    assert_eq!(
        managers,
        vec![
            (CPU_NODE.to_string(), None, false),
            (GPU_NODE.to_string(), Some("nvidia".to_string()), true)
        ],
        "hadoop-node-manager pods (node, runtimeClass, claims a GPU)"
    );
    let probe = on("runtime-class-probe");
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].0, GPU_NODE, "runtime-class-probe placement");

    let rc = Api::<RuntimeClass>::all(client.clone())
        .get("nvidia")
        .await
        .unwrap();
    let selector = rc
        .scheduling
        .and_then(|s| s.node_selector)
        .unwrap_or_default();
    assert_eq!(
        selector.get("nvidia.com/gpu.present").map(String::as_str),
        Some("true"),
        "RuntimeClass nvidia scheduling.nodeSelector: {selector:?}"
    );
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}
