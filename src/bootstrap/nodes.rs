//! The API side of bootstrap: wait for `/readyz`, then merge-patch node labels and annotations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Error, RecordedNode};

/// Labels and annotations wanted on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What happened to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeOutcome {
    pub node: String,
    /// `labelled`, `unchanged`, `not registered`, `unlabelled`.
    pub action: String,
    /// Keys changed (labels and annotations).
    pub changed: Vec<String>,
}

/// Poll the API server's `/readyz` until it answers `ok` or `timeout` passes.
pub async fn wait_readyz(client: &Client, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let req = hyper::Request::get("/readyz")
            .body(Vec::new())
            .expect("static request");
        let last: String = match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body
                .lines()
                .last()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: "the API server's /readyz".into(),
                seconds: timeout.as_secs(),
                last: Some(last),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until node `name` is registered (until `deadline`).
pub async fn wait_registered(client: &Client, name: &str, deadline: Instant) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let got = api.get_opt(name).await.map_err(|source| Error::Kube {
            action: format!("get Node/{name}"),
            source,
        })?;
        if got.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("Node/{name} to register (is its kubelet running?)"),
                seconds: started.elapsed().as_secs(),
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn missing_or_changed(
    want: &BTreeMap<String, String>,
    have: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| have.and_then(|h| h.get(*k)) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Merge-patch each node's labels and annotations. `own` is this machine's node: bootstrap waits for it
/// to register (until `deadline`); other nodes that are not registered yet are reported and skipped.
/// Returns the outcomes and, per node, the keys this run or `previous` runs set (for the record).
pub async fn label_nodes(
    client: &Client,
    desired: &[NodeMeta],
    previous: &[RecordedNode],
    own: &str,
    deadline: Instant,
) -> Result<(Vec<NodeOutcome>, Vec<RecordedNode>), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut recorded = Vec::new();
    for want in desired {
        let node = loop {
            let got = api
                .get_opt(&want.name)
                .await
                .map_err(|source| Error::Kube {
                    action: format!("get Node/{}", want.name),
                    source,
                })?;
            match got {
                Some(n) => break Some(n),
                None if want.name == own && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                None if want.name == own => {
                    return Err(Error::Timeout {
                        what: format!("Node/{} to register (is its kubelet running?)", want.name),
                        seconds: started.elapsed().as_secs(),
                        last: None,
                    });
                }
                None => break None,
            }
        };
        let prev = previous
            .iter()
            .find(|p| p.name == want.name)
            .cloned()
            .unwrap_or_default();
        let Some(node) = node else {
            outcomes.push(NodeOutcome {
                node: want.name.clone(),
                action: "not registered".into(),
                changed: vec![],
            });
            if !prev.labels.is_empty() || !prev.annotations.is_empty() {
                recorded.push(prev);
            }
            continue;
        };
        let changed_labels = missing_or_changed(&want.labels, node.metadata.labels.as_ref());
        let changed_annotations =
            missing_or_changed(&want.annotations, node.metadata.annotations.as_ref());
        let mut rec = RecordedNode {
            name: want.name.clone(),
            ..prev
        };
        for k in &changed_labels {
            rec.labels.insert(k.clone(), want.labels[k].clone());
        }
        for k in &changed_annotations {
            rec.annotations
                .insert(k.clone(), want.annotations[k].clone());
        }
        // Keys an earlier run set keep being ours while they hold the value we set.
        rec.labels.retain(|k, v| want.labels.get(k) == Some(v));
        rec.annotations
            .retain(|k, v| want.annotations.get(k) == Some(v));
        if changed_labels.is_empty() && changed_annotations.is_empty() {
            outcomes.push(NodeOutcome {
                node: want.name.clone(),
                action: "unchanged".into(),
                changed: vec![],
            });
        } else {
            let labels: Map<String, Value> = changed_labels
                .iter()
                .map(|k| (k.clone(), json!(want.labels[k])))
                .collect();
            let annotations: Map<String, Value> = changed_annotations
                .iter()
                .map(|k| (k.clone(), json!(want.annotations[k])))
                .collect();
            let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
            api.patch(&want.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Kube {
                    action: format!("label Node/{}", want.name),
                    source,
                })?;
            let mut changed = changed_labels;
            changed.extend(changed_annotations);
            outcomes.push(NodeOutcome {
                node: want.name.clone(),
                action: "labelled".into(),
                changed,
            });
        }
        if !rec.labels.is_empty() || !rec.annotations.is_empty() {
            recorded.push(rec);
        }
    }
    Ok((outcomes, recorded))
}

/// Remove the labels and annotations the record says bootstrap set, where they still hold the value it set.
pub async fn unlabel_nodes(
    client: &Client,
    recorded: &[RecordedNode],
) -> Result<Vec<NodeOutcome>, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut outcomes = Vec::new();
    for rec in recorded {
        let got = api.get_opt(&rec.name).await.map_err(|source| Error::Kube {
            action: format!("get Node/{}", rec.name),
            source,
        })?;
        let Some(node) = got else {
            outcomes.push(NodeOutcome {
                node: rec.name.clone(),
                action: "not registered".into(),
                changed: vec![],
            });
            continue;
        };
        let still = |want: &BTreeMap<String, String>,
                     have: Option<&BTreeMap<String, String>>|
         -> Vec<String> {
            want.iter()
                .filter(|(k, v)| have.and_then(|h| h.get(*k)) == Some(*v))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let labels = still(&rec.labels, node.metadata.labels.as_ref());
        let annotations = still(&rec.annotations, node.metadata.annotations.as_ref());
        if labels.is_empty() && annotations.is_empty() {
            outcomes.push(NodeOutcome {
                node: rec.name.clone(),
                action: "unchanged".into(),
                changed: vec![],
            });
            continue;
        }
        let nulls = |keys: &[String]| -> Map<String, Value> {
            keys.iter().map(|k| (k.clone(), Value::Null)).collect()
        };
        let patch =
            json!({"metadata": {"labels": nulls(&labels), "annotations": nulls(&annotations)}});
        api.patch(&rec.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Kube {
                action: format!("unlabel Node/{}", rec.name),
                source,
            })?;
        let mut changed = labels;
        changed.extend(annotations);
        outcomes.push(NodeOutcome {
            node: rec.name.clone(),
            action: "unlabelled".into(),
            changed,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_or_different_keys_change() {
        let want: BTreeMap<String, String> = [("a", "1"), ("b", "2"), ("c", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let have: BTreeMap<String, String> = [("a", "1"), ("b", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            missing_or_changed(&want, Some(&have)),
            vec!["b".to_string(), "c".to_string()]
        );
        assert_eq!(missing_or_changed(&want, None).len(), 3);
    }
}
