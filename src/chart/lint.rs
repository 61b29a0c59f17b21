//! Checking one chart: metadata, values against the schema, templates render against a sample cluster.

use std::path::Path;

use serde_json::json;

use super::{RenderContext, load, render_chart, validate_values};
use crate::cluster::{Capacity, Cluster, KubernetesSettings, Machine, Registry, Role};
use crate::diag::InputError;

/// The one-machine cluster charts are linted against.
pub fn sample_cluster() -> Cluster {
    Cluster {
        api_version: "pailot.dev/v1".into(),
        kind: "Cluster".into(),
        name: "lint".into(),
        control_plane: Default::default(),
        overlays: vec![],
        namespace: "default".into(),
        data_path: "/datastorage".into(),
        registry: Registry::default(),
        mirrors: Default::default(),
        kubernetes: KubernetesSettings::default(),
        machines: vec![Machine {
            name: "pai-node-1".into(),
            hostname: None,
            address: "10.0.0.11".into(),
            roles: vec![
                Role::K8sMaster,
                Role::PaiMaster,
                Role::PaiWorker,
                Role::Dashboard,
            ],
            capacity: Capacity {
                memory: "32Gi".parse().expect("a valid quantity"),
                cpu: "8".parse().expect("a valid quantity"),
                gpu: 0,
            },
            labels: Default::default(),
            zkid: None,
            no_drivers: true,
            gpu_type: None,
            ssh: None,
        }],
        values: Default::default(),
        values_files: Vec::new(),
    }
}

/// The sample cluster with `n` machines (the first keeps every role, the others are workers).
pub fn sample_cluster_of(n: usize) -> Cluster {
    let mut c = sample_cluster();
    for i in 2..=n {
        let mut m = c.machines[0].clone();
        m.name = format!("pai-node-{i}");
        m.address = format!("10.0.0.{}", 10 + i);
        m.roles = vec![Role::PaiWorker];
        c.machines.push(m);
    }
    c
}

/// Lint the chart in `dir` (whose repository root is `root`). `Err` means unreadable input
/// (no `Chart.yaml`); `Ok(problems)` lists what is wrong (empty when the chart is fine).
pub fn lint_chart(
    root: &Path,
    dir: &Path,
    keyring: &crate::sops::Keyring,
) -> Result<Vec<InputError>, InputError> {
    let chart_yaml = dir.join("Chart.yaml");
    if !chart_yaml.is_file() {
        return Err(InputError::new(
            super::rel_path(root, &chart_yaml),
            "no Chart.yaml: not a chart directory",
        ));
    }
    crate::confine::Root::new(root, "the repository", ".")?
        .read_text(&chart_yaml, &super::rel_path(root, &chart_yaml))?;
    let chart = match load::load_chart_with(root, dir, keyring) {
        Ok(c) => c,
        Err(e) => return Ok(vec![e]),
    };
    let mut problems = Vec::new();
    let merged = super::merge_values(&chart.own_layers());
    if let Err(e) = validate_values(&chart, &merged) {
        problems.push(e);
    }
    // A chart may render nothing on one machine (flannel) but must render something somewhere.
    let mut rendered_any = false;
    for cluster in [sample_cluster(), sample_cluster_of(3)] {
        let ctx = RenderContext {
            cluster: cluster.template_context(),
            release: json!({"name": cluster.name, "namespace": cluster.namespace, "revision": "local"}),
            record_origins: true,
        };
        match render_chart(&chart, &merged, &ctx) {
            Ok(docs) => rendered_any |= !docs.is_empty(),
            Err(e) => {
                problems.push(e);
                return Ok(problems);
            }
        }
    }
    if !rendered_any && chart.rendered_templates().next().is_some() && !chart.meta.bootstrap {
        problems.push(InputError::new(
            &chart.rel_dir,
            "templates render no objects against the sample clusters (one and three machines)",
        ));
    }
    Ok(problems)
}
