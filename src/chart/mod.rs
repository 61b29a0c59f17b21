//! Charts: `Chart.yaml` + `values.yaml` + `values.schema.json` + `templates/` + `files/`, loaded and rendered.

pub mod control;
pub mod emit;
pub mod fastyaml;
pub mod filters;
pub mod lint;
pub mod load;
pub mod package;
pub mod pylist;
pub mod render;
pub mod strict_json;
pub mod values;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diag::InputError;

pub use load::{load_chart, load_chart_with, load_charts, load_charts_with};
pub use render::{RenderContext, RenderedDoc, render_chart, render_chart_shadow};
pub use values::{MergedValues, ValueLayer, ValuesFile, merge_values, validate_values};
pub use yaml::{parse_yaml_documents, to_yaml_string};

/// The only `apiVersion` a `Chart.yaml` may have.
pub const CHART_API_VERSION: &str = "pailot.dev/v1";

/// `Chart.yaml`: chart metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChartMeta {
    /// Always `pailot.dev/v1`.
    pub api_version: String,
    /// Chart name; must equal the chart's directory name.
    pub name: String,
    /// Chart version (semver, e.g. `0.14.0`).
    pub version: String,
    /// Version of the software the chart deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// One line saying what the chart deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Charts that must be healthy before this one is applied (names outside the render are ignored).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Kubernetes versions the chart supports, e.g. `>=1.30`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// True only for the `kubernetes` chart: its static pods are written by `pailot bootstrap`.
    #[serde(default)]
    pub bootstrap: bool,
}

/// One file under a chart's `templates/` directory.
#[derive(Clone, Debug)]
pub struct TemplateFile {
    /// Name relative to `templates/` (`zookeeper.yaml`, `_helpers.j2`); the minijinja template name.
    pub name: String,
    /// Path relative to the repository root.
    pub path: String,
    /// True when rendered on its own (not a `_` partial, and a YAML template extension).
    pub rendered: bool,
    /// The text of a rendered template without template syntax (not compiled: it renders to
    /// itself, less one final line end, as minijinja would).
    pub(crate) static_text: Option<std::sync::Arc<str>>,
    /// The line index provenance uses, built on first use (plain renders never pay for it).
    pub(crate) index: std::sync::OnceLock<load::TemplateIndex>,
    /// The documents of a manifest encrypted with sops (decrypted at load; never templated).
    pub(crate) decrypted: Option<Arc<Vec<crate::sops::Decrypted>>>,
}

impl TemplateFile {
    /// The line index of this template, whose source `env` (its chart's environment) holds.
    pub(crate) fn index(&self, env: &minijinja::Environment<'static>) -> &load::TemplateIndex {
        self.index
            .get_or_init(|| match (&self.static_text, env.get_template(&self.name)) {
                (Some(text), _) => load::TemplateIndex::build(text),
                (None, Ok(t)) => load::TemplateIndex::build(t.source()),
                (None, Err(_)) => load::TemplateIndex::build(""),
            })
    }
}

/// A loaded chart, ready to render.
#[derive(Clone)]
pub struct Chart {
    /// The chart directory on disk.
    pub dir: PathBuf,
    /// The chart directory relative to the repository root, e.g. `charts/zookeeper`.
    pub rel_dir: String,
    pub meta: ChartMeta,
    /// `values.yaml` (an empty map when absent; decrypted when it is a sops file).
    pub values: Value,
    /// Pointers in `values` that were encrypted (when `values.yaml` is a sops file).
    pub values_secret: std::collections::BTreeSet<String>,
    /// `values.sops.yaml` (or `values.sops.json`): encrypted defaults merged after `values.yaml`.
    pub sops_values: Option<ValueLayer>,
    /// `values.schema.json`, when present.
    pub schema: Option<Value>,
    /// Every file under `templates/`, sorted by name.
    pub templates: Vec<TemplateFile>,
    /// Paths of the regular files under `files/`, relative to it, sorted (`/`-separated).
    pub files: Vec<String>,
    /// The template environment (templates compiled once at load).
    pub(crate) env: Arc<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for Chart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chart")
            .field("rel_dir", &self.rel_dir)
            .field("meta", &self.meta)
            .field(
                "templates",
                &self.templates.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("files", &self.files)
            .finish()
    }
}

impl Chart {
    /// Name of the chart (`Chart.yaml` `name`).
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The templates rendered on their own, in name order.
    pub fn rendered_templates(&self) -> impl Iterator<Item = &TemplateFile> {
        self.templates.iter().filter(|t| t.rendered)
    }

    /// The chart's values as the first merge layer (`charts/<name>/values.yaml`).
    pub fn default_layer(&self) -> ValueLayer {
        ValueLayer {
            file: format!("{}/values.yaml", self.rel_dir),
            key_prefix: String::new(),
            values: self.values.clone(),
            secret: self.values_secret.clone(),
        }
    }

    /// The chart's own layers: `values.yaml`, then `values.sops.yaml` when there is one.
    pub fn own_layers(&self) -> Vec<ValueLayer> {
        let mut layers = vec![self.default_layer()];
        layers.extend(self.sops_values.clone());
        layers
    }

    /// The `files/` directory of the chart.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }
}

/// Repo-relative, `/`-separated form of `path` (or the path as given when outside `root`).
pub(crate) fn rel_path(root: &Path, path: &Path) -> String {
    let p = path.strip_prefix(root).unwrap_or(path);
    let s: Vec<String> = p
        .components()
        .filter(|c| !matches!(c, std::path::Component::RootDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let joined = s.join("/");
    // A path outside `root` stays absolute.
    if p.has_root() {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Merge helper used by callers that only have the chart: defaults + extra layers.
pub fn merged_defaults(chart: &Chart, extra: &[ValueLayer]) -> MergedValues {
    let mut layers = chart.own_layers();
    layers.extend_from_slice(extra);
    merge_values(&layers)
}

/// Result type of this module: every failure is an input error.
pub type Result<T> = std::result::Result<T, InputError>;

/// Charts by name.
pub type Charts = BTreeMap<String, Chart>;
