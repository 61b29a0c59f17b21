//! Drift: label-selected watches on the inventory's kinds that ask for a drift check, and the per-field drift records.
//!
//! The watches are metadata-only (`PartialObjectMeta`): deciding whether someone else wrote an
//! object needs only its `managedFields`, so the API server sends no specs and the daemon parses
//! none. The comparison itself is a dry-run apply (`KubeApplier::drift`).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::reconcile::{DriftRecord, Trigger};
use crate::apply::plan::Plan;
use crate::apply::{Action, ApplyReport, Server};
use crate::inventory::GroupKind;
use crate::manifest::ObjectId;
use crate::manifest::RenderedSet;

/// Field-level drift records from a dry-run apply report of `plan` (objects that would be configured or
/// re-created). Only fields the plan sets count: what the API server changes by itself in the dry run
/// (the DaemonSet controller's `deprecated.daemonset.template.generation`, status) is not drift.
pub fn records(report: &ApplyReport, plan: &Plan) -> Vec<DriftRecord> {
    let desired: std::collections::HashMap<&ObjectId, &serde_json::Value> =
        plan.all_objects().map(|o| (&o.id, &o.object)).collect();
    let mut out = Vec::new();
    for o in &report.objects {
        match o.action {
            Action::Configured => {
                for c in &o.changes {
                    if is_bookkeeping(&c.path)
                        || desired.get(&o.id).is_some_and(|d| !sets_field(d, &c.path))
                    {
                        continue;
                    }
                    out.push(DriftRecord {
                        object: o.object.clone(),
                        chart: o.chart.clone(),
                        pointer: c.path.clone(),
                        desired: c.desired.clone().unwrap_or(serde_json::Value::Null),
                        live: c.live.clone().unwrap_or(serde_json::Value::Null),
                        manager: (!c.other_managers.is_empty()).then(|| c.other_managers.join(",")),
                        provenance: None,
                    });
                }
            }
            Action::Created => out.push(DriftRecord {
                object: o.object.clone(),
                chart: o.chart.clone(),
                pointer: String::new(),
                desired: serde_json::Value::String("present".into()),
                live: serde_json::Value::Null,
                manager: None,
                provenance: None,
            }),
            _ => {}
        }
    }
    out
}

/// Whether the rendered object `desired` sets the field at `pointer` of the live object. A Secret's
/// `stringData` is stored as `data` by the API server, so a live `/data/k` is set by `/stringData/k`.
fn sets_field(desired: &serde_json::Value, pointer: &str) -> bool {
    if desired.pointer(pointer).is_some() {
        return true;
    }
    let secret = desired["kind"] == "Secret" && desired["apiVersion"] == "v1";
    match pointer.strip_prefix("/data") {
        Some(rest) if secret && (rest.is_empty() || rest.starts_with('/')) => {
            desired.pointer(&format!("/stringData{rest}")).is_some()
        }
        _ => false,
    }
}

/// The `(object, pointer)` pairs of `records` whose provenance is worth a render (fields, not missing objects).
pub fn provenance_wanted(records: &[DriftRecord]) -> Vec<(ObjectId, String)> {
    records
        .iter()
        .filter(|r| !r.pointer.is_empty())
        .filter_map(|r| Some((parse_object(&r.object)?, r.pointer.clone())))
        .collect()
}

/// `Kind/ns/name` or `Kind/name` back into the identity fields provenance lookups use. The group and
/// version are not in the display form; provenance is keyed by display name.
fn parse_object(display: &str) -> Option<ObjectId> {
    let parts: Vec<&str> = display.split('/').collect();
    let (kind, namespace, name) = match parts.as_slice() {
        [k, ns, n] => (*k, Some(ns.to_string()), *n),
        [k, n] => (*k, None, *n),
        _ => return None,
    };
    Some(ObjectId {
        group: String::new(),
        version: String::new(),
        kind: kind.to_string(),
        namespace,
        name: name.to_string(),
    })
}

/// Fields the server maintains that a dry-run comparison may show but no one "drifted".
fn is_bookkeeping(pointer: &str) -> bool {
    pointer.starts_with("/metadata/managedFields")
        || pointer.starts_with("/metadata/resourceVersion")
        || pointer.starts_with("/metadata/generation")
        || pointer.starts_with("/status")
}

/// Where the desired value at `pointer` of the object shown as `id` came from: the last step of its
/// provenance chain (which includes steps on parent pointers), as one line. `id` is matched by kind,
/// namespace and name (what a drift record names).
pub fn provenance_of(set: &RenderedSet, id: &ObjectId, pointer: &str) -> Option<String> {
    let (full, ro) = set
        .objects
        .iter()
        .find(|(k, _)| k.kind == id.kind && k.namespace == id.namespace && k.name == id.name)?;
    let chain = set.provenance.chain(full, &ro.object, pointer);
    let step = chain.last()?;
    Some(format!("{} {}", step.origin.step_kind(), step.origin))
}

/// True when the newest write to the object's spec (not its status) came from a manager other than pailot.
///
/// Our own applies and controllers' status updates then cost no drift check; a tie in the
/// (second-granular) timestamps counts as someone else, so a `kubectl scale` right after an apply is seen.
pub fn changed_by_someone_else(meta: &ObjectMeta) -> bool {
    let Some(fields) = meta.managed_fields.as_ref() else {
        return true;
    };
    let mut ours = None;
    let mut theirs = None;
    // `kubectl scale` writes through the `scale` subresource: only `status` writes are not drift.
    for f in fields
        .iter()
        .filter(|f| f.subresource.as_deref() != Some("status"))
    {
        let t = f.time.as_ref().map(|t| t.0);
        if f.manager.as_deref() == Some(crate::FIELD_MANAGER) {
            ours = ours.max(t);
        } else if t.is_none() {
            // Subresource updates (`kubectl scale`) carry no time: someone else owns fields now.
            return true;
        } else {
            theirs = theirs.max(t);
        }
    }
    match (ours, theirs) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(o), Some(t)) => t >= o,
    }
}

/// Group kinds of a plan's objects (what to watch).
pub fn group_kinds(plan: &Plan) -> BTreeSet<GroupKind> {
    plan.applied_objects()
        .map(|o| GroupKind::of(&o.id))
        .collect()
}

/// Watch every kind in `kinds` (cluster-wide, label-selected by `selector`) and send `Trigger::Drift` on changes.
///
/// Caveats: our own applies also change watched objects; the drift check that follows finds
/// nothing and costs one dry-run. Kinds the server does not serve are skipped.
/// Events are coalesced: one trigger per `settle` window.
pub async fn watch(
    server: Server,
    kinds: BTreeSet<GroupKind>,
    selector: String,
    tx: mpsc::Sender<Trigger>,
    settle: Duration,
) {
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(64);
    let mut tasks = Vec::new();
    for gk in kinds {
        let Some((ar, _caps)) = server.resolve_group_kind(&gk) else {
            continue;
        };
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(server.client.clone(), &ar);
        let cfg = watcher::Config::default().labels(&selector);
        let ev_tx = ev_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut initialised = false;
            let mut stream = watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => initialised = true,
                    Ok(watcher::Event::Apply(obj)) if initialised => {
                        let other = changed_by_someone_else(&obj.metadata);
                        tracing::debug!(kind = %gk, name = obj.metadata.name.as_deref().unwrap_or(""), other, "watched object changed");
                        if other {
                            let _ = ev_tx.try_send(());
                        }
                    }
                    Ok(watcher::Event::Delete(_)) if initialised => {
                        let _ = ev_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(kind = %gk, error = %e, "drift watch error (retrying)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }
    drop(ev_tx);
    while ev_rx.recv().await.is_some() {
        tokio::time::sleep(settle).await;
        while ev_rx.try_recv().is_ok() {}
        if tx.send(Trigger::Drift).await.is_err() {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ObjectReport;
    use crate::apply::diff::FieldChange;
    use crate::manifest::ObjectId;
    use crate::provenance::{FieldHistory, Origin};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn web() -> ObjectId {
        ObjectId {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        }
    }

    fn with_managers(entries: &[(&str, &str, i64)]) -> DynamicObject {
        let mf: Vec<serde_json::Value> = entries
            .iter()
            .map(|(m, sub, secs)| {
                let time = k8s_openapi::jiff::Timestamp::from_second(*secs)
                    .unwrap()
                    .to_string();
                json!({"manager": m, "operation": "Update", "subresource": sub, "time": time})
            })
            .collect();
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "managedFields": mf}}))
        .unwrap()
    }

    fn with_managers_meta(entries: &[(&str, &str, i64)]) -> ObjectMeta {
        with_managers(entries).metadata
    }

    #[test]
    fn a_secrets_string_data_sets_its_live_data() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"password": "x", "a/b": "y"}});
        assert!(sets_field(&secret, "/data/password"));
        assert!(sets_field(&secret, "/data/a~1b"));
        assert!(sets_field(&secret, "/stringData/password"));
        assert!(!sets_field(&secret, "/data/other"));
        assert!(!sets_field(&secret, "/database"));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "stringData": {"password": "x"}});
        assert!(!sets_field(&cm, "/data/password"));
    }

    #[test]
    fn own_writes_and_status_updates_do_not_trigger_a_drift_check() {
        assert!(!changed_by_someone_else(&with_managers_meta(&[(
            "pailot", "", 100
        )])));
        assert!(!changed_by_someone_else(&with_managers_meta(&[
            ("pailot", "", 100),
            ("kube-controller-manager", "status", 200)
        ])));
        assert!(!changed_by_someone_else(&with_managers_meta(&[
            ("kubectl", "", 50),
            ("pailot", "", 100)
        ])));
        assert!(changed_by_someone_else(&with_managers_meta(&[
            ("pailot", "", 100),
            ("kubectl", "", 100)
        ])));
        assert!(changed_by_someone_else(&with_managers_meta(&[
            ("pailot", "", 100),
            ("kubectl", "", 150)
        ])));
        // Regression: `kubectl scale` goes through the scale subresource.
        assert!(changed_by_someone_else(&with_managers_meta(&[
            ("pailot", "", 100),
            ("kubectl", "scale", 150)
        ])));
        // …and its managedFields entry has no time at all.
        let mut scaled = with_managers(&[("pailot", "", 100), ("kubectl", "scale", 0)]);
        scaled.metadata.managed_fields.as_mut().unwrap()[1].time = None;
        assert!(changed_by_someone_else(&scaled.metadata));
    }

    #[test]
    fn scaled_deployment_gives_a_record_with_manager_and_provenance_and_server_fields_are_not_drift()
     {
        let mut set = RenderedSet::default();
        set.objects.insert(
            web(),
            crate::manifest::RenderedObject {
                chart: "web".into(),
                template: "charts/web/templates/web.yaml".into(),
                object: json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 1}}),
            },
        );
        set.provenance.objects.insert(
            web(),
            FieldHistory::from_origins(BTreeMap::from([(
                "/spec/replicas".to_string(),
                Origin::Values {
                    file: "charts/web/values.yaml".into(),
                    key: "replicas".into(),
                    template: "charts/web/templates/web.yaml".into(),
                    line: Some(7),
                },
            )])),
        );
        let plan = Plan::new(
            &set,
            &crate::inventory::Inventory::for_cluster("t", "default"),
        )
        .unwrap();
        let change = |path: &str, live, desired| FieldChange {
            path: path.into(),
            live: Some(live),
            desired: Some(desired),
            other_managers: vec!["kubectl".into()],
        };
        let report = ApplyReport {
            objects: vec![ObjectReport {
                object: web().to_string(),
                id: web(),
                chart: "web".into(),
                step: crate::apply::Step::Workloads,
                action: Action::Configured,
                reason: None,
                failure: None,
                changes: vec![
                    change("/spec/replicas", json!(3), json!(1)),
                    // Written by the API server in the dry run; the plan does not set it.
                    change(
                        "/metadata/annotations/deprecated.daemonset.template.generation",
                        json!("1"),
                        json!("2"),
                    ),
                ],
            }],
            ..Default::default()
        };
        let r = records(&report, &plan);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].pointer, "/spec/replicas");
        assert_eq!(r[0].manager.as_deref(), Some("kubectl"));
        assert_eq!(
            (r[0].live.clone(), r[0].desired.clone()),
            (json!(3), json!(1))
        );
        let wanted = provenance_wanted(&r);
        assert_eq!(wanted.len(), 1);
        assert_eq!(
            provenance_of(&set, &wanted[0].0, &wanted[0].1).as_deref(),
            Some("values charts/web/values.yaml key replicas via charts/web/templates/web.yaml:7")
        );
    }
}
