//! Server-side apply through kube-rs dynamic objects: discovery, dry-run, apply, conflicts, get, list, delete.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::Value;

use crate::FIELD_MANAGER;
use crate::inventory::GroupKind;
use crate::manifest::ObjectId;

/// A failed call to the API server, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery of the API server's resources failed.
    #[error("failed to discover the API server's resources")]
    Discovery(#[source] kube::Error),
    /// The kind is not served (a CRD missing or not established).
    #[error("{object}: the API server does not serve {api_version} {kind}")]
    UnknownKind {
        object: String,
        api_version: String,
        kind: String,
    },
    /// Another field manager owns fields pailot sets to a different value.
    #[error(
        "{object}: conflict with field manager(s) {}: {}; pass --force-conflicts to take these fields over",
        managers.join(", "), fields.join(", ")
    )]
    Conflict {
        object: String,
        managers: Vec<String>,
        fields: Vec<String>,
    },
    /// Any other API error.
    #[error("{object}: {op} failed: {source}")]
    Api {
        object: String,
        op: &'static str,
        #[source]
        source: kube::Error,
    },
    /// Deletion did not finish in time.
    #[error("{object}: still present {secs} s after delete")]
    DeleteTimeout { object: String, secs: u64 },
}

impl Error {
    /// The API server or the network failed, not the object (retry later): transport errors (connection
    /// refused or reset, timeouts, TLS) and the server's 429/500/502/503/504 answers (e.g. while it shuts down
    /// or starts up).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Discovery(e) | Error::Api { source: e, .. } => is_transient(e),
            Error::UnknownKind { .. } | Error::Conflict { .. } | Error::DeleteTimeout { .. } => {
                false
            }
        }
    }
}

/// True for a kube client error the API server or the network caused (see [`Error::is_transient`]).
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// A client plus a discovery cache that is refreshed when CRDs appear.
#[derive(Clone)]
pub struct Server {
    pub client: Client,
    discovery: Arc<RwLock<Arc<Discovery>>>,
}

async fn discover(client: &Client) -> Result<Discovery, Error> {
    match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => Ok(d),
        Err(_) => Discovery::new(client.clone())
            .run()
            .await
            .map_err(Error::Discovery),
    }
}

impl Server {
    /// Connect discovery for `client`.
    pub async fn new(client: Client) -> Result<Self, Error> {
        let d = discover(&client).await?;
        Ok(Server {
            client,
            discovery: Arc::new(RwLock::new(Arc::new(d))),
        })
    }

    /// Re-run discovery (after CRDs were applied and established).
    pub async fn refresh(&self) -> Result<(), Error> {
        let d = discover(&self.client).await?;
        *self.discovery.write().expect("discovery lock") = Arc::new(d);
        Ok(())
    }

    fn discovery(&self) -> Arc<Discovery> {
        self.discovery.read().expect("discovery lock").clone()
    }

    /// The API resource of `id`'s group/version/kind.
    pub fn resolve(&self, id: &ObjectId) -> Result<(ApiResource, ApiCapabilities), Error> {
        let gvk = GroupVersionKind::gvk(&id.group, &id.version, &id.kind);
        self.discovery()
            .resolve_gvk(&gvk)
            .ok_or_else(|| Error::UnknownKind {
                object: id.to_string(),
                api_version: id.api_version(),
                kind: id.kind.clone(),
            })
    }

    /// True when the kind of `id` is served.
    pub fn knows(&self, id: &ObjectId) -> bool {
        self.resolve(id).is_ok()
    }

    /// The preferred resource of a group kind, if served.
    pub fn resolve_group_kind(&self, gk: &GroupKind) -> Option<(ApiResource, ApiCapabilities)> {
        self.discovery().get(&gk.group)?.recommended_kind(&gk.kind)
    }

    /// True when `id`'s kind is namespaced (unknown kinds count as namespaced when they carry a namespace).
    pub fn is_namespaced(&self, id: &ObjectId) -> bool {
        self.resolve(id)
            .map(|(_, c)| c.scope == Scope::Namespaced)
            .unwrap_or(id.namespace.is_some())
    }

    fn api(&self, id: &ObjectId) -> Result<Api<DynamicObject>, Error> {
        let (ar, caps) = self.resolve(id)?;
        Ok(match (&caps.scope, &id.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// The live object, or `None` when absent.
    pub async fn get(&self, id: &ObjectId) -> Result<Option<Value>, Error> {
        let api = self.api(id)?;
        let got = api
            .get_opt(&id.name)
            .await
            .map_err(|e| api_err(id, "get", e))?;
        Ok(got.map(to_value))
    }

    /// Server-side apply `object` as `pailot` (dry-run when asked); the object the server returns.
    pub async fn apply(
        &self,
        id: &ObjectId,
        object: &Value,
        dry_run: bool,
        force: bool,
    ) -> Result<Value, Error> {
        let api = self.api(id)?;
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        if force {
            pp = pp.force();
        }
        if dry_run {
            pp = pp.dry_run();
        }
        match api.patch(&id.name, &pp, &Patch::Apply(object)).await {
            Ok(o) => Ok(to_value(o)),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(conflict(id, &status)),
            Err(e) => Err(api_err(
                id,
                if dry_run { "dry-run apply" } else { "apply" },
                e,
            )),
        }
    }

    /// Delete `id` (background propagation); absent counts as deleted.
    pub async fn delete(&self, id: &ObjectId) -> Result<(), Error> {
        let api = self.api(id)?;
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err(id, "delete", e)),
        }
    }

    /// Wait until `id` is gone (deletion confirmed), polling.
    pub async fn wait_deleted(&self, id: &ObjectId, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if self.get(id).await?.is_none() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Error::DeleteTimeout {
                    object: id.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Live objects of `gk` matching `selector` in `namespaces` (all of them for cluster-scoped kinds).
    pub async fn list(
        &self,
        gk: &GroupKind,
        selector: &str,
        namespaces: &BTreeSet<String>,
    ) -> Result<Vec<Value>, Error> {
        let Some((ar, caps)) = self.resolve_group_kind(gk) else {
            return Ok(Vec::new());
        };
        let lp = ListParams::default().labels(selector);
        let what = || format!("{gk} (list)");
        let mut out = Vec::new();
        if caps.scope == Scope::Cluster {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let list = api.list(&lp).await.map_err(|e| Error::Api {
                object: what(),
                op: "list",
                source: e,
            })?;
            out.extend(list.items.into_iter().map(|o| with_type(to_value(o), &ar)));
        } else {
            for ns in namespaces {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
                let list = api.list(&lp).await.map_err(|e| Error::Api {
                    object: what(),
                    op: "list",
                    source: e,
                })?;
                out.extend(list.items.into_iter().map(|o| with_type(to_value(o), &ar)));
            }
        }
        Ok(out)
    }
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// List items come without `apiVersion`/`kind`; put them back.
fn with_type(mut v: Value, ar: &ApiResource) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        m.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    v
}

fn api_err(id: &ObjectId, op: &'static str, source: kube::Error) -> Error {
    Error::Api {
        object: id.to_string(),
        op,
        source,
    }
}

/// Turn a 409 apply Status into the managers and fields it names.
pub fn conflict(id: &ObjectId, status: &kube::core::Status) -> Error {
    let mut managers = Vec::new();
    let mut fields = Vec::new();
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or(&[]);
    for c in causes {
        if let Some(m) = quoted_manager(&c.message)
            && !managers.contains(&m)
        {
            managers.push(m);
        }
        let field = if c.field.is_empty() {
            c.message.clone()
        } else {
            c.field.clone()
        };
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    if managers.is_empty() {
        managers.push("(unknown)".into());
        fields.push(status.message.clone());
    }
    Error::Conflict {
        object: id.to_string(),
        managers,
        fields,
    }
}

/// `conflict with "kubectl" using apps/v1` → `kubectl`.
fn quoted_manager(message: &str) -> Option<String> {
    let rest = &message[message.find("conflict with \"")? + "conflict with \"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_servers_not_the_objects() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({"status": "Failure", "code": code}))
                    .unwrap(),
            ))
        };
        let api = |source| Error::Api {
            object: "ConfigMap/n/c".into(),
            op: "apply",
            source,
        };
        assert!(api(status(503)).is_transient());
        assert!(api(status(429)).is_transient());
        assert!(api(status(500)).is_transient());
        assert!(!api(status(422)).is_transient(), "invalid object");
        assert!(!api(status(403)).is_transient(), "forbidden");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(api(kube::Error::Service(Box::new(io))).is_transient());
        assert!(
            !Error::Conflict {
                object: "x".into(),
                managers: vec![],
                fields: vec![]
            }
            .is_transient()
        );
    }

    #[test]
    fn conflict_names_managers_and_fields() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas",
            "details": {"causes": [{"reason": "FieldManagerConflict",
                "message": "conflict with \"kubectl\" with subresource \"scale\" using apps/v1", "field": ".spec.replicas"}]}
        }))
        .unwrap();
        let id = ObjectId {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: Some("n".into()),
            name: "web".into(),
        };
        let e = conflict(&id, &status);
        assert_eq!(
            e.to_string(),
            "Deployment/n/web: conflict with field manager(s) kubectl: .spec.replicas; pass --force-conflicts to take these fields over"
        );
    }
}
