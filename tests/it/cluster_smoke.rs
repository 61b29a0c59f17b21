//! Smoke tests of the test control plane (tests/cluster): scheduling, controllers, CRDs, restarts.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ::kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;

use crate::kube::{PrivateCluster, TestNamespace, client_for, testcluster_bin, wait_for};

const WAIT: Duration = Duration::from_secs(120);

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn pods_with(ns: &TestNamespace, selector: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

#[tokio::test]
async fn deployment_of_three_becomes_available_on_fake_nodes() {
    let Some(ns) = TestNamespace::new("smoke-deploy").await else {
        return;
    };
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "registry.invalid/web:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
                }]}
            }
        }
    }))
    .unwrap();
    let api = ns.api::<Deployment>();
    api.create(&PostParams::default(), &deploy)
        .await
        .expect("create deployment");

    wait_for("deployment web Available with 3 replicas", WAIT, || async {
        let d = api.get("web").await.map_err(|e| e.to_string())?;
        let st = d.status.clone().unwrap_or_default();
        let available = st.conditions.unwrap_or_default().iter().any(|c| {
            c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
        });
        if available && st.available_replicas == Some(3) && st.ready_replicas == Some(3) {
            Ok(())
        } else {
            Err(format!("{:?}", d.status))
        }
    })
    .await;

    let pods = pods_with(&ns, "app=web").await;
    assert_eq!(pods.len(), 3, "pods of web: {pods:?}");
    let nodes = Api::<Node>::all(ns.client.clone());
    for p in &pods {
        let name = p.metadata.name.clone().unwrap();
        let node_name = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let node_name = node_name.unwrap_or_else(|| panic!("pod {name} is not bound to a node"));
        let node = nodes.get(&node_name).await.expect("node of pod");
        let ann = node.metadata.annotations.unwrap_or_default();
        assert_eq!(
            ann.get(crate::kube::KWOK_ANNOTATION).map(String::as_str),
            Some("fake")
        );
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Running"), "pod {name}");
        assert!(pod_ready(p), "pod {name} not Ready: {:?}", p.status);
    }
}

#[tokio::test]
async fn daemonset_with_node_selector_lands_only_on_matching_nodes() {
    let Some(ns) = TestNamespace::new("smoke-ds").await else {
        return;
    };
    // Three extra fake nodes, tainted so that only this test's DaemonSet (which tolerates the taint)
    // can land on them; two carry the selected label value.
    let select = &ns.name;
    let mut names = Vec::new();
    for (suffix, value) in [
        ("a", select.as_str()),
        ("b", select.as_str()),
        ("c", "other"),
    ] {
        let name = format!("{}-{suffix}", ns.name);
        ns.create_fake_node(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "pailot.test/ds": value
            }},
            "spec": {"taints": [{"key": "pailot.test/isolated", "value": ns.name, "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}
            }
        }))
        .await;
        names.push(name);
    }
    let nodes = Api::<Node>::all(ns.client.clone());
    for name in &names {
        wait_for(&format!("node {name} Ready"), WAIT, || async {
            let n = nodes.get(name).await.map_err(|e| e.to_string())?;
            if node_ready(&n) {
                Ok(())
            } else {
                Err(format!("{:?}", n.status))
            }
        })
        .await;
    }

    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"pailot.test/ds": select},
                    "tolerations": [{"key": "pailot.test/isolated", "operator": "Exists"}],
                    "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]
                }
            }
        }
    }))
    .unwrap();
    let api = ns.api::<DaemonSet>();
    api.create(&PostParams::default(), &ds)
        .await
        .expect("create daemonset");
    wait_for("daemonset agent ready on 2 nodes", WAIT, || async {
        let d = api.get("agent").await.map_err(|e| e.to_string())?;
        let st = d.status.clone().unwrap_or_default();
        if st.desired_number_scheduled == 2
            && st.number_ready == 2
            && st.number_available == Some(2)
        {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;

    let pods = pods_with(&ns, "app=agent").await;
    let placed: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let want: BTreeSet<String> = names[..2].iter().cloned().collect();
    assert_eq!(pods.len(), 2, "agent pods: {pods:?}");
    assert_eq!(
        placed, want,
        "DaemonSet pods must be exactly on the selected nodes"
    );
}

#[tokio::test]
async fn crd_becomes_established_and_custom_resource_is_created() {
    let Some(ns) = TestNamespace::new("smoke-crd").await else {
        return;
    };
    let group = format!("{}.pailot.test", ns.name);
    let crd_name = format!("widgets.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                }}}
            }]
        }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(ns.client.clone());
    ns.delete_on_drop("crd", &crd_name);
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    wait_for("CRD Established", WAIT, || async {
        let c = crds.get(&crd_name).await.map_err(|e| e.to_string())?;
        let ok = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if ok {
            Ok(())
        } else {
            Err(format!("{:?}", c.status))
        }
    })
    .await;

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    let mut w = DynamicObject::new("w1", &ar);
    w.data = json!({"spec": {"size": 3}});
    // The handler for a just-established CRD can lag a moment behind its condition.
    wait_for(
        "custom resource created",
        Duration::from_secs(30),
        || async {
            widgets
                .create(&PostParams::default(), &w)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let got = widgets.get("w1").await.expect("get widget");
    assert_eq!(got.data["spec"]["size"], json!(3));
}

#[tokio::test]
async fn pod_larger_than_any_node_stays_pending_unschedulable() {
    let Some(ns) = TestNamespace::new("smoke-unsched").await else {
        return;
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "huge"},
        "spec": {"containers": [{
            "name": "huge", "image": "registry.invalid/huge:1",
            "resources": {"requests": {"memory": "4Ti"}}
        }]}
    }))
    .unwrap();
    let api = ns.api::<Pod>();
    api.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let reason = wait_for("PodScheduled=False on pod huge", WAIT, || async {
        let p = api.get("huge").await.map_err(|e| e.to_string())?;
        let cond = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned());
        match cond {
            Some(c) if c.status == "False" => Ok((c.reason.unwrap_or_default(), c.message)),
            _ => Err(format!("{:?}", p.status)),
        }
    })
    .await;
    assert_eq!(reason.0, "Unschedulable", "message: {:?}", reason.1);
    assert!(
        reason
            .1
            .as_deref()
            .unwrap_or("")
            .contains("Insufficient memory"),
        "scheduler message should name memory: {:?}",
        reason.1
    );
    let p = api.get("huge").await.unwrap();
    assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.clone()), None);
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.clone()).as_deref(),
        Some("Pending")
    );
}

/// The fake node of the restart test's private cluster.
const NODE: &str = "restart-node-1:pai-worker=true";

async fn client_of(dir: &Path) -> Client {
    client_for(&dir.join("kubeconfig")).await
}

#[tokio::test]
async fn objects_survive_restart_with_data_dir() {
    if crate::kube::skip_cluster() {
        eprintln!("skipped: {}=1", crate::kube::SKIP_ENV);
        return;
    }
    let bin = tokio::task::spawn_blocking(testcluster_bin).await.unwrap();
    assert!(bin.exists(), "{}", bin.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();

    let first = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || PrivateCluster::start(&d, "first", &[NODE]))
            .await
            .unwrap()
    };
    let client = client_of(&dir).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "survivor", "labels": {"pailot-test": "restart"}},
        "data": {"answer": "42"}
    }))
    .unwrap();
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let node_uid = Api::<Node>::all(client.clone())
        .get("restart-node-1")
        .await
        .unwrap()
        .metadata
        .uid;
    let server_before = std::fs::read_to_string(dir.join("kubeconfig")).unwrap();
    drop(client);
    tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap();

    let second = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || PrivateCluster::start(&d, "second", &[NODE]))
            .await
            .unwrap()
    };
    let server_after = std::fs::read_to_string(dir.join("kubeconfig")).unwrap();
    assert_eq!(
        server_before, server_after,
        "restart keeps the port and CA, so the kubeconfig is unchanged"
    );
    let client = client_of(&dir).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let got = cms
        .get("survivor")
        .await
        .expect("configmap survives the restart");
    assert_eq!(
        got.data
            .unwrap_or_default()
            .get("answer")
            .map(String::as_str),
        Some("42")
    );
    assert_eq!(
        got.metadata.uid, created.metadata.uid,
        "same object, not a re-creation"
    );
    let node = Api::<Node>::all(client.clone())
        .get("restart-node-1")
        .await
        .unwrap();
    assert_eq!(node.metadata.uid, node_uid, "node object survives too");
    drop(client);
    tokio::task::spawn_blocking(move || second.stop())
        .await
        .unwrap();
    drop(tmp);
}
