//! `pailot bootstrap [--reset]`: static pods, registry mirrors and node labels for this host, recorded for undo.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::preflight::{CheckOutput, HostArgs, prepare, print_report};
use super::{EXIT_DIFF, RepoArgs};
use crate::apply::progress::{ChartState, Progress};
use crate::bootstrap::{
    self, FileAction, FileOutcome, NodeOutcome, Record, apply_files, desired_node_meta, plan_files,
    under_root,
};
use crate::cluster::Role;
use crate::manifest::RenderedSet;
use crate::preflight::SystemCommands;

/// The progress line of the API server wait.
const API_STEP: &str = "API server";

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Kubeconfig for the API steps (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Bootstrap even when preflight fails, and overwrite files pailot did not write.
    #[arg(long)]
    pub force: bool,
    /// Undo: remove the files the record lists (if unchanged since) and the labels it set, then the record.
    #[arg(long)]
    pub reset: bool,
    /// Kubelet static pod directory (a host path under --root; default: the cluster file's kubernetes.staticPodDir).
    #[arg(long, value_name = "DIR")]
    pub static_pod_dir: Option<String>,
    /// Where the bootstrap record is kept (a host path under --root).
    #[arg(long, value_name = "DIR", default_value = bootstrap::DEFAULT_STATE_DIR)]
    pub state_dir: String,
    /// Write files and the record only: no /readyz wait, no node labels (the record stays incomplete).
    #[arg(long)]
    pub skip_api: bool,
    /// How long to wait for /readyz and for this machine's node to register, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = CheckOutput::Table)]
    pub output: CheckOutput,
}

/// What one bootstrap or reset run did.
#[derive(Debug, Serialize)]
struct Summary {
    machine: String,
    files: Vec<FileOutcome>,
    nodes: Vec<NodeOutcome>,
    /// Host path of the record.
    record: String,
    /// `written`, `unchanged`, `removed`, `absent`.
    record_action: String,
    changed: bool,
}

impl Summary {
    fn to_table(&self, reset: bool) -> String {
        let mut out = String::new();
        let w = self
            .files
            .iter()
            .map(|f| format!("{:?}", f.action).len())
            .chain(self.nodes.iter().map(|n| n.action.len()))
            .chain([self.record_action.len(), 7])
            .max()
            .unwrap_or(7);
        for f in &self.files {
            let action = format!("{:?}", f.action).to_lowercase();
            let what = if f.what.is_empty() {
                String::new()
            } else {
                format!("  ({})", f.what)
            };
            out.push_str(&format!("{action:<w$}  {}{what}\n", f.path));
        }
        for n in &self.nodes {
            let keys = if n.changed.is_empty() {
                String::new()
            } else {
                format!(": {}", n.changed.join(", "))
            };
            out.push_str(&format!("{:<w$}  Node/{}{keys}\n", n.action, n.node));
        }
        out.push_str(&format!("{:<w$}  {}\n", self.record_action, self.record));
        let verb = if reset { "reset" } else { "bootstrap" };
        if self.changed {
            out.push_str(&format!("{verb} of machine {}: done\n", self.machine));
        } else {
            out.push_str(&format!(
                "{verb} of machine {}: nothing to change\n",
                self.machine
            ));
        }
        out
    }
}

/// The static pods of `set` as `(name, YAML exactly as `pailot render` prints it, minus `# Source`)`.
pub fn static_pod_yaml(set: &RenderedSet) -> Vec<(String, String)> {
    let mut pods = Vec::new();
    for (id, ro) in &set.objects {
        let is_static = crate::manifest::is_static_pod(&ro.object);
        if id.kind != "Pod" || !is_static {
            continue;
        }
        let mut one = RenderedSet::default();
        one.objects.insert(id.clone(), ro.clone());
        let stream = crate::render::to_yaml_stream(&one);
        let body = stream.strip_prefix("---\n").unwrap_or(&stream);
        let body = match body.strip_prefix("# Source: ") {
            Some(rest) => rest.split_once('\n').map(|(_, b)| b).unwrap_or(""),
            None => body,
        };
        pods.push((id.name.clone(), body.to_string()));
    }
    pods
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (pass --kubeconfig)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn print(summary: &Summary, output: CheckOutput, reset: bool) -> anyhow::Result<()> {
    let text = match output {
        CheckOutput::Table => summary.to_table(reset),
        CheckOutput::Json => serde_json::to_string_pretty(summary)? + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn record_path(state_dir: &str) -> String {
    format!(
        "{}/{}",
        state_dir.trim_end_matches('/'),
        bootstrap::RECORD_FILE
    )
}

fn run_reset(args: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let root = &args.host.root;
    let state_dir = under_root(root, &args.state_dir);
    let Some(record) = bootstrap::read_record(&state_dir)? else {
        let summary = Summary {
            machine: args.host.machine.clone().unwrap_or_default(),
            files: vec![],
            nodes: vec![],
            record: record_path(&args.state_dir),
            record_action: "absent".into(),
            changed: false,
        };
        print(&summary, args.output, true)?;
        return Ok(ExitCode::SUCCESS);
    };
    let files = bootstrap::reset_files(root, &record)?;
    let mut nodes = Vec::new();
    if !record.nodes.is_empty() {
        if args.skip_api {
            anyhow::bail!(
                "the record lists labels set on {} node(s); --reset needs the API to remove them (drop --skip-api)",
                record.nodes.len()
            );
        }
        nodes = runtime()?.block_on(async {
            let c = client(args.kubeconfig.as_deref()).await?;
            anyhow::Ok(bootstrap::nodes::unlabel_nodes(&c, &record.nodes).await?)
        })?;
    }
    bootstrap::remove_record(&state_dir)?;
    let kept = files
        .iter()
        .filter(|f| f.action == FileAction::Kept)
        .count();
    let summary = Summary {
        machine: record.machine.clone(),
        changed: true,
        files,
        nodes,
        record: record_path(&args.state_dir),
        record_action: "removed".into(),
    };
    print(&summary, args.output, true)?;
    if kept > 0 {
        eprintln!("note: {kept} file(s) changed since bootstrap wrote them were kept");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    if args.reset {
        return run_reset(&args);
    }
    let root = args.host.root.clone();
    let prepared = prepare(&args.repo, &args.host)?;
    let report = crate::preflight::run(&prepared.input, &SystemCommands::default());
    if report.failed() && !args.force {
        print_report(&report, args.output)?;
        let names: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: preflight failed ({}); fix them or bootstrap with --force",
            names.join(", ")
        );
        return Ok(ExitCode::from(EXIT_DIFF));
    }
    if args.output == CheckOutput::Table {
        for c in report
            .checks
            .iter()
            .filter(|c| c.status != crate::preflight::Status::Pass)
        {
            eprintln!("preflight {}: {} {}", c.status.as_str(), c.name, c.detail);
        }
    }
    let machine = &prepared.input.machine;
    let cluster = &prepared.cluster;
    let state_dir = under_root(&root, &args.state_dir);
    let previous = bootstrap::read_record(&state_dir)?;
    let pods = if machine.has(Role::K8sMaster) {
        static_pod_yaml(&prepared.set)
    } else {
        vec![]
    };
    let pod_dir = args
        .static_pod_dir
        .clone()
        .unwrap_or_else(|| cluster.kubernetes.static_pod_dir.clone());
    let planned = plan_files(&pods, &pod_dir, &cluster.mirrors);
    let (files, recorded_files) = apply_files(&root, &planned, previous.as_ref(), args.force)?;

    let mut record = Record::new(&cluster.name, &machine.name);
    record.files = recorded_files;
    // Keep what earlier runs recorded about labels, so a later --reset still removes them.
    record.nodes = previous
        .as_ref()
        .map(|p| p.nodes.clone())
        .unwrap_or_default();
    let files_changed = previous.as_ref().is_none_or(|p| p.files != record.files);
    if files_changed && !args.skip_api {
        // Record the files before the API steps, so a failure there still leaves them resettable.
        record.updated_at_unix = bootstrap::now_unix();
        bootstrap::write_record(&state_dir, &record)?;
    }
    let mut nodes = Vec::new();
    if !args.skip_api {
        let timeout = Duration::from_secs(args.timeout);
        let deadline = Instant::now() + timeout;
        let desired = desired_node_meta(cluster);
        let prev_nodes = previous
            .as_ref()
            .map(|p| p.nodes.clone())
            .unwrap_or_default();
        let progress = if args.output == CheckOutput::Table {
            Progress::for_terminal()
        } else {
            Progress::quiet()
        };
        let (outcomes, recorded_nodes) = runtime()?.block_on(async {
            let c = client(args.kubeconfig.as_deref()).await?;
            progress.set(API_STEP, ChartState::WaitingHealthy, "GET /readyz");
            if let Err(e) = bootstrap::nodes::wait_readyz(&c, timeout).await {
                progress.set(API_STEP, ChartState::Failed, &e.to_string());
                return Err(e.into());
            }
            progress.set(API_STEP, ChartState::Healthy, "");
            let step = format!("node {}", machine.name);
            progress.set(
                &step,
                ChartState::Applying,
                "waiting for it to register, then labelling",
            );
            match bootstrap::nodes::label_nodes(&c, &desired, &prev_nodes, &machine.name, deadline)
                .await
            {
                Ok(done) => {
                    progress.set(&step, ChartState::Applied, "labels set");
                    anyhow::Ok(done)
                }
                Err(e) => {
                    progress.set(&step, ChartState::Failed, &e.to_string());
                    Err(e.into())
                }
            }
        })?;
        drop(progress);
        nodes = outcomes;
        record.nodes = recorded_nodes;
        record.complete = true;
    }
    let same = previous.as_ref().is_some_and(|p| {
        let mut p = p.clone();
        p.updated_at_unix = record.updated_at_unix;
        p == record
    });
    record.updated_at_unix = if same {
        previous.as_ref().map(|p| p.updated_at_unix).unwrap_or(0)
    } else {
        bootstrap::now_unix()
    };
    if !same {
        bootstrap::write_record(&state_dir, &record)?;
    }
    let changed = !same
        || files.iter().any(|f| f.action != FileAction::Unchanged)
        || nodes.iter().any(|n| n.action == "labelled");
    let summary = Summary {
        machine: machine.name.clone(),
        files,
        nodes,
        record: record_path(&args.state_dir),
        record_action: if same {
            "unchanged".into()
        } else {
            "written".into()
        },
        changed,
    };
    print(&summary, args.output, false)?;
    Ok(ExitCode::SUCCESS)
}
