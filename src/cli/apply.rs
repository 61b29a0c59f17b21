//! `pailot diff`, `pailot apply`, `pailot uninstall`: the render pipeline, then the apply engine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{EXIT_DIFF, EXIT_INPUT, RepoArgs, UsageError};
use crate::apply::{self, Action, ApplyReport, Server, diff, progress::Progress};
use crate::inventory::{self, Inventory};
use crate::render::render;

/// How pailot reaches the cluster and where its inventory lives.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the ApplySet parent Secret `applyset-<cluster name>`.
    #[arg(long, value_name = "NS", default_value = inventory::DEFAULT_NAMESPACE, env = "PAILOT_INVENTORY_NAMESPACE")]
    pub inventory_namespace: String,
}

/// Human table or JSON.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReportFormat {
    #[default]
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Delete inventory members that are no longer rendered.
    #[arg(long)]
    pub prune: bool,
    /// Wait for every chart to be healthy; dependents start once their dependencies are.
    #[arg(long)]
    pub wait: bool,
    /// Per-chart health timeout (`90s`, `5m`, `1h`, or seconds).
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Take over fields that other field managers own.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Allow a prune of more than 10 objects and more than 25 % of the inventory.
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// Allow pruning Namespaces, PVCs, PVs and CRDs (otherwise only with `pailot.dev/prune: allow`).
    #[arg(long)]
    pub prune_protected: bool,
    /// Charts applied at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this chart's objects.
    #[arg(long, value_name = "N")]
    pub chart: Option<String>,
    /// Delete Namespaces, PVCs, PVs and CRDs too.
    #[arg(long)]
    pub prune_protected: bool,
    /// How long to wait for each deletion.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

/// `90`, `90s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| Duration::from_secs(n * mult))
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 90s, 5m, 1h)"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?)
}

async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Server> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig found (pass --kubeconfig or set KUBECONFIG)")?,
    };
    let client = kube::Client::try_from(config)?;
    Ok(Server::new(client).await?)
}

/// A plan error (dependency cycle) is an input error: exit 2, nothing applied.
fn classify(e: apply::Error) -> anyhow::Error {
    match e {
        apply::Error::Plan(p) => UsageError(format!("plan: {p}; nothing was applied")).into(),
        other => other.into(),
    }
}

fn write_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(())
}

pub fn run_diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    // diff's contract: 0 no change, 1 changes, 2 error (of any kind).
    match diff_inner(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            super::report(e);
            Ok(ExitCode::from(EXIT_INPUT))
        }
    }
}

fn diff_inner(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (cluster, set) = render(&args.repo.request())?;
    let inv = Inventory::for_cluster(&cluster.name, &args.cluster.inventory_namespace);
    let config = apply::Config {
        dry_run: true,
        prune: true,
        prune_limits: apply::prune::Config {
            allow_mass_prune: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut report = runtime()?.block_on(async {
        let server = connect(args.cluster.kubeconfig.as_deref()).await?;
        apply::apply(&server, &set, &inv, &config, &Progress::quiet())
            .await
            .map_err(classify)
    })?;
    // Fields computed from decrypted values (Secret data is masked by the diff itself).
    crate::mask::mask_report(&mut report, &set.provenance.secrets);
    if args.output == ReportFormat::Json {
        write_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        write_out(&diff_text(&report))?;
    }
    if !report.ok() {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    Ok(if report.changed() {
        ExitCode::from(EXIT_DIFF)
    } else {
        ExitCode::SUCCESS
    })
}

/// The human diff: per changed object its fields (with other owners), then the prunes and their count.
pub fn diff_text(report: &ApplyReport) -> String {
    let mut s = String::new();
    for o in &report.objects {
        match o.action {
            Action::Configured => {
                s.push_str(&format!("~ {} (chart {}) configured\n", o.object, o.chart));
                for c in &o.changes {
                    let owners = if c.other_managers.is_empty() {
                        String::new()
                    } else {
                        format!("   [owned by {}]", c.other_managers.join(", "))
                    };
                    s.push_str(&format!(
                        "    {}: {} -> {}{owners}\n",
                        c.path,
                        diff::show(&c.live),
                        diff::show(&c.desired)
                    ));
                }
            }
            Action::Created => {
                let why = o
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "+ {} (chart {}) created{why}\n",
                    o.object, o.chart
                ));
            }
            Action::Skipped => {
                let why = o
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                s.push_str(&format!("  {} skipped{why}\n", o.object));
            }
            _ => {}
        }
    }
    match &report.prune_disabled {
        Some(why) => s.push_str(&format!("prune: off ({why})\n")),
        None => {
            s.push_str(&format!("prune: {} object(s)\n", report.prunes.len()));
            for p in &report.prunes {
                s.push_str(&format!("- {p}\n"));
            }
        }
    }
    s.push_str(&summary(report));
    s
}

fn summary(report: &ApplyReport) -> String {
    let parts: Vec<String> = report
        .counts
        .iter()
        .map(|(a, n)| format!("{n} {}", a.word()))
        .collect();
    format!(
        "{}: {}\n",
        if report.dry_run {
            "would be"
        } else {
            "objects"
        },
        parts.join(", ")
    )
}

pub fn run_apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let (cluster, set) = render(&args.repo.request())?;
    let inv = Inventory::for_cluster(&cluster.name, &args.cluster.inventory_namespace);
    let config = apply::Config {
        force_conflicts: args.force_conflicts,
        prune: args.prune,
        wait: args.wait,
        timeout: args.timeout,
        concurrency: args.concurrency,
        prune_limits: apply::prune::Config {
            allow_protected: args.prune_protected,
            allow_mass_prune: args.allow_mass_prune,
            ..Default::default()
        },
        ..Default::default()
    };
    let progress = progress_for(args.output);
    let report = runtime()?.block_on(async {
        let (stop_tx, stop) = apply::Stop::channel();
        let config = apply::Config { stop, ..config };
        tokio::spawn(stop_on_signal(stop_tx));
        let server = connect(args.cluster.kubeconfig.as_deref()).await?;
        apply::apply(&server, &set, &inv, &config, &progress)
            .await
            .map_err(classify)
    })?;
    if args.output == ReportFormat::Json {
        write_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut s = String::new();
        for o in report
            .objects
            .iter()
            .filter(|o| o.action != Action::Unchanged)
        {
            let why = o
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            s.push_str(&format!("{} {}{why}\n", o.object, o.action.word()));
        }
        for c in &report.charts {
            let msg = c
                .message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            s.push_str(&format!("chart {} {}{msg}\n", c.name, c.state.word()));
        }
        if !report.prunes.is_empty() {
            s.push_str(&format!("pruned {} object(s)\n", report.prunes.len()));
        }
        s.push_str(&summary(&report));
        write_out(&s)?;
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if report.stopped {
        eprintln!(
            "stopped: {} object(s) not applied, prune skipped; run the same command again to finish",
            report.not_applied
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFF)
    })
}

/// Exit status after Ctrl-C/SIGTERM stopped an apply (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The first SIGINT/SIGTERM stops the apply after the objects in flight; a second one exits at once.
async fn stop_on_signal(stop: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted: finishing the objects in flight (again to abort at once)");
    let _ = stop.send(true);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    std::process::exit(EXIT_INTERRUPTED as i32);
}

pub fn run_uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let (cluster, set) = render(&args.repo.request())?;
    let inv = Inventory::for_cluster(&cluster.name, &args.cluster.inventory_namespace);
    let progress = progress_for(args.output);
    let report = runtime()?.block_on(async {
        let server = connect(args.cluster.kubeconfig.as_deref()).await?;
        apply::uninstall(
            &server,
            &set,
            &inv,
            args.chart.as_deref(),
            args.prune_protected,
            args.timeout,
            &progress,
        )
        .await
        .map_err(classify)
    })?;
    if args.output == ReportFormat::Json {
        write_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut s = String::new();
        for d in &report.deleted {
            s.push_str(&format!("{d} deleted\n"));
        }
        for k in &report.kept {
            s.push_str(&format!("{k} kept (protected; pass --prune-protected)\n"));
        }
        s.push_str(&format!(
            "{} deleted, {} kept\n",
            report.deleted.len(),
            report.kept.len()
        ));
        write_out(&s)?;
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFF)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}

/// The progress view for a command: quiet when the output is JSON for a program.
fn progress_for(output: ReportFormat) -> Progress {
    if output == ReportFormat::Json {
        Progress::quiet()
    } else {
        Progress::for_terminal()
    }
}
