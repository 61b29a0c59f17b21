//! Commit verification: an SSH signature checked against git's `allowed_signers` file with `ssh-keygen -Y`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why a commit was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The commit carries no signature at all.
    #[error("commit {commit} is not signed")]
    Unsigned { commit: String },
    /// The signature is not an SSH signature (e.g. OpenPGP), which this daemon does not trust.
    #[error("commit {commit} has a non-SSH signature")]
    NotSsh { commit: String },
    /// No principal in the allowed signers file matches the signing key.
    #[error("commit {commit} is signed by a key not in {allowed_signers}")]
    UntrustedSigner {
        commit: String,
        allowed_signers: String,
    },
    /// `ssh-keygen -Y verify` rejected the signature.
    #[error("commit {commit}: signature does not verify: {detail}")]
    BadSignature { commit: String, detail: String },
    /// `ssh-keygen` could not be run or the repository could not be read.
    #[error("failed to verify commit {commit}: {detail}")]
    Tool { commit: String, detail: String },
}

impl Error {
    /// The reason word of this refusal (see `crate::failure`): a missing or bad signature waits for a new
    /// commit; a verification tool that could not run is retried.
    pub fn reason(&self) -> crate::failure::Reason {
        use crate::failure::Reason;
        match self {
            Error::Unsigned { .. } => Reason::UnsignedCommit,
            Error::NotSsh { .. } | Error::UntrustedSigner { .. } | Error::BadSignature { .. } => {
                Reason::UntrustedSignature
            }
            Error::Tool { .. } => Reason::Internal,
        }
    }
}

/// Verify `commit` in `repo` against `allowed_signers`; returns the principal that signed it.
///
/// Flow: extract the `gpgsig` header and the signed payload with libgit2, ask
/// `ssh-keygen -Y find-principals` which principals the key belongs to, then
/// `ssh-keygen -Y verify -n git` for the first one (git's own `verify-commit` does the same).
pub fn verify_commit(
    repo: &git2::Repository,
    commit: git2::Oid,
    allowed_signers: &Path,
) -> Result<String, Error> {
    let id = commit.to_string();
    let (sig, payload) = match repo.extract_signature(&commit, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(Error::Unsigned { commit: id });
        }
        Err(e) => {
            return Err(Error::Tool {
                commit: id,
                detail: e.message().to_string(),
            });
        }
    };
    let sig_text = String::from_utf8_lossy(&sig).to_string();
    if !sig_text.contains("-----BEGIN SSH SIGNATURE-----") {
        return Err(Error::NotSsh { commit: id });
    }
    let tool = |detail: String| Error::Tool {
        commit: id.clone(),
        detail,
    };
    let dir = tempfile::tempdir().map_err(|e| tool(e.to_string()))?;
    let sig_file = dir.path().join("commit.sig");
    std::fs::write(&sig_file, &sig[..]).map_err(|e| tool(e.to_string()))?;

    let found = Command::new("ssh-keygen")
        .args(["-Y", "find-principals", "-f"])
        .arg(allowed_signers)
        .arg("-s")
        .arg(&sig_file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool(format!("ssh-keygen: {e}")))?;
    let principal = String::from_utf8_lossy(&found.stdout)
        .lines()
        .next()
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    if !found.status.success() || principal.is_empty() {
        return Err(Error::UntrustedSigner {
            commit: id,
            allowed_signers: allowed_signers.display().to_string(),
        });
    }

    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "git", "-f"])
        .arg(allowed_signers)
        .arg("-I")
        .arg(&principal)
        .arg("-s")
        .arg(&sig_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool(format!("ssh-keygen: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&payload).map_err(|e| tool(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| tool(e.to_string()))?;
    if out.status.success() {
        Ok(principal)
    } else {
        let detail = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("rejected")
            .trim()
            .to_string();
        Err(Error::BadSignature { commit: id, detail })
    }
}
