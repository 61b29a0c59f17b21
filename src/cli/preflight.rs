//! `pailot preflight`: check this host against its cluster file and render, with a fix for each problem.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::{EXIT_DIFF, RepoArgs, UsageError};
use crate::cluster::{Cluster, ControlPlane, Machine};
use crate::manifest::RenderedSet;
use crate::preflight::{
    ApiProbe, GPU_OVERLAY, HostRoot, LOWMEM_OVERLAY, MemoryBudget, PreflightInput, Report,
    SystemCommands, required_ports,
};
use crate::render::{RenderRequest, render};

/// Output format of preflight.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CheckOutput {
    #[default]
    Table,
    Json,
}

/// Which machine of the cluster file this host is, and where its filesystem is.
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Machine of the cluster file this host is (default: the only machine, or the one whose name or
    /// hostname matches this host's /etc/hostname).
    #[arg(long, value_name = "NAME")]
    pub machine: Option<String>,
    /// Root of the host filesystem the probes read (and bootstrap writes) under.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Connect timeout for each registry mirror, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub mirror_timeout_ms: u64,
    /// Kubeconfig for the API (default: $KUBECONFIG, then ~/.kube/config, then in-cluster; bootstrap of a
    /// managed control plane uses the admin.conf it wrote).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// The client configuration from `kubeconfig`, or the default one (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn kube_config(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
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
    })
}

/// A client from `kubeconfig` (see [`kube_config`]).
pub async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(kubeconfig).await?)?)
}

/// A single-threaded runtime for the CLI's few API calls.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `GET /version` of the cluster `kubeconfig` points at (10 s at most).
fn probe_api(kubeconfig: Option<&Path>) -> ApiProbe {
    let mut server = "the API server".to_string();
    let version = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let config = kube_config(kubeconfig)
                .await
                .map_err(|e| format!("{e:#}"))?;
            server = config.cluster_url.to_string();
            let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
                Ok(Ok(info)) => Ok(info.git_version),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 10 s".into()),
            }
        })
    });
    ApiProbe { server, version }
}

#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = CheckOutput::Table)]
    pub output: CheckOutput,
}

/// A rendered cluster and the preflight input for one of its machines.
pub struct Prepared {
    pub cluster: Cluster,
    pub set: RenderedSet,
    pub input: PreflightInput,
}

/// The overlays a render with `repo` uses.
fn effective_overlays(repo: &RepoArgs, cluster: &Cluster) -> Vec<String> {
    if repo.overlays.is_empty() {
        cluster.overlays.clone()
    } else {
        repo.overlays.clone()
    }
}

/// Pick the machine this host is (see `HostArgs::machine`).
pub fn select_machine(
    cluster: &Cluster,
    wanted: Option<&str>,
    root: &Path,
    cluster_file: &Path,
) -> anyhow::Result<Machine> {
    let names = || {
        cluster
            .machines
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(w) = wanted {
        return cluster
            .machines
            .iter()
            .find(|m| m.name == w)
            .cloned()
            .ok_or_else(|| {
                UsageError(format!(
                    "--machine {w}: no such machine in {} (machines: {})",
                    cluster_file.display(),
                    names()
                ))
                .into()
            });
    }
    if let [only] = cluster.machines.as_slice() {
        return Ok(only.clone());
    }
    let host = HostRoot::new(root);
    let hostname = host
        .read("/etc/hostname")
        .or_else(|| host.read("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    cluster
        .machines
        .iter()
        .find(|m| !hostname.is_empty() && (m.name == hostname || m.hostname() == hostname))
        .cloned()
        .ok_or_else(|| {
            UsageError(format!(
                "this host ({}) is none of the machines in {} ({}): pass --machine NAME",
                if hostname.is_empty() {
                    "hostname unknown"
                } else {
                    &hostname
                },
                cluster_file.display(),
                names()
            ))
            .into()
        })
}

fn memory_budget(
    cluster: &Cluster,
    set: &RenderedSet,
    machine: &str,
    overlays: Vec<String>,
) -> Result<MemoryBudget, crate::diag::InputError> {
    let budget = crate::budget::compute(cluster, set)?;
    let requests_memory = budget
        .machines
        .iter()
        .find(|m| m.machine == machine)
        .map(|m| m.requests_memory)
        .unwrap_or(0);
    Ok(MemoryBudget {
        overlays,
        requests_memory,
    })
}

/// Render the selected overlays (and, for comparison, with `single-node-lowmem` added) and build the
/// preflight input for this host's machine.
pub fn prepare(repo: &RepoArgs, host: &HostArgs) -> anyhow::Result<Prepared> {
    let (cluster, set) = render(&repo.request())?;
    let machine = select_machine(&cluster, host.machine.as_deref(), &host.root, &repo.cluster)?;
    let overlays = effective_overlays(repo, &cluster);
    let selected = memory_budget(&cluster, &set, &machine.name, overlays.clone())?;
    let lowmem_dir = repo
        .repo
        .join("overlays")
        .join(LOWMEM_OVERLAY)
        .join("overlay.yaml");
    let lowmem = if !overlays.iter().any(|o| o == LOWMEM_OVERLAY) && lowmem_dir.is_file() {
        let mut with = overlays.clone();
        with.push(LOWMEM_OVERLAY.to_string());
        let req = RenderRequest {
            overlays: Some(with.clone()),
            ..repo.request()
        };
        let (c2, s2) = render(&req)
            .with_context(|| format!("rendering with overlay {LOWMEM_OVERLAY} for comparison"))?;
        Some(memory_budget(&c2, &s2, &machine.name, with)?)
    } else {
        None
    };
    let api = (cluster.control_plane == ControlPlane::External)
        .then(|| probe_api(host.kubeconfig.as_deref()));
    let input = PreflightInput {
        root: host.root.clone(),
        gpu_overlay: overlays.iter().any(|o| o == GPU_OVERLAY),
        required_ports: required_ports(&cluster, &machine, &set),
        mirrors: cluster.mirrors.clone(),
        mirror_timeout: Duration::from_millis(host.mirror_timeout_ms),
        control_plane: cluster.control_plane,
        pod_network: cluster.pod_network(),
        api,
        selected,
        lowmem,
        machine,
    };
    Ok(Prepared {
        cluster,
        set,
        input,
    })
}

/// Print a report in the chosen format.
pub fn print_report(report: &Report, output: CheckOutput) -> anyhow::Result<()> {
    let text = match output {
        CheckOutput::Table => report.to_table(),
        CheckOutput::Json => serde_json::to_string_pretty(report)? + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

pub fn run(args: PreflightArgs) -> anyhow::Result<ExitCode> {
    let prepared = prepare(&args.repo, &args.host)?;
    let report = crate::preflight::run(&prepared.input, &SystemCommands::default());
    print_report(&report, args.output)?;
    Ok(if report.failed() {
        ExitCode::from(EXIT_DIFF)
    } else {
        ExitCode::SUCCESS
    })
}
