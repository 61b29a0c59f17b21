//! Command line: clap definitions and dispatch to one module per command.
//!
//! Exit codes (kubectl/flux-like): 0 ok, 1 "differences found / check failed", 2 usage or input error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod apply;
pub mod bootstrap;
pub mod budget;
pub mod chart;
pub mod completions;
pub mod control;
pub mod daemon;
pub mod explain;
pub mod history;
pub mod init;
pub mod lint;
pub mod preflight;
pub mod render;
pub mod schema;
pub mod status;
pub mod table;

/// Exit code for "differences found" or "a check failed".
pub const EXIT_DIFF: u8 = 1;
/// Exit code for usage and input errors.
pub const EXIT_INPUT: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "pailot",
    version,
    about = "GitOps for an OpenPAI-style ML platform: charts + layered overlays -> manifests -> server-side apply -> drift watch",
    long_about = "pailot turns a git repository of charts (Jinja2 templates, values, JSON Schema) and layered \
overlays (RFC 6902 patches) into deterministic Kubernetes manifests, applies them with server-side apply, \
and keeps them there as a systemd daemon that watches git and corrects drift.\n\n\
Typical first steps in a deployment repository:\n  \
pailot render --cluster clusters/single-node.yaml      # what would be applied\n  \
pailot budget --cluster clusters/single-node.yaml      # does it fit the machines?\n  \
pailot explain Deployment/grafana /spec/replicas       # where a field's value came from\n\n\
Exit codes: 0 ok, 1 differences found or a check failed, 2 usage or input error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the deployment repository and cluster file are, and which overlays to use.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Root of the deployment repository (holds charts/, overlays/, clusters/).
    #[arg(long, default_value = ".", env = "PAILOT_REPO")]
    pub repo: PathBuf,
    /// Cluster file (relative to the repo root or absolute).
    #[arg(
        long,
        short = 'c',
        default_value = "clusters/single-node.yaml",
        env = "PAILOT_CLUSTER"
    )]
    pub cluster: PathBuf,
    /// Overlay to apply (repeatable, in order); replaces the cluster file's `overlays` list.
    #[arg(long = "overlay", value_name = "NAME")]
    pub overlays: Vec<String>,
    /// age identity file for SOPS-encrypted files (as sops: `SOPS_AGE_KEY_FILE`; `SOPS_AGE_KEY`
    /// holds the key text instead). Read only when the render meets an encrypted file.
    #[arg(long, value_name = "FILE", env = "SOPS_AGE_KEY_FILE")]
    pub age_key_file: Option<PathBuf>,
}

/// Output format of a report (`budget`, `explain`, `status`): a table for people, JSON or YAML for programs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Yaml,
    Json,
    Table,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Turn a paictl quick-start.yaml into a Cluster file (never writes SSH passwords).
    Init(init::InitArgs),
    /// Render manifests (deterministic order, byte-identical across runs).
    ///
    /// Charts are loaded, rendered and printed on all cores; the output is the same bytes as a
    /// sequential run (`PAILOT_THREADS=1`).
    Render(render::RenderArgs),
    /// Show where a field's value came from: template, values key, overlay patch op.
    Explain(explain::ExplainArgs),
    /// Sum requests/limits per machine against its capacity (exit 1 when over).
    Budget(budget::BudgetArgs),
    /// Check charts, overlays and cluster files (exit 1 on problems).
    Lint(lint::LintArgs),
    /// Package or lint one chart.
    #[command(subcommand)]
    Chart(chart::ChartCommand),
    /// Write JSON Schemas for Cluster, Overlay, Chart.yaml and the daemon config.
    Schema(schema::SchemaArgs),
    /// Show what apply would change, per field, against the live cluster (exit 1 when changes).
    Diff(apply::DiffArgs),
    /// Apply the render to the cluster with server-side apply (one-shot reconcile).
    Apply(apply::ApplyArgs),
    /// Delete what pailot applied, in reverse dependency order.
    Uninstall(apply::UninstallArgs),
    /// Check this host before bootstrap: OS, memory budget, swap, cgroups, runtime, ports, time, GPUs.
    Preflight(preflight::PreflightArgs),
    /// Bootstrap this host: control-plane static pods, registry mirrors, node labels.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Run the GitOps reconciler daemon.
    Daemon(daemon::DaemonArgs),
    /// Show what the running daemon last did.
    Status(status::StatusArgs),
    /// Show the daemon's last reconciles (revision, trigger, result, changes per chart).
    History(history::HistoryArgs),
    /// Make the running daemon fetch and reconcile now (--wait: print the result, exit 1 on failure).
    Reconcile(control::ReconcileArgs),
    /// Stop the running daemon from applying and correcting drift (it keeps watching and reporting).
    Suspend(control::SuspendArgs),
    /// End a suspension: the daemon applies and corrects again.
    Resume(control::ResumeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page, or write one per command into a directory (--out).
    Man(completions::ManArgs),
}

/// Entry point used by the binary: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Limits are read once, before any work, so a typo in one is a usage error up front.
    match crate::limits::Limits::from_env() {
        Ok(limits) => {
            limits.install();
        }
        Err(e) => return report(UsageError(format!("invalid limit {e}")).into()),
    }
    let result = match cli.command {
        Command::Init(a) => init::run(a),
        Command::Render(a) => render::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Budget(a) => budget::run(a),
        Command::Lint(a) => lint::run(a),
        Command::Chart(c) => chart::run(c),
        Command::Schema(a) => schema::run(a),
        Command::Diff(a) => apply::run_diff(a),
        Command::Apply(a) => apply::run_apply(a),
        Command::Uninstall(a) => apply::run_uninstall(a),
        Command::Preflight(a) => preflight::run(a),
        Command::Bootstrap(a) => bootstrap::run(a),
        Command::Daemon(a) => daemon::run(a),
        Command::Status(a) => status::run(a),
        Command::History(a) => history::run(a),
        Command::Reconcile(a) => control::run_reconcile(a),
        Command::Suspend(a) => control::run_suspend(a),
        Command::Resume(a) => control::run_resume(a),
        Command::Completions(a) => completions::run_completions(a),
        Command::Man(a) => completions::run_man(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(err),
    }
}

/// Print an error chain and choose the exit code: 2 for input errors, 1 otherwise.
pub fn report(err: anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if is_input_error(&err) {
        ExitCode::from(EXIT_INPUT)
    } else {
        ExitCode::from(EXIT_DIFF)
    }
}

/// True when any error in the chain is an input error (bad chart, overlay, cluster file, usage).
pub fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<crate::diag::InputError>() || e.is::<UsageError>())
}

/// A usage error (bad flag combination, missing argument): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
