//! Template environment: strict undefined, no autoescape, pycompat (plus mutable lists), and the chart filters and `files` object.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use minijinja::value::{Object, Value as JValue};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind, State, UndefinedBehavior};
use sha2::Digest as _;

/// A fresh environment with pailot's settings and filters (templates are added by the loader).
pub fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Before any template is added: YAML templates must not be HTML/JSON-escaped.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Fuel bounds both the instructions a render runs and the data it creates (docs/limits.md).
    env.set_fuel(Some(crate::limits::Limits::current().template_fuel));
    env.set_unknown_method_callback(super::pylist::unknown_method_callback);
    env.add_filter(super::pylist::FILTER, super::pylist::to_pylist);
    env.add_filter("to_yaml", to_yaml);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("sha256", sha256);
    env.add_filter("quote", quote);
    env
}

fn to_json(v: &JValue) -> Result<serde_json::Value, JError> {
    serde_json::to_value(v).map_err(|e| {
        JError::new(
            ErrorKind::InvalidOperation,
            format!("cannot convert to data: {e}"),
        )
    })
}

fn as_text(v: &JValue) -> String {
    match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    }
}

/// `x | to_yaml` block YAML without the trailing newline; `to_yaml(n)` indents every line after
/// the first by `n` spaces (so `key: |\n  {{ x | to_yaml(2) }}` and nested blocks line up).
fn to_yaml(v: JValue, indent: Option<usize>) -> Result<String, JError> {
    let data = to_json(&v)?;
    let text = super::yaml::to_yaml_string(&data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    match indent {
        None | Some(0) => Ok(text.to_string()),
        Some(n) => {
            let pad = " ".repeat(n);
            let mut out = String::with_capacity(text.len() + 16);
            for (i, line) in text.split('\n').enumerate() {
                if i > 0 {
                    out.push('\n');
                    if !line.is_empty() {
                        out.push_str(&pad);
                    }
                }
                out.push_str(line);
            }
            Ok(out)
        }
    }
}

fn b64encode(v: JValue) -> String {
    base64::engine::general_purpose::STANDARD.encode(as_text(&v))
}

fn b64decode(v: JValue) -> Result<String, JError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(as_text(&v).trim())
        .map_err(|e| {
            JError::new(
                ErrorKind::InvalidOperation,
                format!("b64decode: invalid base64: {e}"),
            )
        })?;
    String::from_utf8(bytes).map_err(|_| {
        JError::new(
            ErrorKind::InvalidOperation,
            "b64decode: decoded bytes are not UTF-8",
        )
    })
}

fn sha256(v: JValue) -> String {
    hex::encode(sha2::Sha256::digest(as_text(&v).as_bytes()))
}

/// A YAML/JSON double-quoted string.
fn quote(v: JValue) -> String {
    serde_json::to_string(&as_text(&v)).unwrap_or_default()
}

/// The `files` template variable: read-only access to the chart's `files/` directory.
#[derive(Debug)]
pub struct FilesObject {
    /// The chart's `files/` directory.
    pub root: PathBuf,
    /// Regular files under it, relative, sorted.
    pub index: Arc<Vec<String>>,
}

impl FilesObject {
    /// Read `rel` under `files/`; refuses absolute paths, `..`, and symlinks that resolve outside.
    pub fn read(&self, rel: &str) -> Result<String, String> {
        let p = Path::new(rel);
        if rel.is_empty() || p.is_absolute() || rel.starts_with('/') || rel.starts_with('\\') {
            return Err(format!(
                "files.get({rel:?}): path must be relative to the chart's files/ directory"
            ));
        }
        if p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "files.get({rel:?}): path leaves the chart's files/ directory"
            ));
        }
        let root = crate::confine::Root::new(&self.root, "the chart's files/ directory", "files")
            .map_err(|_| format!("files.get({rel:?}): the chart has no files/ directory"))?;
        let full = self.root.join(p);
        if !full.exists() {
            return Err(format!("files.get({rel:?}): no such file under files/"));
        }
        root.read_text(&full, rel)
            .map_err(|e| format!("files.get({rel:?}): {}", e.message))
    }
}

impl Object for FilesObject {
    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[JValue],
    ) -> Result<JValue, JError> {
        let arg = |name: &str| -> Result<String, JError> {
            match args {
                [a] if a.as_str().is_some() => Ok(a.as_str().unwrap_or_default().to_string()),
                _ => Err(JError::new(
                    ErrorKind::InvalidOperation,
                    format!("files.{name}() takes one string argument"),
                )),
            }
        };
        match method {
            "get" => {
                let rel = arg("get")?;
                self.read(&rel)
                    .map(JValue::from)
                    .map_err(|m| JError::new(ErrorKind::InvalidOperation, m))
            }
            "glob" => {
                let pattern = arg("glob")?;
                let mut out = Vec::new();
                for rel in self.index.iter().filter(|f| glob_match(&pattern, f)) {
                    let content = self
                        .read(rel)
                        .map_err(|m| JError::new(ErrorKind::InvalidOperation, m))?;
                    let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
                    out.push(JValue::from(minijinja::value::Serde(
                        serde_json::json!({"path": rel, "name": name, "content": content}),
                    )));
                }
                Ok(JValue::from(out))
            }
            _ => Err(JError::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// Shell-like glob on `/`-separated paths: `*` and `?` stay within one segment, `**` crosses segments.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        if p.is_empty() {
            return s.is_empty();
        }
        if p.starts_with(b"**") {
            if p.len() == 2 {
                return true;
            }
            if p[2] == b'/' {
                let rest = &p[3..];
                return (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/') && go(rest, &s[i..]));
            }
            return go(&p[1..], s);
        }
        match p[0] {
            b'*' => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(&p[1..], &s[i..])),
            b'?' => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            c => !s.is_empty() && s[0] == c && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_segments() {
        assert!(glob_match("rules/*.yml", "rules/a.yml"));
        assert!(!glob_match("rules/*.yml", "rules/sub/a.yml"));
        assert!(glob_match("rules/**/*.yml", "rules/sub/a.yml"));
        assert!(glob_match("rules/**/*.yml", "rules/a.yml"));
        assert!(glob_match("**", "x/y/z"));
        assert!(!glob_match("a?c", "a/c"));
    }

    #[test]
    fn filters_render() {
        let env = new_environment();
        let out = env
            .render_str(
                "{{ 'hi' | b64encode }} {{ 'aGk=' | b64decode }} {{ 'a' | sha256 }} {{ 'y\"es' | quote }}|{{ v | to_yaml(2) }}",
                minijinja::context! { v => minijinja::value::Serde(serde_json::json!({"a": 1, "b": "on"})) },
            )
            .unwrap();
        let (head, yaml) = out.split_once('|').unwrap();
        assert_eq!(
            head,
            "aGk= hi ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb \"y\\\"es\""
        );
        assert!(yaml.starts_with("a: 1\n  b: "), "{yaml:?}");
        assert!(!yaml.ends_with('\n'));
        let back =
            super::super::yaml::parse_yaml_documents(&yaml.replace("\n  ", "\n"), "t").unwrap();
        assert_eq!(
            back,
            vec![serde_json::json!({"a": 1, "b": "on"})],
            "\"on\" stays a string"
        );
    }

    #[test]
    fn strict_undefined_fails() {
        let env = new_environment();
        assert!(
            env.render_str("{{ nope.x }}", minijinja::context! {})
                .is_err()
        );
        assert_eq!(
            env.render_str("{{ '<&>' }}", minijinja::context! {})
                .unwrap(),
            "<&>"
        );
    }
}
