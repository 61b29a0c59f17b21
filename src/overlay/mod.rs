//! Overlays (`overlays/<name>/overlay.yaml`): extends, chart selection, values layers and RFC 6902 patches.
//!
//! Flow: [`resolve`] loads the overlays a cluster names, depth first through `extends` (each overlay
//! once, cycles rejected), compiling every target and op up front; [`chart_set`] and
//! [`value_layers`] read the resolved list; [`apply_patches`] runs the patches over rendered objects.

pub mod patch;
pub mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use json_patch::PatchOperation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chart::values::ValueLayer;
use crate::diag::InputError;
use crate::manifest::{ObjectId, RenderedObject};
use crate::provenance::{FieldHistory, Origin};

pub use target::{CompiledTarget, Selector, Target};

use crate::chart::fastyaml::ItemLines;

/// The only `apiVersion` an overlay may have.
pub const OVERLAY_API_VERSION: &str = "pailot.dev/v1";

/// An overlay: charts to add/remove, values to merge, patches to apply to the rendered objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overlay {
    /// Always `pailot.dev/v1`.
    pub api_version: String,
    /// Always `Overlay`.
    pub kind: String,
    /// What the overlay is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Overlays applied before this one, in order (depth first, each once; cycles are an error).
    #[serde(default)]
    pub extends: Vec<String>,
    /// Charts added to or removed from the render.
    #[serde(default)]
    pub charts: ChartSelection,
    /// Values per chart (`"*"` = every chart), merged after the chart's values.yaml.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Files beside the overlay with more values per chart, merged after `values`, in order;
    /// a file may be encrypted with sops (`secrets.sops.yaml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// JSON patches applied, in order, to the rendered objects.
    #[serde(default)]
    pub patches: Vec<Patch>,
}

/// Charts an overlay adds (`include`, `"*"` = every chart in `charts/`) and removes (`exclude`, `"*"` = all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChartSelection {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// One patch: which objects, and the RFC 6902 ops (inline `ops`, or a `file` beside the overlay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    pub target: Target,
    /// Inline ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<PatchOp>>,
    /// A YAML list of ops, relative to the overlay directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// When true, a target matching nothing is not an error.
    #[serde(default)]
    pub optional: bool,
}

/// One RFC 6902 operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PatchOp {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
    Move { from: String, path: String },
    Copy { from: String, path: String },
    Test { path: String, value: Value },
}

impl PatchOp {
    /// `add`, `remove`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            PatchOp::Add { .. } => "add",
            PatchOp::Remove { .. } => "remove",
            PatchOp::Replace { .. } => "replace",
            PatchOp::Move { .. } => "move",
            PatchOp::Copy { .. } => "copy",
            PatchOp::Test { .. } => "test",
        }
    }

    /// The op's `path`.
    pub fn path(&self) -> &str {
        match self {
            PatchOp::Add { path, .. }
            | PatchOp::Remove { path }
            | PatchOp::Replace { path, .. }
            | PatchOp::Move { path, .. }
            | PatchOp::Copy { path, .. }
            | PatchOp::Test { path, .. } => path,
        }
    }

    fn source_pointer(&self) -> Option<&str> {
        match self {
            PatchOp::Move { from, .. } | PatchOp::Copy { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The json-patch form; the error says which pointer is not a JSON pointer.
    pub fn compile(&self) -> Result<PatchOperation, String> {
        use json_patch::jsonptr::PointerBuf;
        use json_patch::*;
        let ptr =
            |p: &str| PointerBuf::parse(p).map_err(|e| format!("`{p}` is not a JSON pointer: {e}"));
        Ok(match self.clone() {
            PatchOp::Add { path, value } => PatchOperation::Add(AddOperation {
                path: ptr(&path)?,
                value,
            }),
            PatchOp::Remove { path } => {
                PatchOperation::Remove(RemoveOperation { path: ptr(&path)? })
            }
            PatchOp::Replace { path, value } => PatchOperation::Replace(ReplaceOperation {
                path: ptr(&path)?,
                value,
            }),
            PatchOp::Move { from, path } => PatchOperation::Move(MoveOperation {
                from: ptr(&from)?,
                path: ptr(&path)?,
            }),
            PatchOp::Copy { from, path } => PatchOperation::Copy(CopyOperation {
                from: ptr(&from)?,
                path: ptr(&path)?,
            }),
            PatchOp::Test { path, value } => PatchOperation::Test(TestOperation {
                path: ptr(&path)?,
                value,
            }),
        })
    }
}

/// An overlay read from disk with its patches compiled (regexes, selectors, pointers, patch files).
#[derive(Clone, Debug)]
pub struct LoadedOverlay {
    pub name: String,
    /// `overlays/<name>/overlay.yaml`, relative to the repository root.
    pub file: String,
    pub overlay: Overlay,
    pub patches: Vec<LoadedPatch>,
    /// The `valuesFiles`, read (and decrypted) in order.
    pub values_files: Vec<crate::chart::ValuesFile>,
}

/// One compiled patch.
#[derive(Clone, Debug)]
pub struct LoadedPatch {
    /// Index in the overlay's `patches`.
    pub index: usize,
    /// Line of the patch in the overlay file, when known.
    pub line: Option<usize>,
    pub target: CompiledTarget,
    pub ops: Vec<LoadedOp>,
    pub optional: bool,
}

/// One compiled op and the origin provenance records for it.
#[derive(Clone, Debug)]
pub struct LoadedOp {
    pub op: PatchOperation,
    /// The op as written (for messages).
    pub source: PatchOp,
    /// File holding the op (the overlay file, or the patch file) and the line there, when known.
    pub file: String,
    pub line: Option<usize>,
    pub origin: Arc<Origin>,
    /// For an op whose value was decrypted from a sops patch file: the op with placeholders
    /// instead, which the shadow render applies (`crate::mask`).
    pub shadow: Option<PatchOperation>,
}

/// Lines of patches and ops, read in a second, lenient pass over the same text.
#[derive(Deserialize, Default)]
struct PatchLines {
    #[serde(default)]
    patches: Vec<serde_saphyr::Spanned<OpLines>>,
}

#[derive(Deserialize, Default)]
struct OpLines {
    #[serde(default)]
    ops: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
}

/// Parse `text` into `T` with the start lines of its sequence items (pointers of at most
/// `depth` segments). The fast reader and `serde_json` take the common case; anything they
/// decline or reject goes through serde-saphyr, which also positions every error.
fn parse_with_lines<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    depth: usize,
) -> Result<(T, ItemLines), InputError> {
    if let Some((v, lines)) = crate::chart::fastyaml::parse_document_with_lines(text, depth)
        && let Ok(t) = serde_json::from_value::<T>(v)
    {
        return Ok((t, lines));
    }
    parse_with_spans(text, file, depth)
}

/// [`parse_with_lines`] through serde-saphyr only.
fn parse_with_spans<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    depth: usize,
) -> Result<(T, ItemLines), InputError> {
    let t: T = parse_yaml(text, file)?;
    let mut spans = std::collections::HashMap::new();
    let ok = |l: usize| (l > 0).then_some(l);
    if depth == 1 {
        let items: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>> =
            serde_saphyr::from_str_with_options(text, yaml_options()).unwrap_or_default();
        for (i, s) in items.iter().enumerate() {
            if let Some(l) = ok(s.referenced.line() as usize) {
                spans.insert(format!("/{i}"), l);
            }
        }
    } else {
        let lines: PatchLines =
            serde_saphyr::from_str_with_options(text, yaml_options()).unwrap_or_default();
        for (pi, p) in lines.patches.iter().enumerate() {
            if let Some(l) = ok(p.referenced.line() as usize) {
                spans.insert(format!("/patches/{pi}"), l);
            }
            for (oi, o) in p.value.ops.iter().enumerate() {
                if let Some(l) = ok(o.referenced.line() as usize) {
                    spans.insert(format!("/patches/{pi}/ops/{oi}"), l);
                }
            }
        }
    }
    Ok((t, ItemLines(spans)))
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        strict_indentation: true,
        ignore_binary_tag_for_string: true,
        emit_comments: false,
    }
}

/// Parse YAML text into `T`, naming `file` and the line/column on error.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, InputError> {
    serde_saphyr::from_str_with_options::<T>(text, yaml_options()).map_err(|e| {
        let mut err = crate::chart::yaml::yaml_error(file, &e);
        // The position is in the error already: drop serde-saphyr's "error: line L column C: " prefix.
        if let Some(rest) = err.message.strip_prefix("invalid YAML: error: line ")
            && let Some((_, fact)) = rest.split_once(": ")
        {
            err.message = fact.to_string();
        }
        err
    })
}

fn valid_overlay_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Repo-relative file of overlay `name`.
pub fn overlay_file(name: &str) -> String {
    format!("overlays/{name}/overlay.yaml")
}

/// Read and compile `overlays/<name>/overlay.yaml` (not its `extends`).
pub fn load_overlay(repo_root: &Path, name: &str) -> Result<LoadedOverlay, InputError> {
    load_overlay_with(
        repo_root,
        name,
        &crate::sops::Keyring::new(Default::default()),
    )
}

/// A path written in overlay `name` (`file` of a patch, a `valuesFiles` entry): inside its directory.
fn overlay_relative(
    name: &str,
    overlay_file: &str,
    rel: &str,
    what: &str,
    place: &str,
) -> Result<String, InputError> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(InputError::new(
            overlay_file,
            format!("{what} `{rel}` must stay inside the overlay directory"),
        )
        .place(place.to_string()));
    }
    Ok(format!("overlays/{name}/{rel}"))
}

/// [`load_overlay`], decrypting sops patch and values files with `keyring`.
pub fn load_overlay_with(
    repo_root: &Path,
    name: &str,
    keyring: &crate::sops::Keyring,
) -> Result<LoadedOverlay, InputError> {
    let file = overlay_file(name);
    let root = crate::confine::Root::new(repo_root, "the repository", ".")?;
    let text = root.read_text(&repo_root.join(&file), &file)?;
    compile_overlay_with(repo_root, name, &text, keyring)
}

/// Parse and compile the text of overlay `name` (its `overlay.yaml`); patch files are read from
/// its directory under `repo_root`.
pub fn compile_overlay(
    repo_root: &Path,
    name: &str,
    text: &str,
) -> Result<LoadedOverlay, InputError> {
    compile_overlay_with(
        repo_root,
        name,
        text,
        &crate::sops::Keyring::new(Default::default()),
    )
}

/// [`compile_overlay`], decrypting sops patch and values files with `keyring`.
pub fn compile_overlay_with(
    repo_root: &Path,
    name: &str,
    text: &str,
    keyring: &crate::sops::Keyring,
) -> Result<LoadedOverlay, InputError> {
    let file = overlay_file(name);
    let (overlay, lines) = parse_with_lines::<Overlay>(text, &file, 4)?;
    if overlay.api_version != OVERLAY_API_VERSION {
        return Err(InputError::new(
            &file,
            format!(
                "apiVersion must be {OVERLAY_API_VERSION}, not `{}`",
                overlay.api_version
            ),
        )
        .place("apiVersion"));
    }
    if overlay.kind != "Overlay" {
        return Err(InputError::new(
            &file,
            format!("kind must be Overlay, not `{}`", overlay.kind),
        )
        .place("kind"));
    }
    let mut patches = Vec::with_capacity(overlay.patches.len());
    for (pi, p) in overlay.patches.iter().enumerate() {
        let line = lines.get(&format!("/patches/{pi}"));
        let at = |e: InputError| match line {
            Some(l) => e.at(l, 1),
            None => e,
        };
        let target = CompiledTarget::compile(&p.target).map_err(|e| {
            at(InputError::new(&file, e.to_string())
                .place(format!("patch {pi} target.{}", e.field())))
        })?;
        let (ops_file, ops, op_lines, op_secrets): PatchFile = match (&p.ops, &p.file) {
            (Some(ops), None) => {
                let op_lines = (0..ops.len())
                    .map(|oi| lines.get(&format!("/patches/{pi}/ops/{oi}")))
                    .collect();
                (file.clone(), ops.clone(), op_lines, Vec::new())
            }
            (None, Some(rel)) => {
                load_patch_file(repo_root, name, &file, pi, rel, keyring).map_err(at)?
            }
            (Some(_), Some(_)) => {
                return Err(at(InputError::new(
                    &file,
                    "a patch has either `ops` or `file`, not both",
                )
                .place(format!("patch {pi}"))));
            }
            (None, None) => {
                return Err(at(InputError::new(&file, "a patch needs `ops` or `file`")
                    .place(format!("patch {pi}"))));
            }
        };
        let mut loaded_ops = Vec::with_capacity(ops.len());
        for (oi, op) in ops.into_iter().enumerate() {
            let op_line = op_lines.get(oi).copied().flatten();
            let value_secret = op_secrets.get(oi).filter(|s| !s.is_empty());
            let compiled = op.compile().map_err(|m| {
                let e = InputError::new(&ops_file, m)
                    .place(format!("patch {pi} op {oi}"))
                    .pointer(op.path());
                match op_line {
                    Some(l) => e.at(l, 1),
                    None => e,
                }
            })?;
            let origin = Arc::new(Origin::Overlay {
                overlay: name.to_string(),
                file: ops_file.clone(),
                patch: pi,
                op: oi,
                op_kind: op.kind().to_string(),
                line: op_line,
                from: op.source_pointer().map(str::to_string),
            });
            let shadow = value_secret.and_then(|secret| {
                let mut shadow = op.clone();
                match &mut shadow {
                    PatchOp::Add { value, .. }
                    | PatchOp::Replace { value, .. }
                    | PatchOp::Test { value, .. } => {
                        *value = crate::mask::substitute(value, secret);
                    }
                    _ => return None,
                }
                shadow.compile().ok()
            });
            loaded_ops.push(LoadedOp {
                op: compiled,
                source: op,
                file: ops_file.clone(),
                line: op_line,
                origin,
                shadow,
            });
        }
        patches.push(LoadedPatch {
            index: pi,
            line,
            target,
            ops: loaded_ops,
            optional: p.optional,
        });
    }
    let mut values_files = Vec::with_capacity(overlay.values_files.len());
    for (i, rel) in overlay.values_files.iter().enumerate() {
        let place = format!("valuesFiles[{i}]");
        let path = overlay_relative(name, &file, rel, "values file", &place)?;
        values_files.push(crate::chart::ValuesFile::read(
            repo_root, &path, keyring, &file, &place,
        )?);
    }
    Ok(LoadedOverlay {
        name: name.to_string(),
        file,
        overlay,
        patches,
        values_files,
    })
}

/// A patch's ops: their file, the ops, each op's line, and each op's decrypted value pointers
/// (relative to the op's `value`; empty unless the file is a sops file).
type PatchFile = (
    String,
    Vec<PatchOp>,
    Vec<Option<usize>>,
    Vec<std::collections::BTreeSet<String>>,
);

fn load_patch_file(
    repo_root: &Path,
    name: &str,
    overlay_file: &str,
    pi: usize,
    rel: &str,
    keyring: &crate::sops::Keyring,
) -> Result<PatchFile, InputError> {
    let ops_file = overlay_relative(
        name,
        overlay_file,
        rel,
        "patch file",
        &format!("patch {pi} file"),
    )?;
    let root = crate::confine::Root::new(repo_root, "the repository", ".")?;
    let text = root
        .read_text(&repo_root.join(&ops_file), &ops_file)
        .map_err(|e| {
            InputError::new(
                overlay_file,
                format!("patch file {ops_file}: {}", e.message),
            )
            .place(format!("patch {pi} file"))
        })?;
    // sops encrypts mappings only: an encrypted patch file is `ops: [...]`.
    if let Some(mut docs) = crate::sops::decrypt_file(&text, &ops_file, keyring)? {
        let doc = if docs.len() == 1 {
            docs.remove(0)
        } else {
            Default::default()
        };
        let ops_value = doc.value.get("ops").cloned().ok_or_else(|| {
            InputError::new(
                &ops_file,
                "an encrypted patch file is a mapping with an `ops` list",
            )
        })?;
        let ops: Vec<PatchOp> = serde_json::from_value(ops_value)
            .map_err(|e| InputError::new(&ops_file, format!("invalid ops: {e}")).place("ops"))?;
        let secrets = (0..ops.len())
            .map(|i| {
                let prefix = format!("/ops/{i}/value");
                doc.secret
                    .iter()
                    .filter_map(|p| p.strip_prefix(&prefix))
                    .filter(|r| r.is_empty() || r.starts_with('/'))
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let lines = vec![None; ops.len()];
        return Ok((ops_file, ops, lines, secrets));
    }
    if let Ok(Value::Object(m)) = crate::chart::yaml::parse_yaml_document(&text, &ops_file)
        && let Some(ops) = m.get("ops")
    {
        let ops: Vec<PatchOp> = serde_json::from_value(ops.clone())
            .map_err(|e| InputError::new(&ops_file, format!("invalid ops: {e}")).place("ops"))?;
        let lines = vec![None; ops.len()];
        return Ok((ops_file, ops, lines, Vec::new()));
    }
    let (ops, lines) = parse_with_lines::<Vec<PatchOp>>(&text, &ops_file, 1)?;
    let op_lines = (0..ops.len())
        .map(|i| lines.get(&format!("/{i}")))
        .collect();
    Ok((ops_file, ops, op_lines, Vec::new()))
}

/// Load `names` (referenced from `from_file`) and everything they extend, in application order:
/// for `[a, b]`: `a`'s extends (depth first, each overlay once), `a`, `b`'s extends not yet seen, `b`.
pub fn resolve(
    repo_root: &Path,
    names: &[String],
    from_file: &str,
) -> Result<Vec<LoadedOverlay>, InputError> {
    resolve_with(
        repo_root,
        names,
        from_file,
        &crate::sops::Keyring::new(Default::default()),
    )
}

/// [`resolve`], decrypting sops patch and values files with `keyring`.
///
/// The walk keeps its own stack (no recursion), and a chain of `extends` longer than
/// [`Limits::extends_depth`](crate::limits::Limits) is an error naming the overlay and the chain:
/// a 10,000-overlay chain once overflowed the thread's stack.
pub fn resolve_with(
    repo_root: &Path,
    names: &[String],
    from_file: &str,
    keyring: &crate::sops::Keyring,
) -> Result<Vec<LoadedOverlay>, InputError> {
    let max_depth = crate::limits::Limits::current().extends_depth;
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    // The chain being walked: each overlay and the index of its next `extends` entry.
    let mut stack: Vec<(LoadedOverlay, usize)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut next = Some((
            name.clone(),
            from_file.to_string(),
            format!("overlays[{i}]"),
        ));
        loop {
            if let Some((name, from, place)) = next.take() {
                if let Some(start) = stack.iter().position(|(o, _)| o.name == name) {
                    let mut cycle: Vec<&str> = stack[start..]
                        .iter()
                        .map(|(o, _)| o.name.as_str())
                        .collect();
                    cycle.push(&name);
                    return Err(InputError::new(
                        &from,
                        format!("extends cycle: {}", cycle.join(" -> ")),
                    )
                    .place(place));
                }
                if !done.contains(&name) {
                    if stack.len() >= max_depth {
                        let chain: Vec<&str> = stack.iter().map(|(o, _)| o.name.as_str()).collect();
                        return Err(crate::limits::exceeded(
                            &from,
                            format_args!(
                                "extends chain is deeper than {max_depth} overlays: {} -> {name}",
                                abbreviate(&chain)
                            ),
                            "PAILOT_LIMIT_EXTENDS_DEPTH",
                        )
                        .place(place));
                    }
                    stack.push((enter(repo_root, &name, &from, &place, keyring)?, 0));
                }
            }
            let Some((top, at)) = stack.last_mut() else {
                break;
            };
            if let Some(parent) = top.overlay.extends.get(*at) {
                next = Some((parent.clone(), top.file.clone(), format!("extends[{at}]")));
                *at += 1;
            } else {
                let (loaded, _) = stack.pop().expect("non-empty");
                done.insert(loaded.name.clone());
                out.push(loaded);
            }
        }
    }
    Ok(out)
}

/// `a -> b -> c`, or its first and last three names around `...` when longer.
fn abbreviate(chain: &[&str]) -> String {
    if chain.len() <= 7 {
        chain.join(" -> ")
    } else {
        format!(
            "{} -> ... -> {}",
            chain[..3].join(" -> "),
            chain[chain.len() - 3..].join(" -> ")
        )
    }
}

/// Check `name` (referenced from `from_file` at `place`) and load it.
fn enter(
    repo_root: &Path,
    name: &str,
    from_file: &str,
    place: &str,
    keyring: &crate::sops::Keyring,
) -> Result<LoadedOverlay, InputError> {
    if !valid_overlay_name(name) {
        return Err(
            InputError::new(from_file, format!("invalid overlay name `{name}`")).place(place),
        );
    }
    let file = overlay_file(name);
    if !repo_root.join(&file).is_file() {
        return Err(InputError::new(
            from_file,
            format!("unknown overlay `{name}`: {file} does not exist"),
        )
        .place(place));
    }
    load_overlay_with(repo_root, name, keyring)
}

/// The charts the overlays select, from `available` (the charts in `charts/`): include/exclude
/// accumulate in overlay order. An unknown chart name is an error naming the overlay and place.
pub fn chart_set(
    overlays: &[LoadedOverlay],
    available: &BTreeSet<String>,
) -> Result<BTreeSet<String>, InputError> {
    let mut set = BTreeSet::new();
    for o in overlays {
        for (i, c) in o.overlay.charts.include.iter().enumerate() {
            if c == "*" {
                set.extend(available.iter().cloned());
            } else if available.contains(c) {
                set.insert(c.clone());
            } else {
                return Err(InputError::new(
                    &o.file,
                    format!("unknown chart `{c}` (no charts/{c}/Chart.yaml)"),
                )
                .place(format!("charts.include[{i}]")));
            }
        }
        for (i, c) in o.overlay.charts.exclude.iter().enumerate() {
            if c == "*" {
                set.clear();
                continue;
            }
            if !available.contains(c) {
                return Err(InputError::new(
                    &o.file,
                    format!("unknown chart `{c}` (no charts/{c}/Chart.yaml)"),
                )
                .place(format!("charts.exclude[{i}]")));
            }
            set.remove(c);
        }
    }
    Ok(set)
}

/// The overlay value layers of `chart`, in merge order: per overlay, `values."*"` then `values.<chart>`.
pub fn value_layers(overlays: &[LoadedOverlay], chart: &str) -> Vec<ValueLayer> {
    let mut layers = Vec::new();
    for o in overlays {
        for key in ["*", chart] {
            if let Some(v) = o.overlay.values.get(key) {
                layers.push(ValueLayer {
                    file: o.file.clone(),
                    key_prefix: format!("values.{key}"),
                    values: v.clone(),
                    secret: Default::default(),
                });
            }
        }
        for f in &o.values_files {
            layers.extend(f.layers(chart));
        }
    }
    layers
}

/// Check every `values` key names a chart that exists (or `"*"`).
pub fn check_value_keys(
    overlays: &[LoadedOverlay],
    available: &BTreeSet<String>,
) -> Result<(), InputError> {
    for o in overlays {
        for k in o.overlay.values.keys() {
            if k != "*" && !available.contains(k) {
                return Err(
                    InputError::new(&o.file, format!("values for unknown chart `{k}`"))
                        .place(format!("values.{k}")),
                );
            }
        }
        for f in &o.values_files {
            for k in f.charts.keys() {
                if k != "*" && !available.contains(k) {
                    return Err(InputError::new(
                        &f.file,
                        format!("values for unknown chart `{k}`"),
                    )
                    .place(k.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Apply every patch of `overlays`, in order, to `objects` (sorted by identity), recording provenance
/// in `histories` (when given). `seq` numbers the ops (step 0 is the chart engine).
///
/// Guarantees: a failing op stops the render with an error naming the op's file (and line), `patch P
/// op O`, the JSON pointer and the object; the object keeps its state from before that op.
pub fn apply_patches(
    overlays: &[LoadedOverlay],
    objects: &mut BTreeMap<ObjectId, RenderedObject>,
    histories: Option<&mut BTreeMap<ObjectId, FieldHistory>>,
) -> Result<(), InputError> {
    apply_patches_tracked(overlays, objects, histories, &mut BTreeMap::new())
}

/// [`apply_patches`], also applying every op to the objects' shadows (`crate::mask`): an object
/// that holds a decrypted value has a shadow with placeholders instead; an op whose value was
/// decrypted gives the object a shadow and applies its placeholder form there.
pub fn apply_patches_tracked(
    overlays: &[LoadedOverlay],
    objects: &mut BTreeMap<ObjectId, RenderedObject>,
    mut histories: Option<&mut BTreeMap<ObjectId, FieldHistory>>,
    shadows: &mut BTreeMap<ObjectId, Value>,
) -> Result<(), InputError> {
    let mut seq: u32 = 0;
    // Targets naming one object literally (the common case) look it up instead of scanning.
    let mut by_name = name_index(objects);
    for o in overlays {
        for p in &o.patches {
            let first_seq = seq + 1;
            seq += p.ops.len() as u32;
            let mut matched = 0usize;
            let mut renamed = Vec::new();
            let mut apply = |id: &ObjectId, ro: &mut RenderedObject| -> Result<(), InputError> {
                if !p.target.matches(id, &ro.chart, &ro.object) {
                    return Ok(());
                }
                matched += 1;
                let mut history = histories.as_deref_mut().map(|h| {
                    if !h.contains_key(id) {
                        h.insert(id.clone(), FieldHistory::default());
                    }
                    h.get_mut(id).expect("inserted above")
                });
                for (oi, op) in p.ops.iter().enumerate() {
                    if op.shadow.is_some() && !shadows.contains_key(id) {
                        shadows.insert(id.clone(), ro.object.clone());
                    }
                    let recorder = history.as_deref_mut().map(|history| patch::Recorder {
                        history,
                        seq: first_seq + oi as u32,
                        origin: &op.origin,
                    });
                    if let Err(e) = patch::apply_op(&mut ro.object, &op.op, recorder) {
                        return Err(op_error(op, p, oi, id, &e));
                    }
                    if let Some(shadow) = shadows.get_mut(id) {
                        let shadow_op = op.shadow.as_ref().unwrap_or(&op.op);
                        if patch::apply_op(shadow, shadow_op, None).is_err() {
                            // The shadow no longer follows the object (a `test` on a secret):
                            // every field counts as secret.
                            *shadow = crate::mask::placeholder(&ro.object);
                        }
                    }
                }
                if !same_identity(id, &ro.object) {
                    renamed.push(id.clone());
                }
                Ok(())
            };
            match p.target.literal_name().and_then(|n| by_name.get(n)) {
                Some(ids) => {
                    for id in ids {
                        if let Some(ro) = objects.get_mut(id) {
                            apply(id, ro)?;
                        }
                    }
                }
                None if p.target.literal_name().is_some() => {}
                None => {
                    for (id, ro) in objects.iter_mut() {
                        apply(id, ro)?;
                    }
                }
            }
            if matched == 0 && !p.optional {
                let mut err = InputError::new(
                    &o.file,
                    "target matches no rendered object (set `optional: true` to allow)",
                )
                .place(format!("patch {}", p.index))
                .object(describe_target(&o.overlay.patches[p.index].target));
                if let Some(l) = p.line {
                    err = err.at(l, 1);
                }
                return Err(err);
            }
            if !renamed.is_empty() {
                rekey(objects, histories.as_deref_mut(), shadows, &renamed, o, p)?;
                by_name = name_index(objects);
            }
        }
    }
    Ok(())
}

fn name_index(objects: &BTreeMap<ObjectId, RenderedObject>) -> BTreeMap<String, Vec<ObjectId>> {
    let mut index: BTreeMap<String, Vec<ObjectId>> = BTreeMap::new();
    for id in objects.keys() {
        index.entry(id.name.clone()).or_default().push(id.clone());
    }
    index
}

fn op_error(
    op: &LoadedOp,
    p: &LoadedPatch,
    oi: usize,
    id: &ObjectId,
    e: &json_patch::PatchError,
) -> InputError {
    let pointer = match &op.source {
        PatchOp::Move { from, .. } | PatchOp::Copy { from, .. }
            if matches!(e.kind, json_patch::PatchErrorKind::InvalidFromPointer) =>
        {
            from.clone()
        }
        s => s.path().to_string(),
    };
    let mut err = InputError::new(&op.file, format!("{} failed: {}", op.source.kind(), e.kind))
        .place(format!("patch {} op {oi}", p.index))
        .pointer(pointer)
        .object(id.display_name());
    if let Some(l) = op.line.or(p.line) {
        err = err.at(l, 1);
    }
    err
}

/// Whether `obj` still has identity `id` (compared without allocating).
fn same_identity(id: &ObjectId, obj: &Value) -> bool {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str);
    let api = s("/apiVersion").unwrap_or("");
    let api_ok = match api.split_once('/') {
        Some((g, v)) => g == id.group && v == id.version,
        None => id.group.is_empty() && api == id.version,
    };
    api_ok
        && s("/kind") == Some(id.kind.as_str())
        && s("/metadata/name") == Some(id.name.as_str())
        && s("/metadata/namespace").filter(|n| !n.is_empty()) == id.namespace.as_deref()
}

/// Move objects a patch renamed to their new identity, so later patches match what they now are.
fn rekey(
    objects: &mut BTreeMap<ObjectId, RenderedObject>,
    mut histories: Option<&mut BTreeMap<ObjectId, FieldHistory>>,
    shadows: &mut BTreeMap<ObjectId, Value>,
    renamed: &[ObjectId],
    o: &LoadedOverlay,
    p: &LoadedPatch,
) -> Result<(), InputError> {
    let mut moved = Vec::with_capacity(renamed.len());
    for old in renamed {
        let Some(ro) = objects.remove(old) else {
            continue;
        };
        let new = ObjectId::of(&ro.object).map_err(|e| {
            let mut err =
                InputError::new(&o.file, format!("the patch leaves an invalid object: {e}"))
                    .place(format!("patch {}", p.index))
                    .object(old.display_name());
            if let Some(l) = p.line {
                err = err.at(l, 1);
            }
            err
        })?;
        if let Some(h) = histories.as_deref_mut()
            && let Some(hist) = h.remove(old)
        {
            h.insert(new.clone(), hist);
        }
        if let Some(shadow) = shadows.remove(old) {
            shadows.insert(new.clone(), shadow);
        }
        moved.push((old, new, ro));
    }
    for (old, new, ro) in moved {
        if let Some(prev) = objects.get(&new) {
            let mut err = InputError::new(
                &o.file,
                format!(
                    "the patch turns {old} ({}) into {new}, which {} also renders",
                    ro.template, prev.template
                ),
            )
            .place(format!("patch {}", p.index))
            .object(new.display_name());
            if let Some(l) = p.line {
                err = err.at(l, 1);
            }
            return Err(err);
        }
        objects.insert(new, ro);
    }
    Ok(())
}

/// `kind=Deployment name=grafana`: a target as one line for messages.
pub fn describe_target(t: &Target) -> String {
    let fields = [
        ("group", &t.group),
        ("version", &t.version),
        ("kind", &t.kind),
        ("name", &t.name),
        ("namespace", &t.namespace),
        ("labelSelector", &t.label_selector),
        ("annotationSelector", &t.annotation_selector),
        ("chart", &t.chart),
    ];
    let parts: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    if parts.is_empty() {
        "target {} (every object)".into()
    } else {
        format!("target {}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every overlay and patch file in the repository and the fixtures reads the same through
    /// the fast path as through serde-saphyr: same value, same item lines.
    #[test]
    fn fast_and_serde_saphyr_overlay_reads_agree() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "yaml")
                    && p.components().any(|c| c.as_os_str() == "overlays")
                {
                    out.push(p);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        walk(&root.join("overlays"), &mut files);
        walk(&root.join("tests/fixtures"), &mut files);
        assert!(files.len() > 20, "{files:?}");
        let mut fast = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let name = f.display().to_string();
            let (depth, lines_of): (usize, fn(&Value) -> Vec<String>) = if name
                .ends_with("overlay.yaml")
            {
                (4, |v| {
                    let mut out = Vec::new();
                    for (pi, p) in v
                        .get("patches")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        out.push(format!("/patches/{pi}"));
                        for oi in 0..p.get("ops").and_then(Value::as_array).map_or(0, Vec::len) {
                            out.push(format!("/patches/{pi}/ops/{oi}"));
                        }
                    }
                    out
                })
            } else {
                (1, |v| {
                    (0..v.as_array().map_or(0, Vec::len))
                        .map(|i| format!("/{i}"))
                        .collect()
                })
            };
            let slow = parse_with_spans::<Value>(&text, &name, depth);
            let Some((v, lines)) = crate::chart::fastyaml::parse_document_with_lines(&text, depth)
            else {
                continue;
            };
            fast += 1;
            let (sv, slines) =
                slow.unwrap_or_else(|e| panic!("{name}: fast read it, serde-saphyr did not: {e}"));
            assert_eq!(v, sv, "{name}");
            for ptr in lines_of(&v) {
                assert_eq!(lines.get(&ptr), slines.get(&ptr), "{name} {ptr}");
            }
        }
        assert!(
            fast * 2 > files.len(),
            "only {fast} of {} files took the fast path",
            files.len()
        );
    }
    use serde_json::json;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn overlay(extends: &[&str]) -> String {
        format!(
            "apiVersion: pailot.dev/v1\nkind: Overlay\nextends: [{}]\n",
            extends.join(", ")
        )
    }

    #[test]
    fn resolution_order_is_depth_first_each_once() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "overlays/base/overlay.yaml", &overlay(&[]));
        write(d.path(), "overlays/a/overlay.yaml", &overlay(&["base"]));
        write(d.path(), "overlays/c/overlay.yaml", &overlay(&[]));
        write(
            d.path(),
            "overlays/b/overlay.yaml",
            &overlay(&["c", "base"]),
        );
        let names: Vec<String> = resolve(d.path(), &["a".into(), "b".into()], "clusters/x.yaml")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["base", "a", "c", "b"]);
    }

    #[test]
    fn cycles_are_spelled_out() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "overlays/a/overlay.yaml", &overlay(&["b"]));
        write(d.path(), "overlays/b/overlay.yaml", &overlay(&["c"]));
        write(d.path(), "overlays/c/overlay.yaml", &overlay(&["a"]));
        let e = resolve(d.path(), &["a".into()], "clusters/x.yaml").unwrap_err();
        assert_eq!(e.file.to_str(), Some("overlays/c/overlay.yaml"));
        assert!(e.message.contains("a -> b -> c -> a"), "{e}");
        assert_eq!(e.place.as_deref(), Some("extends[0]"));
    }

    #[test]
    fn unknown_overlay_names_the_referring_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "overlays/a/overlay.yaml", &overlay(&["nope"]));
        let e = resolve(d.path(), &["a".into()], "clusters/x.yaml").unwrap_err();
        assert_eq!(e.file.to_str(), Some("overlays/a/overlay.yaml"));
        assert!(e.message.contains("nope"));
        let e = resolve(d.path(), &["../etc".into()], "clusters/x.yaml").unwrap_err();
        assert_eq!(e.file.to_str(), Some("clusters/x.yaml"));
    }

    #[test]
    fn op_lines_and_bad_pointers() {
        let d = tempfile::tempdir().unwrap();
        let text = "apiVersion: pailot.dev/v1\nkind: Overlay\npatches:\n  - target: {kind: Deployment}\n    ops:\n      - {op: replace, path: /a, value: 1}\n      - {op: add, path: nope, value: 1}\n";
        write(d.path(), "overlays/a/overlay.yaml", text);
        let e = load_overlay(d.path(), "a").unwrap_err();
        assert_eq!(e.place.as_deref(), Some("patch 0 op 1"));
        assert_eq!(e.pointer.as_deref(), Some("nope"));
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn patch_file_ops_have_their_own_file() {
        let d = tempfile::tempdir().unwrap();
        let text = "apiVersion: pailot.dev/v1\nkind: Overlay\npatches:\n  - target: {kind: Deployment}\n    file: patches/p.yaml\n";
        write(d.path(), "overlays/a/overlay.yaml", text);
        write(
            d.path(),
            "overlays/a/patches/p.yaml",
            "- op: test\n  path: /a\n  value: 1\n- op: remove\n  path: /a\n",
        );
        let o = load_overlay(d.path(), "a").unwrap();
        assert_eq!(o.patches[0].ops.len(), 2);
        assert_eq!(o.patches[0].ops[1].file, "overlays/a/patches/p.yaml");
        assert_eq!(o.patches[0].ops[1].line, Some(4));
    }

    #[test]
    fn apply_patches_reports_failing_op_and_unmatched_target() {
        let d = tempfile::tempdir().unwrap();
        let text = "apiVersion: pailot.dev/v1\nkind: Overlay\npatches:\n  - target: {kind: Deployment, name: web}\n    ops:\n      - {op: replace, path: /spec/replicas, value: 2}\n      - {op: remove, path: /spec/missing}\n";
        write(d.path(), "overlays/a/overlay.yaml", text);
        let o = load_overlay(d.path(), "a").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 1}});
        let id = ObjectId::of(&obj).unwrap();
        let mut objects = BTreeMap::from([(
            id.clone(),
            RenderedObject {
                chart: "web".into(),
                template: "t".into(),
                object: obj,
            },
        )]);
        let e = apply_patches(std::slice::from_ref(&o), &mut objects, None).unwrap_err();
        assert_eq!(e.place.as_deref(), Some("patch 0 op 1"));
        assert_eq!(e.pointer.as_deref(), Some("/spec/missing"));
        assert_eq!(e.object.as_deref(), Some("Deployment/default/web"));
        assert_eq!(e.line, Some(7));
        // Op 0 applied, op 1 left the object as it was after op 0.
        assert_eq!(objects[&id].object["spec"]["replicas"], json!(2));

        let text = "apiVersion: pailot.dev/v1\nkind: Overlay\npatches:\n  - target: {kind: StatefulSet}\n    ops: [{op: remove, path: /spec}]\n  - target: {kind: StatefulSet}\n    optional: true\n    ops: [{op: remove, path: /spec}]\n";
        write(d.path(), "overlays/b/overlay.yaml", text);
        let o = load_overlay(d.path(), "b").unwrap();
        let e = apply_patches(std::slice::from_ref(&o), &mut objects, None).unwrap_err();
        assert_eq!(e.place.as_deref(), Some("patch 0"));
        assert!(e.object.as_deref().unwrap().contains("kind=StatefulSet"));
        assert_eq!(e.line, Some(4));
    }

    /// Ops run on the shadows too: a copy of a secret is secret, a plain replacement is not.
    #[test]
    fn shadows_follow_copies_moves_and_replacements() {
        let d = tempfile::tempdir().unwrap();
        let text = "apiVersion: pailot.dev/v1\nkind: Overlay\npatches:\n  - target: {kind: ConfigMap}\n    ops:\n      - {op: copy, from: /data/pw, path: /data/copy}\n      - {op: replace, path: /data/token, value: public}\n      - {op: add, path: /data/list/0, value: first}\n";
        write(d.path(), "overlays/a/overlay.yaml", text);
        let o = load_overlay(d.path(), "a").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"pw": "s3cret", "token": "t0ken", "list": ["x", "secret-item"]}});
        let id = ObjectId::of(&obj).unwrap();
        let secret: BTreeSet<String> = ["/data/pw", "/data/token", "/data/list/1"]
            .map(String::from)
            .into();
        let mut shadows = BTreeMap::from([(id.clone(), crate::mask::substitute(&obj, &secret))]);
        let mut objects = BTreeMap::from([(
            id.clone(),
            RenderedObject {
                chart: "c".into(),
                template: "t".into(),
                object: obj,
            },
        )]);
        apply_patches_tracked(std::slice::from_ref(&o), &mut objects, None, &mut shadows).unwrap();
        let now: Vec<String> = crate::mask::differences(&objects[&id].object, &shadows[&id])
            .into_iter()
            .collect();
        assert_eq!(now, ["/data/copy", "/data/list/2", "/data/pw"]);
    }

    #[test]
    fn chart_selection_accumulates_in_order() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "overlays/all/overlay.yaml",
            "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: ['*']}\n",
        );
        write(
            d.path(),
            "overlays/less/overlay.yaml",
            "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {exclude: [b]}\n",
        );
        write(
            d.path(),
            "overlays/more/overlay.yaml",
            "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [b]}\n",
        );
        write(
            d.path(),
            "overlays/typo/overlay.yaml",
            "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [zz]}\n",
        );
        let avail: BTreeSet<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
        let ov = |names: &[&str]| {
            resolve(
                d.path(),
                &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "c.yaml",
            )
            .unwrap()
        };
        let s = chart_set(&ov(&["all", "less"]), &avail).unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["a", "c"]);
        let s = chart_set(&ov(&["all", "less", "more"]), &avail).unwrap();
        assert_eq!(s.len(), 3);
        let e = chart_set(&ov(&["typo"]), &avail).unwrap_err();
        assert_eq!(e.place.as_deref(), Some("charts.include[0]"));
    }
}
