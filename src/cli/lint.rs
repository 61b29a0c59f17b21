//! `pailot lint`: charts, overlays, clusters.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_DIFF, RepoArgs};
use crate::diag::InputError;
use crate::overlay;
use crate::render::{RenderRequest, load_inputs, render};

#[derive(clap::Args, Debug)]
pub struct LintArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// What lint found: problems (exit 1), warnings (a render that will hurt on its cluster) and notes.
#[derive(Debug, Default)]
pub struct LintReport {
    pub problems: Vec<InputError>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    pub checked: Vec<String>,
}

fn names_in(dir: &Path, want_dir: bool, ext: Option<&str>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() == want_dir)
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            match ext {
                Some(x) if !n.ends_with(x) => None,
                _ => Some(n),
            }
        })
        .collect();
    v.sort();
    v
}

/// Lint the repository at `root` with `cluster_file` (the cluster whose overlays charts are checked with).
pub fn lint(root: &Path, req: &RenderRequest) -> LintReport {
    let mut r = LintReport::default();
    let keyring = crate::sops::Keyring::new(req.age_keys.clone());
    // Every chart passes `chart lint`.
    for c in names_in(&root.join("charts"), true, None) {
        match crate::chart::lint::lint_chart(root, &root.join("charts").join(&c), &keyring) {
            Ok(p) => r.problems.extend(p),
            Err(e) => r.problems.push(e),
        }
    }
    r.checked.push("charts".into());
    // Every overlay parses and its extends resolve.
    let overlays = names_in(&root.join("overlays"), true, None);
    for o in &overlays {
        if !root.join(overlay::overlay_file(o)).is_file() {
            r.notes
                .push(format!("overlays/{o}: no overlay.yaml, not an overlay"));
            continue;
        }
        if let Err(e) = overlay::resolve_with(root, std::slice::from_ref(o), "overlays", &keyring) {
            r.problems.push(e);
        }
    }
    // Every chart renders with the cluster's overlay values (patches are checked by the full renders).
    match load_inputs(req) {
        Ok(inputs) => {
            let ctx = inputs.context(None);
            for chart in inputs.charts.values() {
                if let Err(e) = inputs.render_chart(chart, &ctx) {
                    r.problems.push(e);
                }
            }
        }
        Err(e) => r.problems.push(e),
    }
    // Every cluster file renders (and the one given, with its overlays, wherever it lives); collect
    // the overlays they use.
    let mut used = BTreeSet::new();
    let mut requests: Vec<(String, RenderRequest)> =
        // `*.sops.yaml` beside the cluster files are their encrypted values files, not clusters.
        names_in(&root.join("clusters"), false, Some(".yaml"))
            .into_iter()
            .filter(|f| !crate::sops::sops_named(f))
            .map(|f| {
                let rel = format!("clusters/{f}");
                let creq = RenderRequest {
                    repo_root: root.to_path_buf(),
                    cluster_file: rel.clone().into(),
                    overlays: None,
                    revision: None,
                    age_keys: req.age_keys.clone(),
                };
                (rel, creq)
            })
            .collect();
    let given = crate::render::display_path(root, &root.join(&req.cluster_file));
    match requests.iter_mut().find(|(rel, _)| *rel == given) {
        Some((_, creq)) => creq.overlays = req.overlays.clone(),
        None => requests.push((given, req.clone())),
    }
    for (rel, creq) in requests {
        match render(&creq) {
            Ok((c, set)) => {
                for w in crate::rollout::check(&c, &set) {
                    r.warnings.push(format!(
                        "{rel}: {} (chart {}): {}",
                        w.object, w.chart, w.message
                    ));
                }
                if set.objects.is_empty() && !c.overlays.is_empty() {
                    r.problems.push(
                        InputError::new(&rel, "the overlays select no chart that renders an object: the cluster renders nothing")
                            .place("overlays"),
                    );
                }
            }
            Err(e) => r.problems.push(e),
        }
        let Ok(c) = crate::render::load_cluster_in(root, &root.join(&rel), &rel) else {
            continue;
        };
        if c.overlays.is_empty() && creq.overlays.is_none() {
            r.problems.push(no_overlays(&rel));
        }
        if rel.starts_with("clusters/")
            && let Ok(list) = overlay::resolve_with(root, &c.overlays, &rel, &keyring)
        {
            used.extend(list.into_iter().map(|o| o.name));
        }
        r.checked.push(rel);
    }
    for o in overlays.iter().filter(|o| !used.contains(*o)) {
        r.notes.push(format!(
            "overlays/{o}: not used by any cluster in clusters/"
        ));
    }
    // The same error may come from several renders: report it once.
    let mut seen = BTreeSet::new();
    r.problems.retain(|e| seen.insert(e.to_string()));
    r
}

/// A Cluster without overlays selects no chart (charts start from none), so it renders nothing:
/// applied, it would make every object pailot manages unmanaged.
fn no_overlays(cluster_file: &str) -> InputError {
    InputError::new(
        cluster_file,
        "no overlay is listed, so no chart is selected and the cluster renders nothing \
         (list at least one, e.g. `overlays: [base]`)",
    )
    .place("overlays")
}

pub fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let _bounds = crate::limits::Limits::current().enforce("pailot lint");
    let report = lint(&args.repo.repo, &args.repo.request());
    for n in &report.notes {
        println!("note: {n}");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if report.problems.is_empty() {
        let clusters = report
            .checked
            .iter()
            .filter(|c| c.starts_with("clusters/"))
            .count();
        let warned = match report.warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        };
        println!("ok: charts, overlays and {clusters} cluster file(s) checked{warned}");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!("{} problem(s)", report.problems.len());
    Ok(ExitCode::from(EXIT_DIFF))
}
