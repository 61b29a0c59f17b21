//! Daemon configuration: the raw file (`pailot.yaml`) validated once into `Config`.
//!
//! Nothing downstream re-parses strings: durations are `Duration`s, files were checked to exist,
//! secrets were read into `Secret`s (whose `Debug` never shows the value).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::InputError;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("failed to read daemon config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration (names the file, line/column or field).
    #[error(transparent)]
    Invalid(#[from] InputError),
}

/// The daemon configuration file as written (`apiVersion: pailot.dev/v1`, `kind: DaemonConfig`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    /// Always `pailot.dev/v1`.
    pub api_version: String,
    /// Always `DaemonConfig`.
    pub kind: String,
    /// The git repository to reconcile from.
    pub source: RawSource,
    /// Kubeconfig file; default: the in-cluster config or `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// How each reconcile applies, waits and prunes.
    #[serde(default)]
    pub reconcile: RawReconcile,
    /// HTTP server (metrics, health, status, webhook).
    #[serde(default)]
    pub server: RawServer,
    /// Where the checkout, `state.json` and the bootstrap record live (default `/var/lib/pailot`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Optional leader election through a coordination.k8s.io/v1 Lease.
    #[serde(default)]
    pub leader_election: RawLeaderElection,
    /// Limits of the helper processes that fetch and render (a commit cannot stop the daemon).
    #[serde(default)]
    pub helpers: RawHelpers,
    /// Where reconcile results, drift corrections, refused prunes and suspensions are sent (webhook,
    /// Slack, commit statuses); none by default.
    #[serde(default)]
    pub notifications: crate::notification::RawConfig,
    /// The reconcile history kept in the state directory (`pailot history`).
    #[serde(default)]
    pub history: RawHistory,
    /// Root of the host file system `pailot bootstrap` wrote to (its `--root`; default `/`): where the
    /// control-plane certificates are read for `pailot_certificate_expiry_timestamp_seconds`.
    #[serde(default)]
    pub host_root: Option<PathBuf>,
    /// Keys for SOPS-encrypted files in the repository.
    #[serde(default)]
    pub decryption: RawDecryption,
}

/// `history:` — how much of the reconcile history is kept.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawHistory {
    /// Reconciles kept (the oldest are dropped; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `helpers:` — bounds of each fetch or render helper process.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawHelpers {
    /// Wall-clock limit of one fetch or render, e.g. `60s` (default `60s`); the helper is killed after it.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Memory limit of one helper, a Kubernetes quantity, e.g. `1Gi` (default `1Gi`).
    #[serde(default)]
    pub memory: Option<String>,
}

/// `decryption:` — the age identity for SOPS-encrypted files (docs/secrets.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDecryption {
    /// age identity file (`age-keygen` output). Under systemd, `$CREDENTIALS_DIRECTORY/age-key`
    /// (the unit's `LoadCredential=age-key:…`); `$CREDENTIALS_DIRECTORY` at its start is expanded.
    /// It must not be readable by other users.
    #[serde(default)]
    pub age_key_file: Option<String>,
}

/// Validated decryption settings: only the key file's path (helper processes read the key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecryptionConfig {
    pub age_key_file: Option<PathBuf>,
}

impl DecryptionConfig {
    /// The identities a render uses.
    pub fn age_keys(&self) -> crate::sops::AgeKeys {
        self.age_key_file
            .clone()
            .map_or(crate::sops::AgeKeys::None, crate::sops::AgeKeys::File)
    }
}

/// `$CREDENTIALS_DIRECTORY` (or `${CREDENTIALS_DIRECTORY}`) at the start of `p`, from `env`.
fn expand_credentials(p: &str, env: Option<&str>) -> Result<PathBuf, String> {
    for var in ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"] {
        if let Some(rest) = p.strip_prefix(var) {
            let dir = env.filter(|d| !d.is_empty()).ok_or_else(|| {
                format!("{p} refers to $CREDENTIALS_DIRECTORY, which is not set (run the daemon from its systemd unit, whose LoadCredential= sets it)")
            })?;
            return Ok(PathBuf::from(format!("{dir}{rest}")));
        }
    }
    Ok(PathBuf::from(p))
}

/// `source:` — where the deployment repository is.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSource {
    /// `https://…`, `ssh://…`, `git@host:path`, `file:///…` or a local path.
    pub url: String,
    /// Branch, tag or commit to follow (default: branch `main`).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<RawRef>,
    /// Sub-directory of the repository holding charts/, overlays/, clusters/ (default: the root).
    #[serde(default)]
    pub path: Option<String>,
    /// Cluster file, relative to `path` (default `clusters/single-node.yaml`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Overlays replacing the cluster file's `overlays` list.
    #[serde(default)]
    pub overlays: Option<Vec<String>>,
    /// Poll interval for remote repositories, e.g. `60s` (default `60s`).
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// Random extra delay added to each poll, as a fraction of the interval (default 0.1).
    #[serde(default)]
    pub poll_jitter: Option<f64>,
    /// `auto`: watch a local repository's refs (inotify) in addition to polling; `off`: poll only
    /// (default `auto`; remotes are always only polled).
    #[serde(default)]
    pub watch: Option<SourceWatch>,
    /// Private SSH key for `ssh://` remotes.
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// File holding an HTTPS access token (never logged).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Commit signature verification; off when absent.
    #[serde(default)]
    pub verify: Option<RawVerify>,
}

/// Whether a local repository's refs are watched (`source.watch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceWatch {
    /// Watch local repositories (a path or `file://`); poll remotes.
    #[default]
    Auto,
    /// Never watch: every source is only polled.
    Off,
}

/// Exactly one of branch, tag or commit.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRef {
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
}

/// `source.verify:` — SSH commit signatures checked against git's `allowed_signers` format.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawVerify {
    pub allowed_signers_file: PathBuf,
}

/// `reconcile:` — apply options.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawReconcile {
    /// Delete objects that left the render (default true).
    #[serde(default)]
    pub prune: Option<bool>,
    /// Wait for charts to become healthy (default true).
    #[serde(default)]
    pub wait: Option<bool>,
    /// Limit for one apply + wait, e.g. `10m` (default `10m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Full drift sweep interval, e.g. `5m` (default `5m`).
    #[serde(default)]
    pub drift_interval: Option<String>,
    /// `correct` re-applies drifted objects, `warn` only reports (default `correct`).
    #[serde(default)]
    pub drift_mode: Option<DriftMode>,
    /// Refuse to prune more than this many objects in one reconcile (default 25).
    #[serde(default)]
    pub mass_prune_threshold: Option<usize>,
    /// Apply a render whose requests do not fit the machines (default false: refused as `over_budget`).
    #[serde(default)]
    pub allow_over_budget: Option<bool>,
    /// `onHealthFailure`: after a commit whose charts do not become healthy, re-apply the last healthy
    /// revision (the failure stays reported); `none` (default): keep retrying the new commit.
    #[serde(default)]
    pub rollback: Option<Rollback>,
}

/// What to do when a commit's charts do not become healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Rollback {
    /// Keep the new commit applied and retry it with backoff.
    #[default]
    None,
    /// Re-apply the last revision whose charts were all healthy, and refuse the failed commit until the ref moves.
    OnHealthFailure,
}

/// What the daemon does about drift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftMode {
    /// Re-apply the desired state.
    #[default]
    Correct,
    /// Report only.
    Warn,
}

/// `server:` — the HTTP listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawServer {
    /// Listen address (default `127.0.0.1:9464`).
    #[serde(default)]
    pub listen: Option<String>,
    /// File holding the webhook secret (GitHub/Gitea HMAC key or GitLab token); webhook off when absent.
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
}

/// `leaderElection:` — a coordination.k8s.io/v1 Lease.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLeaderElection {
    #[serde(default)]
    pub enabled: bool,
    /// Lease name (default `pailot`).
    #[serde(default)]
    pub lease_name: Option<String>,
    /// Lease namespace (default `kube-system`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Lease duration, e.g. `15s` (default `15s`).
    #[serde(default)]
    pub lease_duration: Option<String>,
}

pub use crate::secret::Secret;

/// The ref the daemon follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    Commit(String),
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// Where the repository is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepoLocation {
    /// A repository on this machine (a path or `file://`): watched with inotify.
    Local(PathBuf),
    /// A remote (`https`, `ssh`, `git@`): polled.
    Remote(String),
}

/// Validated source settings (they travel to the fetch helper as they are).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceConfig {
    pub location: RepoLocation,
    /// The URL as written (for messages and the fetch remote).
    pub url: String,
    pub git_ref: GitRef,
    /// Sub-path in the repository (empty = root).
    pub path: PathBuf,
    /// Cluster file relative to `path`.
    pub cluster: String,
    pub overlays: Option<Vec<String>>,
    pub poll_interval: Duration,
    /// Fraction of `poll_interval` added at random to each poll (0.0 ..= 1.0).
    pub poll_jitter: f64,
    /// Watch a local repository's refs (`auto`) or only poll (`off`).
    pub watch: SourceWatch,
    pub ssh_key_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub allowed_signers_file: Option<PathBuf>,
}

/// Validated reconcile settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileConfig {
    pub prune: bool,
    pub wait: bool,
    pub timeout: Duration,
    pub drift_interval: Duration,
    pub drift_mode: DriftMode,
    pub mass_prune_threshold: usize,
    pub allow_over_budget: bool,
    pub rollback: Rollback,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            prune: true,
            wait: true,
            timeout: Duration::from_secs(600),
            drift_interval: Duration::from_secs(300),
            drift_mode: DriftMode::Correct,
            mass_prune_threshold: 25,
            allow_over_budget: false,
            rollback: Rollback::None,
        }
    }
}

/// Validated server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub webhook_secret: Option<Secret>,
}

/// Validated leader-election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub lease_duration: Duration,
}

/// The validated daemon configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub source: SourceConfig,
    pub kubeconfig: Option<PathBuf>,
    pub reconcile: ReconcileConfig,
    pub server: ServerConfig,
    pub state_dir: PathBuf,
    /// `None` when leader election is off.
    pub leader_election: Option<LeaderConfig>,
    /// Bounds of each fetch/render helper process.
    pub helpers: crate::daemon::helper::Limits,
    pub notifications: crate::notification::Config,
    /// Reconciles kept in the history.
    pub history_limit: usize,
    /// Root of the host file system bootstrap wrote to.
    pub host_root: PathBuf,
    pub decryption: DecryptionConfig,
}

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pailot";

impl Config {
    /// Read and validate `path`; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Config::parse(&text, path)?)
    }

    /// Parse and validate `text` read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, InputError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        Config::validate(raw, file)
    }

    /// Validate a raw configuration read from `file`.
    pub fn validate(raw: RawConfig, file: &Path) -> Result<Config, InputError> {
        let err = |place: &str, msg: String| InputError::new(file, msg).place(place.to_string());
        if raw.api_version != "pailot.dev/v1" {
            return Err(err(
                "apiVersion",
                format!("expected pailot.dev/v1, found {:?}", raw.api_version),
            ));
        }
        if raw.kind != "DaemonConfig" {
            return Err(err(
                "kind",
                format!("expected DaemonConfig, found {:?}", raw.kind),
            ));
        }
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let must_exist = |place: &str, p: &Path| -> Result<PathBuf, InputError> {
            let full = resolve(p);
            if full.is_file() {
                Ok(full)
            } else {
                Err(err(
                    place,
                    format!("file {} does not exist", full.display()),
                ))
            }
        };
        let read_secret = |place: &str, p: &Path| -> Result<Secret, InputError> {
            let full = must_exist(place, p)?;
            Secret::read_file(&full).map_err(|e| err(place, e.to_string()))
        };

        // source
        let s = &raw.source;
        if crate::redact::url_has_password(&s.url) {
            return Err(err(
                "source.url",
                format!(
                    "{} carries a password or token; put the token in a file and name it in source.tokenFile \
                     (the URL appears in logs and /status, a token file never does)",
                    crate::redact::url_without_credentials(&s.url)
                ),
            ));
        }
        let location = classify_url(&s.url, &base).ok_or_else(|| {
            err(
                "source.url",
                format!("unsupported repository URL {:?}", s.url),
            )
        })?;
        let git_ref = match &s.git_ref {
            None => GitRef::Branch("main".into()),
            Some(r) => match (&r.branch, &r.tag, &r.commit) {
                (Some(b), None, None) if !b.is_empty() => GitRef::Branch(b.clone()),
                (None, Some(t), None) if !t.is_empty() => GitRef::Tag(t.clone()),
                (None, None, Some(c)) if is_commit_id(c) => GitRef::Commit(c.to_ascii_lowercase()),
                (None, None, Some(c)) => {
                    return Err(err(
                        "source.ref.commit",
                        format!("{c:?} is not a hex commit id"),
                    ));
                }
                _ => {
                    return Err(err(
                        "source.ref",
                        "set exactly one of branch, tag, commit".into(),
                    ));
                }
            },
        };
        let path = PathBuf::from(s.path.clone().unwrap_or_default());
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(err(
                "source.path",
                format!(
                    "{} must be relative and inside the repository",
                    path.display()
                ),
            ));
        }
        let poll_interval = crate::duration::parse(s.poll_interval.as_deref().unwrap_or("60s"))
            .map_err(|m| err("source.pollInterval", m))?;
        if poll_interval < Duration::from_secs(1) {
            return Err(err("source.pollInterval", "must be at least 1s".into()));
        }
        let poll_jitter = s.poll_jitter.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&poll_jitter) {
            return Err(err(
                "source.pollJitter",
                format!("{poll_jitter} is not between 0 and 1"),
            ));
        }
        let ssh_key_file = s
            .ssh_key_file
            .as_deref()
            .map(|p| must_exist("source.sshKeyFile", p))
            .transpose()?;
        let token = s
            .token_file
            .as_deref()
            .map(|p| read_secret("source.tokenFile", p))
            .transpose()?;
        let allowed_signers_file = s
            .verify
            .as_ref()
            .map(|v| must_exist("source.verify.allowedSignersFile", &v.allowed_signers_file))
            .transpose()?;
        let source = SourceConfig {
            location,
            url: s.url.clone(),
            git_ref,
            path,
            cluster: s
                .cluster
                .clone()
                .unwrap_or_else(|| "clusters/single-node.yaml".into()),
            overlays: s.overlays.clone(),
            poll_interval,
            poll_jitter,
            watch: s.watch.unwrap_or_default(),
            ssh_key_file,
            token,
            allowed_signers_file,
        };

        // reconcile
        let r = &raw.reconcile;
        let d = ReconcileConfig::default();
        let dur =
            |place: &str, v: &Option<String>, default: Duration| -> Result<Duration, InputError> {
                match v {
                    None => Ok(default),
                    Some(s) => crate::duration::parse(s).map_err(|m| err(place, m)),
                }
            };
        let reconcile = ReconcileConfig {
            prune: r.prune.unwrap_or(d.prune),
            wait: r.wait.unwrap_or(d.wait),
            timeout: dur("reconcile.timeout", &r.timeout, d.timeout)?,
            drift_interval: dur(
                "reconcile.driftInterval",
                &r.drift_interval,
                d.drift_interval,
            )?,
            drift_mode: r.drift_mode.unwrap_or_default(),
            mass_prune_threshold: r.mass_prune_threshold.unwrap_or(d.mass_prune_threshold),
            allow_over_budget: r.allow_over_budget.unwrap_or(d.allow_over_budget),
            rollback: r.rollback.unwrap_or_default(),
        };
        if reconcile.drift_interval < Duration::from_secs(1) {
            return Err(err("reconcile.driftInterval", "must be at least 1s".into()));
        }

        // server
        let listen_text = raw
            .server
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(
                "server.listen",
                format!("{listen_text:?} is not an address:port"),
            )
        })?;
        let webhook_secret = raw
            .server
            .webhook_secret_file
            .as_deref()
            .map(|p| read_secret("server.webhookSecretFile", p))
            .transpose()?;

        // leader election
        let le = &raw.leader_election;
        let leader_election = if le.enabled {
            let lease_duration = dur(
                "leaderElection.leaseDuration",
                &le.lease_duration,
                Duration::from_secs(15),
            )?;
            if lease_duration < Duration::from_secs(2) {
                return Err(err(
                    "leaderElection.leaseDuration",
                    "must be at least 2s".into(),
                ));
            }
            Some(LeaderConfig {
                lease_name: le.lease_name.clone().unwrap_or_else(|| "pailot".into()),
                namespace: le.namespace.clone().unwrap_or_else(|| "kube-system".into()),
                lease_duration,
            })
        } else {
            None
        };

        // helpers
        let hd = crate::daemon::helper::Limits::default();
        let helpers = crate::daemon::helper::Limits {
            time: dur("helpers.timeout", &raw.helpers.timeout, hd.time)?,
            memory: match &raw.helpers.memory {
                None => hd.memory,
                Some(q) => crate::quantity::parse_memory(q)
                    .map_err(|e| err("helpers.memory", format!("{q:?}: {e}")))?,
            },
        };
        if helpers.time < Duration::from_secs(1) {
            return Err(err("helpers.timeout", "must be at least 1s".into()));
        }
        if helpers.memory < 64 << 20 {
            return Err(err(
                "helpers.memory",
                "must be at least 64Mi (a helper needs that much to start)".into(),
            ));
        }
        // decryption: the key file must exist and be private to the daemon's user.
        let age_key_file = match &raw.decryption.age_key_file {
            None => None,
            Some(p) => {
                let place = "decryption.ageKeyFile";
                let expanded =
                    expand_credentials(p, std::env::var("CREDENTIALS_DIRECTORY").ok().as_deref())
                        .map_err(|m| err(place, m))?;
                let full = must_exist(place, &expanded)?;
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&full)
                        .map_err(|e| err(place, format!("failed to read {}: {e}", full.display())))?
                        .permissions(),
                );
                if mode & 0o004 != 0 {
                    return Err(err(
                        place,
                        format!(
                            "{} is readable by every user (mode {:o}): chmod 600 it, or give it to the daemon with systemd LoadCredential=",
                            full.display(),
                            mode & 0o777
                        ),
                    ));
                }
                Some(full)
            }
        };

        Ok(Config {
            file: file.to_path_buf(),
            source,
            kubeconfig: raw
                .kubeconfig
                .as_deref()
                .map(|p| must_exist("kubeconfig", p))
                .transpose()?,
            reconcile,
            server: ServerConfig {
                listen,
                webhook_secret,
            },
            state_dir: raw
                .state_dir
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            leader_election,
            helpers,
            notifications: raw.notifications.validate(file, &base, "notifications")?,
            host_root: raw
                .host_root
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| PathBuf::from("/")),
            history_limit: match raw.history.limit {
                Some(0) => return Err(err("history.limit", "must be at least 1".into())),
                Some(n) => n,
                None => crate::history::DEFAULT_LIMIT,
            },
            decryption: DecryptionConfig { age_key_file },
        })
    }

    /// Settings that a SIGHUP reload cannot change in place (the listener is already bound,
    /// the state directory holds the checkout); returns the first such field that differs.
    pub fn restart_only_change(&self, new: &Config) -> Option<&'static str> {
        if self.server.listen != new.server.listen {
            Some("server.listen")
        } else if self.state_dir != new.state_dir {
            Some("stateDir")
        } else if self.leader_election != new.leader_election {
            Some("leaderElection")
        } else if self.notifications != new.notifications {
            Some("notifications")
        } else {
            None
        }
    }
}

/// Classify a repository URL; `None` when the scheme is not supported.
fn classify_url(url: &str, base: &Path) -> Option<RepoLocation> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(RepoLocation::Local(PathBuf::from(rest)));
    }
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("ssh://") {
        return Some(RepoLocation::Remote(url.to_string()));
    }
    if url.contains("://") {
        return None;
    }
    // scp-like `git@host:path` (a colon before any slash).
    if let Some(colon) = url.find(':')
        && url[..colon].contains('@')
        && !url[..colon].contains('/')
    {
        return Some(RepoLocation::Remote(url.to_string()));
    }
    if url.is_empty() {
        return None;
    }
    let p = Path::new(url);
    Some(RepoLocation::Local(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }))
}

fn is_commit_id(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn yaml_error(file: &Path, err: &serde_saphyr::Error) -> InputError {
    let full = err.to_string();
    let first = full.lines().next().unwrap_or("").trim().to_string();
    let mut e = InputError::new(file, format!("invalid daemon config: {first}"));
    if let Some(loc) = err.location()
        && loc.line() > 0
    {
        e = e.at(loc.line() as usize, loc.column().max(1) as usize);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, InputError> {
        Config::parse(text, Path::new("/etc/pailot/pailot.yaml"))
    }

    const MINIMAL: &str = "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: https://git.example/deploy.git\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.source.location,
            RepoLocation::Remote("https://git.example/deploy.git".into())
        );
        assert_eq!(c.source.git_ref, GitRef::Branch("main".into()));
        assert_eq!(c.source.poll_interval, Duration::from_secs(60));
        assert_eq!(c.source.watch, SourceWatch::Auto);
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.reconcile, ReconcileConfig::default());
        assert!(c.leader_election.is_none());
    }

    #[test]
    fn unknown_field_names_the_line() {
        let e = parse(&format!("{MINIMAL}  polInterval: 30s\n")).unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("polInterval"), "{e}");
    }

    #[test]
    fn bad_durations_name_the_field() {
        let e = parse(&format!(
            "{MINIMAL}reconcile:\n  driftInterval: 5 minutes\n"
        ))
        .unwrap_err();
        assert_eq!(e.place.as_deref(), Some("reconcile.driftInterval"), "{e}");
    }

    #[test]
    fn source_watch_is_auto_or_off() {
        let c = parse(&format!(
            "{MINIMAL}  watch: off
"
        ))
        .unwrap();
        assert_eq!(c.source.watch, SourceWatch::Off);
        let e = parse(&format!(
            "{MINIMAL}  watch: never
"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("never"), "{e}");
    }

    #[test]
    fn a_token_in_the_url_is_refused_without_printing_it() {
        let e = parse(
            "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: https://user:hunter2TOKEN@git.example/deploy.git\n",
        )
        .unwrap_err();
        assert_eq!(e.place.as_deref(), Some("source.url"));
        assert!(e.message.contains("tokenFile"), "{e}");
        assert!(!e.to_string().contains("hunter2TOKEN"), "{e}");
        // A user name alone (ssh) is not a credential.
        parse("apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: ssh://git@git.example/deploy.git\n").unwrap();
    }

    #[test]
    fn helper_limits_and_gates_have_defaults_and_are_checked() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.helpers, crate::daemon::helper::Limits::default());
        assert!(!c.reconcile.allow_over_budget);
        assert_eq!(c.reconcile.rollback, Rollback::None);
        let c = parse(&format!(
            "{MINIMAL}helpers:\n  timeout: 30s\n  memory: 512Mi\nreconcile:\n  rollback: onHealthFailure\n  allowOverBudget: true\n"
        ))
        .unwrap();
        assert_eq!(c.helpers.time, Duration::from_secs(30));
        assert_eq!(c.helpers.memory, 512 << 20);
        assert_eq!(c.reconcile.rollback, Rollback::OnHealthFailure);
        assert!(c.reconcile.allow_over_budget);
        let e = parse(&format!("{MINIMAL}helpers:\n  memory: lots\n")).unwrap_err();
        assert_eq!(e.place.as_deref(), Some("helpers.memory"), "{e}");
    }

    #[test]
    fn two_refs_are_refused() {
        let e = parse(&format!("{MINIMAL}  ref: {{branch: main, tag: v1}}\n")).unwrap_err();
        assert_eq!(e.place.as_deref(), Some("source.ref"));
    }

    #[test]
    fn url_kinds() {
        let b = Path::new("/etc/pailot");
        assert_eq!(
            classify_url("file:///srv/repo", b),
            Some(RepoLocation::Local("/srv/repo".into()))
        );
        assert_eq!(
            classify_url("repo", b),
            Some(RepoLocation::Local("/etc/pailot/repo".into()))
        );
        assert_eq!(
            classify_url("git@host:org/repo.git", b),
            Some(RepoLocation::Remote("git@host:org/repo.git".into()))
        );
        assert_eq!(classify_url("ftp://x/y", b), None);
    }

    #[test]
    fn missing_secret_file_is_refused_and_secret_never_printed() {
        let e = parse(&format!(
            "{MINIMAL}server:\n  webhookSecretFile: /nonexistent/secret\n"
        ))
        .unwrap_err();
        assert_eq!(e.place.as_deref(), Some("server.webhookSecretFile"));
        let s = Secret::new(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
