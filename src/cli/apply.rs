//! `pailot diff`, `pailot apply`, `pailot uninstall`: the render pipeline, then the apply engine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_DIFF, EXIT_INPUT, RepoArgs, UsageError};
use crate::apply::{self, Action, ApplyReport, Server, diff, plan::Plan, progress::Progress};
use crate::inventory::{self, Inventory};
use crate::render::render;

/// How pailot reaches the cluster. The inventory (the ApplySet parent Secret `applyset-<cluster name>`)
/// lives in the Cluster file's `namespace`, for every command and the daemon alike.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
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
    #[arg(long, value_name = "D", default_value = "5m", value_parser = crate::duration::parse)]
    pub timeout: Duration,
    /// Take over fields that other field managers own.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Allow a prune of more than 10 objects and more than 25 % of the inventory.
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// Apply even when the render's requests do not fit the machines (`pailot budget` says OVER).
    #[arg(long)]
    pub allow_over_budget: bool,
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
    #[arg(long, value_name = "D", default_value = "5m", value_parser = crate::duration::parse)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?)
}

async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Server> {
    let client = crate::kube_client::client(kubeconfig).await?;
    Ok(Server::new(client).await?)
}

/// Connect, find the inventory (adopting one an earlier version left elsewhere) and plan the render as
/// its members. A plan error (dependency cycle) is an input error: exit 2, nothing applied.
async fn connect_and_plan(
    kubeconfig: Option<&Path>,
    cluster: &crate::cluster::Cluster,
    set: &crate::manifest::RenderedSet,
) -> anyhow::Result<(Server, apply::Located, Plan)> {
    let server = connect(kubeconfig).await?;
    let located = apply::locate_inventory(&server, cluster).await?;
    if let apply::Found::Adopted { from } = &located.found {
        eprintln!(
            "note: using the inventory {} that an earlier pailot left in namespace {from} (the rule puts it in the cluster's namespace {}); nothing is duplicated",
            located.inventory.parent_name(),
            cluster.namespace
        );
    }
    let plan = Plan::new(set, &located.inventory)
        .map_err(|p| UsageError(format!("plan: {p}; nothing was applied")))?;
    Ok((server, located, plan))
}

/// The message for an inventory that is nowhere: what was looked for, and where.
fn no_inventory(cluster: &crate::cluster::Cluster) -> String {
    let rule = Inventory::of(cluster);
    let mut places = vec![rule.parent_name()];
    places.extend(
        inventory::LEGACY_NAMESPACES
            .iter()
            .filter(|ns| **ns != rule.namespace)
            .map(|ns| Inventory::for_cluster(&cluster.name, ns).parent_name()),
    );
    format!(
        "no inventory of cluster {:?} found (looked for {}): pailot has applied nothing here for this cluster",
        cluster.name,
        places.join(" and ")
    )
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
    // The render is bounded like `pailot render`; talking to the cluster afterwards is not.
    let bounds = crate::limits::Limits::current().enforce("pailot diff");
    let (cluster, set) = render(&args.repo.request())?;
    drop(bounds);
    let config = apply::Config {
        dry_run: true,
        prune: true,
        prune_limits: apply::prune::Config {
            allow_mass_prune: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (mut report, found) = runtime()?.block_on(async {
        let (server, located, plan) =
            connect_and_plan(args.cluster.kubeconfig.as_deref(), &cluster, &set).await?;
        let report = apply::apply(
            &server,
            &plan,
            &located.inventory,
            &config,
            &Progress::quiet(),
        )
        .await?;
        anyhow::Ok((report, located.found))
    })?;
    // Fields computed from decrypted values (Secret data is masked by the diff itself).
    crate::mask::mask_report(&mut report, &set.provenance.secrets);
    if args.output == ReportFormat::Json {
        write_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        write_out(&diff_text(&report))?;
    }
    if !report.ok() {
        for f in &report.failures {
            eprintln!("error: {f}");
        }
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    if found == apply::Found::Nowhere {
        eprintln!("{}", no_inventory(&cluster));
        return Ok(ExitCode::from(EXIT_DIFF));
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
    // The render is bounded like `pailot render`; talking to the cluster afterwards is not.
    let bounds = crate::limits::Limits::current().enforce("pailot apply");
    let (cluster, set) = render(&args.repo.request())?;
    drop(bounds);
    if set.objects.is_empty() {
        eprintln!(
            "error: the render of cluster {:?} is empty (check its overlays' chart selection); nothing was applied",
            cluster.name
        );
        return Ok(ExitCode::from(EXIT_INPUT));
    }
    if !args.allow_over_budget {
        let budget = crate::budget::compute(&cluster, &set)?;
        if let Some(over) = budget.over_summary(3) {
            eprintln!(
                "error: the render does not fit the machines of cluster {:?}; nothing was applied\n{over}\n\
                 lower the requests in an overlay (`pailot budget` shows every container), or pass --allow-over-budget",
                cluster.name
            );
            return Ok(ExitCode::from(EXIT_DIFF));
        }
    }
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
        let (server, located, plan) =
            connect_and_plan(args.cluster.kubeconfig.as_deref(), &cluster, &set).await?;
        anyhow::Ok(apply::apply(&server, &plan, &located.inventory, &config, &progress).await?)
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
    for f in &report.failures {
        let hint = if f.kind == apply::FailureKind::PruneRefused {
            "; nothing was pruned (check `pailot diff`, then pass --allow-mass-prune)"
        } else {
            ""
        };
        eprintln!("error: {f}{hint}");
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
    // The render is bounded like `pailot render`; talking to the cluster afterwards is not.
    let bounds = crate::limits::Limits::current().enforce("pailot uninstall");
    let (cluster, set) = render(&args.repo.request())?;
    drop(bounds);
    let progress = progress_for(args.output);
    let report = runtime()?.block_on(async {
        let (server, located, plan) =
            connect_and_plan(args.cluster.kubeconfig.as_deref(), &cluster, &set).await?;
        if located.found == apply::Found::Nowhere {
            return Ok(None);
        }
        let report = apply::uninstall(
            &server,
            &plan,
            &located.inventory,
            args.chart.as_deref(),
            args.prune_protected,
            args.timeout,
            &progress,
        )
        .await?;
        anyhow::Ok(Some(report))
    })?;
    let Some(report) = report else {
        eprintln!("error: {}", no_inventory(&cluster));
        return Ok(ExitCode::from(EXIT_DIFF));
    };
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

/// The progress view for a command: quiet when the output is JSON for a program.
fn progress_for(output: ReportFormat) -> Progress {
    if output == ReportFormat::Json {
        Progress::quiet()
    } else {
        Progress::for_terminal()
    }
}
