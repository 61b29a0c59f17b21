//! Rendering a chart's templates with merged values into Kubernetes objects with field origins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use minijinja::value::Value as JValue;
use serde_json::{Map, Value};

use super::control::{Liveness, Run};
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
    /// Pointers of the values decrypted from a sops manifest (empty for templates).
    pub secret: std::collections::BTreeSet<String>,
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
            // Shown as the author wrote it (see `pylist::rewrite`).
            .replace(&format!("|{}", super::pylist::FILTER), "")
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
    render_docs(chart, values, ctx, false)
}

/// [`render_chart`] with every decrypted value of an encrypted manifest replaced by its
/// placeholder (`crate::mask::placeholder`): the shadow render that finds which fields are secret.
pub fn render_chart_shadow(
    chart: &Chart,
    values: &MergedValues,
    ctx: &RenderContext,
) -> Result<Vec<RenderedDoc>, InputError> {
    render_docs(chart, values, ctx, true)
}

fn render_docs(
    chart: &Chart,
    values: &MergedValues,
    ctx: &RenderContext,
    shadow: bool,
) -> Result<Vec<RenderedDoc>, InputError> {
    let context_map = build_context(chart, values, ctx);
    // Provenance evaluates the templates' top-level conditions with the same context.
    let eval_context = ctx.record_origins.then(|| context_map.clone());
    let context = JValue::from_object(context_map);
    let namespace = ctx
        .release
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let no_secret = std::collections::BTreeSet::new();
    let mut raw: Vec<(
        &TemplateFile,
        usize,
        Value,
        &std::collections::BTreeSet<String>,
    )> = Vec::new();
    for t in chart.rendered_templates() {
        if let Some(docs) = &t.decrypted {
            for (i, d) in docs.iter().filter(|d| !d.value.is_null()).enumerate() {
                let object = if shadow {
                    crate::mask::substitute(&d.value, &d.secret)
                } else {
                    d.value.clone()
                };
                raw.push((t, i, object, &d.secret));
            }
            continue;
        }
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
            raw.push((t, i, d, &no_secret));
        }
    }

    // Kinds a CRD of this chart declares cluster-scoped.
    let mut cluster_kinds: HashSet<String> =
        CLUSTER_SCOPED_KINDS.iter().map(|s| s.to_string()).collect();
    for (_, _, d, _) in &raw {
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
    let mut liveness: HashMap<&str, Liveness> = HashMap::new();
    for (t, i, mut obj, secret) in raw {
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
        let mut origins = match (&leaf_index, &eval_context) {
            (Some(index), Some(eval_context)) => {
                let live = liveness.entry(t.name.as_str()).or_insert_with(|| {
                    let ti = t.index(&chart.env);
                    if ti.control.is_empty() {
                        Liveness::default()
                    } else {
                        ti.control.liveness(&chart.env, eval_context)
                    }
                });
                let doc = DocSource {
                    t,
                    env: &chart.env,
                    kind: &id.kind,
                    nth,
                    live,
                };
                origins_for(&doc, &obj, values, index)
            }
            _ => BTreeMap::new(),
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
            secret: secret.clone(),
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

fn build_context(
    chart: &Chart,
    values: &MergedValues,
    ctx: &RenderContext,
) -> BTreeMap<String, JValue> {
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
    map
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

pub(crate) fn pointer_to_dotted(p: &str) -> String {
    p.trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The template a rendered document came from, and what its render ran.
struct DocSource<'a> {
    t: &'a TemplateFile,
    env: &'a minijinja::Environment<'static>,
    kind: &'a str,
    /// The document is the `nth` of its kind from this template.
    nth: usize,
    live: &'a Liveness,
}

/// Best-effort origin of every leaf (see docs/provenance.md).
fn origins_for(
    doc: &DocSource<'_>,
    obj: &Value,
    values: &MergedValues,
    index: &ValuesIndex,
) -> BTreeMap<String, Origin> {
    let (t, live) = (doc.t, doc.live);
    let ti = t.index(doc.env);
    // Block of template lines this document most likely comes from (not a branch that was skipped).
    let candidates: Vec<usize> = ti
        .kind_lines
        .iter()
        .filter(|(n, _)| {
            gives(&ti.key_value[*n], &Value::String(doc.kind.to_string())).is_some()
                && live.line(*n) != Run::Skipped
        })
        .map(|(n, _)| *n)
        .collect();
    let kind_line = if candidates.is_empty() {
        ti.kind_lines.first().map(|(n, _)| *n)
    } else {
        Some(candidates[doc.nth.min(candidates.len() - 1)])
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
    // Lines that ran whenever this document was rendered: outside undecided blocks, or in the
    // loop body (or branch) that produced the document itself.
    let certain = |l: usize| {
        live.line(l) == Run::Ran
            || kind_line.is_some_and(|k| live.encloses(live.region(l), live.region(k)))
    };
    let mut out = BTreeMap::new();
    let mut segs: Vec<String> = Vec::new();
    walk_leaves(
        obj,
        &mut String::new(),
        &mut segs,
        &mut |ptr, segs, leaf| {
            let resolve = Resolve {
                ti,
                live,
                end,
                certain: &certain,
                obj,
                segs,
                leaf,
            };
            let origin = match resolve.line(start) {
                KeyLine::Uncertain(candidates) => Origin::TemplateUncertain {
                    file: t.path.clone(),
                    candidates,
                },
                KeyLine::Found(line, matched) => line
                    .and_then(|l| values_origin(t, ti, l, &segs[matched..], leaf, values, index))
                    .unwrap_or(Origin::Template {
                        file: t.path.clone(),
                        line,
                    }),
            };
            out.insert(ptr.to_string(), origin);
        },
    );
    out
}

/// Which template line wrote a field.
enum KeyLine {
    /// The line (`None`: no key of the pointer is in the template text) and how many pointer
    /// segments it matched.
    Found(Option<usize>, usize),
    /// Several lines could have, and a loop or an undecided condition hides which.
    Uncertain(Vec<usize>),
}

/// Finds the template line of one rendered field (see [`Resolve::line`]).
struct Resolve<'a> {
    ti: &'a crate::chart::load::TemplateIndex,
    live: &'a Liveness,
    /// End of the document's block of template lines.
    end: usize,
    certain: &'a dyn Fn(usize) -> bool,
    /// The rendered object, for the siblings of a key.
    obj: &'a Value,
    segs: &'a [String],
    leaf: &'a Value,
}

/// More ends than this and only the first line of a key is followed (a template whose literal
/// list items multiply).
const MAX_PATHS: usize = 64;

impl Resolve<'_> {
    /// The template line that wrote the field at `segs`, walking its object keys through the
    /// template from line `start` (list indices are skipped).
    ///
    /// Flow: for each key, the lines with that key from the cursor on, in the document's block,
    /// not in a skipped branch (and, for the field's own key, whose text can give the value); the
    /// first of them, plus the lines with the same key at the same indentation before its mapping
    /// ends (sibling list items, other branches, loop bodies). When there are several, those whose
    /// literal sibling keys contradict the rendered object are dropped, and the walk goes on from
    /// each. Among the deepest ends: one is the answer; else an exact literal match that certainly
    /// ran; else, when every end certainly ran, the first (literal list items, docs/provenance.md);
    /// else the line is uncertain and the ends are the candidates.
    fn line(&self, start: usize) -> KeyLine {
        let mut ends = Vec::new();
        self.walk(start, None, 0, &mut ends);
        let depth = ends.iter().map(|(_, d)| *d).max().unwrap_or(0);
        let mut found: Vec<usize> = ends
            .iter()
            .filter(|(_, d)| *d == depth)
            .filter_map(|(l, _)| *l)
            .collect();
        found.sort_unstable();
        found.dedup();
        match found[..] {
            [] => return KeyLine::Found(None, depth),
            [one] => return KeyLine::Found(Some(one), depth),
            _ => {}
        }
        if depth == self.segs.len() {
            let exact: Vec<usize> = found
                .iter()
                .copied()
                .filter(|&l| gives(&self.ti.key_value[l], self.leaf) == Some(Match::Exact))
                .collect();
            if let [one] = exact[..]
                && (self.certain)(one)
            {
                return KeyLine::Found(Some(one), depth);
            }
        }
        if found.iter().all(|&l| (self.certain)(l)) {
            KeyLine::Found(Some(found[0]), depth)
        } else {
            KeyLine::Uncertain(found)
        }
    }

    /// Collect `(line, segments matched)` for every way the keys of `segs[i..]` can be found
    /// below `cursor` (`at`: the line of the last key found).
    fn walk(
        &self,
        cursor: usize,
        at: Option<usize>,
        i: usize,
        ends: &mut Vec<(Option<usize>, usize)>,
    ) {
        let Some(seg) = self.segs.get(i) else {
            ends.push((at, i));
            return;
        };
        if seg.parse::<usize>().is_ok() {
            return self.walk(cursor, at, i + 1, ends);
        }
        let Some(lines) = self.ti.key_lines.get(seg.as_str()) else {
            ends.push((at, i));
            return;
        };
        let at_leaf = i + 1 == self.segs.len();
        let usable = |l: usize| {
            self.live.line(l) != Run::Skipped
                && (!at_leaf || gives(&self.ti.key_value[l], self.leaf).is_some())
        };
        let pos = lines.partition_point(|&l| l < cursor.max(1));
        let mut iter = lines[pos..]
            .iter()
            .copied()
            .take_while(|&l| l < self.end)
            .filter(|&l| usable(l));
        let Some(first) = iter.next() else {
            ends.push((at, i));
            return;
        };
        let stop = self.end.min(self.ti.block_end[first]);
        let col = self.ti.key_col[first];
        let mut group: Vec<usize> = std::iter::once(first)
            .chain(
                iter.take_while(|&l| l < stop)
                    .filter(|&l| self.ti.key_col[l] == col),
            )
            .collect();
        if group.len() > 1 {
            let agree: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&l| self.siblings_agree(l, cursor, i))
                .collect();
            if !agree.is_empty() {
                group = agree;
            }
        }
        if group.len() > 1 && ends.len() + group.len() > MAX_PATHS {
            group.truncate(1);
        }
        for l in group {
            self.walk(l, Some(l), i + 1, ends);
        }
    }

    /// Whether the literal keys beside line `l` in its template mapping (its list item) agree with
    /// the rendered object holding `segs[i]`: a sibling key whose template lines there cannot
    /// give its rendered value says that `l` wrote another item.
    fn siblings_agree(&self, l: usize, cursor: usize, i: usize) -> bool {
        let ti = self.ti;
        let col = ti.key_col[l];
        let mut parent = self.obj;
        for s in &self.segs[..i] {
            let next = match parent {
                Value::Object(m) => m.get(s.as_str()),
                Value::Array(a) => s.parse::<usize>().ok().and_then(|n| a.get(n)),
                _ => None,
            };
            match next {
                Some(v) => parent = v,
                None => return true,
            }
        }
        let Value::Object(siblings) = parent else {
            return true;
        };
        // The mapping around `l`: back to its list item's first line (or the parent key), on to
        // the next item or the end of the mapping.
        let mut from = cursor + 1;
        for k in (cursor + 1..=l).rev() {
            let c = ti.key_col[k];
            if c != 0 && c < col {
                break;
            }
            if c == col && ti.item[k] {
                from = k;
                break;
            }
        }
        let mut to = ti.block_end[l].min(self.end).min(ti.key_col.len());
        if let Some(k) = (l + 1..to).find(|&k| ti.key_col[k] == col && ti.item[k]) {
            to = k;
        }
        siblings.iter().all(|(key, v)| {
            if key == &self.segs[i] || scalar_key(v).is_none() {
                return true;
            }
            let Some(lines) = ti.key_lines.get(key.as_str()) else {
                return true;
            };
            let lo = lines.partition_point(|&k| k < from);
            let mut here = lines[lo..]
                .iter()
                .copied()
                .take_while(|&k| k < to)
                .filter(|&k| ti.key_col[k] == col && self.live.line(k) != Run::Skipped)
                .peekable();
            here.peek().is_none() || here.any(|k| gives(&ti.key_value[k], v).is_some())
        })
    }
}

/// How a key line's text can give a rendered value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// Literal text equal to the value.
    Exact,
    /// Template expressions whose literal parts fit the value (or text pailot cannot judge).
    Possible,
}

/// Whether `text` (what follows `key:` on a template line) can render to the scalar `leaf`.
fn gives(text: &str, leaf: &Value) -> Option<Match> {
    let Some(want) = scalar_key(leaf) else {
        return Some(Match::Possible);
    };
    let unquoted = match text.as_bytes() {
        [b'"', .., b'"'] | [b'\'', .., b'\''] if text.len() >= 2 => &text[1..text.len() - 1],
        _ => text,
    };
    if unquoted.is_empty()
        || unquoted.starts_with(['|', '>', '&', '*', '!'])
        || unquoted.contains("{%")
    {
        // A block scalar, an anchor or a tag, or control flow inside the value: not judged.
        return Some(Match::Possible);
    }
    if !unquoted.contains("{{") {
        let literal = unquoted.split(" #").next().unwrap_or(unquoted).trim_end();
        return (literal == want).then_some(Match::Exact);
    }
    // Literal pieces between `{{ }}` holes must appear in order, anchored at both ends.
    let mut pieces = Vec::new();
    let mut rest = unquoted;
    while let Some(open) = rest.find("{{") {
        pieces.push(&rest[..open]);
        match rest[open..].find("}}") {
            Some(close) => rest = &rest[open + close + 2..],
            None => return Some(Match::Possible),
        }
    }
    pieces.push(rest);
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !want.starts_with(first) || !want[first.len()..].ends_with(last) {
        return None;
    }
    let mut at = first.len();
    let limit = want.len() - last.len();
    for p in &pieces[1..pieces.len() - 1] {
        match want[at..limit.max(at)].find(p) {
            Some(i) => at += i + p.len(),
            None => return None,
        }
    }
    Some(Match::Possible)
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
    let loops = ti.control.loops_around(line);
    let below: String = rest
        .iter()
        .map(|s| format!("/{}", escape_segment(s)))
        .collect();
    for r in refs {
        let path = r.strip_prefix("values.").unwrap_or(r);
        if path == "values" {
            continue;
        }
        let root = r.split('.').next().unwrap_or(r);
        let found = if loops
            .iter()
            .any(|(targets, _)| targets.iter().any(|x| x == root))
        {
            // A loop variable: the values items its loop goes over, when the loop's iterable is a
            // values path; the key is named only when exactly one item gives the value.
            let Some(items) = loop_pointers(r, &loops, &values.values) else {
                continue;
            };
            let mut hits = items.into_iter().map(|p| p + &below).filter(|p| {
                values
                    .values
                    .pointer(p)
                    .is_some_and(|v| same_value(leaf, v))
            });
            match (hits.next(), hits.next()) {
                (Some(one), None) => Some(one),
                (Some(_), Some(_)) => return None,
                _ => None,
            }
        } else {
            let ptr = dotted_pointer(path) + &below;
            values
                .values
                .pointer(&ptr)
                .filter(|v| same_value(leaf, v))
                .map(|_| ptr.clone())
                .or_else(|| {
                    let last = path.rsplit('.').next()?;
                    index.by_last.get(last)?.get(&scalar_key(leaf)?).cloned()
                })
        };
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

/// `a.b.c` as the JSON pointer `/a/b/c`.
fn dotted_pointer(path: &str) -> String {
    path.split('.')
        .map(|s| format!("/{}", escape_segment(s)))
        .collect()
}

/// The values pointers a reference can stand for when its root is a loop variable: one per item
/// of the loop's iterable (resolved through outer loops), with the rest of the reference below.
/// `None` when an iterable is not a plain values path (`x.items()`/`x.values()` allowed) or the
/// variable is a mapping's key.
fn loop_pointers(
    reference: &str,
    loops: &[(&[String], &str)],
    values: &Value,
) -> Option<Vec<String>> {
    let (root, tail) = reference.split_once('.').unwrap_or((reference, ""));
    let Some(at) = loops
        .iter()
        .position(|(targets, _)| targets.iter().any(|x| x == root))
    else {
        let path = reference.strip_prefix("values.").unwrap_or(reference);
        return (path != "values").then(|| vec![dotted_pointer(path)]);
    };
    let (targets, iter) = loops[at];
    let (base, pairs) = match iter.strip_suffix(".items()") {
        Some(b) => (b, true),
        None => (iter.strip_suffix(".values()").unwrap_or(iter), false),
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
    };
    let item_target = if pairs {
        targets.get(1)
    } else {
        targets.first()
    };
    if !plain(base)
        || item_target.map(String::as_str) != Some(root)
        || (!pairs && targets.len() != 1)
    {
        return None;
    }
    let mut out = Vec::new();
    for b in loop_pointers(base, &loops[at + 1..], values)? {
        match values.pointer(&b) {
            Some(Value::Array(a)) => out.extend((0..a.len()).map(|i| format!("{b}/{i}"))),
            Some(Value::Object(m)) => {
                out.extend(m.keys().map(|k| format!("{b}/{}", escape_segment(k))))
            }
            _ => {}
        }
    }
    if !tail.is_empty() {
        let tail = dotted_pointer(tail);
        out.iter_mut().for_each(|p| p.push_str(&tail));
    }
    Some(out)
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
