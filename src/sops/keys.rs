//! age identities for decrypting sops data keys: from an identity file (`--age-key-file`,
//! `SOPS_AGE_KEY_FILE`, the daemon's `decryption.ageKeyFile`) or from `SOPS_AGE_KEY` text.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

/// Where the age identities come from. `Debug` never shows inline key text.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum AgeKeys {
    /// No identity given: decrypting an encrypted file is an error that says how to give one.
    #[default]
    None,
    /// An age identity file (`AGE-SECRET-KEY-1…` lines; `#` comments).
    File(PathBuf),
    /// Identity text (`SOPS_AGE_KEY`: several keys per line allowed).
    Inline(Zeroizing<String>),
}

/// On the wire (a render request to a helper process) only a key file's path travels; inline key
/// text never leaves the process that read it.
impl serde::Serialize for AgeKeys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AgeKeys::None => s.serialize_none(),
            AgeKeys::File(p) => s.serialize_some(p),
            AgeKeys::Inline(_) => Err(serde::ser::Error::custom(
                "inline age keys are never serialized (give the helper a key file)",
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for AgeKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<PathBuf>::deserialize(d)?.map_or(AgeKeys::None, AgeKeys::File))
    }
}

impl std::fmt::Debug for AgeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgeKeys::None => f.write_str("None"),
            AgeKeys::File(p) => f.debug_tuple("File").field(p).finish(),
            AgeKeys::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl AgeKeys {
    /// Where the identities come from, for messages (`tests/k.txt`, `SOPS_AGE_KEY`).
    pub fn describe(&self) -> String {
        match self {
            AgeKeys::None => "no age identity".into(),
            AgeKeys::File(p) => p.display().to_string(),
            AgeKeys::Inline(_) => "SOPS_AGE_KEY".into(),
        }
    }
}

type Identity = Box<dyn age::Identity + Send + Sync>;

/// The identities of one render, read on first use (a render without encrypted files reads no key).
pub struct Keyring {
    keys: AgeKeys,
    loaded: OnceLock<Result<Vec<Identity>, String>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.keys).finish()
    }
}

impl Keyring {
    pub fn new(keys: AgeKeys) -> Self {
        Keyring {
            keys,
            loaded: OnceLock::new(),
        }
    }

    /// Where the identities come from.
    pub fn keys(&self) -> &AgeKeys {
        &self.keys
    }

    /// The identities, read once; `Err` says why they cannot be read (never their text).
    pub fn identities(&self) -> Result<&[Identity], String> {
        self.loaded
            .get_or_init(|| load(&self.keys))
            .as_deref()
            .map_err(Clone::clone)
    }
}

fn load(keys: &AgeKeys) -> Result<Vec<Identity>, String> {
    let text: Zeroizing<String> = match keys {
        AgeKeys::None => return Ok(Vec::new()),
        AgeKeys::File(path) => read_key_file(path)?,
        // sops allows several whitespace-separated keys per line in SOPS_AGE_KEY.
        AgeKeys::Inline(t) => Zeroizing::new(t.split_whitespace().collect::<Vec<_>>().join("\n")),
    };
    parse(&text, &keys.describe())
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("cannot read the age identity file {}: {e}", path.display()))?;
    Ok(text)
}

/// Parse identity text; errors name the line, never its content.
pub fn parse(text: &str, source: &str) -> Result<Vec<Identity>, String> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("AGE-PLUGIN-") {
            return Err(format!(
                "{source} line {}: age plugin identities are not supported (use an X25519 or post-quantum age key)",
                i + 1
            ));
        }
    }
    let file = age::IdentityFile::from_buffer(text.as_bytes())
        .map_err(|e| format!("{source}: {e}").replace("identity file ", ""))?;
    file.into_identities().map_err(|e| format!("{source}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_errors_never_show_the_line() {
        let e = parse("AGE-SECRET-KEY-1NOTAKEY\n", "k.txt").err().unwrap();
        assert!(!e.contains("NOTAKEY"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let k = Keyring::new(AgeKeys::Inline(Zeroizing::new("x".into())));
        assert_eq!(format!("{k:?}"), "Keyring { keys: Inline(<redacted>) }");
    }
}
