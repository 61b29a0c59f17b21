//! `Secret`: credential bytes read from a file (source token, webhook secret, notification URLs and keys).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Credential bytes. `Debug` never shows them and the memory is wiped on drop. They serialize (as
/// base64) only to cross the pipe to a helper process, never into a file, a log or `/status`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

/// Why a secret file gave no secret.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("file {path} is empty")]
    Empty { path: String },
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// The file's content without surrounding whitespace (an editor's final newline is not part of a token).
    pub fn read_file(path: &Path) -> Result<Self, ReadError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ReadError::Read {
            path: path.display().to_string(),
            source,
        })?);
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            return Err(ReadError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Secret::new(trimmed.to_vec()))
    }

    /// The secret bytes; do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// As text (URLs and tokens are text); empty when not UTF-8.
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.expose()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Secret::new)
            .map_err(|_| serde::de::Error::custom("secret is not base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value_and_the_pipe_form_round_trips() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let wire = serde_json::to_string(&s).unwrap();
        assert!(!wire.contains("hunter2"));
        assert_eq!(serde_json::from_str::<Secret>(&wire).unwrap(), s);
    }

    #[test]
    fn a_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  abc\n").unwrap();
        assert_eq!(Secret::read_file(&p).unwrap().expose(), b"abc");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            Secret::read_file(&p),
            Err(ReadError::Empty { .. })
        ));
        assert!(matches!(
            Secret::read_file(&dir.path().join("none")),
            Err(ReadError::Read { .. })
        ));
    }
}
