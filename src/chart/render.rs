//! Rendering a chart's templates with merged values into Kubernetes objects with field origins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use minijinja::value::Value as JValue;
use serde_json::{Map, Value};

use super::filters::FilesObject;
use super::values::{MergedValues, escape_segment};
use super::{Chart, TemplateFile};
use crate::diag::InputError;
use crate::provenance::Origin;

/// What a render knows besides the chart and its values.
#[derive(Clone, Debug, Default)]
pub struct RenderContext {
    /// `Cluster::template_context()`.
    pub cluster: Value,
    /// `{name, namespace, revision}`.
    pub release: Value,
    /// Compute every leaf's origin (`explain`, drift records). Off for plain `render`, where it
    /// would be a third of the work and nobody reads it.
    pub record_origins: bool,
}

/// One object a template produced, with the origin of every leaf.
#[derive(Clone, Debug)]
pub struct RenderedDoc {
    /// Template path relative to the repository root.
    pub template: String,
    pub object: Value,
    /// JSON pointer of every leaf -> what produced it.
    pub origins: BTreeMap<String, Origin>,
}

/// Kinds that are never namespaced (plus any kind a CRD in the same chart declares `Cluster`-scoped).
pub const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "StorageClass",
    "RuntimeClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "APIService",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "CertificateSigningRequest",
    "FlowSchema",
    "PriorityLevelConfiguration",
    "ComponentStatus",
    "DeviceClass",
    "ResourceSlice",
    "IPAddress",
    "ServiceCIDR",
];

/// Label every rendered object carries.
pub const CHART_LABEL: &str = "pailot.dev/chart";

/// Turn a minijinja error into an input error naming the template file, line and failing expression.
pub(crate) fn template_error(
    rel_dir: &str,
    err: &minijinja::Error,
    chart: Option<&Chart>,
) -> InputError {
    let name = err.name().unwrap_or("?");
    let file = format!("{rel_dir}/templates/{name}");
    let mut message = match (err.kind(), err.detail()) {
        (minijinja::ErrorKind::OutOfFuel, _) => format!(
            "the template used up its fuel of {} (a loop or data too large?; \
             PAILOT_LIMIT_TEMPLATE_FUEL changes the limit)",
            crate::limits::Limits::current().template_fuel
        ),
        (_, Some(d)) => format!("{}: {d}", err.kind()),
        (_, None) => err.kind().to_string(),
    };
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    let mut e = InputError::new(&file, String::new());
    if let (Some(line), Some(chart)) = (err.line(), chart) {
        let src = chart
            .env
            .get_template(name)
            .ok()
            .map(|t| t.source().to_string());
        let mut column = 1;
        if let (Some(range), Some(src)) = (err.range(), src.as_deref())
            && range.end <= src.len()
            && src.is_char_boundary(range.start)
            && src.is_char_boundary(range.end)
        {
            message.push_str(&format!(
                " (in expression `{}`)",
                enclosing_expression(src, range.clone())
            ));
            let line_start = src[..range.start].rfind('\n').map(|i| i + 1).unwrap_or(0);
            column = src[line_start..range.start].chars().count() + 1;
        }
        e = e.at(line, column);
    } else if let Some(line) = err.line() {
        e = e.at(line, 1);
    }
    e.message = message;
    e.place(format!("template {name}")).object(format!(
        "chart {}",
        chart
            .map(|c| c.meta.name.as_str())
            .unwrap_or(rel_dir.rsplit('/').next().unwrap_or(rel_dir))
    ))
}

/// The whole `{{ ... }}` / `{% ... %}` block around `range` when it sits on one line, else the range.
fn enclosing_expression(src: &str, range: std::ops::Range<usize>) -> String {
    let line_start = src[..range.start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[range.end..]
        .find('\n')
        .map(|i| range.end + i)
        .unwrap_or(src.len());
    let before = &src[line_start..range.start];
    let after = &src[range.end..line_end];
    let open = before
        .rfind("{{")
        .into_iter()
        .chain(before.rfind("{%"))
        .max();
    let close = after.find("}}").into_iter().chain(after.find("%}")).min();
    match (open, close) {
        (Some(o), Some(c)) => src[line_start + o + 2..range.end + c]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim()
            .to_string(),
        _ => src[range].trim().to_string(),
    }
}

/// Render every rendered template of `chart` with `values` into objects (deterministic: template
/// name order, then document order). Objects get `release.namespace` when namespaced without one,
/// and the label `pailot.dev/chart: <chart>`.
pub fn render_chart(
    chart: &Chart,
    values: &MergedValues,
    ctx: &RenderContext,
) -> Result<Vec<RenderedDoc>, InputError> {
    let context = build_context(chart, values, ctx);
    let namespace = ctx
        .release
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let mut raw: Vec<(&TemplateFile, usize, Value)> = Vec::new();
    for t in chart.rendered_templates() {
        let rendered;
        let text: &str = match &t.static_text {
            Some(s) => super::load::static_output(s),
            None => {
                crate::limits::set_activity(format_args!("rendering {}", t.path));
                let tmpl = chart
                    .env
                    .get_template(&t.name)
                    .map_err(|e| template_error(&chart.rel_dir, &e, Some(chart)))?;
                rendered = render_bounded(&tmpl, &context, chart, t)?;
                &rendered
            }
        };
        let docs = super::yaml::parse_yaml_documents(text, &t.path).map_err(|mut e| {
            e.message = format!("rendered output is not valid YAML: {}", e.message);
            e.place = Some(match e.line {
                Some(l) => format!("rendered output line {l}"),
                None => "rendered output".into(),
            });
            e.line = None;
            e.column = None;
            e.object(format!("chart {}", chart.meta.name))
        })?;
        for (i, d) in docs.into_iter().enumerate() {
            raw.push((t, i, d));
        }
    }

    // Kinds a CRD of this chart declares cluster-scoped.
    let mut cluster_kinds: HashSet<String> =
        CLUSTER_SCOPED_KINDS.iter().map(|s| s.to_string()).collect();
    for (_, _, d) in &raw {
        if d.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
            && d.pointer("/spec/scope").and_then(Value::as_str) == Some("Cluster")
            && let Some(k) = d.pointer("/spec/names/kind").and_then(Value::as_str)
        {
            cluster_kinds.insert(k.to_string());
        }
    }

    let leaf_index = ctx
        .record_origins
        .then(|| ValuesIndex::build(&values.values));
    let mut out = Vec::with_capacity(raw.len());
    let mut kind_seen: HashMap<(&str, String), usize> = HashMap::new();
    for (t, i, mut obj) in raw {
        let id = crate::manifest::ObjectId::of(&obj).map_err(|e| {
            InputError::new(
                &t.path,
                format!("document {i} is not a Kubernetes object: {e}"),
            )
            .place(format!("document {i}"))
            .object(format!("chart {}", chart.meta.name))
        })?;
        let map = obj
            .as_object_mut()
            .expect("ObjectId::of checked it is a mapping");
        let meta = map
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                InputError::new(&t.path, "metadata must be a mapping")
                    .place(format!("document {i}"))
                    .pointer("/metadata")
            })?;
        let defaulted_namespace = !cluster_kinds.contains(&id.kind) && id.namespace.is_none();
        if defaulted_namespace {
            meta.insert("namespace".into(), Value::String(namespace.clone()));
        }
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if labels.is_null() {
            *labels = Value::Object(Map::new());
        }
        let labels = labels.as_object_mut().ok_or_else(|| {
            InputError::new(&t.path, "metadata.labels must be a mapping")
                .place(format!("document {i}"))
                .pointer("/metadata/labels")
                .object(id.display_name())
        })?;
        labels.insert(
            super::render::CHART_LABEL.into(),
            Value::String(chart.meta.name.clone()),
        );

        let nth = {
            let c = kind_seen
                .entry((t.name.as_str(), id.kind.clone()))
                .or_insert(0);
            *c += 1;
            *c - 1
        };
        let mut origins = match &leaf_index {
            Some(index) => origins_for(t, &chart.env, &obj, &id.kind, nth, values, index),
            None => BTreeMap::new(),
        };
        // Set by pailot, not by a template line.
        let added = Origin::Template {
            file: t.path.clone(),
            line: None,
        };
        if leaf_index.is_some() {
            origins.insert("/metadata/labels/pailot.dev~1chart".into(), added.clone());
            if defaulted_namespace {
                origins.insert("/metadata/namespace".into(), added);
            }
        }
        out.push(RenderedDoc {
            template: t.path.clone(),
            object: obj,
            origins,
        });
    }
    Ok(out)
}

/// Render `tmpl` into a string no longer than [`Limits::rendered_output`](crate::limits::Limits).
fn render_bounded(
    tmpl: &minijinja::Template<'_, '_>,
    context: &JValue,
    chart: &Chart,
    t: &TemplateFile,
) -> Result<String, InputError> {
    let limit = crate::limits::Limits::current().rendered_output;
    let mut out = BoundedOutput {
        bytes: Vec::new(),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        exceeded: false,
    };
    match tmpl.render_captured_to(context, &mut out).map(drop) {
        Ok(()) => Ok(String::from_utf8(out.bytes).expect("minijinja writes UTF-8 text")),
        Err(_) if out.exceeded => Err(crate::limits::exceeded(
            &t.path,
            format_args!(
                "rendered output is larger than the limit of {}",
                crate::quantity::Bytes(limit)
            ),
            "PAILOT_LIMIT_RENDERED_OUTPUT",
        )
        .place(format!("template {}", t.name))
        .object(format!("chart {}", chart.meta.name))),
        Err(e) => Err(template_error(&chart.rel_dir, &e, Some(chart))),
    }
}

/// A render's output buffer that refuses to grow past `limit` bytes.
struct BoundedOutput {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("rendered output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn build_context(chart: &Chart, values: &MergedValues, ctx: &RenderContext) -> JValue {
    let mut map: BTreeMap<String, JValue> = BTreeMap::new();
    if let Value::Object(m) = &values.values {
        for (k, v) in m {
            map.insert(k.clone(), JValue::from(minijinja::value::Serde(v)));
        }
    }
    // Reserved names win over same-named top-level values keys.
    map.insert(
        "values".into(),
        JValue::from(minijinja::value::Serde(&values.values)),
    );
    map.insert(
        "cluster".into(),
        JValue::from(minijinja::value::Serde(&ctx.cluster)),
    );
    map.insert(
        "chart".into(),
        JValue::from(minijinja::value::Serde(&chart.meta)),
    );
    map.insert(
        "release".into(),
        JValue::from(minijinja::value::Serde(&ctx.release)),
    );
    map.insert(
        "files".into(),
        JValue::from_object(FilesObject {
            root: chart.files_dir(),
            index: Arc::new(chart.files.clone()),
        }),
    );
    JValue::from_object(map)
}

/// Values leaves by (last key segment, scalar text), for provenance; the first leaf in
/// document order wins when several have the same key and value.
struct ValuesIndex {
    by_last: HashMap<String, HashMap<String, String>>,
}

/// Text form of a scalar, used to compare rendered leaves with values leaves.
fn scalar_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl ValuesIndex {
    fn build(values: &Value) -> Self {
        let mut by_last: HashMap<String, HashMap<String, String>> = HashMap::new();
        fn walk(
            v: &Value,
            ptr: &mut String,
            by_last: &mut HashMap<String, HashMap<String, String>>,
        ) {
            if let Value::Object(m) = v {
                for (k, c) in m {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&escape_segment(k));
                    if let Some(text) = scalar_key(c) {
                        by_last
                            .entry(k.clone())
                            .or_default()
                            .entry(text)
                            .or_insert_with(|| ptr.clone());
                    }
                    walk(c, ptr, by_last);
                    ptr.truncate(len);
                }
            }
        }
        walk(values, &mut String::new(), &mut by_last);
        ValuesIndex { by_last }
    }
}

fn same_value(leaf: &Value, v: &Value) -> bool {
    leaf == v || (scalar_key(leaf).is_some() && scalar_key(leaf) == scalar_key(v))
}

fn pointer_to_dotted(p: &str) -> String {
    p.trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// Best-effort origin of every leaf (see docs/provenance.md).
#[allow(clippy::too_many_arguments)]
fn origins_for(
    t: &TemplateFile,
    env: &minijinja::Environment<'static>,
    obj: &Value,
    kind: &str,
    nth: usize,
    values: &MergedValues,
    index: &ValuesIndex,
) -> BTreeMap<String, Origin> {
    let ti = t.index(env);
    // Block of template lines this document most likely comes from.
    let candidates: Vec<usize> = ti
        .kind_lines
        .iter()
        .filter(|(_, l)| l.contains(kind))
        .map(|(n, _)| *n)
        .collect();
    let kind_line = if candidates.is_empty() {
        ti.kind_lines.first().map(|(n, _)| *n)
    } else {
        Some(candidates[nth.min(candidates.len() - 1)])
    };
    let (start, end) = match kind_line {
        Some(k) => {
            let s = ti
                .separators
                .iter()
                .rev()
                .find(|&&s| s < k)
                .copied()
                .unwrap_or(0);
            let e = ti
                .separators
                .iter()
                .find(|&&s| s > k)
                .copied()
                .unwrap_or(usize::MAX);
            (s, e)
        }
        None => (0, usize::MAX),
    };
    let mut out = BTreeMap::new();
    let mut segs: Vec<String> = Vec::new();
    walk_leaves(
        obj,
        &mut String::new(),
        &mut segs,
        &mut |ptr, segs, leaf| {
            let mut cursor = start;
            let mut line = None;
            let mut matched = 0;
            for (i, seg) in segs.iter().enumerate() {
                if seg.parse::<usize>().is_ok() {
                    continue;
                }
                let Some(lines) = ti.key_lines.get(seg.as_str()) else {
                    break;
                };
                let pos = lines.partition_point(|&l| l < cursor.max(1));
                match lines.get(pos) {
                    Some(&l) if l < end => {
                        cursor = l;
                        line = Some(l);
                        matched = i + 1;
                    }
                    _ => break,
                }
            }
            let origin = line
                .and_then(|l| values_origin(t, ti, l, &segs[matched..], leaf, values, index))
                .unwrap_or(Origin::Template {
                    file: t.path.clone(),
                    line,
                });
            out.insert(ptr.to_string(), origin);
        },
    );
    out
}

fn values_origin(
    t: &TemplateFile,
    ti: &crate::chart::load::TemplateIndex,
    line: usize,
    rest: &[String],
    leaf: &Value,
    values: &MergedValues,
    index: &ValuesIndex,
) -> Option<Origin> {
    let refs = ti.line_refs.get(line)?;
    for r in refs {
        let path = r.strip_prefix("values.").unwrap_or(r);
        if path == "values" {
            continue;
        }
        let mut ptr: String = path
            .split('.')
            .map(|s| format!("/{}", escape_segment(s)))
            .collect();
        for s in rest {
            ptr.push('/');
            ptr.push_str(s);
        }
        let found = values
            .values
            .pointer(&ptr)
            .filter(|v| same_value(leaf, v))
            .map(|_| ptr.clone())
            .or_else(|| {
                let last = path.rsplit('.').next()?;
                index.by_last.get(last)?.get(&scalar_key(leaf)?).cloned()
            });
        if let Some(p) = found {
            let file = values.origin_of(&p).unwrap_or("").to_string();
            return Some(Origin::Values {
                file,
                key: pointer_to_dotted(&p),
                template: t.path.clone(),
                line: Some(line),
            });
        }
    }
    None
}

fn walk_leaves(
    v: &Value,
    ptr: &mut String,
    segs: &mut Vec<String>,
    f: &mut dyn FnMut(&str, &[String], &Value),
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&escape_segment(k));
                segs.push(k.clone());
                walk_leaves(c, ptr, segs, f);
                segs.pop();
                ptr.truncate(len);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, c) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                segs.push(i.to_string());
                walk_leaves(c, ptr, segs, f);
                segs.pop();
                ptr.truncate(len);
            }
        }
        leaf => f(ptr, segs, leaf),
    }
}
