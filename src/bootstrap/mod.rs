//! Host bootstrap: writes control-plane static pods and containerd mirror config, labels nodes, and keeps
//! a record (`<state-dir>/bootstrap.json`) of exactly what it did so `--reset` can undo only that.
//!
//! Guarantees: every file is written atomically (hidden temp file in the same directory, fsync, rename;
//! kubelet ignores dot files in its static pod directory); a file already holding the wanted bytes is not
//! touched, so a second run changes nothing; a file pailot did not write (absent from the record, or
//! changed since) is never overwritten or removed unless forced.

pub mod nodes;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use nodes::{NodeMeta, NodeOutcome};

/// File name of the record inside the state directory.
pub const RECORD_FILE: &str = "bootstrap.json";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pailot";
/// Annotation carrying a machine's GPU model.
pub const GPU_TYPE_ANNOTATION: &str = "pailot.dev/gpu-type";

/// Why a bootstrap step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a host file failed.
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists with content pailot did not write.
    #[error(
        "{path} exists with content pailot did not write (sha256 {found}); move it away or use --force"
    )]
    Foreign { path: PathBuf, found: String },
    /// The record exists but cannot be read.
    #[error("bootstrap record {path} is not valid: {message}")]
    Record { path: PathBuf, message: String },
    /// A Kubernetes API call failed.
    #[error("failed to {action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The API server or a node did not become ready in time.
    #[error("timed out after {seconds} s waiting for {what}{}", last.as_deref().map(|l| format!(" (last answer: {l})")).unwrap_or_default())]
    Timeout {
        what: String,
        seconds: u64,
        last: Option<String>,
    },
}

/// A file bootstrap wants on the host: host path (absolute on the host, not under `--root`) and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: String,
    pub content: Vec<u8>,
    /// What it is, for messages (`static pod kube-apiserver`, `mirror config docker.io`).
    pub what: String,
}

/// One file bootstrap wrote, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFile {
    /// Host path (absolute on the host).
    pub path: String,
    pub sha256: String,
}

/// Labels and annotations bootstrap set on one node (only keys whose value it changed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedNode {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What bootstrap did on this host: `<state-dir>/bootstrap.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// `pailot.dev/v1`.
    pub api_version: String,
    /// `BootstrapRecord`.
    pub kind: String,
    pub cluster: String,
    pub machine: String,
    pub pailot_version: String,
    /// True when every step ran, the API ones included (false after `--skip-api`).
    pub complete: bool,
    pub files: Vec<RecordedFile>,
    pub nodes: Vec<RecordedNode>,
    /// Unix time of the last run that changed something.
    pub updated_at_unix: u64,
}

impl Record {
    pub fn new(cluster: &str, machine: &str) -> Self {
        Record {
            api_version: "pailot.dev/v1".into(),
            kind: "BootstrapRecord".into(),
            cluster: cluster.into(),
            machine: machine.into(),
            pailot_version: crate::VERSION.into(),
            complete: false,
            files: vec![],
            nodes: vec![],
            updated_at_unix: 0,
        }
    }

    fn file_sha(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.sha256.as_str())
    }
}

/// `<root>/<host path>`.
pub fn under_root(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Read the record in `state_dir` (a real path); `Ok(None)` when there is none.
pub fn read_record(state_dir: &Path) -> Result<Option<Record>, Error> {
    let path = state_dir.join(RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| Error::Record {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if record.kind != "BootstrapRecord" || record.api_version != "pailot.dev/v1" {
        return Err(Error::Record {
            path,
            message: "not a pailot.dev/v1 BootstrapRecord".into(),
        });
    }
    Ok(Some(record))
}

/// True when `state_dir` holds a valid, complete bootstrap record (the daemon applies only then).
pub fn bootstrap_complete(state_dir: &Path) -> bool {
    matches!(read_record(state_dir), Ok(Some(r)) if r.complete)
}

/// Write the record atomically into `state_dir` (a real path).
pub fn write_record(state_dir: &Path, record: &Record) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(record).expect("record serializes");
    text.push('\n');
    write_atomic(&state_dir.join(RECORD_FILE), text.as_bytes())
}

/// Remove the record from `state_dir`; true when there was one.
pub fn remove_record(state_dir: &Path) -> Result<bool, Error> {
    let path = state_dir.join(RECORD_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            action: "remove",
            path,
            source,
        }),
    }
}

/// Write `bytes` to `path` atomically: hidden temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pailot-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The upstream server of a registry host, for `hosts.toml` (`docker.io` is served by registry-1).
fn registry_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        r if r.starts_with("http://") || r.starts_with("https://") => r.into(),
        r => format!("https://{r}"),
    }
}

/// containerd `hosts.toml` for one registry: mirrors in order, then the upstream server.
pub fn hosts_toml(registry: &str, endpoints: &[String]) -> String {
    let mut s = String::from(
        "# Written by pailot bootstrap from the cluster file's mirrors; `pailot bootstrap --reset` removes it.\n",
    );
    s.push_str(&format!(
        "server = {}\n",
        toml_string(&registry_server(registry))
    ));
    for ep in endpoints {
        s.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_string(ep)
        ));
        if ep.starts_with("http://") {
            // Plain HTTP mirrors are only reachable when containerd is told not to insist on TLS.
            s.push_str("  skip_verify = true\n");
        }
    }
    s
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// The files bootstrap writes: static pods (`<static_pod_dir>/<name>.yaml`) and one `hosts.toml` per mirrored registry.
pub fn plan_files(
    static_pods: &[(String, String)],
    static_pod_dir: &str,
    mirrors: &BTreeMap<String, Vec<String>>,
) -> Vec<PlannedFile> {
    let mut files = Vec::new();
    let dir = static_pod_dir.trim_end_matches('/');
    for (name, yaml) in static_pods {
        files.push(PlannedFile {
            path: format!("{dir}/{name}.yaml"),
            content: yaml.as_bytes().to_vec(),
            what: format!("static pod {name}"),
        });
    }
    for (registry, endpoints) in mirrors {
        if endpoints.is_empty() {
            continue;
        }
        files.push(PlannedFile {
            path: format!("/etc/containerd/certs.d/{registry}/hosts.toml"),
            content: hosts_toml(registry, endpoints).into_bytes(),
            what: format!("mirror config {registry}"),
        });
    }
    files
}

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Updated,
    Unchanged,
    /// Written by an earlier run, no longer wanted, removed.
    Removed,
    /// Recorded, but changed since: left in place.
    Kept,
    /// Recorded, but already gone.
    Missing,
}

/// One file outcome, for the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileOutcome {
    pub path: String,
    pub action: FileAction,
    pub what: String,
}

/// Write the planned files under `root`, then remove files an earlier run wrote that are no longer
/// planned. Returns the outcomes and the files to record.
pub fn apply_files(
    root: &Path,
    planned: &[PlannedFile],
    previous: Option<&Record>,
    force: bool,
) -> Result<(Vec<FileOutcome>, Vec<RecordedFile>), Error> {
    // First decide for every file, so a conflict stops the run before anything is written.
    let mut decided = Vec::with_capacity(planned.len());
    for f in planned {
        let real = under_root(root, &f.path);
        let action = match std::fs::read(&real) {
            Ok(cur) if cur == f.content => FileAction::Unchanged,
            Ok(cur) => {
                let found = sha256_hex(&cur);
                let ours = previous.and_then(|r| r.file_sha(&f.path)) == Some(found.as_str());
                if !ours && !force {
                    return Err(Error::Foreign { path: real, found });
                }
                FileAction::Updated
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileAction::Created,
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path: real,
                    source,
                });
            }
        };
        decided.push((f, real, action));
    }
    let mut outcomes = Vec::new();
    let mut recorded = Vec::new();
    for (f, real, action) in decided {
        if action != FileAction::Unchanged {
            write_atomic(&real, &f.content)?;
        }
        let want = sha256_hex(&f.content);
        outcomes.push(FileOutcome {
            path: f.path.clone(),
            action,
            what: f.what.clone(),
        });
        recorded.push(RecordedFile {
            path: f.path.clone(),
            sha256: want,
        });
    }
    if let Some(prev) = previous {
        for old in &prev.files {
            if planned.iter().any(|p| p.path == old.path) {
                continue;
            }
            // A file changed since it was written is the operator's now: kept and no longer recorded.
            let action = remove_if_ours(root, old)?;
            outcomes.push(FileOutcome {
                path: old.path.clone(),
                action,
                what: "no longer rendered".into(),
            });
        }
    }
    Ok((outcomes, recorded))
}

/// Remove a recorded file when it still holds the recorded bytes.
fn remove_if_ours(root: &Path, file: &RecordedFile) -> Result<FileAction, Error> {
    let real = under_root(root, &file.path);
    match std::fs::read(&real) {
        Ok(cur) if sha256_hex(&cur) == file.sha256 => {
            std::fs::remove_file(&real).map_err(|source| Error::Io {
                action: "remove",
                path: real,
                source,
            })?;
            Ok(FileAction::Removed)
        }
        Ok(_) => Ok(FileAction::Kept),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileAction::Missing),
        Err(source) => Err(Error::Io {
            action: "read",
            path: real,
            source,
        }),
    }
}

/// Remove exactly the files the record lists, when they still hold the recorded bytes.
pub fn reset_files(root: &Path, record: &Record) -> Result<Vec<FileOutcome>, Error> {
    record
        .files
        .iter()
        .map(|f| {
            Ok(FileOutcome {
                path: f.path.clone(),
                action: remove_if_ours(root, f)?,
                what: String::new(),
            })
        })
        .collect()
}

/// Labels and annotations wanted on every machine's node: `Machine::node_labels()` plus
/// `pailot.dev/gpu-type` when the machine sets `gpuType`.
pub fn desired_node_meta(cluster: &crate::cluster::Cluster) -> Vec<NodeMeta> {
    cluster
        .machines
        .iter()
        .map(|m| {
            let mut annotations = BTreeMap::new();
            if let Some(t) = m.gpu_type.as_deref().filter(|t| !t.is_empty()) {
                annotations.insert(GPU_TYPE_ANNOTATION.to_string(), t.to_string());
            }
            NodeMeta {
                name: m.name.clone(),
                labels: m.node_labels(),
                annotations,
            }
        })
        .collect()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors() -> BTreeMap<String, Vec<String>> {
        let mut m = BTreeMap::new();
        m.insert(
            "docker.io".to_string(),
            vec!["http://127.0.0.1:5000".to_string()],
        );
        m
    }

    #[test]
    fn hosts_toml_lists_mirror_then_upstream() {
        let t = hosts_toml("docker.io", &["http://127.0.0.1:5000".into()]);
        assert!(
            t.contains("server = \"https://registry-1.docker.io\"\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
            "{t}"
        );
        assert!(hosts_toml("quay.io", &[]).contains("server = \"https://quay.io\""));
    }

    #[test]
    fn apply_is_idempotent_and_reset_removes_only_unchanged_files() {
        let root = tempfile::tempdir().unwrap();
        let pods = vec![("etcd".to_string(), "kind: Pod\n".to_string())];
        let plan = plan_files(&pods, "/etc/kubernetes/manifests", &mirrors());
        let (o, files) = apply_files(root.path(), &plan, None, false).unwrap();
        assert!(o.iter().all(|f| f.action == FileAction::Created), "{o:?}");
        let mut rec = Record::new("c", "m");
        rec.files = files;
        let (o2, _) = apply_files(root.path(), &plan, Some(&rec), false).unwrap();
        assert!(
            o2.iter().all(|f| f.action == FileAction::Unchanged),
            "{o2:?}"
        );
        // An operator edits the mirror config: reset keeps it and removes the pod.
        let toml = root
            .path()
            .join("etc/containerd/certs.d/docker.io/hosts.toml");
        std::fs::write(&toml, "edited").unwrap();
        let r = reset_files(root.path(), &rec).unwrap();
        assert_eq!(
            r.iter().map(|f| f.action).collect::<Vec<_>>(),
            vec![FileAction::Removed, FileAction::Kept]
        );
        assert!(
            !root
                .path()
                .join("etc/kubernetes/manifests/etcd.yaml")
                .exists()
        );
        assert!(toml.exists());
    }

    #[test]
    fn foreign_file_is_not_overwritten_without_force() {
        let root = tempfile::tempdir().unwrap();
        let plan = plan_files(
            &[
                ("apiserver".into(), "b\n".into()),
                ("etcd".into(), "a\n".into()),
            ],
            "/m",
            &BTreeMap::new(),
        );
        std::fs::create_dir_all(root.path().join("m")).unwrap();
        std::fs::write(root.path().join("m/etcd.yaml"), "theirs\n").unwrap();
        let err = apply_files(root.path(), &plan, None, false).unwrap_err();
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        // Nothing was written before the conflict was found.
        assert!(!root.path().join("m/apiserver.yaml").exists());
        let (o, _) = apply_files(root.path(), &plan, None, true).unwrap();
        assert_eq!(o[0].action, FileAction::Created);
        assert_eq!(o[1].action, FileAction::Updated);
    }

    #[test]
    fn files_no_longer_planned_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let plan = plan_files(&[], "/m", &mirrors());
        let (_, files) = apply_files(root.path(), &plan, None, false).unwrap();
        let mut rec = Record::new("c", "m");
        rec.files = files;
        let (o, recorded) = apply_files(root.path(), &[], Some(&rec), false).unwrap();
        assert_eq!(o[0].action, FileAction::Removed);
        assert!(recorded.is_empty());
    }

    #[test]
    fn record_round_trips_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!bootstrap_complete(dir.path()));
        let mut rec = Record::new("c", "m");
        write_record(dir.path(), &rec).unwrap();
        assert!(!bootstrap_complete(dir.path()));
        rec.complete = true;
        write_record(dir.path(), &rec).unwrap();
        assert!(bootstrap_complete(dir.path()));
        assert_eq!(read_record(dir.path()).unwrap().unwrap(), rec);
        std::fs::write(dir.path().join(RECORD_FILE), "{not json").unwrap();
        assert!(!bootstrap_complete(dir.path()));
        assert!(matches!(read_record(dir.path()), Err(Error::Record { .. })));
    }
}
