//! Host bootstrap: writes the PKI, kubeconfigs, kubelet/containerd/CNI configuration, control-plane static
//! pods and registry mirrors, labels nodes, and keeps a record (`<state-dir>/bootstrap.json`) of exactly
//! what it did so `--reset` can undo only that.
//!
//! Guarantees: every file is written atomically (hidden temp file in the same directory, fsync, rename;
//! kubelet ignores dot files in its static pod directory) with its mode (keys and kubeconfigs 0600); a file
//! already holding the wanted bytes is not touched, so a second run changes nothing; a file pailot did not
//! write (absent from the record, or changed since) is never overwritten or removed unless forced, and one
//! it replaced is kept under `<state-dir>/originals/` and restored by `--reset`; every path written stays
//! under `--root` (no `..`, no symlink out of it).

pub mod host;
pub mod kubeconfig;
pub mod nodes;
pub mod pki;

use std::collections::BTreeMap;
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
    /// A path to write would leave the target root.
    #[error(
        "refusing to write {path}: {why} (every path bootstrap writes stays under --root {root})"
    )]
    Escape {
        path: String,
        root: PathBuf,
        why: String,
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
    /// Written 0600 (keys, kubeconfigs) instead of 0644.
    pub private: bool,
    /// A credential (certificate, key, kubeconfig): removed by `--reset` only with `--include-pki`.
    pub pki: bool,
    /// sha256 of contents pailot may replace without `--force` (a distribution's default file); the
    /// original is kept and `--reset` restores it.
    pub replaces: Vec<String>,
}

impl PlannedFile {
    /// A plain configuration file (0644, not a credential).
    pub fn config(
        path: impl Into<String>,
        content: impl Into<Vec<u8>>,
        what: impl Into<String>,
    ) -> Self {
        PlannedFile {
            path: path.into(),
            content: content.into(),
            what: what.into(),
            private: false,
            pki: false,
            replaces: vec![],
        }
    }

    /// A credential: certificate (0644) or key/kubeconfig (0600), kept by a plain `--reset`.
    pub fn credential(
        path: impl Into<String>,
        content: impl Into<Vec<u8>>,
        what: impl Into<String>,
        private: bool,
    ) -> Self {
        PlannedFile {
            private,
            pki: true,
            ..PlannedFile::config(path, content, what)
        }
    }

    fn mode(&self) -> u32 {
        if self.private { 0o600 } else { 0o644 }
    }
}

/// One file bootstrap wrote, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFile {
    /// Host path (absolute on the host).
    pub path: String,
    pub sha256: String,
    /// A credential: kept by `--reset` unless `--include-pki`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pki: bool,
    /// sha256 of the file this one replaced, kept as `<state-dir>/originals/<sha256>`; `--reset` restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
}

/// A bootstrap step that did not happen, as recorded for the daemon and `pailot status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// A preflight check failed (bootstrap stopped before writing).
    Preflight,
    /// Host files could not be written (a conflict with a file pailot did not write, an I/O error).
    Files,
    /// The host's containerd configuration does not import pailot's drop-in (mirrors, cgroups not in effect).
    ContainerdConfig,
    /// This worker has no kubelet credentials (`/etc/kubernetes/kubelet.conf` from the k8s-master).
    KubeletCredentials,
    /// Restarting containerd or the kubelet after their configuration changed failed.
    ServiceRestart,
    /// The API steps were skipped (`--skip-api`).
    ApiSkipped,
    /// The API server did not answer.
    ApiServer,
    /// This machine's node did not register.
    NodeRegistration,
    /// Node labels could not be set.
    NodeLabels,
    /// `--reset` ran but kept the credentials (`--include-pki` removes them).
    Reset,
    /// A record written by an older pailot that was incomplete without saying why.
    Unknown,
}

impl Step {
    /// The word used in messages and metric labels (bounded).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Files => "files",
            Step::ContainerdConfig => "containerd_config",
            Step::KubeletCredentials => "kubelet_credentials",
            Step::ServiceRestart => "service_restart",
            Step::ApiSkipped => "api_skipped",
            Step::ApiServer => "api_server",
            Step::NodeRegistration => "node_registration",
            Step::NodeLabels => "node_labels",
            Step::Reset => "reset",
            Step::Unknown => "unknown",
        }
    }
}

/// What is missing, and why (never a secret: file paths, check names, API error text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Missing {
    pub step: Step,
    pub detail: String,
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
    /// `managed` or `external` (what the cluster file said when this ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<crate::cluster::ControlPlane>,
    /// True when every step ran, the API ones included (false after `--skip-api`).
    pub complete: bool,
    /// The steps that did not happen (empty when complete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<Missing>,
    /// Preflight warnings of the last run (`mirror/docker.io: ... not reachable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
            control_plane: None,
            complete: false,
            incomplete: vec![],
            warnings: vec![],
            files: vec![],
            nodes: vec![],
            updated_at_unix: 0,
        }
    }
}

/// `<root>/<host path>` (for reading; writes go through [`checked_under_root`]).
pub fn under_root(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

/// `path` with its deepest existing ancestor resolved (symlinks followed) and the rest appended.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = vec![];
    let mut cur = path.to_path_buf();
    loop {
        if let Ok(r) = std::fs::canonicalize(&cur) {
            return rest.iter().rev().fold(r, |acc: PathBuf, c| acc.join(c));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// `<root>/<host path>` for a path bootstrap writes or removes: the host path must be absolute without
/// `.`/`..` components, and no existing directory on the way may resolve (through a symlink) outside `root`.
pub fn checked_under_root(root: &Path, host_path: &str) -> Result<PathBuf, Error> {
    let escape = |why: &str| Error::Escape {
        path: host_path.to_string(),
        root: root.to_path_buf(),
        why: why.to_string(),
    };
    if !host_path.starts_with('/') {
        return Err(escape("not an absolute host path"));
    }
    if host_path
        .split('/')
        .any(|c| c == ".." || c == "." || c.contains('\0'))
    {
        return Err(escape("it has a '.' or '..' component"));
    }
    let real = under_root(root, host_path);
    let root_real = resolve_existing_prefix(root);
    // The deepest directory on the way that exists decides where the write really lands; when that is
    // above the root, the root does not exist yet and everything is created inside it.
    let mut dir = real.parent();
    while let Some(d) = dir {
        match std::fs::canonicalize(d) {
            Ok(resolved) => {
                if !resolved.starts_with(&root_real) && !root_real.starts_with(&resolved) {
                    return Err(escape(&format!(
                        "{} resolves to {}",
                        d.display(),
                        resolved.display()
                    )));
                }
                break;
            }
            Err(_) => dir = d.parent(),
        }
    }
    // The file itself, when it is a symlink, must not point out either.
    if let Ok(meta) = std::fs::symlink_metadata(&real)
        && meta.file_type().is_symlink()
    {
        let resolved = std::fs::canonicalize(&real).unwrap_or_default();
        if !resolved.starts_with(&root_real) {
            return Err(escape(&format!(
                "it is a symlink to {}",
                resolved.display()
            )));
        }
    }
    Ok(real)
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

/// Where bootstrap stands on this host, for the daemon (`pailot_bootstrap_complete`, `/status`, the
/// `PailotBootstrapIncomplete` alert): read from the record in `state_dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum BootstrapState {
    /// No record: bootstrap never ran here, or was reset.
    NotRun,
    /// The record exists but cannot be read.
    Invalid { message: String },
    /// Bootstrap ran; these steps are missing.
    Incomplete {
        missing: Vec<Missing>,
        warnings: Vec<String>,
    },
    /// Every step ran (warnings, such as an unreachable mirror, do not make it incomplete).
    Complete { warnings: Vec<String> },
}

impl BootstrapState {
    pub fn is_complete(&self) -> bool {
        matches!(self, BootstrapState::Complete { .. })
    }

    /// One line for logs and alert text: `complete`, or what is missing (`api_server: timed out ...; ...`).
    pub fn summary(&self) -> String {
        match self {
            BootstrapState::NotRun => "bootstrap has not run on this host (no record)".into(),
            BootstrapState::Invalid { message } => {
                format!("bootstrap record unreadable: {message}")
            }
            BootstrapState::Incomplete { missing, .. } => missing
                .iter()
                .map(|m| format!("{}: {}", m.step.as_str(), m.detail))
                .collect::<Vec<_>>()
                .join("; "),
            BootstrapState::Complete { .. } => "complete".into(),
        }
    }
}

/// Read [`BootstrapState`] from `state_dir` (a real path).
pub fn bootstrap_state(state_dir: &Path) -> BootstrapState {
    match read_record(state_dir) {
        Ok(None) => BootstrapState::NotRun,
        Err(e) => BootstrapState::Invalid {
            message: e.to_string(),
        },
        Ok(Some(r)) if r.complete => BootstrapState::Complete {
            warnings: r.warnings,
        },
        Ok(Some(r)) => {
            let missing = if r.incomplete.is_empty() {
                vec![Missing {
                    step: Step::Unknown,
                    detail: "the record says incomplete without naming a step".into(),
                }]
            } else {
                r.incomplete
            };
            BootstrapState::Incomplete {
                missing,
                warnings: r.warnings,
            }
        }
    }
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

/// Write `bytes` to `path` atomically (mode 0644): hidden temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the file mode `mode` (set exactly, whatever the umask).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    crate::atomic_file::write(path, bytes, mode).map_err(|e| Error::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
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
        files.push(PlannedFile::config(
            format!("{dir}/{name}.yaml"),
            yaml.as_bytes(),
            format!("static pod {name}"),
        ));
    }
    for (registry, endpoints) in mirrors {
        if endpoints.is_empty() {
            continue;
        }
        files.push(PlannedFile::config(
            format!("{}/{registry}/hosts.toml", host::CERTS_D),
            hosts_toml(registry, endpoints),
            format!("mirror config {registry}"),
        ));
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
    /// Written over a file pailot did not write; `--reset` puts that one back.
    Replaced,
    /// Removed, and the file it had replaced put back.
    Restored,
    /// Recorded, but changed since: left in place.
    Kept,
    /// A credential kept by `--reset` (remove it with `--include-pki`).
    KeptPki,
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

/// Directory (under the state directory) keeping files bootstrap replaced, named by their sha256.
pub const ORIGINALS_DIR: &str = "originals";

/// Write the planned files under `root`, then remove files an earlier run wrote that are no longer
/// planned. A file pailot did not write is replaced only with `force` or when its sha256 is in the
/// planned file's `replaces`; its bytes are then kept in `<state_dir>/originals/` (a real path) for
/// `--reset`. Returns the outcomes and the files to record.
pub fn apply_files(
    root: &Path,
    state_dir: &Path,
    planned: &[PlannedFile],
    previous: Option<&Record>,
    force: bool,
) -> Result<(Vec<FileOutcome>, Vec<RecordedFile>), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    // First decide for every file, so a conflict stops the run before anything is written.
    let mut decided = Vec::with_capacity(planned.len());
    for f in planned {
        let real = checked_under_root(root, &f.path)?;
        let prev = previous.and_then(|r| r.files.iter().find(|p| p.path == f.path));
        let mut original = prev.and_then(|p| p.original.clone());
        let action = match std::fs::read(&real) {
            Ok(cur) if cur == f.content => {
                let mode_ok = std::fs::metadata(&real)
                    .map(|m| m.permissions().mode() & 0o777 == f.mode())
                    .unwrap_or(false);
                if mode_ok {
                    FileAction::Unchanged
                } else {
                    FileAction::Updated
                }
            }
            Ok(cur) => {
                let found = sha256_hex(&cur);
                let ours = prev.map(|p| p.sha256.as_str()) == Some(found.as_str());
                if ours {
                    FileAction::Updated
                } else if force || f.replaces.contains(&found) {
                    original = Some(found);
                    FileAction::Replaced
                } else {
                    return Err(Error::Foreign { path: real, found });
                }
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
        decided.push((f, real, action, original));
    }
    let mut outcomes = Vec::new();
    let mut recorded = Vec::new();
    for (f, real, action, original) in decided {
        if action == FileAction::Replaced {
            let cur = std::fs::read(&real).map_err(|source| Error::Io {
                action: "read",
                path: real.clone(),
                source,
            })?;
            let sha = sha256_hex(&cur);
            write_atomic_mode(&state_dir.join(ORIGINALS_DIR).join(&sha), &cur, 0o600)?;
        }
        if action != FileAction::Unchanged {
            write_atomic_mode(&real, &f.content, f.mode())?;
        }
        outcomes.push(FileOutcome {
            path: f.path.clone(),
            action,
            what: f.what.clone(),
        });
        recorded.push(RecordedFile {
            path: f.path.clone(),
            sha256: sha256_hex(&f.content),
            pki: f.pki,
            original,
        });
    }
    if let Some(prev) = previous {
        for old in &prev.files {
            if planned.iter().any(|p| p.path == old.path) {
                continue;
            }
            // A file changed since it was written is the operator's now: kept and no longer recorded.
            let action = remove_if_ours(root, state_dir, old)?;
            outcomes.push(FileOutcome {
                path: old.path.clone(),
                action,
                what: "no longer rendered".into(),
            });
        }
    }
    Ok((outcomes, recorded))
}

/// Remove a recorded file when it still holds the recorded bytes (putting back what it replaced).
fn remove_if_ours(root: &Path, state_dir: &Path, file: &RecordedFile) -> Result<FileAction, Error> {
    let real = checked_under_root(root, &file.path)?;
    match std::fs::read(&real) {
        Ok(cur) if sha256_hex(&cur) == file.sha256 => {
            if let Some(orig) = &file.original {
                let kept = state_dir.join(ORIGINALS_DIR).join(orig);
                if let Ok(bytes) = std::fs::read(&kept)
                    && sha256_hex(&bytes) == *orig
                {
                    write_atomic(&real, &bytes)?;
                    let _ = std::fs::remove_file(&kept);
                    return Ok(FileAction::Restored);
                }
            }
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

/// Remove exactly the files the record lists, when they still hold the recorded bytes; credentials only
/// with `include_pki`. Returns the outcomes and the files still recorded (the credentials kept).
pub fn reset_files(
    root: &Path,
    state_dir: &Path,
    record: &Record,
    include_pki: bool,
) -> Result<(Vec<FileOutcome>, Vec<RecordedFile>), Error> {
    let mut outcomes = vec![];
    let mut still = vec![];
    for f in &record.files {
        let action = if f.pki && !include_pki {
            still.push(f.clone());
            FileAction::KeptPki
        } else {
            remove_if_ours(root, state_dir, f)?
        };
        outcomes.push(FileOutcome {
            path: f.path.clone(),
            action,
            what: String::new(),
        });
    }
    Ok((outcomes, still))
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
        let state = root.path().join("state");
        let (o, files) = apply_files(root.path(), &state, &plan, None, false).unwrap();
        assert!(o.iter().all(|f| f.action == FileAction::Created), "{o:?}");
        let mut rec = Record::new("c", "m");
        rec.files = files;
        let (o2, _) = apply_files(root.path(), &state, &plan, Some(&rec), false).unwrap();
        assert!(
            o2.iter().all(|f| f.action == FileAction::Unchanged),
            "{o2:?}"
        );
        // An operator edits the mirror config: reset keeps it and removes the pod.
        let toml = root
            .path()
            .join("etc/containerd/certs.d/docker.io/hosts.toml");
        std::fs::write(&toml, "edited").unwrap();
        let (r, _) = reset_files(root.path(), &state, &rec, false).unwrap();
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
        let state = root.path().join("state");
        let err = apply_files(root.path(), &state, &plan, None, false).unwrap_err();
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        // Nothing was written before the conflict was found.
        assert!(!root.path().join("m/apiserver.yaml").exists());
        let (o, files) = apply_files(root.path(), &state, &plan, None, true).unwrap();
        assert_eq!(o[0].action, FileAction::Created);
        assert_eq!(o[1].action, FileAction::Replaced);
        // Reset puts the replaced file back.
        let mut rec = Record::new("c", "m");
        rec.files = files;
        let (r, _) = reset_files(root.path(), &state, &rec, false).unwrap();
        assert_eq!(r[1].action, FileAction::Restored);
        assert_eq!(
            std::fs::read_to_string(root.path().join("m/etcd.yaml")).unwrap(),
            "theirs\n"
        );
    }

    #[test]
    fn files_no_longer_planned_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let plan = plan_files(&[], "/m", &mirrors());
        let state = root.path().join("state");
        let (_, files) = apply_files(root.path(), &state, &plan, None, false).unwrap();
        let mut rec = Record::new("c", "m");
        rec.files = files;
        let (o, recorded) = apply_files(root.path(), &state, &[], Some(&rec), false).unwrap();
        assert_eq!(o[0].action, FileAction::Removed);
        assert!(recorded.is_empty());
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        for bad in [
            "/etc/containerd/certs.d/../../../../x/hosts.toml",
            "relative/x",
            "/a/./b",
        ] {
            let e = checked_under_root(root.path(), bad).unwrap_err();
            assert!(matches!(e, Error::Escape { .. }), "{bad}: {e}");
        }
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc/containerd")).unwrap();
        let e =
            checked_under_root(root.path(), "/etc/containerd/certs.d/x/hosts.toml").unwrap_err();
        assert!(e.to_string().contains("resolves to"), "{e}");
        let plan = vec![PlannedFile::config(
            "/etc/containerd/certs.d/x/hosts.toml",
            "x",
            "mirror",
        )];
        assert!(apply_files(root.path(), &root.path().join("s"), &plan, None, true).is_err());
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside the root"
        );
        assert!(checked_under_root(root.path(), "/etc/kubernetes/pki/ca.key").is_ok());
    }

    #[test]
    fn keys_are_written_0600_and_a_wrong_mode_is_repaired() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let plan = vec![PlannedFile::credential("/pki/ca.key", "k", "key ca", true)];
        apply_files(root.path(), &state, &plan, None, false).unwrap();
        let key = root.path().join("pki/ca.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut rec = Record::new("c", "m");
        rec.files = vec![RecordedFile {
            path: "/pki/ca.key".into(),
            sha256: sha256_hex(b"k"),
            pki: true,
            original: None,
        }];
        let (o, _) = apply_files(root.path(), &state, &plan, Some(&rec), false).unwrap();
        assert_eq!(o[0].action, FileAction::Updated);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A plain reset keeps credentials; --include-pki removes them.
        let (r, still) = reset_files(root.path(), &state, &rec, false).unwrap();
        assert_eq!(r[0].action, FileAction::KeptPki);
        assert_eq!(still.len(), 1);
        assert!(key.exists());
        let (r, still) = reset_files(root.path(), &state, &rec, true).unwrap();
        assert_eq!(r[0].action, FileAction::Removed);
        assert!(still.is_empty() && !key.exists());
    }

    #[test]
    fn state_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(bootstrap_state(dir.path()), BootstrapState::NotRun);
        let mut rec = Record::new("c", "m");
        rec.incomplete = vec![Missing {
            step: Step::ApiServer,
            detail: "timed out after 300 s".into(),
        }];
        rec.warnings = vec!["mirror/docker.io: http://10.0.0.9:5000 not reachable".into()];
        write_record(dir.path(), &rec).unwrap();
        let st = bootstrap_state(dir.path());
        assert!(!st.is_complete());
        assert_eq!(st.summary(), "api_server: timed out after 300 s");
        rec.complete = true;
        rec.incomplete.clear();
        write_record(dir.path(), &rec).unwrap();
        assert_eq!(
            bootstrap_state(dir.path()),
            BootstrapState::Complete {
                warnings: rec.warnings.clone()
            }
        );
        std::fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        assert!(matches!(
            bootstrap_state(dir.path()),
            BootstrapState::Invalid { .. }
        ));
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
