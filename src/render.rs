//! The render pipeline: cluster file + overlays + charts → a patched, ordered `RenderedSet` with provenance.
//!
//! Flow: load the cluster file → resolve overlays (extends, order) → chart set (include/exclude) →
//! per chart: value layers (values.yaml, overlays `"*"` then `<chart>`, cluster values), validate,
//! render → identities (duplicates rejected) → overlay patches in order (recording provenance) →
//! charts in dependency order. Pure: reads files under the repository, writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::chart::{self, Chart, RenderContext, ValueLayer};
use crate::cluster::Cluster;
use crate::diag::InputError;
use crate::manifest::{ChartInfo, ObjectId, RenderedObject, RenderedSet};
use crate::overlay::{self, LoadedOverlay};
use crate::provenance::{FieldHistory, Provenance};

/// What to render.
#[derive(Clone, Debug)]
pub struct RenderRequest {
    /// Root of the deployment repository (holds charts/, overlays/, clusters/).
    pub repo_root: PathBuf,
    /// Cluster file, relative to `repo_root` or absolute.
    pub cluster_file: PathBuf,
    /// Overlays to use instead of the cluster file's `overlays`.
    pub overlays: Option<Vec<String>>,
    /// Git commit rendered (`release.revision`); `"local"` when absent.
    pub revision: Option<String>,
}

/// Name of a file for messages: relative to the repository root when inside it.
fn display_path(repo_root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(repo_root).unwrap_or(p);
    rel.to_string_lossy().replace('\\', "/")
}

/// Read and check a Cluster file named by an operator; `shown` is the name used in messages.
/// Only its size is bounded: a repository's own cluster file is read with [`load_cluster_in`].
pub fn load_cluster(path: &Path, shown: &str) -> Result<Cluster, InputError> {
    let text = crate::confine::read_text_unconfined(path, shown)?;
    parse_cluster(&text, shown)
}

/// Read the Cluster file `path` of the repository at `repo_root`: when the path lies in the
/// repository (the usual `clusters/x.yaml`), its real path must too (a committed symlink cannot
/// make pailot read a file outside); a path an operator names outside the repository is read as
/// given.
pub fn load_cluster_in(repo_root: &Path, path: &Path, shown: &str) -> Result<Cluster, InputError> {
    let text = if crate::confine::lexically_inside(repo_root, path) {
        crate::confine::Root::new(repo_root, "the repository", ".")?.read_text(path, shown)?
    } else {
        crate::confine::read_text_unconfined(path, shown)?
    };
    parse_cluster(&text, shown)
}

fn parse_cluster(text: &str, shown: &str) -> Result<Cluster, InputError> {
    let cluster: Cluster = overlay::parse_yaml(text, shown)?;
    if cluster.api_version != "pailot.dev/v1" {
        return Err(InputError::new(
            shown,
            format!(
                "apiVersion must be pailot.dev/v1, not `{}`",
                cluster.api_version
            ),
        )
        .place("apiVersion"));
    }
    if cluster.kind != "Cluster" {
        return Err(InputError::new(
            shown,
            format!("kind must be Cluster, not `{}`", cluster.kind),
        )
        .place("kind"));
    }
    if cluster.machines.is_empty() {
        return Err(
            InputError::new(shown, "a cluster needs at least one machine").place("machines"),
        );
    }
    Ok(cluster)
}

/// Everything a render reads, loaded and resolved (shared by `render`, `lint`, `explain`).
pub struct Inputs {
    pub cluster: Cluster,
    /// Cluster file as shown in messages.
    pub cluster_file: String,
    pub charts: BTreeMap<String, Chart>,
    pub overlays: Vec<LoadedOverlay>,
    /// Charts selected by the overlays.
    pub selected: BTreeSet<String>,
}

/// Load the cluster file, the charts and the overlays of `req`, and select the charts.
pub fn load_inputs(req: &RenderRequest) -> Result<Inputs, InputError> {
    let cluster_path = if req.cluster_file.is_absolute() {
        req.cluster_file.clone()
    } else {
        req.repo_root.join(&req.cluster_file)
    };
    let cluster_file = display_path(&req.repo_root, &cluster_path);
    let cluster = load_cluster_in(&req.repo_root, &cluster_path, &cluster_file)?;
    let charts = chart::load_charts(&req.repo_root)?;
    let (names, from) = match &req.overlays {
        Some(o) => (o.clone(), "--overlay".to_string()),
        None => (cluster.overlays.clone(), cluster_file.clone()),
    };
    let overlays = overlay::resolve(&req.repo_root, &names, &from)?;
    let available: BTreeSet<String> = charts.keys().cloned().collect();
    overlay::check_value_keys(&overlays, &available)?;
    for k in cluster.values.keys() {
        if !available.contains(k) {
            return Err(
                InputError::new(&cluster_file, format!("values for unknown chart `{k}`"))
                    .place(format!("values.{k}")),
            );
        }
    }
    let selected = overlay::chart_set(&overlays, &available)?;
    Ok(Inputs {
        cluster,
        cluster_file,
        charts,
        overlays,
        selected,
    })
}

impl Inputs {
    /// The template context shared by every chart of this render.
    pub fn context(&self, revision: Option<&str>) -> RenderContext {
        RenderContext {
            cluster: self.cluster.template_context(),
            release: json!({
                "name": self.cluster.name,
                "namespace": self.cluster.namespace,
                "revision": revision.unwrap_or("local"),
            }),
            record_origins: true,
        }
    }

    /// Value layers of `chart` in merge order: values.yaml, overlays (`"*"` then the chart), cluster.
    pub fn value_layers(&self, chart: &Chart) -> Vec<ValueLayer> {
        let mut layers = vec![chart.default_layer()];
        layers.extend(overlay::value_layers(&self.overlays, chart.name()));
        if let Some(v) = self.cluster.values.get(chart.name()) {
            layers.push(ValueLayer {
                file: self.cluster_file.clone(),
                key_prefix: format!("values.{}", chart.name()),
                values: v.clone(),
            });
        }
        layers
    }

    /// Merge, validate and render one chart (no patches).
    pub fn render_chart(
        &self,
        chart: &Chart,
        ctx: &RenderContext,
    ) -> Result<Vec<chart::RenderedDoc>, InputError> {
        let merged = chart::merge_values(&self.value_layers(chart));
        chart::validate_values(chart, &merged)?;
        chart::render_chart(chart, &merged, ctx)
    }
}

/// Render `req`: the cluster it was for, and the patched, provenance-carrying set.
pub fn render(req: &RenderRequest) -> Result<(Cluster, RenderedSet), InputError> {
    render_with(req, ProvenanceMode::Record)
}

/// Whether a render keeps field provenance (`explain` needs it; printing manifests does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvenanceMode {
    Record,
    /// Drop each chart's field origins as soon as it is rendered: less memory for large renders.
    Skip,
}

/// Render `req`, keeping or skipping field provenance (the objects are the same either way).
pub fn render_with(
    req: &RenderRequest,
    mode: ProvenanceMode,
) -> Result<(Cluster, RenderedSet), InputError> {
    crate::limits::set_activity(format_args!(
        "loading charts, overlays and the cluster file"
    ));
    let inputs = load_inputs(req)?;
    let mut ctx = inputs.context(req.revision.as_deref());
    ctx.record_origins = mode == ProvenanceMode::Record;
    let mut objects: BTreeMap<ObjectId, RenderedObject> = BTreeMap::new();
    let mut histories: BTreeMap<ObjectId, FieldHistory> = BTreeMap::new();
    let mut interner = std::collections::HashSet::new();
    let names: Vec<&String> = inputs.selected.iter().collect();
    let rendered = crate::par::map(&names, |name| {
        inputs.render_chart(&inputs.charts[name.as_str()], &ctx)
    });
    for (name, docs) in names.into_iter().zip(rendered) {
        for doc in docs? {
            let id = ObjectId::of(&doc.object).map_err(|e| {
                InputError::new(&doc.template, format!("not a Kubernetes object: {e}"))
            })?;
            if let Some(prev) = objects.get(&id) {
                return Err(duplicate(&id, &doc.template, &prev.template));
            }
            if mode == ProvenanceMode::Record {
                histories.insert(
                    id.clone(),
                    FieldHistory::from_origins_interned(doc.origins, &mut interner),
                );
            }
            objects.insert(
                id,
                RenderedObject {
                    chart: name.clone(),
                    template: doc.template,
                    object: doc.object,
                },
            );
        }
    }
    let record = mode == ProvenanceMode::Record;
    crate::limits::set_activity(format_args!("applying overlay patches"));
    overlay::apply_patches(
        &inputs.overlays,
        &mut objects,
        record.then_some(&mut histories),
    )?;
    let objects = rekey(objects, &mut histories)?;
    let charts = dependency_order(&inputs.charts, &inputs.selected)?;
    let set = RenderedSet {
        objects,
        charts,
        provenance: Provenance { objects: histories },
    };
    Ok((inputs.cluster, set))
}

fn duplicate(id: &ObjectId, template: &str, other: &str) -> InputError {
    InputError::new(
        template,
        format!("duplicate object: {id} is also rendered by {other}"),
    )
    .object(id.display_name())
}

/// Patches may rename objects: re-read every identity and reject collisions.
fn rekey(
    objects: BTreeMap<ObjectId, RenderedObject>,
    histories: &mut BTreeMap<ObjectId, FieldHistory>,
) -> Result<BTreeMap<ObjectId, RenderedObject>, InputError> {
    let mut changed = false;
    for (id, ro) in &objects {
        match ObjectId::of(&ro.object) {
            Ok(now) if &now == id => {}
            Ok(_) => changed = true,
            Err(e) => {
                return Err(InputError::new(
                    &ro.template,
                    format!("overlay patches left an invalid object: {e}"),
                )
                .object(id.display_name()));
            }
        }
    }
    if !changed {
        return Ok(objects);
    }
    let mut out = BTreeMap::new();
    for (id, ro) in objects {
        let now = ObjectId::of(&ro.object).expect("checked above");
        if now != id
            && let Some(h) = histories.remove(&id)
        {
            histories.insert(now.clone(), h);
        }
        if let Some(prev) = out.get(&now) {
            let prev: &RenderedObject = prev;
            return Err(duplicate(&now, &ro.template, &prev.template));
        }
        out.insert(now, ro);
    }
    Ok(out)
}

/// Selected charts in dependency order (ties by name); `dependsOn` outside the selection is ignored.
pub fn dependency_order(
    charts: &BTreeMap<String, Chart>,
    selected: &BTreeSet<String>,
) -> Result<Vec<ChartInfo>, InputError> {
    let deps = |c: &str| -> Vec<&str> {
        charts[c]
            .meta
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| selected.contains(*d) && *d != c)
            .collect()
    };
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = selected
        .iter()
        .map(|c| (c.as_str(), deps(c).into_iter().collect()))
        .collect();
    let mut order = Vec::with_capacity(selected.len());
    while !remaining.is_empty() {
        let ready: Option<&str> = remaining
            .iter()
            .find(|(_, d)| d.is_empty())
            .map(|(c, _)| *c);
        let Some(next) = ready else {
            return Err(cycle_error(charts, &remaining));
        };
        remaining.remove(next);
        for d in remaining.values_mut() {
            d.remove(next);
        }
        let meta = &charts[next].meta;
        order.push(ChartInfo {
            name: next.to_string(),
            version: meta.version.clone(),
            depends_on: deps(next).into_iter().map(str::to_string).collect(),
        });
    }
    Ok(order)
}

fn cycle_error(
    charts: &BTreeMap<String, Chart>,
    remaining: &BTreeMap<&str, BTreeSet<&str>>,
) -> InputError {
    // Every remaining chart waits on another remaining one: walk until a chart repeats.
    let start = *remaining.keys().next().expect("non-empty");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = *remaining[cur]
            .iter()
            .next()
            .expect("every remaining chart has a dependency");
        if let Some(pos) = path.iter().position(|c| *c == next) {
            let mut cycle: Vec<&str> = path[pos..].to_vec();
            cycle.push(next);
            let first = cycle[0];
            return InputError::new(
                format!("{}/Chart.yaml", charts[first].rel_dir),
                format!("dependsOn cycle: {}", cycle.join(" -> ")),
            )
            .place("dependsOn")
            .object(format!("chart {first}"));
        }
        path.push(next);
        cur = next;
    }
}

/// Apply stage of a kind in the output order: CRDs, Namespaces, cluster RBAC, `*Class` kinds, the rest.
pub fn output_stage(kind: &str) -> u8 {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        "ClusterRole" | "ClusterRoleBinding" => 2,
        k if k.ends_with("Class") => 3,
        _ => 4,
    }
}

/// The objects of `set` in output order: charts in `set.charts` order; within a chart by stage,
/// kind, namespace, name (then group, version).
pub fn ordered(set: &RenderedSet) -> Vec<(&ObjectId, &RenderedObject)> {
    let rank: BTreeMap<&str, usize> = set
        .charts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut v: Vec<(&ObjectId, &RenderedObject)> = set.objects.iter().collect();
    v.sort_by(|(a, ao), (b, bo)| {
        let key = |id: &'_ ObjectId, ro: &RenderedObject| {
            (
                rank.get(ro.chart.as_str()).copied().unwrap_or(usize::MAX),
                output_stage(&id.kind),
            )
        };
        key(a, ao)
            .cmp(&key(b, bo))
            .then_with(|| ao.chart.cmp(&bo.chart))
            .then_with(|| a.kind.cmp(&b.kind))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.group.cmp(&b.group))
            .then_with(|| a.version.cmp(&b.version))
    });
    v
}

/// The set as a YAML stream; each document starts with `---` and a `# Source:` line.
pub fn to_yaml_stream(set: &RenderedSet) -> String {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write_yaml_stream(set, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Write the YAML stream of `set` to `w` document by document (no whole-output buffer).
pub fn write_yaml_stream(set: &RenderedSet, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    // Objects are emitted in parallel chunks, a bounded window at a time, and written in order.
    const CHUNK: usize = 64;
    const WINDOW: usize = 16 * CHUNK;
    let objects = ordered(set);
    for window in objects.chunks(WINDOW) {
        let chunks: Vec<_> = window.chunks(CHUNK).collect();
        for text in crate::par::map(&chunks, |chunk| {
            let mut out = String::new();
            for (_, ro) in chunk.iter() {
                let y = chart::to_yaml_string(&ro.object);
                let body = y.strip_prefix("---\n").unwrap_or(&y);
                out.push_str("---\n# Source: ");
                out.push_str(&ro.template);
                out.push('\n');
                out.push_str(body);
                if !body.ends_with('\n') {
                    out.push('\n');
                }
            }
            out
        }) {
            w.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// The set as a JSON list of objects (pretty-printed, in output order).
pub fn to_json(set: &RenderedSet) -> String {
    let list: Vec<&Value> = ordered(set).into_iter().map(|(_, ro)| &ro.object).collect();
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages() {
        assert!(output_stage("CustomResourceDefinition") < output_stage("Namespace"));
        assert!(output_stage("Namespace") < output_stage("ClusterRoleBinding"));
        assert!(output_stage("ClusterRole") < output_stage("PriorityClass"));
        assert!(output_stage("RuntimeClass") < output_stage("Deployment"));
        assert_eq!(output_stage("Role"), 4);
    }
}
