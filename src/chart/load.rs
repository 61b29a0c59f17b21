//! Loading a chart directory from disk: metadata, values, schema, templates (compiled), files index.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{CHART_API_VERSION, Chart, ChartMeta, TemplateFile, rel_path};
use crate::confine::Root;
use crate::diag::InputError;

/// Encrypted chart defaults, merged after `values.yaml` (the first that exists).
const SOPS_VALUES_FILES: [&str; 2] = ["values.sops.yaml", "values.sops.json"];

/// Template file name endings rendered on their own.
const RENDERED_EXTENSIONS: [&str; 4] = [".yaml", ".yml", ".yaml.j2", ".yaml.template"];

/// Load every `charts/<name>/Chart.yaml` under `repo_root`, by name (no age identity: a chart
/// with an encrypted file fails to load).
pub fn load_charts(repo_root: &Path) -> Result<BTreeMap<String, Chart>, InputError> {
    load_charts_with(repo_root, &crate::sops::Keyring::new(Default::default()))
}

/// [`load_charts`], decrypting sops files (values, manifests) with `keyring`.
pub fn load_charts_with(
    repo_root: &Path,
    keyring: &crate::sops::Keyring,
) -> Result<BTreeMap<String, Chart>, InputError> {
    let charts_dir = repo_root.join("charts");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&charts_dir) {
        Ok(e) => e,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => {
            return Err(InputError::new(
                "charts",
                format!("cannot read directory: {err}"),
            ));
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("Chart.yaml").is_file())
        .collect();
    dirs.sort();
    for chart in crate::par::map(&dirs, |dir| load_chart_with(repo_root, dir, keyring)) {
        let chart = chart?;
        out.insert(chart.meta.name.clone(), chart);
    }
    Ok(out)
}

/// The repository root every file of a chart under `repo_root` must resolve inside.
fn repo(repo_root: &Path) -> Result<Root, InputError> {
    Root::new(repo_root, "the repository", ".")
}

/// Whether `v` is a semantic version (semver.org 2.0: `MAJOR.MINOR.PATCH`, numbers without
/// leading zeros, optional `-pre.release` and `+build.meta` of `[0-9A-Za-z-]` identifiers).
/// The version ends up in file names (`chart package`), so nothing else may pass.
pub fn is_semver(v: &str) -> bool {
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| {
            p.split('.')
                .all(|i| ident(i) && (!i.bytes().all(|b| b.is_ascii_digit()) || numeric(i)))
        })
        && build.is_none_or(|b| b.split('.').all(ident))
}

/// Whether `name` is a DNS-1123 label (lowercase letters, digits and `-`, starting and ending
/// with a letter or digit, at most 63 characters): chart names become file names and labels.
pub fn is_dns1123_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Read and check `Chart.yaml` in `dir` (apiVersion, semver version, name equal to the directory name).
pub fn load_meta(repo_root: &Path, dir: &Path) -> Result<ChartMeta, InputError> {
    load_meta_in(&repo(repo_root)?, repo_root, dir)
}

fn load_meta_in(root: &Root, repo_root: &Path, dir: &Path) -> Result<ChartMeta, InputError> {
    let path = dir.join("Chart.yaml");
    let rel = rel_path(repo_root, &path);
    let text = root.read_text(&path, &rel)?;
    let meta: ChartMeta = serde_saphyr::from_str_with_options(&text, super::yaml::options())
        .map_err(|e| super::yaml::yaml_error(&rel, &e))?;
    let line_of = |key: &str| {
        text.lines()
            .position(|l| l.starts_with(&format!("{key}:")))
            .map(|i| i + 1)
            .unwrap_or(1)
    };
    if meta.api_version != CHART_API_VERSION {
        return Err(InputError::new(
            &rel,
            format!(
                "apiVersion must be {CHART_API_VERSION}, found {:?}",
                meta.api_version
            ),
        )
        .at(line_of("apiVersion"), 1)
        .pointer("/apiVersion"));
    }
    if !is_dns1123_label(&meta.name) {
        return Err(InputError::new(
            &rel,
            format!(
                "name {:?} is not a DNS-1123 label (lowercase letters, digits and `-`, at most 63)",
                meta.name
            ),
        )
        .at(line_of("name"), 1)
        .pointer("/name"));
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !dir_name.is_empty() && meta.name != dir_name {
        return Err(InputError::new(
            &rel,
            format!(
                "name {:?} must equal the chart directory name {dir_name:?}",
                meta.name
            ),
        )
        .at(line_of("name"), 1)
        .pointer("/name"));
    }
    if !is_semver(&meta.version) {
        return Err(InputError::new(
            &rel,
            format!(
                "version {:?} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], semver.org)",
                meta.version
            ),
        )
        .at(line_of("version"), 1)
        .pointer("/version"));
    }
    Ok(meta)
}

/// Load the chart in `dir` (templates are compiled; syntax errors name the template and line).
pub fn load_chart(repo_root: &Path, dir: &Path) -> Result<Chart, InputError> {
    load_chart_with(
        repo_root,
        dir,
        &crate::sops::Keyring::new(Default::default()),
    )
}

/// A chart values file: its mapping and the pointers that were encrypted (sops files are decrypted).
fn read_values(
    root: &Root,
    path: &Path,
    rel: &str,
    keyring: &crate::sops::Keyring,
) -> Result<(Value, BTreeSet<String>), InputError> {
    let text = root.read_text(path, rel)?;
    let (v, secret) = match crate::sops::decrypt_file(&text, rel, keyring)? {
        Some(mut docs) if docs.len() == 1 => {
            let d = docs.remove(0);
            (d.value, d.secret)
        }
        Some(_) => {
            return Err(InputError::new(
                rel,
                "a values file holds one YAML document",
            ));
        }
        None => (
            super::yaml::parse_yaml_document(&text, rel)?,
            BTreeSet::new(),
        ),
    };
    match v {
        Value::Null => Ok((Value::Object(Default::default()), secret)),
        Value::Object(_) => Ok((v, secret)),
        _ => Err(InputError::new(rel, "a values file must be a mapping")),
    }
}

/// [`load_chart`], decrypting sops files (`values.yaml`, `values.sops.yaml`, manifests) with `keyring`.
pub fn load_chart_with(
    repo_root: &Path,
    dir: &Path,
    keyring: &crate::sops::Keyring,
) -> Result<Chart, InputError> {
    let root = repo(repo_root)?;
    let rel_dir = rel_path(repo_root, dir);
    let meta = load_meta_in(&root, repo_root, dir)?;
    let read_text = |path: &Path, rel: &str| root.read_text(path, rel);

    let values_path = dir.join("values.yaml");
    let (values, values_secret) = if values_path.is_file() {
        read_values(
            &root,
            &values_path,
            &rel_path(repo_root, &values_path),
            keyring,
        )?
    } else {
        (Value::Object(Default::default()), BTreeSet::new())
    };
    let mut sops_values = None;
    for name in SOPS_VALUES_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let rel = rel_path(repo_root, &path);
            let (values, secret) = read_values(&root, &path, &rel, keyring)?;
            sops_values = Some(super::ValueLayer {
                file: rel,
                key_prefix: String::new(),
                values,
                secret,
            });
            break;
        }
    }

    let schema_path = dir.join("values.schema.json");
    let schema = if schema_path.is_file() {
        let rel = rel_path(repo_root, &schema_path);
        let text = read_text(&schema_path, &rel)?;
        let v: Value = super::strict_json::from_str(&text).map_err(|e| {
            InputError::new(&rel, format!("invalid JSON: {e}")).at(e.line(), e.column())
        })?;
        if let Err(e) = jsonschema::validator_for(&v) {
            return Err(InputError::new(&rel, format!("invalid JSON Schema: {e}")));
        }
        Some(v)
    } else {
        None
    };

    let mut env = super::filters::new_environment();
    let mut templates = Vec::new();
    let tdir = dir.join("templates");
    let mut names = Vec::new();
    if tdir.is_dir() {
        walk_files(
            &root,
            repo_root,
            &tdir,
            &tdir,
            &mut names,
            &mut HashSet::new(),
        )?;
    }
    names.sort();
    let mut statics: HashMap<String, Arc<str>> = HashMap::new();
    for name in names {
        let full = tdir.join(&name);
        let path = rel_path(repo_root, &full);
        let source = read_text(&full, &path)?;
        let base = name.rsplit('/').next().unwrap_or(&name);
        let rendered = !name.contains('/')
            && !base.starts_with('_')
            && RENDERED_EXTENSIONS.iter().any(|e| base.ends_with(e));
        // A manifest written by sops is decrypted here and never templated: its plaintext is
        // final (a `{{` in a password must not be evaluated).
        if let Some(docs) = crate::sops::decrypt_file(&source, &path, keyring)? {
            templates.push(TemplateFile {
                name,
                path,
                rendered,
                static_text: None,
                index: std::sync::OnceLock::new(),
                decrypted: Some(Arc::new(docs)),
            });
            continue;
        }
        // A rendered file without template syntax renders to itself: it is not compiled
        // (a chart of plain manifests costs no template memory), but stays includable.
        let static_text = (rendered && !has_template_syntax(&source)).then(|| {
            let text: Arc<str> = Arc::from(source.as_str());
            statics.insert(name.clone(), text.clone());
            text
        });
        if static_text.is_none() {
            let source = super::pylist::rewrite(&source).unwrap_or(source);
            env.add_template_owned(name.clone(), source)
                .map_err(|e| super::render::template_error(&rel_dir, &e, None))?;
        }
        templates.push(TemplateFile {
            name,
            path,
            rendered,
            static_text,
            index: std::sync::OnceLock::new(),
            decrypted: None,
        });
    }
    if !statics.is_empty() {
        env.set_loader(move |name| Ok(statics.get(name).map(|s| s.to_string())));
    }

    let mut files = Vec::new();
    let fdir = dir.join("files");
    if fdir.is_dir() {
        let files_root = Root::new(
            &fdir,
            "the chart's files/ directory",
            &rel_path(repo_root, &fdir),
        )?;
        if !root.contains(files_root.real()) {
            return Err(InputError::new(
                rel_path(repo_root, &fdir),
                format!(
                    "resolves to {}, outside the repository: pailot reads no file outside it (a symlink?)",
                    files_root.real().display()
                ),
            ));
        }
        walk_files(
            &files_root,
            repo_root,
            &fdir,
            &fdir,
            &mut files,
            &mut HashSet::new(),
        )?;
    }
    files.sort();

    Ok(Chart {
        dir: dir.to_path_buf(),
        rel_dir,
        meta,
        values,
        values_secret,
        sops_values,
        schema,
        templates,
        files,
        env: Arc::new(env),
    })
}

/// Whether `source` holds any minijinja syntax (`{{`, `{%`, `{#`).
fn has_template_syntax(source: &str) -> bool {
    // `match_indices` on a char finds candidates with memchr.
    let b = source.as_bytes();
    source
        .match_indices('{')
        .any(|(i, _)| matches!(b.get(i + 1), Some(b'{' | b'%' | b'#')))
}

/// What minijinja renders for a template without syntax: the text without one final line end.
pub(crate) fn static_output(text: &str) -> &str {
    let t = text.strip_suffix('\n').unwrap_or(text);
    t.strip_suffix('\r').unwrap_or(t)
}

/// Collect the regular files under `dir` as `/`-separated paths relative to `base`, following
/// symlinks whose real path stays inside `root`: a link (or `dir` itself) resolving outside is an
/// error naming it, a dangling link is skipped, and a directory reached twice is walked once.
fn walk_files(
    root: &Root,
    repo_root: &Path,
    base: &Path,
    dir: &Path,
    out: &mut Vec<String>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), InputError> {
    let shown = |p: &Path| rel_path(repo_root, p);
    let io = |p: &Path, e: std::io::Error| {
        InputError::new(shown(p), format!("cannot read directory: {e}"))
    };
    let real = dir.canonicalize().map_err(|e| io(dir, e))?;
    if !root.contains(&real) {
        return Err(outside(&shown(dir), &real, root));
    }
    if !seen.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let ft = e.file_type().map_err(|err| io(&p, err))?;
        let (is_dir, is_file) = if ft.is_symlink() {
            let Ok(target) = p.canonicalize() else {
                continue; // dangling
            };
            if !root.contains(&target) {
                return Err(outside(&shown(&p), &target, root));
            }
            (target.is_dir(), target.is_file())
        } else {
            (ft.is_dir(), ft.is_file())
        };
        if is_dir {
            walk_files(root, repo_root, base, &p, out, seen)?;
        } else if is_file {
            out.push(rel_path(base, &p));
        }
    }
    Ok(())
}

fn outside(shown: &str, real: &Path, root: &Root) -> InputError {
    InputError::new(
        shown,
        format!(
            "resolves to {}, outside {}: pailot reads no file outside it (a symlink?)",
            real.display(),
            root.what()
        ),
    )
}

/// Cheap per-template line index for provenance.
#[derive(Clone, Debug)]
pub(crate) struct TemplateIndex {
    /// YAML key -> 1-based lines where `key:` appears.
    pub(crate) key_lines: HashMap<String, Vec<usize>>,
    /// Per 1-based line (index 0 unused): dotted references inside `{{ }}`/`{% %}` on that line.
    pub(crate) line_refs: Vec<Vec<String>>,
    /// 1-based lines that start a YAML document (`---`).
    pub(crate) separators: Vec<usize>,
    /// 1-based lines holding a `kind:` key, with the line text.
    pub(crate) kind_lines: Vec<(usize, String)>,
    /// Per 1-based line: the column of the YAML key it starts with (0 when none; 1-based otherwise).
    pub(crate) key_col: Vec<usize>,
    /// Per 1-based key line: the next line whose key is less indented (the end of the mapping the
    /// key belongs to), `usize::MAX` when none.
    pub(crate) block_end: Vec<usize>,
    /// Per 1-based key line: whether it starts a list item (`- key: ...`).
    pub(crate) item: Vec<bool>,
    /// Per 1-based key line: the text after `key:`, trimmed (what the line gives the key).
    pub(crate) key_value: Vec<Box<str>>,
    /// The `{% if %}`/`{% for %}` structure, to tell which key lines a render ran.
    pub(crate) control: super::control::Control,
}

impl TemplateIndex {
    pub(crate) fn build(source: &str) -> Self {
        let mut key_lines: HashMap<String, Vec<usize>> = HashMap::new();
        let mut line_refs = vec![Vec::new()];
        let mut separators = Vec::new();
        let mut kind_lines = Vec::new();
        let mut key_col = vec![0];
        let mut item = vec![false];
        let mut key_value: Vec<Box<str>> = vec![Box::from("")];
        let mut block_end = vec![usize::MAX];
        // Key lines still inside their mapping, with their columns (non-decreasing).
        let mut open: Vec<(usize, usize)> = Vec::new();
        for (i, line) in source.lines().enumerate() {
            let n = i + 1;
            let t = line.trim_start();
            if t.starts_with("---") {
                separators.push(n);
            }
            item.push(t.starts_with("- "));
            let t = t.trim_start_matches("- ").trim_start();
            block_end.push(usize::MAX);
            match yaml_key(t) {
                Some(key) => {
                    if key == "kind" {
                        kind_lines.push((n, line.to_string()));
                    }
                    key_lines.entry(key.to_string()).or_default().push(n);
                    let col = line.len() - t.len() + 1;
                    while open.last().is_some_and(|&(c, _)| c > col) {
                        let (_, l) = open.pop().expect("checked");
                        block_end[l] = n;
                    }
                    open.push((col, n));
                    key_col.push(col);
                    let quotes = if t.starts_with(['"', '\'']) { 2 } else { 0 };
                    let after = &t[key.len() + quotes + 1..];
                    key_value.push(Box::from(after.trim()));
                }
                None => {
                    key_col.push(0);
                    key_value.push(Box::from(""));
                }
            }
            line_refs.push(references(line));
        }
        TemplateIndex {
            key_lines,
            line_refs,
            separators,
            kind_lines,
            key_col,
            item,
            key_value,
            block_end,
            control: super::control::Control::scan(source),
        }
    }
}

/// The YAML key a line starts with (`key:` / `"key":`), if any.
fn yaml_key(t: &str) -> Option<&str> {
    let (key, rest) = if let Some(stripped) = t.strip_prefix('"') {
        let end = stripped.find('"')?;
        (&stripped[..end], &stripped[end + 1..])
    } else if let Some(stripped) = t.strip_prefix('\'') {
        let end = stripped.find('\'')?;
        (&stripped[..end], &stripped[end + 1..])
    } else {
        let end = t.find(':')?;
        (&t[..end], &t[end..])
    };
    if key.is_empty() || key.contains(['{', '}', ' ', '#']) || !rest.starts_with(':') {
        return None;
    }
    let after = &rest[1..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    Some(key)
}

/// Dotted references (`values.a.b`, `cluster_cfg.x.y` from `cluster_cfg["x"]["y"]`) inside the
/// `{{ }}` and `{% %}` blocks of one line.
pub(crate) fn references(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let body_start = &after[1..];
        let end = body_start.find(close).unwrap_or(body_start.len());
        scan_refs(&body_start[..end], &mut out);
        rest = &body_start[end..];
        if rest.is_empty() {
            break;
        }
    }
    out
}

fn scan_refs(expr: &str, out: &mut Vec<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            // skip string literal
            i += 1;
            while i < b.len() && b[i] != c {
                i += 1;
            }
            i += 1;
            continue;
        }
        if ident_start(c) && (i == 0 || !(ident_char(b[i - 1]) || b[i - 1] == b'.')) {
            let mut parts = Vec::new();
            let s = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            parts.push(expr[s..i].to_string());
            loop {
                if i < b.len() && b[i] == b'.' && i + 1 < b.len() && ident_start(b[i + 1]) {
                    let s = i + 1;
                    i += 1;
                    while i < b.len() && ident_char(b[i]) {
                        i += 1;
                    }
                    parts.push(expr[s..i].to_string());
                } else if i + 1 < b.len() && b[i] == b'[' && (b[i + 1] == b'"' || b[i + 1] == b'\'')
                {
                    let q = b[i + 1];
                    let s = i + 2;
                    let Some(len) = expr[s..].find(q as char) else {
                        break;
                    };
                    let e = s + len;
                    if e + 1 < b.len() && b[e + 1] == b']' {
                        parts.push(expr[s..e].to_string());
                        i = e + 2;
                    } else {
                        break;
                    }
                } else {
                    break;
                }
            }
            if parts.len() > 1
                || !matches!(
                    parts[0].as_str(),
                    "if" | "for"
                        | "in"
                        | "not"
                        | "and"
                        | "or"
                        | "is"
                        | "else"
                        | "endif"
                        | "endfor"
                        | "true"
                        | "false"
                        | "none"
                        | "set"
                )
            {
                out.push(parts.join("."));
            }
            continue;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_templates_render_like_minijinja() {
        let env = crate::chart::filters::new_environment();
        for text in [
            "a: 1\n",
            "a: 1",
            "a: 1\n\n",
            "a: 1\r\n",
            "",
            "\n",
            "a: '{ x }'\n# }} %}\n",
        ] {
            assert!(!has_template_syntax(text), "{text:?}");
            assert_eq!(
                static_output(text),
                env.render_str(text, ()).unwrap(),
                "{text:?}"
            );
        }
        for text in ["{{ x }}", "a: {% if true %}1{% endif %}", "{# c #}", "x{{"] {
            assert!(has_template_syntax(text), "{text:?}");
        }
    }

    #[test]
    fn references_found_in_expressions() {
        let r = references(
            r#"  memory: {{ values.zk.memory }} {{ cluster_cfg["cluster"]['common'].x | quote }}"#,
        );
        assert_eq!(
            r,
            vec![
                "values.zk.memory".to_string(),
                "cluster_cfg.cluster.common.x".into(),
                "quote".into()
            ]
        );
    }

    #[test]
    fn yaml_keys() {
        assert_eq!(yaml_key("name: x"), Some("name"));
        assert_eq!(yaml_key("\"a.b\": 1"), Some("a.b"));
        assert_eq!(yaml_key("image: a:b"), Some("image"));
        assert_eq!(yaml_key("http://x"), None);
        assert_eq!(yaml_key("{{ x }}: 1"), None);
    }

    #[test]
    fn semver() {
        for v in [
            "0.14.0",
            "1.2.3-rc.1",
            "1.0.0-alpha-1.0+build.5",
            "10.20.30+x",
        ] {
            assert!(is_semver(v), "{v}");
        }
        for v in [
            "1.2",
            "0.1.0+x/../../pwned",
            "01.2.3",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3+a..b",
            "1.2.3 ",
            "v1.2.3",
        ] {
            assert!(!is_semver(v), "{v}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns1123_label("hadoop-node-manager"));
        assert!(is_dns1123_label("a1"));
        for n in ["", "A", "-a", "a-", "a_b", "a.b", "../x", &"a".repeat(64)] {
            assert!(!is_dns1123_label(n), "{n}");
        }
    }
}
