//! The suspension record (`<stateDir>/suspension.json`): while it is active the daemon neither applies nor corrects.
//!
//! The file exists only while the daemon is suspended; it survives restarts. A record with an
//! `until` in the past is expired: [`Suspension::load_active`] treats it as absent and removes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const SUSPENSION_FILE: &str = "suspension.json";
/// The longest reason kept (longer ones are cut, on a character boundary).
pub const MAX_REASON_CHARS: usize = 200;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or removing the file failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a suspension record.
    #[error("{path} is not a suspension record: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A suspension: since when, why, until when (`None`: until `pailot resume`), and who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    /// Unix time (seconds) it started.
    pub since: u64,
    /// Unix time (seconds) it ends by itself; absent: until resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// What the operator said (`--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asked, as the control socket saw the peer: `uid 1000 (alice)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Suspension {
    /// A suspension starting `now`, for `length` (or until resumed), with a reason cut to [`MAX_REASON_CHARS`].
    pub fn new(
        now: u64,
        length: Option<Duration>,
        reason: Option<String>,
        by: Option<String>,
    ) -> Self {
        let reason = reason
            .map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>())
            .filter(|r| !r.is_empty());
        Suspension {
            since: now,
            until: length.map(|d| now.saturating_add(d.as_secs().max(1))),
            reason,
            by,
        }
    }

    /// Still in force at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// Time left at `now` (`None`: until resumed).
    pub fn remaining(&self, now: u64) -> Option<Duration> {
        self.until
            .map(|u| Duration::from_secs(u.saturating_sub(now)))
    }

    /// One line for people: `suspended since 12:00:00 UTC for 1h30m (maintenance) by uid 0 (root)`.
    pub fn describe(&self, now: u64) -> String {
        let mut s = format!(
            "suspended since {}",
            crate::clock::format_unix(self.since as i64)
        );
        match self.remaining(now) {
            Some(left) => s.push_str(&format!(
                ", {} left (until {})",
                crate::duration::format(left),
                crate::clock::format_unix(self.until.unwrap_or(0) as i64)
            )),
            None => s.push_str(", until resumed"),
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(": {r}"));
        }
        if let Some(by) = &self.by {
            s.push_str(&format!(" (by {by})"));
        }
        s
    }

    /// Read the record; `None` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Suspension>, Error> {
        let path = state_dir.join(SUSPENSION_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// The record if it is in force at `now`; an expired one is removed and gives `None`.
    pub fn load_active(state_dir: &Path, now: u64) -> Result<Option<Suspension>, Error> {
        match Suspension::load(state_dir)? {
            Some(s) if s.is_active(now) => Ok(Some(s)),
            Some(_) => {
                Suspension::clear(state_dir)?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Write the record atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let path = state_dir.join(SUSPENSION_FILE);
        let io = |action, source| Error::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).expect("suspension serializes");
        json.push(b'\n');
        crate::atomic_file::write(&path, &json, 0o640).map_err(|e| io(e.action, e.source))
    }

    /// Remove the record; true when there was one.
    pub fn clear(state_dir: &Path) -> Result<bool, Error> {
        let path = state_dir.join(SUSPENSION_FILE);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Suspension::load(dir.path()).unwrap(), None);
        let s = Suspension::new(
            1000,
            Some(Duration::from_secs(3600)),
            Some("  maintenance window ".into()),
            Some("uid 0 (root)".into()),
        );
        assert_eq!(s.reason.as_deref(), Some("maintenance window"));
        s.save(dir.path()).unwrap();
        assert_eq!(
            Suspension::load_active(dir.path(), 1000 + 3599).unwrap(),
            Some(s.clone())
        );
        assert_eq!(
            Suspension::load_active(dir.path(), 1000 + 3600).unwrap(),
            None
        );
        assert!(
            !dir.path().join(SUSPENSION_FILE).exists(),
            "expired record removed"
        );
        assert!(!Suspension::clear(dir.path()).unwrap());
    }

    #[test]
    fn without_for_it_lasts_until_resumed() {
        let s = Suspension::new(5, None, Some(String::new()), None);
        assert!(s.is_active(u64::MAX));
        assert_eq!(s.reason, None, "an empty reason is no reason");
        assert!(
            s.describe(10).contains("until resumed"),
            "{}",
            s.describe(10)
        );
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let s = Suspension::new(0, None, Some("é".repeat(500)), None);
        assert_eq!(s.reason.unwrap().chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SUSPENSION_FILE), "{oops").unwrap();
        let e = Suspension::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("suspension.json"), "{e}");
    }
}
