//! The render pipeline: cluster file + overlays + charts → a patched, ordered `RenderedSet` with provenance.
//!
//! Flow: load the cluster file → resolve overlays (extends, order) → chart set (include/exclude) →
//! per chart: value layers (values.yaml, overlays `"*"` then `<chart>`, cluster values), validate,
//! render → identities (duplicates rejected) → overlay patches in order (recording provenance) →
//! charts in dependency order. Pure: reads files under the repository, writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::chart::{self, Chart, MergedValues, RenderContext, ValueLayer, ValuesFile};
use crate::cluster::Cluster;
use crate::diag::InputError;
use crate::manifest::{ChartInfo, ObjectId, RenderedObject, RenderedSet};
use crate::overlay::{self, LoadedOverlay};
use crate::provenance::{FieldHistory, Provenance};
use crate::sops::{AgeKeys, Keyring};

/// What to render.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RenderRequest {
    /// Root of the deployment repository (holds charts/, overlays/, clusters/).
    pub repo_root: PathBuf,
    /// Cluster file, relative to `repo_root` or absolute.
    pub cluster_file: PathBuf,
    /// Overlays to use instead of the cluster file's `overlays`.
    pub overlays: Option<Vec<String>>,
    /// Git commit rendered (`release.revision`); `"local"` when absent.
    pub revision: Option<String>,
    /// age identities for sops-encrypted files; read only when the render meets one. The daemon
    /// passes its `decryption.ageKeyFile` here as `AgeKeys::File` (a path: helpers read the key).
    pub age_keys: AgeKeys,
}

/// What a render produced: the cluster it was for and the set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub cluster: Cluster,
    pub set: RenderedSet,
}

/// Name of a file for messages: relative to the repository root when inside it.
pub(crate) fn display_path(repo_root: &Path, p: &Path) -> String {
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
    cluster.check_names(text, shown)?;
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
    /// The cluster file's `valuesFiles`, read (and decrypted) in order.
    pub cluster_values_files: Vec<ValuesFile>,
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
    // One keyring per render: the identities are read once, on the first encrypted file.
    let keyring = Keyring::new(req.age_keys.clone());
    let charts = chart::load_charts_with(&req.repo_root, &keyring)?;
    let (names, from) = match &req.overlays {
        Some(o) => (o.clone(), "--overlay".to_string()),
        None => (cluster.overlays.clone(), cluster_file.clone()),
    };
    let overlays = overlay::resolve_with(&req.repo_root, &names, &from, &keyring)?;
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
    let mut cluster_values_files = Vec::with_capacity(cluster.values_files.len());
    for (i, rel) in cluster.values_files.iter().enumerate() {
        let place = format!("valuesFiles[{i}]");
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(InputError::new(
                &cluster_file,
                format!("values file `{rel}` must be a path inside the repository"),
            )
            .place(place));
        }
        let f = ValuesFile::read(&req.repo_root, rel, &keyring, &cluster_file, &place)?;
        if let Some(k) = f
            .charts
            .keys()
            .find(|k| *k != "*" && !available.contains(*k))
        {
            return Err(
                InputError::new(&f.file, format!("values for unknown chart `{k}`"))
                    .place(k.clone()),
            );
        }
        cluster_values_files.push(f);
    }
    let selected = overlay::chart_set(&overlays, &available)?;
    Ok(Inputs {
        cluster,
        cluster_file,
        charts,
        overlays,
        selected,
        cluster_values_files,
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

    /// Value layers of `chart` in merge order: values.yaml (and values.sops.yaml), overlays
    /// (`"*"` then the chart; inline values, then valuesFiles), the cluster file, its valuesFiles.
    pub fn value_layers(&self, chart: &Chart) -> Vec<ValueLayer> {
        let mut layers = chart.own_layers();
        layers.extend(overlay::value_layers(&self.overlays, chart.name()));
        if let Some(v) = self.cluster.values.get(chart.name()) {
            layers.push(ValueLayer {
                file: self.cluster_file.clone(),
                key_prefix: format!("values.{}", chart.name()),
                values: v.clone(),
                secret: Default::default(),
            });
        }
        for f in &self.cluster_values_files {
            layers.extend(f.layers(chart.name()));
        }
        layers
    }

    /// Merge, validate and render one chart (no patches). Each document's `secret` holds the
    /// fields that depend on a decrypted value (found by a second, shadow render: `crate::mask`).
    pub fn render_chart(
        &self,
        chart: &Chart,
        ctx: &RenderContext,
    ) -> Result<Vec<chart::RenderedDoc>, InputError> {
        let merged = chart::merge_values(&self.value_layers(chart));
        chart::validate_values(chart, &merged)?;
        let mut docs = chart::render_chart(chart, &merged, ctx).map_err(|e| redact(e, &merged))?;
        if merged.secret.is_empty() {
            return Ok(docs);
        }
        let shadow_values = MergedValues {
            values: crate::mask::substitute(&merged.values, &merged.secret),
            origin: Default::default(),
            secret: merged.secret.clone(),
        };
        let shadow_ctx = RenderContext {
            record_origins: false,
            ..ctx.clone()
        };
        match chart::render_chart_shadow(chart, &shadow_values, &shadow_ctx) {
            Ok(shadows)
                if shadows.len() == docs.len()
                    && shadows
                        .iter()
                        .zip(&docs)
                        .all(|(s, d)| s.template == d.template) =>
            {
                for (d, s) in docs.iter_mut().zip(&shadows) {
                    d.secret
                        .extend(crate::mask::differences(&d.object, &s.object));
                }
            }
            // The templates do not render alike with placeholders: every field of the chart
            // counts as secret.
            _ => {
                for d in &mut docs {
                    let all =
                        crate::mask::differences(&d.object, &crate::mask::placeholder(&d.object));
                    d.secret.extend(all);
                }
            }
        }
        if ctx.record_origins {
            attribute_secret_origins(chart, &merged, &shadow_ctx, &mut docs);
        }
        for d in &docs {
            if let Some(p) = d.secret.iter().find(|p| is_identity_field(p)) {
                return Err(InputError::new(
                    &d.template,
                    format!("a value decrypted from an encrypted file decides the object's identity ({p}); names, kinds and namespaces must not be secret"),
                )
                .object(format!("chart {}", chart.name())));
            }
        }
        Ok(docs)
    }
}

/// Field origins that name the decrypted values a field is computed from (a `b64encode`d
/// password in Secret data), where the template matcher only found a template line: one render
/// per decrypted value of the chart, with only that value replaced by its placeholder. `explain`
/// and drift records then name the encrypted file and key.
fn attribute_secret_origins(
    chart: &Chart,
    merged: &MergedValues,
    ctx: &RenderContext,
    docs: &mut [chart::RenderedDoc],
) {
    for s in &merged.secret {
        let one = BTreeSet::from([s.clone()]);
        let perturbed = MergedValues {
            values: crate::mask::substitute(&merged.values, &one),
            origin: Default::default(),
            secret: one,
        };
        let Ok(others) = chart::render_chart(chart, &perturbed, ctx) else {
            continue;
        };
        if others.len() != docs.len() {
            continue;
        }
        let file = merged.origin_of(s).unwrap_or_default().to_string();
        let key = chart::render::pointer_to_dotted(s);
        for (d, o) in docs.iter_mut().zip(&others) {
            for p in crate::mask::differences(&d.object, &o.object) {
                let under = format!("{p}/");
                let leaves: Vec<String> = d
                    .origins
                    .keys()
                    .filter(|k| **k == p || k.starts_with(&under))
                    .cloned()
                    .collect();
                for k in leaves {
                    if let Some(crate::provenance::Origin::Template { line, .. }) =
                        d.origins.get(&k)
                    {
                        let line = *line;
                        d.origins.insert(
                            k,
                            crate::provenance::Origin::Values {
                                file: file.clone(),
                                key: key.clone(),
                                template: d.template.clone(),
                                line,
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Fields that make an object's identity (they appear in messages, object lists and metrics).
fn is_identity_field(p: &str) -> bool {
    matches!(
        p,
        "" | "/apiVersion" | "/kind" | "/metadata" | "/metadata/name" | "/metadata/namespace"
    )
}

/// A render error of a chart whose values hold decrypted secrets, without its details (a
/// template or YAML error can quote a value): the kind of error and its place stay.
fn redact(mut e: InputError, merged: &MergedValues) -> InputError {
    if merged.secret.is_empty() {
        return e;
    }
    let expression = e
        .message
        .rfind(" (in expression `")
        .map(|i| e.message[i..].to_string())
        .unwrap_or_default();
    let kind = e.message.split(": ").next().unwrap_or("").to_string();
    e.message = format!(
        "{kind}{expression} (details hidden: the chart's values hold values decrypted from an encrypted file)"
    );
    e
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
    let set = render_inputs(&inputs, req.revision.as_deref(), mode)?;
    Ok((inputs.cluster, set))
}

/// Render inputs already loaded (`explain` reads the value layers too, and decrypts once).
pub fn render_inputs(
    inputs: &Inputs,
    revision: Option<&str>,
    mode: ProvenanceMode,
) -> Result<RenderedSet, InputError> {
    let mut ctx = inputs.context(revision);
    ctx.record_origins = mode == ProvenanceMode::Record;
    let mut objects: BTreeMap<ObjectId, RenderedObject> = BTreeMap::new();
    let mut histories: BTreeMap<ObjectId, FieldHistory> = BTreeMap::new();
    // Objects holding decrypted values, with placeholders in their place (`crate::mask`).
    let mut shadows: BTreeMap<ObjectId, Value> = BTreeMap::new();
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
            if !doc.secret.is_empty() {
                shadows.insert(
                    id.clone(),
                    crate::mask::substitute(&doc.object, &doc.secret),
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
    overlay::apply_patches_tracked(
        &inputs.overlays,
        &mut objects,
        record.then_some(&mut histories),
        &mut shadows,
    )?;
    let objects = rekey(objects, &mut histories, &mut shadows)?;
    let mut secrets = crate::mask::SecretFields::new();
    for (id, shadow) in &shadows {
        if let Some(ro) = objects.get(id) {
            let fields = crate::mask::differences(&ro.object, shadow);
            if let Some(p) = fields.iter().find(|p| is_identity_field(p)) {
                return Err(InputError::new(
                    &ro.template,
                    format!(
                        "a value decrypted from an encrypted file decides the object's identity ({p}); names, kinds and namespaces must not be secret"
                    ),
                ));
            }
            if !fields.is_empty() {
                secrets.insert(id.clone(), fields);
            }
        }
    }
    let charts = dependency_order(&inputs.charts, &inputs.selected)?;
    let set = RenderedSet {
        objects,
        charts,
        provenance: Provenance {
            objects: histories,
            secrets,
        },
    };
    Ok(set)
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
    shadows: &mut BTreeMap<ObjectId, Value>,
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
        if now != id
            && let Some(sh) = shadows.remove(&id)
        {
            shadows.insert(now.clone(), sh);
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
    let nodes: Vec<(&str, Vec<&str>)> = selected.iter().map(|c| (c.as_str(), deps(c))).collect();
    let order = crate::order::dependency_sort(&nodes).map_err(|cycle| {
        let first = cycle.0[0].as_str();
        InputError::new(
            format!("{}/Chart.yaml", charts[first].rel_dir),
            format!("dependsOn cycle: {cycle}"),
        )
        .place("dependsOn")
        .object(format!("chart {first}"))
    })?;
    Ok(order
        .into_iter()
        .map(|i| {
            let (name, deps) = &nodes[i];
            ChartInfo {
                name: name.to_string(),
                version: charts[*name].meta.version.clone(),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
            }
        })
        .collect())
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
                crate::order::rank(id),
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
