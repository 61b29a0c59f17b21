//! SOPS-encrypted YAML and JSON files (age recipients), decrypted exactly as `sops -d` (v3) does.
//!
//! Flow: [`load`] parses the text as sops' store would (ordered maps, yaml.v3 typing), takes the
//! top-level `sops` metadata out of the first document, recovers the data key from the first age
//! recipient one of the [`Keyring`]'s identities opens, then walks every document in order:
//! values the file's rule marks encrypted are opened with AES-256-GCM (the additional data is the
//! path of map keys, `a:b:`), and every value (or only the encrypted ones, `mac_only_encrypted`)
//! feeds the SHA-512 MAC, which must equal the file's own (itself encrypted under `lastmodified`).
//!
//! Guarantees: no plaintext and no identity text in any error; the result names, by JSON pointer,
//! every value that was encrypted ([`Decrypted::secret`]), which is how the render masks them.
//! Caveats: the comment rules (`encrypted_comment_regex`, `unencrypted_comment_regex`) and Shamir
//! key groups are refused; PGP, KMS and Vault keys are not tried (only age).

pub mod golang;
pub mod keys;
pub mod tree;

use std::collections::BTreeSet;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

pub use golang::Format;
use golang::GoValue;
pub use keys::{AgeKeys, Keyring};
use tree::Node;

/// The top-level key sops keeps its metadata under (Flux detects encrypted files by it too).
pub const METADATA_KEY: &str = "sops";

/// Why an encrypted file could not be decrypted. Messages never hold plaintext or key text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No identity was given at all.
    #[error(
        "encrypted with sops for {recipients}, but no age identity was given \
         (--age-key-file, SOPS_AGE_KEY_FILE or SOPS_AGE_KEY; the daemon: decryption.ageKeyFile)"
    )]
    NoIdentity { recipients: String },
    /// The identities could not be read.
    #[error("{0}")]
    Identities(String),
    /// None of the identities is a recipient.
    #[error(
        "none of the age identities in {source_name} is a recipient of this file (its recipients: {recipients})"
    )]
    WrongKey {
        source_name: String,
        recipients: String,
    },
    /// Only key types pailot does not use.
    #[error(
        "encrypted with sops for {kinds} only; pailot decrypts files with age recipients (add one with `sops updatekeys`)"
    )]
    UnsupportedKeys { kinds: String },
    /// Several key groups (Shamir secret sharing).
    #[error(
        "encrypted with {groups} sops key groups (Shamir threshold {threshold}); pailot supports one key group"
    )]
    KeyGroups { groups: usize, threshold: i64 },
    /// A sops version other than 3.
    #[error("written by sops {0}; pailot reads files of sops 3.x")]
    Version(String),
    /// A rule pailot does not implement.
    #[error("uses {0}, which pailot does not support (comments are not read)")]
    UnsupportedRule(&'static str),
    /// The MAC does not match: the file changed after encryption.
    #[error(
        "MAC mismatch: the file was changed after sops encrypted it (tampered with, or edited without sops)"
    )]
    MacMismatch,
    /// One value cannot be decrypted.
    #[error("the value at {path} cannot be decrypted: {reason}")]
    Value { path: String, reason: String },
    /// The metadata or the document is not what sops writes.
    #[error("{0}")]
    Malformed(String),
    /// A file named `*.sops.yaml` (or `.sops.json`) without sops metadata.
    #[error(
        "named like a sops file but not encrypted (no top-level `sops` key): encrypt it with `sops -e -i`"
    )]
    NotEncrypted,
    /// The text does not parse.
    #[error("invalid {format}: {message}")]
    Syntax {
        format: &'static str,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
}

/// One decrypted document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decrypted {
    /// The document as `sops -d` prints it, read back by pailot (metadata removed).
    pub value: Value,
    /// JSON pointers (in `value`) of every value that was encrypted in the file.
    pub secret: BTreeSet<String>,
}

/// Whether `name` follows the `*.sops.yaml` / `*.sops.yml` / `*.sops.json` naming: such a file
/// must be encrypted (a plaintext one is refused rather than applied).
pub fn sops_named(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    [".sops.yaml", ".sops.yml", ".sops.json"]
        .iter()
        .any(|s| base.ends_with(s))
}

/// Whether a parsed document carries sops metadata (a top-level `sops` mapping with a `mac`
/// or `version`): the marking rule, as Flux's.
pub fn is_encrypted(doc: &Value) -> bool {
    doc.get(METADATA_KEY)
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("mac") || m.contains_key("version"))
}

/// Whether YAML/JSON text may hold sops metadata (a cheap test before parsing: a `sops` key at
/// the start of a line).
pub fn may_be_encrypted(text: &str) -> bool {
    // Every template and values file is tested: one scan answers for those that never say `sops`.
    text.contains("sops")
        && (text.starts_with("sops:") || text.contains("\nsops:") || text.contains("\"sops\""))
}

/// The file format by name: `.json` is JSON, everything else YAML.
pub fn format_of(name: &str) -> Format {
    if name.ends_with(".json") {
        Format::Json
    } else {
        Format::Yaml
    }
}

/// Metadata as sops stores it (`stores.metadata`), for the fields decryption needs.
struct Metadata {
    age: Vec<(String, String)>,
    other_kinds: Vec<&'static str>,
    groups: usize,
    shamir_threshold: i64,
    last_modified: String,
    mac: String,
    rule: Rule,
    mac_only_encrypted: bool,
}

/// Which values are encrypted (exactly one rule; `unencrypted_suffix: _unencrypted` by default).
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
}

impl Rule {
    /// `sops.Tree.shouldBeEncrypted` for a path of map keys.
    fn encrypts(&self, path: &[&str]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
            Rule::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
        }
    }
}

const KEY_KINDS: [(&str, &str); 6] = [
    ("pgp", "PGP"),
    ("kms", "AWS KMS"),
    ("gcp_kms", "GCP KMS"),
    ("azure_kv", "Azure Key Vault"),
    ("hc_vault", "HashiCorp Vault"),
    ("hckms", "Huawei Cloud KMS"),
];

fn non_empty_list(n: Option<&Node>) -> bool {
    matches!(n, Some(Node::Seq(items)) if !items.is_empty())
}

fn text_field(meta: &Node, key: &str) -> Option<String> {
    match meta.get(key)? {
        Node::Scalar(GoValue::Str(s) | GoValue::Time(s)) => Some(s.clone()),
        Node::Scalar(GoValue::Int(i)) => Some(i.to_string()),
        Node::Scalar(GoValue::Float(f)) => Some(golang::format_f(*f)),
        Node::Scalar(GoValue::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_metadata(meta: &Node) -> Result<Metadata, Error> {
    if !matches!(meta, Node::Map(_)) {
        return Err(Error::Malformed("the `sops` entry is not a mapping".into()));
    }
    let version = text_field(meta, "version").unwrap_or_default();
    if version.split('.').next() != Some("3") {
        return Err(Error::Version(if version.is_empty() {
            "(no version)".into()
        } else {
            version
        }));
    }
    // A single key group is stored flat; several under `key_groups`.
    let flat_keys = std::iter::once("age")
        .chain(KEY_KINDS.iter().map(|(k, _)| *k))
        .any(|k| non_empty_list(meta.get(k)));
    let groups: Vec<&Node> = if flat_keys {
        vec![meta]
    } else {
        match meta.get("key_groups") {
            Some(Node::Seq(gs)) if !gs.is_empty() => gs.iter().collect(),
            _ => return Err(Error::Malformed("the sops metadata lists no keys".into())),
        }
    };
    let shamir_threshold = match meta.get("shamir_threshold") {
        Some(Node::Scalar(GoValue::Int(i))) => *i,
        _ => 0,
    };
    let mut age = Vec::new();
    let mut other_kinds = Vec::new();
    for g in &groups {
        if let Some(Node::Seq(entries)) = g.get("age") {
            for e in entries {
                let recipient = text_field(e, "recipient").unwrap_or_default();
                let enc = text_field(e, "enc").unwrap_or_default();
                age.push((recipient, enc));
            }
        }
        for (key, kind) in KEY_KINDS {
            if non_empty_list(g.get(key)) && !other_kinds.contains(&kind) {
                other_kinds.push(kind);
            }
        }
    }
    let rules: Vec<(&str, String)> = [
        "unencrypted_suffix",
        "encrypted_suffix",
        "unencrypted_regex",
        "encrypted_regex",
        "unencrypted_comment_regex",
        "encrypted_comment_regex",
    ]
    .into_iter()
    .filter_map(|k| {
        text_field(meta, k)
            .filter(|v| !v.is_empty())
            .map(|v| (k, v))
    })
    .collect();
    if rules.len() > 1 {
        return Err(Error::Malformed(
            "the sops metadata sets more than one of the encrypted/unencrypted suffix and regex rules"
                .into(),
        ));
    }
    let regex = |r: &str| {
        regex::Regex::new(r)
            .map_err(|e| Error::Malformed(format!("the sops metadata has an invalid regex: {e}")))
    };
    let rule = match rules.first() {
        None => Rule::UnencryptedSuffix("_unencrypted".into()),
        Some(("unencrypted_suffix", v)) => Rule::UnencryptedSuffix(v.clone()),
        Some(("encrypted_suffix", v)) => Rule::EncryptedSuffix(v.clone()),
        Some(("unencrypted_regex", v)) => Rule::UnencryptedRegex(regex(v)?),
        Some(("encrypted_regex", v)) => Rule::EncryptedRegex(regex(v)?),
        Some(("unencrypted_comment_regex", _)) => {
            return Err(Error::UnsupportedRule("unencrypted_comment_regex"));
        }
        Some(_) => return Err(Error::UnsupportedRule("encrypted_comment_regex")),
    };
    let mac_only_encrypted = match meta.get("mac_only_encrypted") {
        Some(Node::Scalar(GoValue::Bool(b))) => *b,
        Some(Node::Scalar(GoValue::Str(s))) => golang::parse_bool(s).unwrap_or(false),
        _ => false,
    };
    Ok(Metadata {
        age,
        other_kinds,
        groups: groups.len(),
        shamir_threshold,
        last_modified: text_field(meta, "lastmodified")
            .ok_or_else(|| Error::Malformed("the sops metadata has no lastmodified".into()))?,
        mac: text_field(meta, "mac").unwrap_or_default(),
        rule,
        mac_only_encrypted,
    })
}

/// `time.Parse(RFC3339, s).Format(RFC3339)`: what sops authenticates the MAC with.
fn normalize_rfc3339(s: &str) -> String {
    let (main, zone) = match s.rfind(['Z', 'z', '+']).or_else(|| {
        // The zone sign `-` comes after the time part (position > 10).
        s.rfind('-').filter(|&i| i > 10)
    }) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let main = main.split(['.', ',']).next().unwrap_or(main);
    let zone = match zone {
        "z" | "Z" | "+00:00" | "-00:00" => "Z",
        z => z,
    };
    format!("{main}{zone}")
}

fn recipients(meta: &Metadata) -> String {
    if meta.age.is_empty() {
        "no age recipient".into()
    } else {
        meta.age
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The 32-byte data key, from the first age recipient an identity opens.
fn data_key(meta: &Metadata, keyring: &Keyring) -> Result<Vec<u8>, Error> {
    if meta.groups > 1 {
        return Err(Error::KeyGroups {
            groups: meta.groups,
            threshold: meta.shamir_threshold,
        });
    }
    if meta.age.is_empty() {
        return Err(Error::UnsupportedKeys {
            kinds: if meta.other_kinds.is_empty() {
                "no known key type".into()
            } else {
                meta.other_kinds.join(", ")
            },
        });
    }
    if matches!(keyring.keys(), AgeKeys::None) {
        return Err(Error::NoIdentity {
            recipients: recipients(meta),
        });
    }
    let identities = keyring.identities().map_err(Error::Identities)?;
    if identities.is_empty() {
        return Err(Error::Identities(format!(
            "{} holds no age identity, and this file is encrypted for {}",
            keyring.keys().describe(),
            recipients(meta)
        )));
    }
    for (_, enc) in &meta.age {
        let reader = age::armor::ArmoredReader::new(enc.as_bytes());
        let Ok(decryptor) = age::Decryptor::new(reader) else {
            continue;
        };
        if let Ok(mut r) =
            decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        {
            let mut key = Vec::new();
            if std::io::Read::read_to_end(&mut r, &mut key).is_ok() && key.len() == 32 {
                return Ok(key);
            }
        }
    }
    Err(Error::WrongKey {
        source_name: keyring.keys().describe(),
        recipients: recipients(meta),
    })
}

type Gcm = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U32>;

/// A parsed `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` value.
struct Sealed {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: String,
}

fn parse_sealed(s: &str) -> Option<Sealed> {
    let body = s.strip_prefix("ENC[AES256_GCM,data:")?;
    // sops' regexp is greedy and unanchored at the end; values it writes have exactly this shape.
    let (data, rest) = body.split_once(",iv:")?;
    let (iv, rest) = rest.split_once(",tag:")?;
    let (tag, rest) = rest.split_once(",type:")?;
    let kind = rest.strip_suffix(']')?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(Sealed {
        data: b64.decode(data).ok()?,
        iv: b64.decode(iv).ok()?,
        tag: b64.decode(tag).ok()?,
        kind: kind.to_string(),
    })
}

/// `aes.Cipher.Decrypt`: the plaintext bytes and the sops type of one value.
fn open(value: &str, key: &[u8], aad: &str) -> Result<(Vec<u8>, String), String> {
    if value.is_empty() {
        return Ok((Vec::new(), "str".into()));
    }
    let sealed = parse_sealed(value).ok_or("it is not a sops ENC[AES256_GCM,…] value")?;
    if sealed.iv.len() != 32 {
        return Err(format!("unsupported IV length {}", sealed.iv.len()));
    }
    let cipher = Gcm::new_from_slice(key).map_err(|_| "bad data key length".to_string())?;
    let mut msg = sealed.data;
    msg.extend_from_slice(&sealed.tag);
    let nonce = aes_gcm::aead::Nonce::<Gcm>::try_from(&sealed.iv[..])
        .map_err(|_| "bad IV length".to_string())?;
    let plain = cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &msg,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| {
            "authentication failed (wrong data key, or the value or its key path was changed)"
                .to_string()
        })?;
    Ok((plain, sealed.kind))
}

/// A decrypted value with its sops type: `None` for a `comment` (not part of the document).
fn typed(plain: Vec<u8>, kind: &str) -> Result<Option<GoValue>, String> {
    let text =
        || String::from_utf8(plain.clone()).map_err(|_| "the plaintext is not UTF-8".to_string());
    Ok(Some(match kind {
        "str" => GoValue::Str(text()?),
        "bytes" => GoValue::Str(String::from_utf8_lossy(&plain).into_owned()),
        "int" => GoValue::Int(
            golang::parse_atoi(&text()?).ok_or("the plaintext of an int is not an integer")?,
        ),
        "float" => GoValue::Float(
            golang::parse_float(&text()?).ok_or("the plaintext of a float is not a number")?,
        ),
        "bool" => GoValue::Bool(
            golang::parse_bool(&text()?).ok_or("the plaintext of a bool is not a boolean")?,
        ),
        "time" => GoValue::Time(text()?),
        "comment" => return Ok(None),
        other => return Err(format!("unknown value type `{other}`")),
    }))
}

struct Walk<'a> {
    key: &'a [u8],
    rule: &'a Rule,
    mac_only_encrypted: bool,
    format: Format,
    hash: Sha512,
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Walk<'_> {
    /// Decrypt `node` (at key path `path`, JSON pointer `ptr`), hashing leaves in document order.
    fn node(
        &mut self,
        node: &Node,
        path: &mut Vec<String>,
        ptr: &mut String,
        secret: &mut BTreeSet<String>,
    ) -> Result<Option<Value>, Error> {
        Ok(Some(match node {
            Node::Map(items) => {
                let mut out = Map::with_capacity(items.len());
                for (k, v) in items {
                    path.push(k.clone());
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&escape(k));
                    if let Some(v) = self.node(v, path, ptr, secret)? {
                        out.insert(k.clone(), v);
                    }
                    ptr.truncate(len);
                    path.pop();
                }
                Value::Object(out)
            }
            Node::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for v in items {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&out.len().to_string());
                    if let Some(v) = self.node(v, path, ptr, secret)? {
                        out.push(v);
                    }
                    ptr.truncate(len);
                }
                Value::Array(out)
            }
            // sops walks past nulls: they are neither decrypted nor hashed.
            Node::Scalar(GoValue::Null) => Value::Null,
            Node::Scalar(v) => {
                let keys: Vec<&str> = path.iter().map(String::as_str).collect();
                let encrypted = self.rule.encrypts(&keys);
                let value = if encrypted {
                    let place = || {
                        if keys.is_empty() {
                            "(top level)".to_string()
                        } else {
                            keys.join(".")
                        }
                    };
                    let GoValue::Str(text) = v else {
                        return Err(Error::Value {
                            path: place(),
                            reason: "an encrypted value must be a string".into(),
                        });
                    };
                    let aad = format!("{}:", keys.join(":"));
                    let (plain, kind) =
                        open(text, self.key, &aad).map_err(|reason| Error::Value {
                            path: place(),
                            reason,
                        })?;
                    match typed(plain, &kind).map_err(|reason| Error::Value {
                        path: place(),
                        reason,
                    })? {
                        Some(v) => v,
                        None => return Ok(None),
                    }
                } else {
                    v.clone()
                };
                if (!self.mac_only_encrypted || encrypted)
                    && let Some(bytes) = value.mac_bytes()
                {
                    self.hash.update(&bytes);
                }
                if encrypted {
                    secret.insert(ptr.clone());
                }
                value.to_value(self.format)
            }
        }))
    }
}

/// Bytes sops' MAC starts with when `mac_only_encrypted` is set (sha256 of `sops`).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Yaml => "YAML",
        Format::Json => "JSON",
    }
}

fn load_docs(text: &str, format: Format) -> Result<Vec<Option<Node>>, Error> {
    tree::load(text, format).map_err(|e| Error::Syntax {
        format: format_name(format),
        line: e.line,
        column: e.column,
        message: e.message,
    })
}

/// Whether loaded documents carry sops metadata in the first one.
fn has_metadata(docs: &[Option<Node>]) -> bool {
    matches!(docs.first(), Some(Some(first)) if matches!(
        first.get(METADATA_KEY),
        Some(m @ Node::Map(_)) if m.get("mac").is_some() || m.get("version").is_some()
    ))
}

/// An [`Error`] about `file` as an input error (exit code 2), with its line when known.
pub fn input_error(file: &str, e: Error) -> crate::diag::InputError {
    let mut err = crate::diag::InputError::new(file, e.to_string());
    match &e {
        Error::Syntax {
            line: Some(l),
            column,
            ..
        } => err = err.at(*l, column.unwrap_or(1)),
        Error::Value { path, .. } => err = err.place(format!("key {path}")),
        _ => {}
    }
    err
}

/// Decrypt `text` (read from `file`, repository-relative) when it is a sops file; `None` when it
/// is plain text for the caller's own reader. A file named `*.sops.yaml`/`.sops.json` must be
/// encrypted.
pub fn decrypt_file(
    text: &str,
    file: &str,
    keyring: &Keyring,
) -> Result<Option<Vec<Decrypted>>, crate::diag::InputError> {
    let named = sops_named(file);
    let plain = || {
        if named {
            Err(input_error(file, Error::NotEncrypted))
        } else {
            Ok(None)
        }
    };
    if !may_be_encrypted(text) {
        return plain();
    }
    let format = format_of(file);
    let docs = match load_docs(text, format) {
        Ok(docs) => docs,
        // Not readable the way sops reads: the caller's reader reports it, unless it must be sops.
        Err(e) if named => return Err(input_error(file, e)),
        Err(_) => return Ok(None),
    };
    if !has_metadata(&docs) {
        return plain();
    }
    decrypt_loaded(docs, format, keyring)
        .map(Some)
        .map_err(|e| input_error(file, e))
}

/// Decrypt every document of an encrypted YAML or JSON text; empty documents are `Value::Null`.
pub fn decrypt(text: &str, format: Format, keyring: &Keyring) -> Result<Vec<Decrypted>, Error> {
    decrypt_loaded(load_docs(text, format)?, format, keyring)
}

fn decrypt_loaded(
    mut docs: Vec<Option<Node>>,
    format: Format,
    keyring: &Keyring,
) -> Result<Vec<Decrypted>, Error> {
    let format_name = format_name(format);
    if docs.is_empty() {
        return Err(Error::NotEncrypted);
    }
    let mut roots = Vec::with_capacity(docs.len());
    let mut meta_node = None;
    for (i, doc) in docs.iter_mut().enumerate() {
        match doc.take() {
            None => roots.push(Vec::new()),
            Some(Node::Map(mut items)) => {
                if let Some(pos) = items.iter().position(|(k, _)| k == METADATA_KEY) {
                    let (_, m) = items.remove(pos);
                    if i == 0 {
                        meta_node = Some(m);
                    }
                }
                roots.push(items);
            }
            Some(_) => {
                return Err(Error::Malformed(format!(
                    "{format_name} documents that are not mappings cannot be sops files"
                )));
            }
        }
    }
    let meta = parse_metadata(&meta_node.ok_or(Error::NotEncrypted)?)?;
    let key = data_key(&meta, keyring)?;
    let mut walk = Walk {
        key: &key,
        rule: &meta.rule,
        mac_only_encrypted: meta.mac_only_encrypted,
        format,
        hash: Sha512::new(),
    };
    if meta.mac_only_encrypted {
        walk.hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut out = Vec::with_capacity(roots.len());
    for items in roots {
        let mut secret = BTreeSet::new();
        let value = if items.is_empty() {
            Value::Null
        } else {
            walk.node(
                &Node::Map(items),
                &mut Vec::new(),
                &mut String::new(),
                &mut secret,
            )?
            .unwrap_or(Value::Null)
        };
        out.push(Decrypted { value, secret });
    }
    let computed = hex::encode_upper(walk.hash.finalize());
    let stored = open(&meta.mac, &key, &normalize_rfc3339(&meta.last_modified))
        .ok()
        .and_then(|(plain, _)| String::from_utf8(plain).ok());
    if stored.as_deref() != Some(computed.as_str()) {
        return Err(Error::MacMismatch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cheap_test_finds_sops_keys_where_parsing_would() {
        for yes in [
            "sops:\n  mac: x\n",
            "a: 1\nsops:\n  version: 3\n",
            "{\"a\": 1, \"sops\": {}}",
        ] {
            assert!(may_be_encrypted(yes), "{yes:?}");
        }
        for no in [
            "",
            "sops",
            "a: sops:\n",
            "a: 1\n  sops: x\n",
            "nosops: 1\n",
            "{\"sops_x\": 1}",
            "xsops\"",
        ] {
            assert!(!may_be_encrypted(no), "{no:?}");
        }
    }

    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/sops")
                .join(name),
        )
        .unwrap()
    }

    fn test_keyring() -> Keyring {
        Keyring::new(AgeKeys::File(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/sops/test-key.txt"),
        ))
    }

    /// Files written by the sops CLI decrypt to what `sops -d` printed (read back by pailot).
    #[test]
    fn sops_cli_fixtures_decrypt_like_sops_d() {
        let keys = test_keyring();
        let yaml = decrypt(&fixture("kinds.sops.yaml"), Format::Yaml, &keys).unwrap();
        let want =
            crate::chart::yaml::parse_yaml_document(&fixture("kinds.plain.yaml"), "p").unwrap();
        assert_eq!(yaml.len(), 1);
        assert_eq!(yaml[0].value, want);
        assert!(yaml[0].secret.contains("/password"));
        assert!(yaml[0].secret.contains("/nested/list/2/k"));
        assert!(!yaml[0].secret.contains("/note_unencrypted"));
        assert!(!yaml[0].secret.contains("/nothing"));
        let json = decrypt(&fixture("kinds.sops.json"), Format::Json, &keys).unwrap();
        let want: Value = serde_json::from_str(&fixture("kinds.plain.json")).unwrap();
        assert_eq!(json[0].value, want);
        assert!(json[0].secret.contains("/list/1"));
    }

    #[test]
    fn a_changed_value_or_mac_is_refused() {
        let keys = test_keyring();
        let text = fixture("kinds.sops.yaml");
        // Swap the ciphertexts of two values: each fails authentication under the other's path.
        let moved = text.replacen("note_unencrypted: visible", "note_unencrypted: changed", 1);
        assert_eq!(
            decrypt(&moved, Format::Yaml, &keys).unwrap_err(),
            Error::MacMismatch
        );
        let no_key = decrypt(&text, Format::Yaml, &Keyring::new(AgeKeys::None)).unwrap_err();
        assert!(matches!(no_key, Error::NoIdentity { .. }), "{no_key}");
        let other = keys::parse(
            "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
            "x",
        );
        assert!(other.is_err());
    }

    #[test]
    fn naming_and_marking() {
        assert!(sops_named("charts/a/values.sops.yaml"));
        assert!(sops_named("x.sops.json"));
        assert!(!sops_named("values.yaml"));
        assert!(is_encrypted(
            &serde_json::json!({"a": 1, "sops": {"mac": "x"}})
        ));
        assert!(!is_encrypted(&serde_json::json!({"sops": "plain value"})));
    }

    #[test]
    fn lastmodified_is_normalised_like_go() {
        assert_eq!(
            normalize_rfc3339("2026-12-07T12:49:43Z"),
            "2026-12-07T12:49:43Z"
        );
        assert_eq!(
            normalize_rfc3339("2026-12-07T12:49:43.123Z"),
            "2026-12-07T12:49:43Z"
        );
        assert_eq!(
            normalize_rfc3339("2026-12-07T12:49:43+00:00"),
            "2026-12-07T12:49:43Z"
        );
        assert_eq!(
            normalize_rfc3339("2026-12-07T12:49:43-05:00"),
            "2026-12-07T12:49:43-05:00"
        );
    }

    #[test]
    fn rules_follow_should_be_encrypted() {
        let r = Rule::UnencryptedSuffix("_unencrypted".into());
        assert!(r.encrypts(&["a", "b"]));
        assert!(!r.encrypts(&["a_unencrypted", "b"]));
        let r = Rule::EncryptedRegex(regex::Regex::new("^(data|stringData)$").unwrap());
        assert!(r.encrypts(&["data", "password"]));
        assert!(!r.encrypts(&["metadata", "name"]));
        let r = Rule::EncryptedSuffix("_secret".into());
        assert!(r.encrypts(&["db_secret", "x"]));
        assert!(!r.encrypts(&["db"]));
    }
}
