//! `pailot bootstrap [--reset]`: PKI, kubeconfigs, kubelet/containerd/CNI configuration, static pods,
//! registry mirrors and node labels for this host (or, for an external control plane, mirrors and labels
//! only), recorded for undo.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::preflight::{
    CheckOutput, HostArgs, Prepared, kube_client, prepare, print_report, runtime,
};
use super::{EXIT_DIFF, RepoArgs};
use crate::apply::progress::{ChartState, Progress};
use crate::bootstrap::pki::{self, CertDecision, PlanContext};
use crate::bootstrap::{
    self, FileAction, FileOutcome, Missing, NodeOutcome, PlannedFile, Record, Step, apply_files,
    checked_under_root, desired_node_meta, host, kubeconfig, plan_files, under_root,
};
use crate::cluster::{Cni, ControlPlane, Machine, Role};
use crate::manifest::RenderedSet;
use crate::preflight::SystemCommands;

/// Where the k8s-master keeps the kubelet kubeconfig of every other machine (copy one to that machine's
/// `/etc/kubernetes/kubelet.conf`).
pub const NODE_KUBECONFIG_DIR: &str = "/etc/kubernetes/pailot-nodes";
/// The progress line of the API server wait.
const API_STEP: &str = "API server";

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Bootstrap even when preflight fails, and replace files pailot did not write (they are kept in the
    /// state directory and put back by --reset).
    #[arg(long)]
    pub force: bool,
    /// Undo: remove the files the record lists (if unchanged since) and the labels it set, then the record.
    /// Certificates, keys and kubeconfigs stay unless --include-pki.
    #[arg(long)]
    pub reset: bool,
    /// With --reset: also remove the certificates, keys and kubeconfigs bootstrap wrote (asked twice on a terminal).
    #[arg(long, requires = "reset")]
    pub include_pki: bool,
    /// Reissue every certificate (CA included, with the same keys) and kubeconfig client certificate now.
    #[arg(long, conflicts_with = "reset")]
    pub renew_certs: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<ControlPlane>,
    certificates: Vec<CertDecision>,
    files: Vec<FileOutcome>,
    services: Vec<String>,
    nodes: Vec<NodeOutcome>,
    /// Host path of the record.
    record: String,
    /// `written`, `unchanged`, `removed`, `absent`.
    record_action: String,
    /// What is still missing (the record's `incomplete`).
    incomplete: Vec<Missing>,
    changed: bool,
}

impl Summary {
    fn to_table(&self, reset: bool) -> String {
        let action = |a: FileAction| match a {
            FileAction::KeptPki => "kept-pki".to_string(),
            a => format!("{a:?}").to_lowercase(),
        };
        let cert_action = |c: &CertDecision| format!("{:?}", c.action).to_lowercase();
        let w = self
            .files
            .iter()
            .map(|f| action(f.action).len())
            .chain(self.certificates.iter().map(|c| cert_action(c).len()))
            .chain(self.nodes.iter().map(|n| n.action.len()))
            .chain([self.record_action.len(), 9])
            .max()
            .unwrap_or(9);
        let mut out = String::new();
        for c in &self.certificates {
            out.push_str(&format!(
                "{:<w$}  cert/{}  ({})\n",
                cert_action(c),
                c.cert,
                c.detail
            ));
        }
        for f in &self.files {
            let what = if f.what.is_empty() {
                String::new()
            } else {
                format!("  ({})", f.what)
            };
            out.push_str(&format!("{:<w$}  {}{what}\n", action(f.action), f.path));
        }
        for s in &self.services {
            out.push_str(&format!("{:<w$}  {s}\n", "service"));
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
        for m in &self.incomplete {
            out.push_str(&format!(
                "{:<w$}  {}: {}\n",
                "missing",
                m.step.as_str(),
                m.detail
            ));
        }
        let verb = if reset { "reset" } else { "bootstrap" };
        let state = if !reset && !self.incomplete.is_empty() {
            " (incomplete)"
        } else {
            ""
        };
        if self.changed {
            out.push_str(&format!(
                "{verb} of machine {}: done{state}\n",
                self.machine
            ));
        } else {
            out.push_str(&format!(
                "{verb} of machine {}: nothing to change{state}\n",
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

/// True when the rendered etcd static pod listens beyond loopback (then etcd needs its certificates).
pub fn etcd_beyond_loopback(set: &RenderedSet) -> bool {
    set.objects.iter().any(|(id, ro)| {
        if id.kind != "Pod" || id.name != "etcd" || !crate::manifest::is_static_pod(&ro.object) {
            return false;
        }
        let args = ro.object["spec"]["containers"][0]["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                ro.object["spec"]["containers"][0]["args"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|v| v.as_str());
        args.filter_map(|a| {
            a.strip_prefix("--listen-client-urls=")
                .or_else(|| a.strip_prefix("--listen-peer-urls="))
        })
        .flat_map(|urls| urls.split(','))
        .any(|url| {
            let host = url.split("://").nth(1).unwrap_or(url);
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            !matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        })
    })
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

/// The API server URL the kubeconfigs name: the first k8s-master's address and the API port.
pub fn api_server_url(cluster: &crate::cluster::Cluster) -> Option<String> {
    let m = pki::control_plane_machine(cluster)?;
    let host = match m.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(a)) => format!("[{a}]"),
        _ => m.address.clone(),
    };
    Some(format!(
        "https://{host}:{}",
        cluster.kubernetes.api_server_port
    ))
}

/// Ask `question` on the terminal; true when the answer is exactly `want`.
fn confirm(question: &str, want: &str) -> bool {
    eprint!("{question} ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == want
}

/// Which kubeconfig the API steps use: `--kubeconfig`, else for a managed control plane the admin.conf
/// bootstrap wrote (or, on a machine without one, the kubelet's), else the default lookup.
fn api_kubeconfig(args: &BootstrapArgs, managed: bool) -> (Option<PathBuf>, bool) {
    if let Some(k) = &args.host.kubeconfig {
        return (Some(k.clone()), true);
    }
    if managed {
        let admin = under_root(&args.host.root, "/etc/kubernetes/admin.conf");
        if admin.is_file() {
            return (Some(admin), true);
        }
        let kubelet = under_root(&args.host.root, host::KUBELET_KUBECONFIG);
        if kubelet.is_file() {
            return (Some(kubelet), false);
        }
    }
    (None, true)
}

fn run_reset(args: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let root = &args.host.root;
    let state_dir = checked_under_root(root, &args.state_dir)?;
    let Some(record) = bootstrap::read_record(&state_dir)? else {
        let summary = Summary {
            machine: args.host.machine.clone().unwrap_or_default(),
            control_plane: None,
            certificates: vec![],
            files: vec![],
            services: vec![],
            nodes: vec![],
            record: record_path(&args.state_dir),
            record_action: "absent".into(),
            incomplete: vec![],
            changed: false,
        };
        print(&summary, args.output, true)?;
        return Ok(ExitCode::SUCCESS);
    };
    let pki_files = record.files.iter().filter(|f| f.pki).count();
    if args.include_pki && pki_files > 0 && std::io::stdin().is_terminal() {
        let first = confirm(
            &format!(
                "--include-pki removes the cluster's CA, keys and kubeconfigs ({pki_files} files under {}): \
every client and node holding them stops working. Continue? Type yes:",
                under_root(root, "/etc/kubernetes").display()
            ),
            "yes",
        );
        if !first
            || !confirm(
                &format!("Type the cluster name ({}) to remove them:", record.cluster),
                &record.cluster,
            )
        {
            eprintln!("reset cancelled: nothing was changed");
            return Ok(ExitCode::from(EXIT_DIFF));
        }
    }
    // Labels first, while the admin kubeconfig is still there.
    let mut nodes = Vec::new();
    if !record.nodes.is_empty() {
        if args.skip_api {
            anyhow::bail!(
                "the record lists labels set on {} node(s); --reset needs the API to remove them (drop --skip-api)",
                record.nodes.len()
            );
        }
        let managed = record.control_plane != Some(ControlPlane::External);
        let (kc, _) = api_kubeconfig(args, managed);
        nodes = runtime()?.block_on(async {
            let c = kube_client(kc.as_deref()).await?;
            anyhow::Ok(bootstrap::nodes::unlabel_nodes(&c, &record.nodes).await?)
        })?;
    }
    let (files, still) = bootstrap::reset_files(root, &state_dir, &record, args.include_pki)?;
    let record_action = if still.is_empty() {
        bootstrap::remove_record(&state_dir)?;
        "removed"
    } else {
        // The credentials stay recorded, so a later --reset --include-pki still removes only those.
        let mut kept = Record::new(&record.cluster, &record.machine);
        kept.control_plane = record.control_plane;
        kept.files = still;
        kept.incomplete = vec![Missing {
            step: Step::Reset,
            detail: "the host was reset; its certificates, keys and kubeconfigs were kept (--reset --include-pki removes them)".into(),
        }];
        kept.updated_at_unix = bootstrap::now_unix();
        bootstrap::write_record(&state_dir, &kept)?;
        "written"
    };
    let kept = files
        .iter()
        .filter(|f| f.action == FileAction::Kept)
        .count();
    let summary = Summary {
        machine: record.machine.clone(),
        control_plane: record.control_plane,
        certificates: vec![],
        changed: true,
        files,
        services: vec![],
        nodes,
        record: record_path(&args.state_dir),
        record_action: record_action.into(),
        incomplete: vec![],
    };
    print(&summary, args.output, true)?;
    if kept > 0 {
        eprintln!("note: {kept} file(s) changed since bootstrap wrote them were kept");
    }
    Ok(ExitCode::SUCCESS)
}

/// The files of this run, the certificate decisions, and what is already known to be missing.
struct HostPlan {
    files: Vec<PlannedFile>,
    certificates: Vec<CertDecision>,
    missing: Vec<Missing>,
}

fn now_secs() -> i64 {
    bootstrap::now_unix() as i64
}

/// Plan the credentials and node configuration of a managed machine.
fn plan_managed(
    args: &BootstrapArgs,
    prepared: &Prepared,
    previous: Option<&Record>,
    pod_dir: &str,
    plan: &mut HostPlan,
) -> anyhow::Result<()> {
    let root = &args.host.root;
    let cluster = &prepared.cluster;
    let machine = &prepared.input.machine;
    let ours = previous
        .map(|r| {
            r.files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect()
        })
        .unwrap_or_default();
    let ctx = PlanContext {
        root,
        now: now_secs(),
        renew: args.renew_certs,
        force: args.force,
        ours: &ours,
    };
    let credential =
        |f: pki::PkiFile| PlannedFile::credential(f.path, f.content, f.what, f.private);
    if machine.has(Role::K8sMaster) {
        let server = api_server_url(cluster).expect("a k8s-master exists");
        let spec = pki::control_plane_spec(cluster, machine, etcd_beyond_loopback(&prepared.set))?;
        let pki_plan = pki::plan(&spec, true, &ctx)?;
        let ca = pki_plan.authority("ca").expect("the spec has a CA");
        let mut kubeconfigs = kubeconfig::control_plane_kubeconfigs(&machine.name);
        for other in cluster.machines.iter().filter(|m| m.name != machine.name) {
            kubeconfigs.push(kubeconfig::kubelet(
                &other.name,
                &format!("{NODE_KUBECONFIG_DIR}/{}.conf", other.name),
            ));
        }
        let mut kubeconfig_files = vec![];
        let mut kubeconfig_decisions = vec![];
        for k in &kubeconfigs {
            let (file, decision) = kubeconfig::plan(k, &ctx, ca, &cluster.name, &server)?;
            kubeconfig_files.extend(file.map(credential));
            kubeconfig_decisions.push(decision);
        }
        plan.files
            .extend(pki_plan.files.into_iter().map(credential));
        plan.files.extend(kubeconfig_files);
        plan.certificates.extend(pki_plan.decisions);
        plan.certificates.extend(kubeconfig_decisions);
    } else {
        plan_worker_credentials(machine, cluster, &ctx, plan)?;
    }
    let kubelet_bin = host::KUBELET_BINARIES
        .iter()
        .find(|b| under_root(root, b).exists())
        .unwrap_or(&host::KUBELET_BINARIES[0]);
    plan.files.push(PlannedFile::config(
        host::KUBELET_CONFIG,
        host::kubelet_config(cluster, pod_dir),
        "kubelet configuration",
    ));
    plan.files.push(PlannedFile::config(
        host::KUBELET_DROPIN,
        host::kubelet_dropin(machine, kubelet_bin),
        "kubelet unit drop-in",
    ));
    plan.files.push(PlannedFile::config(
        host::CONTAINERD_DROPIN,
        host::containerd_dropin(),
        "containerd CRI drop-in",
    ));
    let main = ctx.read(host::CONTAINERD_CONFIG)?;
    let main_ours = main
        .as_deref()
        .is_some_and(|b| ctx.is_ours(host::CONTAINERD_CONFIG, b));
    let mut main_file = PlannedFile::config(
        host::CONTAINERD_CONFIG,
        host::containerd_main(),
        "containerd configuration importing the drop-in",
    );
    main_file.replaces = host::KNOWN_CONTAINERD_DEFAULTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    match host::containerd_main_state(main.as_deref(), main_ours) {
        host::ContainerdMain::Absent | host::ContainerdMain::KnownDefault => {
            plan.files.push(main_file)
        }
        host::ContainerdMain::Imports => {}
        host::ContainerdMain::Foreign(_) if args.force => plan.files.push(main_file),
        host::ContainerdMain::Foreign(why) => plan.missing.push(Missing {
            step: Step::ContainerdConfig,
            detail: format!(
                "{}: {why} (or bootstrap with --force to replace it)",
                host::CONTAINERD_CONFIG
            ),
        }),
    }
    if cluster.pod_network() == Cni::Bridge {
        plan.files.push(PlannedFile::config(
            host::CNI_BRIDGE,
            host::cni_bridge(&cluster.kubernetes.pod_cidr),
            "bridge CNI network",
        ));
    }
    Ok(())
}

/// A worker's credentials come from the k8s-master: its kubelet.conf, and the CA certificate in it.
fn plan_worker_credentials(
    machine: &Machine,
    cluster: &crate::cluster::Cluster,
    ctx: &PlanContext,
    plan: &mut HostPlan,
) -> anyhow::Result<()> {
    let master = pki::control_plane_machine(cluster)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| "the k8s-master".into());
    let copy = format!(
        "copy {NODE_KUBECONFIG_DIR}/{}.conf from {master} to {} (mode 0600), then run bootstrap again",
        machine.name,
        host::KUBELET_KUBECONFIG
    );
    let Some(bytes) = ctx.read(host::KUBELET_KUBECONFIG)? else {
        plan.missing.push(Missing {
            step: Step::KubeletCredentials,
            detail: format!("{} is missing: {copy}", host::KUBELET_KUBECONFIG),
        });
        return Ok(());
    };
    let parts = kubeconfig::parts(&bytes).unwrap_or_default();
    let want_cn = format!("system:node:{}", machine.name);
    let cert = parts
        .cert_pem
        .as_deref()
        .and_then(|c| pki::parse_cert_pem(c.as_bytes()).ok());
    let problem = match (&parts.ca_pem, &cert) {
        (None, _) | (_, None) => Some("it has no CA or client certificate".to_string()),
        (_, Some(c)) if c.common_name.as_deref() != Some(want_cn.as_str()) => Some(format!(
            "its client certificate is for {:?}, not {want_cn:?}",
            c.common_name.as_deref().unwrap_or("")
        )),
        (_, Some(c)) if c.not_after <= ctx.now => Some(format!(
            "its client certificate expired {}",
            crate::clock::rfc3339_unix(c.not_after)
        )),
        _ => None,
    };
    if let Some(p) = problem {
        plan.missing.push(Missing {
            step: Step::KubeletCredentials,
            detail: format!("{}: {p}: {copy}", host::KUBELET_KUBECONFIG),
        });
        return Ok(());
    }
    let ca_pem = parts.ca_pem.expect("checked");
    let ca_path = pki::cert_path("ca");
    match ctx.read(&ca_path)? {
        Some(b) if b != ca_pem.as_bytes() && !ctx.is_ours(&ca_path, &b) => {
            plan.missing.push(Missing {
                step: Step::KubeletCredentials,
                detail: format!(
                    "{ca_path} is not the CA of {}: move it away",
                    host::KUBELET_KUBECONFIG
                ),
            });
        }
        _ => plan.files.extend(
            pki::keep_or_plan(
                ctx,
                ca_path,
                ca_pem.into_bytes(),
                false,
                "certificate ca (from kubelet.conf)".into(),
            )
            .map(|f| PlannedFile::credential(f.path, f.content, f.what, f.private)),
        ),
    }
    Ok(())
}

/// Restart what reads the changed files (only on the real host: `--root /`).
fn restart_services(
    args: &BootstrapArgs,
    files: &[FileOutcome],
    missing: &mut Vec<Missing>,
) -> Vec<String> {
    let changed = |paths: &[&str]| {
        files
            .iter()
            .any(|f| f.action != FileAction::Unchanged && paths.iter().any(|p| f.path == *p))
    };
    let containerd = changed(&[host::CONTAINERD_CONFIG, host::CONTAINERD_DROPIN]);
    let kubelet = changed(&[
        host::KUBELET_CONFIG,
        host::KUBELET_DROPIN,
        host::KUBELET_KUBECONFIG,
        "/etc/kubernetes/pki/ca.crt",
    ]);
    let mut steps: Vec<Vec<&str>> = vec![];
    if kubelet {
        steps.push(vec!["daemon-reload"]);
    }
    if containerd {
        steps.push(vec!["restart", "containerd.service"]);
    }
    if kubelet || containerd {
        steps.push(vec!["restart", "kubelet.service"]);
    }
    let mut out = vec![];
    for s in steps {
        let shown = format!("systemctl {}", s.join(" "));
        if args.host.root != Path::new("/") {
            out.push(format!("{shown} (not run: --root is not /)"));
            continue;
        }
        let ok = std::process::Command::new("systemctl")
            .args(&s)
            .stdin(std::process::Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        if ok {
            out.push(shown);
        } else {
            out.push(format!("{shown} (failed)"));
            missing.push(Missing {
                step: Step::ServiceRestart,
                detail: format!("`{shown}` failed; run it by hand"),
            });
        }
    }
    out
}

/// Write `record` with `missing` added (a failed run still says what is missing, for the daemon).
fn record_failure(state_dir: &Path, mut record: Record, missing: Missing) {
    record.complete = false;
    record.incomplete.push(missing);
    record.updated_at_unix = bootstrap::now_unix();
    if let Err(e) = bootstrap::write_record(state_dir, &record) {
        eprintln!("warning: could not write the bootstrap record: {e}");
    }
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    if args.reset {
        return run_reset(&args);
    }
    let root = args.host.root.clone();
    let state_dir = checked_under_root(&root, &args.state_dir)?;
    if let Some(d) = &args.static_pod_dir {
        checked_under_root(&root, &format!("{}/x", d.trim_end_matches('/')))?;
    }
    let prepared = prepare(&args.repo, &args.host)?;
    let report = crate::preflight::run(&prepared.input, &SystemCommands::default());
    let machine = &prepared.input.machine;
    let cluster = &prepared.cluster;
    let managed = cluster.control_plane == ControlPlane::Managed;
    let previous = bootstrap::read_record(&state_dir)?;

    // The record of this run starts from the previous one, so a failure keeps everything resettable.
    let mut record = Record::new(&cluster.name, &machine.name);
    record.control_plane = Some(cluster.control_plane);
    record.warnings = report
        .checks
        .iter()
        .filter(|c| c.status == crate::preflight::Status::Warn)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if let Some(p) = &previous {
        record.files = p.files.clone();
        record.nodes = p.nodes.clone();
    }

    if report.failed() && !args.force {
        print_report(&report, args.output)?;
        let names: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: preflight failed ({}); fix them or bootstrap with --force",
            names.join(", ")
        );
        let detail: Vec<String> = report
            .failures()
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        record_failure(
            &state_dir,
            record,
            Missing {
                step: Step::Preflight,
                detail: detail.join("; "),
            },
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
    if managed && cluster.pod_network() == Cni::Bridge && cluster.machines.len() > 1 {
        eprintln!(
            "warning: kubernetes.cni is bridge on {} machines: pods on different machines cannot reach each other (use flannel)",
            cluster.machines.len()
        );
    }

    let pod_dir = args
        .static_pod_dir
        .clone()
        .unwrap_or_else(|| cluster.kubernetes.static_pod_dir.clone());
    let pods = if managed && machine.has(Role::K8sMaster) {
        static_pod_yaml(&prepared.set)
    } else {
        vec![]
    };
    let mut plan = HostPlan {
        files: vec![],
        certificates: vec![],
        missing: vec![],
    };
    let planned = if managed {
        plan_managed(&args, &prepared, previous.as_ref(), &pod_dir, &mut plan)
    } else {
        Ok(())
    };
    if let Err(e) = planned {
        record_failure(
            &state_dir,
            record,
            Missing {
                step: Step::Files,
                detail: format!("{e:#}"),
            },
        );
        return Err(e);
    }
    let mut planned = plan.files;
    planned.extend(plan_files(&pods, &pod_dir, &cluster.mirrors));
    let (files, recorded_files) =
        match apply_files(&root, &state_dir, &planned, previous.as_ref(), args.force) {
            Ok(r) => r,
            Err(e) => {
                record_failure(
                    &state_dir,
                    record,
                    Missing {
                        step: Step::Files,
                        detail: e.to_string(),
                    },
                );
                return Err(e.into());
            }
        };
    record.files = recorded_files;
    let mut missing = plan.missing;
    let services = restart_services(&args, &files, &mut missing);

    let files_changed = previous.as_ref().is_none_or(|p| p.files != record.files);
    if files_changed && !args.skip_api {
        // Record the files before the API steps, so a failure there still leaves them resettable.
        let mut early = record.clone();
        early.incomplete = missing.clone();
        early.incomplete.push(Missing {
            step: Step::ApiServer,
            detail: "the API steps had not finished".into(),
        });
        early.updated_at_unix = bootstrap::now_unix();
        bootstrap::write_record(&state_dir, &early)?;
    }
    let mut nodes = Vec::new();
    if args.skip_api {
        missing.push(Missing {
            step: Step::ApiSkipped,
            detail: "bootstrap ran with --skip-api: no /readyz wait, no node labels".into(),
        });
    } else {
        let timeout = Duration::from_secs(args.timeout);
        let deadline = Instant::now() + timeout;
        let (kc, may_label) = api_kubeconfig(&args, managed);
        let desired = if may_label {
            desired_node_meta(cluster)
        } else {
            vec![]
        };
        let prev_nodes = previous
            .as_ref()
            .map(|p| p.nodes.clone())
            .unwrap_or_default();
        let progress = if args.output == CheckOutput::Table {
            Progress::for_terminal()
        } else {
            Progress::quiet()
        };
        let result: Result<_, (Step, anyhow::Error)> = runtime()?.block_on(async {
            let c = kube_client(kc.as_deref())
                .await
                .map_err(|e| (Step::ApiServer, e))?;
            progress.set(API_STEP, ChartState::WaitingHealthy, "GET /readyz");
            if let Err(e) = bootstrap::nodes::wait_readyz(&c, timeout).await {
                progress.set(API_STEP, ChartState::Failed, &e.to_string());
                return Err((Step::ApiServer, e.into()));
            }
            progress.set(API_STEP, ChartState::Healthy, "");
            let step = format!("node {}", machine.name);
            progress.set(
                &step,
                ChartState::Applying,
                "waiting for it to register, then labelling",
            );
            if !may_label
                && let Err(e) = bootstrap::nodes::wait_registered(&c, &machine.name, deadline).await
            {
                progress.set(&step, ChartState::Failed, &e.to_string());
                return Err((Step::NodeRegistration, e.into()));
            }
            match bootstrap::nodes::label_nodes(&c, &desired, &prev_nodes, &machine.name, deadline)
                .await
            {
                Ok(done) => {
                    progress.set(&step, ChartState::Applied, "labels set");
                    Ok(done)
                }
                Err(e) => {
                    progress.set(&step, ChartState::Failed, &e.to_string());
                    let step = match e {
                        bootstrap::Error::Timeout { .. } => Step::NodeRegistration,
                        _ => Step::NodeLabels,
                    };
                    Err((step, e.into()))
                }
            }
        });
        drop(progress);
        match result {
            Ok((outcomes, recorded_nodes)) => {
                nodes = outcomes;
                if may_label {
                    record.nodes = recorded_nodes;
                } else {
                    eprintln!(
                        "note: node labels are set by bootstrap on the k8s-master (this machine has only kubelet credentials)"
                    );
                }
            }
            Err((step, e)) => {
                let mut failed = record.clone();
                failed.incomplete = missing;
                record_failure(
                    &state_dir,
                    failed,
                    Missing {
                        step,
                        detail: format!("{e:#}"),
                    },
                );
                return Err(e);
            }
        }
    }
    record.complete = missing.is_empty();
    record.incomplete = missing;
    let same = previous.as_ref().is_some_and(|p| {
        let mut p = p.clone();
        p.updated_at_unix = record.updated_at_unix;
        p.pailot_version = record.pailot_version.clone();
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
        control_plane: Some(cluster.control_plane),
        certificates: plan.certificates,
        files,
        services,
        nodes,
        record: record_path(&args.state_dir),
        record_action: if same {
            "unchanged".into()
        } else {
            "written".into()
        },
        incomplete: record.incomplete.clone(),
        changed,
    };
    print(&summary, args.output, false)?;
    Ok(
        if record.incomplete.iter().any(|m| m.step != Step::ApiSkipped) {
            ExitCode::from(EXIT_DIFF)
        } else {
            ExitCode::SUCCESS
        },
    )
}
