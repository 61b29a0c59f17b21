//! The daemon's persisted state (`<stateDir>/state.json`): last applied revision and inventory, written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::ObjectId;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedState {
    /// Commit whose render was last applied successfully.
    pub last_applied_revision: Option<String>,
    /// Last commit that passed fetch, verification and render.
    pub last_good_revision: Option<String>,
    /// Last commit refused for a terminal reason (not retried until the ref moves).
    pub last_failed_revision: Option<String>,
    /// Objects applied by the last successful apply (a copy of the ApplySet inventory).
    pub inventory: Vec<ObjectId>,
    /// Unix time of the last write.
    pub updated_at: u64,
}

/// File name inside the state directory.
pub const STATE_FILE: &str = "state.json";

impl PersistedState {
    /// Read `<dir>/state.json`; a missing file is the empty state.
    pub fn load(dir: &Path) -> Result<PersistedState, Error> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    /// Write `<dir>/state.json` atomically: a temp file in the same directory, fsync, rename, fsync the directory.
    pub fn save(&mut self, dir: &Path) -> Result<(), Error> {
        self.updated_at = crate::clock::unix_now();
        let path = dir.join(STATE_FILE);
        let werr = |source| Error::Write {
            path: path.clone(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        crate::atomic_file::write(&path, &json, 0o640).map_err(|e| werr(e.source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            PersistedState::load(dir.path()).unwrap(),
            PersistedState::default()
        );
        let mut s = PersistedState {
            last_applied_revision: Some("abc".into()),
            inventory: vec![ObjectId {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                namespace: Some("default".into()),
                name: "web".into(),
            }],
            ..Default::default()
        };
        s.save(dir.path()).unwrap();
        let back = PersistedState::load(dir.path()).unwrap();
        assert_eq!(back, s);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(
            PersistedState::load(dir.path()),
            Err(Error::Parse { .. })
        ));
    }
}
