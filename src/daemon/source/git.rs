//! Git source: fetches the configured ref into `<stateDir>/source`, verifies it, and checks the revision out.
//!
//! libgit2 is blocking; the daemon runs `GitSource::sync` in a helper process (`daemon::helper`, job
//! [`SyncJob`]), so the daemon itself never initialises libgit2 and OpenSSL. Errors are plain data, so
//! they cross the helper's pipe as what they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::verify;
use crate::daemon::config::{GitRef, RepoLocation, SourceConfig};
use crate::failure::{Failure, Reason, Stage};

/// Why a sync failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Error {
    /// The remote could not be reached or refused the fetch (retried with backoff).
    #[error("failed to fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The configured branch, tag or commit does not exist (waits for a change).
    #[error("{git_ref} not found in {url}")]
    RefNotFound { url: String, git_ref: String },
    /// The commit was refused by signature verification (waits for a change).
    #[error(transparent)]
    Verify(#[from] verify::Error),
    /// The local mirror or checkout could not be written (a full disk, permissions).
    #[error("failed to write under {dir}: {detail}")]
    Checkout { dir: PathBuf, detail: String },
}

impl Error {
    /// The stage and reason word of this error (see `crate::failure`).
    pub fn classify(&self) -> (Stage, Reason) {
        match self {
            Error::Fetch { .. } => (Stage::Fetch, Reason::SourceUnreachable),
            Error::RefNotFound { .. } => (Stage::Fetch, Reason::RefNotFound),
            Error::Checkout { .. } => (Stage::Fetch, Reason::LocalIo),
            Error::Verify(v) => (Stage::Verify, v.reason()),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (stage, reason) = e.classify();
        Failure::new(stage, reason, e.to_string())
    }
}

/// Bytes that must stay free on the state directory's file system: below this, a failed fetch is
/// blamed on the disk (`local_io`), not on the remote.
const LOW_DISK_BYTES: u64 = 16 << 20;

/// Free bytes for unprivileged writers on the file system holding `path` (`None` when unknown).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// One checked-out commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Full commit id.
    pub commit: String,
    /// Directory holding the commit's tree.
    pub checkout: PathBuf,
    /// The deployment repository root inside `checkout` (`checkout/<source.path>`).
    pub root: PathBuf,
    /// First line of the commit message.
    pub summary: String,
    /// Author of the commit, `Name <email>`.
    #[serde(default)]
    pub author: String,
    /// Principal that signed the commit, when verification is on.
    pub signer: Option<String>,
}

/// The git source of one daemon.
#[derive(Clone)]
pub struct GitSource {
    cfg: Arc<SourceConfig>,
    /// `<stateDir>/source`: the bare mirror (`mirror.git`) and per-commit checkouts (`checkouts/<id>`).
    dir: PathBuf,
}

/// How many per-commit checkouts to keep (the newest; the one being applied is always among them).
const KEEP_CHECKOUTS: usize = 3;

impl GitSource {
    pub fn new(cfg: SourceConfig, state_dir: &Path) -> Self {
        GitSource {
            cfg: Arc::new(cfg),
            dir: state_dir.join("source"),
        }
    }

    /// A source whose mirror and checkouts live in `dir` (what `new` makes `<stateDir>/source`).
    pub fn in_dir(cfg: SourceConfig, dir: PathBuf) -> Self {
        GitSource {
            cfg: Arc::new(cfg),
            dir,
        }
    }

    /// The source settings in use.
    pub fn config(&self) -> &SourceConfig {
        &self.cfg
    }

    /// Fetch, resolve, verify and check out, blocking the calling thread. The checkouts of `pinned`
    /// commits (the applied revision, whose provenance drift records need) are never removed.
    pub fn sync(&self, pinned: &[String]) -> Result<Revision, Error> {
        let mirror = self.open_mirror()?;
        if let Err(e) = self.fetch(&mirror) {
            // A fetch that failed for lack of space is the disk's fault, not the remote's.
            return Err(match e {
                Error::Fetch { message, .. }
                    if free_bytes(&self.dir).is_some_and(|b| b < LOW_DISK_BYTES) =>
                {
                    self.checkout_err(format!("{message} (the file system is full)"))
                }
                other => other,
            });
        }
        let oid = self.resolve(&mirror)?;
        let signer = match &self.cfg.allowed_signers_file {
            Some(file) => Some(verify::verify_commit(&mirror, oid, file)?),
            None => None,
        };
        let commit = mirror
            .find_commit(oid)
            .map_err(|e| self.checkout_err(e.message()))?;
        let summary = String::from_utf8_lossy(commit.summary_bytes().unwrap_or(b"")).into_owned();
        let author = {
            let a = commit.author();
            format!(
                "{} <{}>",
                String::from_utf8_lossy(a.name_bytes()),
                String::from_utf8_lossy(a.email_bytes())
            )
        };
        let checkout = self.checkout(&mirror, &commit, pinned)?;
        Ok(Revision {
            commit: oid.to_string(),
            root: checkout.join(&self.cfg.path),
            checkout,
            summary,
            author,
            signer,
        })
    }

    fn checkout_err(&self, detail: impl Into<String>) -> Error {
        Error::Checkout {
            dir: self.dir.clone(),
            detail: detail.into(),
        }
    }

    fn fetch_url(&self) -> String {
        match &self.cfg.location {
            RepoLocation::Local(p) => p.display().to_string(),
            RepoLocation::Remote(u) => u.clone(),
        }
    }

    fn open_mirror(&self) -> Result<git2::Repository, Error> {
        let path = self.dir.join("mirror.git");
        let repo = match git2::Repository::open_bare(&path) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&self.dir).map_err(|e| self.checkout_err(e.to_string()))?;
                git2::Repository::init_bare(&path).map_err(|e| self.checkout_err(e.message()))?
            }
        };
        Ok(repo)
    }

    fn fetch(&self, repo: &git2::Repository) -> Result<(), Error> {
        let url = self.fetch_url();
        let refspecs: Vec<String> = match &self.cfg.git_ref {
            GitRef::Branch(b) => vec![format!("+refs/heads/{b}:refs/remotes/origin/{b}")],
            GitRef::Tag(t) => vec![format!("+refs/tags/{t}:refs/tags/{t}")],
            GitRef::Commit(_) => vec![
                "+refs/heads/*:refs/remotes/origin/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ],
        };
        let mut remote = repo.remote_anonymous(&url).map_err(|e| Error::Fetch {
            url: crate::redact::url_without_credentials(&url),
            message: e.message().to_string(),
        })?;
        let mut callbacks = git2::RemoteCallbacks::new();
        let ssh_key = self.cfg.ssh_key_file.clone();
        let token = self.cfg.token.clone();
        let mut tries = 0;
        callbacks.credentials(move |_url, username, allowed| {
            tries += 1;
            if tries > 3 {
                return Err(git2::Error::from_str("credentials rejected"));
            }
            if allowed.contains(git2::CredentialType::SSH_KEY)
                && let Some(key) = &ssh_key
            {
                return git2::Cred::ssh_key(username.unwrap_or("git"), None, key, None);
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(t) = &token
            {
                let t = std::str::from_utf8(t.expose())
                    .map_err(|_| git2::Error::from_str("token is not UTF-8"))?;
                return git2::Cred::userpass_plaintext(username.unwrap_or("x-access-token"), t);
            }
            git2::Cred::default()
        });
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(callbacks);
        opts.download_tags(git2::AutotagOption::None);
        remote
            .fetch(&refspecs, Some(&mut opts), None)
            .map_err(|source| {
                // A missing ref on the remote is not a transport failure.
                if source.code() == git2::ErrorCode::NotFound
                    && source.class() == git2::ErrorClass::Reference
                {
                    Error::RefNotFound {
                        url: url.clone(),
                        git_ref: self.cfg.git_ref.to_string(),
                    }
                } else {
                    Error::Fetch {
                        url: crate::redact::url_without_credentials(&url),
                        message: source.message().to_string(),
                    }
                }
            })
    }

    fn resolve(&self, repo: &git2::Repository) -> Result<git2::Oid, Error> {
        let not_found = || Error::RefNotFound {
            url: self.cfg.url.clone(),
            git_ref: self.cfg.git_ref.to_string(),
        };
        let name = match &self.cfg.git_ref {
            GitRef::Branch(b) => format!("refs/remotes/origin/{b}"),
            GitRef::Tag(t) => format!("refs/tags/{t}"),
            GitRef::Commit(c) => {
                let obj = repo.revparse_single(c).map_err(|_| not_found())?;
                return obj
                    .peel_to_commit()
                    .map(|c| c.id())
                    .map_err(|_| not_found());
            }
        };
        let reference = repo.find_reference(&name).map_err(|_| not_found())?;
        reference
            .peel_to_commit()
            .map(|c| c.id())
            .map_err(|_| not_found())
    }

    /// Write the commit's tree to `checkouts/<id>` (atomically: a temp dir renamed into place).
    fn checkout(
        &self,
        repo: &git2::Repository,
        commit: &git2::Commit<'_>,
        pinned: &[String],
    ) -> Result<PathBuf, Error> {
        let root = self.dir.join("checkouts");
        let dest = root.join(commit.id().to_string());
        if dest.is_dir() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&root).map_err(|e| self.checkout_err(e.to_string()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&root)
            .map_err(|e| self.checkout_err(e.to_string()))?;
        let tree = commit.tree().map_err(|e| self.checkout_err(e.message()))?;
        let mut cb = git2::build::CheckoutBuilder::new();
        cb.target_dir(tmp.path()).force().recreate_missing(true);
        repo.checkout_tree(tree.as_object(), Some(&mut cb))
            .map_err(|e| self.checkout_err(e.message()))?;
        let tmp_path = tmp.keep();
        std::fs::rename(&tmp_path, &dest).map_err(|e| self.checkout_err(e.to_string()))?;
        prune_checkouts(&root, &dest, pinned);
        Ok(dest)
    }

    /// For local repositories: the git directory whose refs the watcher follows.
    ///
    /// Found without libgit2 (which would initialise OpenSSL in the daemon): `<path>/.git`, the
    /// `gitdir:` a `.git` file names (worktrees, submodules), or `<path>` itself when it is a git directory.
    pub fn local_git_dir(&self) -> Option<PathBuf> {
        match &self.cfg.location {
            RepoLocation::Local(p) => git_dir_of(p),
            RepoLocation::Remote(_) => None,
        }
    }
}

/// Remove all but the newest `KEEP_CHECKOUTS` checkouts; never `current` nor a `pinned` commit's.
fn prune_checkouts(root: &Path, current: &Path, pinned: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path() != current)
        .filter(|e| !pinned.iter().any(|p| e.file_name() == p.as_str()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = (dirs.len() + 1).saturating_sub(KEEP_CHECKOUTS);
    for (_, p) in dirs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// The git directory of the repository at `path` (like `git2::Repository::open(path)?.path()`).
pub fn git_dir_of(path: &Path) -> Option<PathBuf> {
    let is_git_dir = |d: &Path| {
        d.join("HEAD").is_file() && d.join("objects").is_dir() && d.join("refs").is_dir()
    };
    let dot = path.join(".git");
    if dot.is_dir() {
        return is_git_dir(&dot).then_some(dot);
    }
    if dot.is_file() {
        let text = std::fs::read_to_string(&dot).ok()?;
        let target = path.join(text.strip_prefix("gitdir:")?.trim());
        return target.join("HEAD").is_file().then_some(target);
    }
    is_git_dir(path).then(|| path.to_path_buf())
}

/// The helper job that fetches, verifies and checks out the configured ref (see `daemon::helper`).
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncJob {
    pub source: SourceConfig,
    /// `<stateDir>/source`.
    pub dir: PathBuf,
    /// Commits whose checkouts must stay (the applied revision).
    pub pinned: Vec<String>,
}

impl crate::daemon::helper::Job for SyncJob {
    const NAME: &'static str = "sync";
    type Output = Result<Revision, Error>;
    fn run(self) -> Self::Output {
        GitSource::in_dir(self.source, self.dir).sync(&self.pinned)
    }
    fn needs_tls(&self) -> bool {
        matches!(&self.source.location, RepoLocation::Remote(u)
            if u.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")))
    }
}
