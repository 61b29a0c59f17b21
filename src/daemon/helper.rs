//! Fetch and render in a short-lived helper process (`pailot daemon --helper`), not in the daemon.
//!
//! Why: libgit2 initialises OpenSSL when it starts (certificate store, error strings: about 1 MiB
//! of heap, and about 3 MiB of library pages touched), and a render allocates many small objects
//! at its peak. In the long-running daemon all of that would stay resident for its lifetime;
//! in a child it is handed back when the child exits. The daemon keeps only the result.
//!
//! Protocol: the daemon starts its own executable (`/proc/self/exe`, so that an upgrade in place
//! cannot pair a daemon with a helper of another version) as `pailot daemon --helper`, writes one
//! JSON [`Request`] to its stdin, and reads one JSON [`Response`] from its stdout. The helper logs
//! to stderr (the daemon's journal). The source token travels on the pipe, never in argv or the
//! environment. A helper that cannot be started or dies is an internal error of that stage.
//!
//! Without [`enable`] (the integration tests run the daemon inside the test binary), the same
//! work runs in-process on a blocking thread, as before.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::config::{GitRef, RepoLocation, Secret, SourceConfig};
use super::reconcile::Desired;
use super::source::git::{self, GitSource, Revision};
use super::source::verify;
use crate::diag::InputError;
use crate::manifest::{ChartInfo, ObjectId, RenderedObject, RenderedSet};
use crate::render::{ProvenanceMode, RenderRequest};

/// How to start the helper: the program and whether it logs JSON lines.
#[derive(Clone, Debug)]
struct Program {
    path: PathBuf,
    log_json: bool,
}

static PROGRAM: OnceLock<Program> = OnceLock::new();

/// Run fetches and renders in helper processes started from `program` (the running pailot binary).
pub fn enable(program: PathBuf, log_json: bool) {
    let _ = PROGRAM.set(Program {
        path: program,
        log_json,
    });
}

/// The running executable, as a path that stays valid if the file is replaced (Linux: `/proc/self/exe`).
pub fn own_executable() -> std::io::Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe.to_path_buf())
    } else {
        std::env::current_exe()
    }
}

/// Whether helper processes are in use.
pub fn enabled() -> bool {
    PROGRAM.get().is_some()
}

/// One job for the helper.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Fetch, verify and check out (`GitSource::sync_blocking`) into `dir` (`<stateDir>/source`).
    Sync { source: WireSource, dir: PathBuf },
    /// Render without field provenance.
    Render { render: WireRender },
    /// Render with provenance and say where each `(object, pointer)` got its value (drift records).
    Provenance {
        render: WireRender,
        fields: Vec<(ObjectId, String)>,
    },
}

/// The helper's answer.
#[derive(Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Synced {
        revision: Revision,
    },
    SyncFailed {
        error: WireSyncError,
    },
    Rendered {
        cluster: String,
        namespace: String,
        charts: Vec<WireChart>,
        objects: Vec<WireObject>,
    },
    RenderFailed {
        error: InputError,
    },
    Provenance {
        lines: Vec<Option<String>>,
    },
    /// The request itself could not be read.
    Invalid {
        message: String,
    },
}

/// `SourceConfig`, as far as a sync needs it. No `Debug`: it carries the token.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSource {
    local: Option<PathBuf>,
    url: String,
    git_ref: GitRef,
    path: PathBuf,
    ssh_key_file: Option<PathBuf>,
    /// Base64 of the token bytes.
    token: Option<String>,
    allowed_signers_file: Option<PathBuf>,
}

impl WireSource {
    pub fn new(c: &SourceConfig) -> Self {
        WireSource {
            local: match &c.location {
                RepoLocation::Local(p) => Some(p.clone()),
                RepoLocation::Remote(_) => None,
            },
            url: c.url.clone(),
            git_ref: c.git_ref.clone(),
            path: c.path.clone(),
            ssh_key_file: c.ssh_key_file.clone(),
            token: c
                .token
                .as_ref()
                .map(|t| base64::engine::general_purpose::STANDARD.encode(t.expose())),
            allowed_signers_file: c.allowed_signers_file.clone(),
        }
    }

    /// Whether fetching needs TLS (and so the system's CA certificates).
    fn needs_tls(&self) -> bool {
        self.local.is_none()
            && self
                .url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    fn into_config(self) -> Result<SourceConfig, String> {
        let token = match self.token {
            Some(t) => Some(Secret::new(
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(|_| "token is not base64".to_string())?,
            )),
            None => None,
        };
        Ok(SourceConfig {
            location: match self.local {
                Some(p) => RepoLocation::Local(p),
                None => RepoLocation::Remote(self.url.clone()),
            },
            url: self.url,
            git_ref: self.git_ref,
            path: self.path,
            cluster: String::new(),
            overlays: None,
            poll_interval: std::time::Duration::ZERO,
            poll_jitter: 0.0,
            // The helper only fetches once; watching is the daemon's business.
            watch: crate::daemon::config::SourceWatch::Off,
            ssh_key_file: self.ssh_key_file,
            token,
            allowed_signers_file: self.allowed_signers_file,
        })
    }
}

/// `RenderRequest` on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireRender {
    repo_root: PathBuf,
    cluster_file: PathBuf,
    overlays: Option<Vec<String>>,
    revision: Option<String>,
    /// The age identity file (only its path travels; the helper reads it).
    #[serde(default)]
    age_key_file: Option<PathBuf>,
}

impl From<&RenderRequest> for WireRender {
    fn from(r: &RenderRequest) -> Self {
        WireRender {
            repo_root: r.repo_root.clone(),
            cluster_file: r.cluster_file.clone(),
            overlays: r.overlays.clone(),
            revision: r.revision.clone(),
            age_key_file: match &r.age_keys {
                crate::sops::AgeKeys::File(p) => Some(p.clone()),
                _ => None,
            },
        }
    }
}

impl From<WireRender> for RenderRequest {
    fn from(w: WireRender) -> Self {
        RenderRequest {
            repo_root: w.repo_root,
            cluster_file: w.cluster_file,
            overlays: w.overlays,
            revision: w.revision,
            age_keys: w
                .age_key_file
                .map_or(crate::sops::AgeKeys::None, crate::sops::AgeKeys::File),
        }
    }
}

/// `git::Error` on the wire (libgit2's error keeps its text, not its codes: nothing reads them).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum WireSyncError {
    Fetch { url: String, message: String },
    RefNotFound { url: String, git_ref: String },
    Verify { error: verify::Error },
    Checkout { dir: PathBuf, detail: String },
}

impl From<git::Error> for WireSyncError {
    fn from(e: git::Error) -> Self {
        match e {
            git::Error::Fetch { url, source } => WireSyncError::Fetch {
                url,
                message: source.to_string(),
            },
            git::Error::RefNotFound { url, git_ref } => WireSyncError::RefNotFound { url, git_ref },
            git::Error::Verify(error) => WireSyncError::Verify { error },
            git::Error::Checkout { dir, detail } => WireSyncError::Checkout { dir, detail },
        }
    }
}

impl From<WireSyncError> for git::Error {
    fn from(e: WireSyncError) -> Self {
        match e {
            WireSyncError::Fetch { url, message } => git::Error::Fetch {
                url,
                source: git2::Error::from_str(&message),
            },
            WireSyncError::RefNotFound { url, git_ref } => git::Error::RefNotFound { url, git_ref },
            WireSyncError::Verify { error } => git::Error::Verify(error),
            WireSyncError::Checkout { dir, detail } => git::Error::Checkout { dir, detail },
        }
    }
}

/// A chart of the rendered set.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireChart {
    name: String,
    version: String,
    depends_on: Vec<String>,
}

/// One rendered object.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireObject {
    id: ObjectId,
    chart: String,
    template: String,
    object: serde_json::Value,
    /// Fields computed from values decrypted from sops files (masked in drift records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secret_fields: Vec<String>,
}

/// A rendered set (without provenance) as the response to a `Render` request.
fn rendered(cluster: &crate::cluster::Cluster, set: RenderedSet) -> Response {
    Response::Rendered {
        cluster: cluster.name.clone(),
        namespace: cluster.namespace.clone(),
        charts: set
            .charts
            .into_iter()
            .map(|c| WireChart {
                name: c.name,
                version: c.version,
                depends_on: c.depends_on,
            })
            .collect(),
        objects: {
            let mut secrets = set.provenance.secrets;
            set.objects
                .into_iter()
                .map(|(id, o)| WireObject {
                    secret_fields: secrets.remove(&id).map(Vec::from_iter).unwrap_or_default(),
                    id,
                    chart: o.chart,
                    template: o.template,
                    object: o.object,
                })
                .collect()
        },
    }
}

fn desired_from(
    cluster: String,
    namespace: String,
    charts: Vec<WireChart>,
    objects: Vec<WireObject>,
) -> Desired {
    let secrets = objects
        .iter()
        .filter(|o| !o.secret_fields.is_empty())
        .map(|o| (o.id.clone(), o.secret_fields.iter().cloned().collect()))
        .collect();
    Desired {
        set: RenderedSet {
            objects: objects
                .into_iter()
                .map(|o| {
                    (
                        o.id,
                        RenderedObject {
                            chart: o.chart,
                            template: o.template,
                            object: o.object,
                        },
                    )
                })
                .collect(),
            charts: charts
                .into_iter()
                .map(|c| ChartInfo {
                    name: c.name,
                    version: c.version,
                    depends_on: c.depends_on,
                })
                .collect(),
            provenance: crate::provenance::Provenance {
                objects: Default::default(),
                secrets,
            },
        },
        cluster,
        namespace,
    }
}

/// Answer one request (the helper process's whole job; also what the in-process tests call).
pub fn handle(req: Request) -> Response {
    match req {
        Request::Sync { source, dir } => match source.into_config() {
            Ok(cfg) => match GitSource::in_dir(cfg, dir).sync_blocking() {
                Ok(revision) => Response::Synced { revision },
                Err(e) => Response::SyncFailed { error: e.into() },
            },
            Err(message) => Response::Invalid { message },
        },
        Request::Render { render } => {
            match crate::render::render_with(&render.into(), ProvenanceMode::Skip) {
                Ok((cluster, set)) => rendered(&cluster, set),
                Err(error) => Response::RenderFailed { error },
            }
        }
        Request::Provenance { render, fields } => match crate::render::render(&render.into()) {
            Ok((cluster, set)) => {
                let desired = Desired {
                    set,
                    cluster: cluster.name.clone(),
                    namespace: cluster.namespace.clone(),
                };
                Response::Provenance {
                    lines: fields
                        .iter()
                        .map(|(id, pointer)| super::drift::provenance_of(&desired, id, pointer))
                        .collect(),
                }
            }
            Err(error) => Response::RenderFailed { error },
        },
    }
}

/// `pailot daemon --helper`: read one request from stdin, write the response to stdout.
pub fn serve(mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let response = match serde_json::from_slice::<Request>(&bytes) {
        Ok(req) => {
            drop(bytes);
            handle(req)
        }
        Err(e) => Response::Invalid {
            message: format!("unreadable helper request: {e}"),
        },
    };
    serde_json::to_writer(&mut output, &response)?;
    output.flush()
}

/// Run `req` in a helper process when enabled, else in-process on a blocking thread (through the
/// same JSON encoding, so that tests running the daemon in-process cover the protocol too).
async fn call(req: Request) -> Result<Response, String> {
    // libgit2 initialises OpenSSL with the system CA bundle (~35 ms to parse, per helper) even when
    // the remote is a path, file://, ssh or http: point it at an empty file then.
    let no_ca_bundle = matches!(&req, Request::Sync { source, .. } if !source.needs_tls());
    let input = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    drop(req);
    let output = match PROGRAM.get() {
        Some(program) => run_helper(program, input, no_ca_bundle).await?,
        None => tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            serve(&input[..], &mut out).map(|()| out)
        })
        .await
        .map_err(|e| format!("task failed: {e}"))?
        .map_err(|e| e.to_string())?,
    };
    serde_json::from_slice(&output).map_err(|e| format!("unreadable helper response: {e}"))
}

/// Start the helper, feed it `input`, and return what it wrote to stdout.
async fn run_helper(
    program: &Program,
    input: Vec<u8>,
    no_ca_bundle: bool,
) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new(&program.path);
    cmd.args(["daemon", "--helper"]);
    if no_ca_bundle {
        cmd.env("SSL_CERT_FILE", "/dev/null");
    }
    if program.log_json {
        cmd.arg("--log-json");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.path.display()))?;
    let mut stdin = child.stdin.take().ok_or("helper has no stdin")?;
    let write = async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(|e| format!("helper failed: {e}"))?;
    if !output.status.success() {
        return Err(format!("helper exited with {}", output.status));
    }
    written.map_err(|e| format!("cannot write to the helper: {e}"))?;
    Ok(output.stdout)
}

/// Fetch, verify and check out `source` into `dir` (see `GitSource::sync`).
pub async fn sync(source: &SourceConfig, dir: &Path) -> Result<Revision, git::Error> {
    let internal = |detail: String| git::Error::Checkout {
        dir: dir.to_path_buf(),
        detail,
    };
    match call(Request::Sync {
        source: WireSource::new(source),
        dir: dir.to_path_buf(),
    })
    .await
    .map_err(internal)?
    {
        Response::Synced { revision } => Ok(revision),
        Response::SyncFailed { error } => Err(error.into()),
        Response::Invalid { message } => Err(internal(message)),
        _ => Err(internal("unexpected helper response".into())),
    }
}

/// Why a render through [`render`] failed.
pub enum RenderFailure {
    /// The repository's input is wrong (file, place, message).
    Input(InputError),
    /// The helper or its task failed.
    Internal(String),
}

/// Render `req` without provenance.
pub async fn render(req: &RenderRequest) -> Result<Desired, RenderFailure> {
    match call(Request::Render { render: req.into() })
        .await
        .map_err(RenderFailure::Internal)?
    {
        Response::Rendered {
            cluster,
            namespace,
            charts,
            objects,
        } => Ok(desired_from(cluster, namespace, charts, objects)),
        Response::RenderFailed { error } => Err(RenderFailure::Input(error)),
        Response::Invalid { message } => Err(RenderFailure::Internal(message)),
        _ => Err(RenderFailure::Internal("unexpected helper response".into())),
    }
}

/// Render `req` with provenance and return the provenance line of each `(object, pointer)`.
pub async fn provenance(
    req: &RenderRequest,
    fields: Vec<(ObjectId, String)>,
) -> Result<Vec<Option<String>>, String> {
    match call(Request::Provenance {
        render: req.into(),
        fields,
    })
    .await?
    {
        Response::Provenance { lines } => Ok(lines),
        Response::RenderFailed { error } => Err(error.to_string()),
        Response::Invalid { message } => Err(message),
        _ => Err("unexpected helper response".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: git::Error) -> git::Error {
        let wire = WireSyncError::from(e);
        let json = serde_json::to_string(&wire).unwrap();
        serde_json::from_str::<WireSyncError>(&json).unwrap().into()
    }

    #[test]
    fn sync_errors_keep_their_kind_and_message_across_the_pipe() {
        let fetch = git::Error::Fetch {
            url: "https://example.com/r.git".into(),
            source: git2::Error::new(
                git2::ErrorCode::GenericError,
                git2::ErrorClass::Net,
                "failed to resolve address",
            ),
        };
        let text = fetch.to_string();
        let back = round_trip(fetch);
        assert!(matches!(back, git::Error::Fetch { .. }), "{back:?}");
        assert_eq!(back.to_string(), text);
        assert!(text.contains("failed to resolve address"), "{text}");

        let missing = git::Error::RefNotFound {
            url: "/srv/repo".into(),
            git_ref: "branch main".into(),
        };
        assert_eq!(
            round_trip(missing).to_string(),
            "branch main not found in /srv/repo"
        );

        let unsigned = git::Error::Verify(verify::Error::Unsigned {
            commit: "abc".into(),
        });
        match round_trip(unsigned) {
            git::Error::Verify(verify::Error::Unsigned { commit }) => assert_eq!(commit, "abc"),
            other => panic!("{other:?}"),
        }

        let checkout = git::Error::Checkout {
            dir: "/var/lib/pailot/source".into(),
            detail: "disk full".into(),
        };
        assert!(
            matches!(round_trip(checkout), git::Error::Checkout { detail, .. } if detail == "disk full")
        );
    }

    #[test]
    fn the_token_travels_as_base64_and_comes_back_as_the_same_secret() {
        let cfg = SourceConfig {
            location: RepoLocation::Remote("https://example.com/r.git".into()),
            url: "https://example.com/r.git".into(),
            git_ref: GitRef::Tag("v1".into()),
            path: "deploy".into(),
            cluster: "clusters/a.yaml".into(),
            overlays: None,
            poll_interval: std::time::Duration::from_secs(60),
            poll_jitter: 0.1,
            watch: crate::daemon::config::SourceWatch::Auto,
            ssh_key_file: Some("/etc/pailot/key".into()),
            token: Some(Secret::new(b"s3cr\xffet".to_vec())),
            allowed_signers_file: None,
        };
        let json = serde_json::to_string(&WireSource::new(&cfg)).unwrap();
        assert!(!json.contains("s3cr"), "{json}");
        let back = serde_json::from_str::<WireSource>(&json)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(back.token, cfg.token);
        assert_eq!(back.location, cfg.location);
        assert_eq!(back.git_ref, cfg.git_ref);
        assert_eq!(back.path, cfg.path);
        assert_eq!(back.ssh_key_file, cfg.ssh_key_file);
    }

    #[test]
    fn only_https_remotes_need_the_ca_bundle() {
        let wire = |location: RepoLocation, url: &str| {
            WireSource::new(&SourceConfig {
                location,
                url: url.into(),
                git_ref: GitRef::Branch("main".into()),
                path: "".into(),
                cluster: String::new(),
                overlays: None,
                poll_interval: std::time::Duration::ZERO,
                poll_jitter: 0.0,
                watch: crate::daemon::config::SourceWatch::Auto,
                ssh_key_file: None,
                token: None,
                allowed_signers_file: None,
            })
        };
        let remote = |u: &str| wire(RepoLocation::Remote(u.into()), u);
        assert!(remote("https://github.com/o/r.git").needs_tls());
        assert!(remote("HTTPS://github.com/o/r.git").needs_tls());
        assert!(!remote("ssh://git@github.com/o/r.git").needs_tls());
        assert!(!remote("git@github.com:o/r.git").needs_tls());
        assert!(!remote("http://gitea.local/o/r.git").needs_tls());
        assert!(!wire(RepoLocation::Local("/srv/r".into()), "file:///srv/r").needs_tls());
    }

    #[test]
    fn an_unreadable_request_gets_an_invalid_response_not_a_crash() {
        let mut out = Vec::new();
        serve(&b"{\"op\":\"dance\"}"[..], &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"], "invalid");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("unreadable helper request"),
            "{v}"
        );
    }
}
