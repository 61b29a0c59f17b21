//! Server-side apply through kube-rs dynamic objects: discovery, dry-run, apply, conflicts, get, list, delete.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::Value;

use super::FailureKind;
use crate::FIELD_MANAGER;
use crate::inventory::GroupKind;
use crate::manifest::ObjectId;

/// A failed call to the API server, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery of the API server's resources failed.
    #[error("failed to discover the API server's resources: {}", describe(.0))]
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
    /// Any other API error (shown as the API's own words: code, reason, message).
    #[error("{object}: {op} failed: {}", describe(source))]
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
    /// What kind of failure this is, from the error's type and the API's status code.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Discovery(e) | Error::Api { source: e, .. } => kind_of(e),
            Error::UnknownKind { .. } => FailureKind::UnknownKind,
            Error::Conflict { .. } => FailureKind::Conflict,
            Error::DeleteTimeout { .. } => FailureKind::DeleteTimeout,
        }
    }

    /// The API server or the network failed, not the object (retry later).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// The API answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// The kind of a kube client error: transport failures and the server's 429/502/503/504 answers (and
/// 500s other than a schema mismatch) are the server's or the network's; other 4xx are the object's.
pub fn kind_of(e: &kube::Error) -> FailureKind {
    match e {
        kube::Error::Api(s) => match s.code {
            429 | 502 | 503 | 504 => FailureKind::Unreachable,
            500 if is_schema_mismatch(s) => FailureKind::Rejected,
            500 => FailureKind::Unreachable,
            400..=499 => FailureKind::Rejected,
            _ => FailureKind::Internal,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            FailureKind::Unreachable
        }
        _ => FailureKind::Internal,
    }
}

/// True for the 500 server-side apply answers when an object does not fit the kind's schema ("failed to
/// create typed patch object"): the API server's only way of saying so, and the object is at fault, so
/// retrying cannot help. Recognised here, where the status is turned into a kind, and nowhere else.
fn is_schema_mismatch(s: &kube::core::Status) -> bool {
    s.message.starts_with("failed to create typed patch object")
        || s.message.contains("failed to create typed live object")
}

/// A kube client error as text a person reads: for API answers, the code, reason and message (never the
/// `Status { .. }` debug dump kube's own `Display` appends).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let mut out = s.code.to_string();
            if !s.reason.is_empty() {
                out.push(' ');
                out.push_str(&s.reason);
            }
            if !s.message.is_empty() {
                out.push_str(": ");
                out.push_str(&s.message);
            }
            out
        }
        other => {
            let text = other.to_string();
            match std::error::Error::source(other) {
                Some(src) if !text.contains(&src.to_string()) => format!("{text}: {src}"),
                _ => text,
            }
        }
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
        // A schema mismatch is the object's fault, whatever the code says.
        let typed = kube::Error::Api(Box::new(
            serde_json::from_value(serde_json::json!({"status": "Failure", "code": 500,
                "reason": "InternalError",
                "message": "failed to create typed patch object (/v1, Kind=ConfigMap) n/c: .data.x: expected string, got &value.valueUnstructured{Value:1}"}))
            .unwrap(),
        ));
        assert_eq!(api(typed).kind(), FailureKind::Rejected);
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
    fn api_errors_read_as_code_reason_and_message_not_a_debug_dump() {
        let e = Error::Api {
            object: "ConfigMap/n/c".into(),
            op: "apply",
            source: kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({"status": "Failure", "code": 422,
                    "reason": "Invalid", "message": "ConfigMap \"c\" is invalid: data: Invalid value"}))
                .unwrap(),
            )),
        };
        let text = e.to_string();
        assert_eq!(
            text,
            "ConfigMap/n/c: apply failed: 422 Invalid: ConfigMap \"c\" is invalid: data: Invalid value"
        );
        assert!(!text.contains("Status {"), "{text}");
        assert_eq!(e.kind(), FailureKind::Rejected);
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
