//! Host preflight: checks a machine against what its cluster file and render need, each with a one-line fix.
//!
//! Flow: the CLI renders the selected overlays, computes this machine's memory budget (and the budget with
//! `single-node-lowmem`, when not already selected) and its required ports, and passes them as plain data
//! in a [`PreflightInput`]; [`run`] then probes the host under `root` (never writing) and returns a
//! [`Report`]. Commands go through [`HostCommands`] so tests stub them.

pub mod host;
pub mod ports;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use host::{CommandOutput, FixedCommands, HostCommands, HostRoot, SystemCommands};
pub use ports::{RequiredPort, STATIC_POD_ANNOTATION, required_ports};

use crate::cluster::{Cni, ControlPlane, Machine};

/// The overlay suggested when the selected overlays do not fit a small machine.
pub const LOWMEM_OVERLAY: &str = "single-node-lowmem";
/// The overlay that enables GPU scheduling.
pub const GPU_OVERLAY: &str = "gpu";

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was looked at, what was found, and how to fix it when not passing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name: `os`, `kernel`, `memory`, `swap`, `cgroup`, `runtime`, `port/6443`, `time`, `gpu`, `mirror/docker.io`.
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: impl Into<String>,
    status: Status,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix,
    }
}

/// The memory requests on this machine for one overlay list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryBudget {
    pub overlays: Vec<String>,
    /// Sum of memory requests placed on this machine, in bytes.
    pub requests_memory: u64,
}

/// Everything preflight needs besides the host itself; plain data so it can be built by hand in tests.
#[derive(Clone, Debug)]
pub struct PreflightInput {
    pub root: PathBuf,
    pub machine: Machine,
    /// Budget for the selected overlays.
    pub selected: MemoryBudget,
    /// Budget with `single-node-lowmem` added, when it is not already selected and the overlay exists.
    pub lowmem: Option<MemoryBudget>,
    /// True when the selected overlays include `gpu`.
    pub gpu_overlay: bool,
    pub required_ports: Vec<RequiredPort>,
    /// Registry -> mirror endpoints (the cluster file's `mirrors`).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Connect timeout for each mirror endpoint.
    pub mirror_timeout: Duration,
    /// Who runs the control plane: an external one is probed through the API, a managed one needs the
    /// kubelet and CNI packages on the host.
    pub control_plane: ControlPlane,
    /// The pod network bootstrap sets up (which CNI plugins must be installed).
    pub pod_network: Cni,
    /// What the API server answered (external control plane only; `None` when not probed).
    pub api: Option<ApiProbe>,
}

/// The answer of the API server to `GET /version`, probed by the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiProbe {
    pub server: String,
    /// `gitVersion` (`v1.37.2`, `v1.31.4+k3s1`), or why the API did not answer.
    pub version: Result<String, String>,
}

/// The oldest Kubernetes minor the charts support (`kubeVersion: ">=1.30"` of the kubernetes chart).
pub const MIN_KUBE_MINOR: (u32, u32) = (1, 30);
/// The newest Kubernetes minor pailot is built and tested against (k8s-openapi feature `v1_37`).
pub const MAX_KUBE_MINOR: (u32, u32) = (1, 37);

/// All checks for one machine.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub root: String,
    /// `fail` when any check failed, else `warn` when any warned, else `pass`.
    pub result: Status,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.result == Status::Fail
    }

    /// Checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// Aligned table: STATUS CHECK DETAIL, with the fix under each non-passing row.
    pub fn to_table(&self) -> String {
        let w_name = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<6}  {:<w_name$}  DETAIL\n", "STATUS", "CHECK");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<6}  {:<w_name$}  {}",
                c.status.as_str(),
                c.name,
                c.detail
            );
            if let Some(fix) = c.fix.as_ref().filter(|_| c.status != Status::Pass) {
                let _ = writeln!(out, "{:<6}  {:<w_name$}  fix: {}", "", "", fix);
            }
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "\nmachine {}: {} passed, {} warnings, {} failed",
            self.machine,
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }
}

/// `34359738368` -> `32.0Gi`.
pub fn human_bytes(b: u64) -> String {
    const GI: f64 = (1u64 << 30) as f64;
    const MI: f64 = (1u64 << 20) as f64;
    if b as f64 >= GI {
        format!("{:.1}Gi", b as f64 / GI)
    } else {
        format!("{:.0}Mi", b as f64 / MI)
    }
}

/// Run every check against the host under `input.root`.
pub fn run(input: &PreflightInput, cmds: &dyn HostCommands) -> Report {
    let host = HostRoot::new(&input.root);
    let mut checks = vec![check_os(&host), check_kernel(&host)];
    checks.push(check_memory(&host, input));
    checks.push(check_swap(&host));
    checks.push(check_cgroup(&host));
    checks.push(check_runtime(&host, cmds, input));
    if input.control_plane == ControlPlane::Managed {
        checks.extend(check_node_packages(&host, input.pod_network));
    }
    if let Some(api) = &input.api {
        checks.push(check_api(api));
    }
    checks.extend(check_ports(&host, &input.required_ports));
    checks.push(check_time(&host, cmds));
    checks.push(check_gpu(&host, cmds, input));
    checks.extend(check_mirrors(&input.mirrors, input.mirror_timeout));
    let result = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    Report {
        machine: input.machine.name.clone(),
        root: input.root.display().to_string(),
        result,
        checks,
    }
}

fn check_os(host: &HostRoot) -> Check {
    match host.os_release() {
        Some(os) => {
            let name = os
                .get("PRETTY_NAME")
                .or_else(|| os.get("NAME"))
                .cloned()
                .unwrap_or_else(|| "Linux".into());
            check("os", Status::Pass, name, None)
        }
        None => check(
            "os",
            Status::Warn,
            "/etc/os-release not found: distribution unknown",
            Some(
                "run on a systemd-based Linux distribution (Debian 12, Ubuntu 22.04+ tested)"
                    .into(),
            ),
        ),
    }
}

fn check_kernel(host: &HostRoot) -> Check {
    let Some(release) = host.read("/proc/sys/kernel/osrelease") else {
        return check(
            "kernel",
            Status::Warn,
            "/proc/sys/kernel/osrelease not readable",
            None,
        );
    };
    let release = release.trim().to_string();
    match host::kernel_version(&release) {
        Some(v) if v >= (5, 8) => check("kernel", Status::Pass, release, None),
        Some(v) if v >= (4, 15) => check(
            "kernel",
            Status::Warn,
            format!("{release}: older than 5.8, cgroup v2 support is partial"),
            Some("upgrade to a 5.8+ kernel".into()),
        ),
        Some(_) => check(
            "kernel",
            Status::Fail,
            format!("{release}: older than 4.15, no usable cgroup v2"),
            Some("upgrade to a 5.8+ kernel".into()),
        ),
        None => check(
            "kernel",
            Status::Warn,
            format!("cannot parse kernel release {release:?}"),
            None,
        ),
    }
}

fn check_memory(host: &HostRoot, input: &PreflightInput) -> Check {
    let Some(total) = host.mem_total() else {
        return check(
            "memory",
            Status::Fail,
            "/proc/meminfo has no MemTotal",
            None,
        );
    };
    let sel = &input.selected;
    let overlays = sel.overlays.join(",");
    if sel.requests_memory <= total {
        return check(
            "memory",
            Status::Pass,
            format!(
                "requests {} of {} MemTotal fit (overlays {overlays})",
                human_bytes(sel.requests_memory),
                human_bytes(total)
            ),
            None,
        );
    }
    let detail = format!(
        "requests {} exceed {} MemTotal (overlays {overlays})",
        human_bytes(sel.requests_memory),
        human_bytes(total)
    );
    let fix = match &input.lowmem {
        Some(low) if low.requests_memory <= total => format!(
            "add overlay {LOWMEM_OVERLAY} (overlays {}): its requests {} fit",
            low.overlays.join(","),
            human_bytes(low.requests_memory)
        ),
        Some(low) => format!(
            "add memory: even with {LOWMEM_OVERLAY} the requests are {}; or move services to other machines",
            human_bytes(low.requests_memory)
        ),
        None => "add memory or move services to other machines".into(),
    };
    check("memory", Status::Fail, detail, Some(fix))
}

fn check_swap(host: &HostRoot) -> Check {
    match host.swaps() {
        None => check("swap", Status::Warn, "/proc/swaps not readable", None),
        Some(s) if s.is_empty() => check("swap", Status::Pass, "no swap active", None),
        Some(s) => {
            let total: u64 = s.iter().map(|(_, b)| b).sum();
            let devs: Vec<&str> = s.iter().map(|(d, _)| d.as_str()).collect();
            check(
                "swap",
                Status::Fail,
                format!(
                    "{} of swap active on {} (kubelet refuses to start)",
                    human_bytes(total),
                    devs.join(",")
                ),
                Some("swapoff -a and remove the swap entries from /etc/fstab".into()),
            )
        }
    }
}

fn check_cgroup(host: &HostRoot) -> Check {
    let Some(text) = host.read("/sys/fs/cgroup/cgroup.controllers") else {
        return check(
            "cgroup",
            Status::Fail,
            "cgroup v2 not mounted at /sys/fs/cgroup (Kubernetes 1.35+ needs cgroup v2)",
            Some("boot with systemd.unified_cgroup_hierarchy=1".into()),
        );
    };
    let have: Vec<&str> = text.split_whitespace().collect();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    if missing.is_empty() {
        check(
            "cgroup",
            Status::Pass,
            format!("v2, controllers {}", have.join(" ")),
            None,
        )
    } else {
        check(
            "cgroup",
            Status::Fail,
            format!("v2 without controllers {}", missing.join(",")),
            Some("enable the missing controllers (kernel config / boot parameters)".into()),
        )
    }
}

/// Container runtime sockets, in preference order: (socket, runtime, version command).
const RUNTIMES: &[(&str, &str, &[&str])] = &[
    (
        "/run/containerd/containerd.sock",
        "containerd",
        &["containerd", "--version"],
    ),
    ("/run/crio/crio.sock", "cri-o", &["crio", "--version"]),
    ("/var/run/crio/crio.sock", "cri-o", &["crio", "--version"]),
];

/// Package managers pailot names packages for, from `/etc/os-release` `ID` and `ID_LIKE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Distro {
    Debian,
    Fedora,
    Other,
}

fn distro(host: &HostRoot) -> Distro {
    let os = host.os_release().unwrap_or_default();
    let ids = format!(
        "{} {}",
        os.get("ID").map(String::as_str).unwrap_or(""),
        os.get("ID_LIKE").map(String::as_str).unwrap_or("")
    );
    let has = |w: &str| ids.split_whitespace().any(|i| i == w);
    if has("debian") || has("ubuntu") {
        Distro::Debian
    } else if has("fedora") || has("rhel") || has("centos") {
        Distro::Fedora
    } else {
        Distro::Other
    }
}

/// What to install, per distribution: `containerd`, `cni` or `kubelet`.
fn install_hint(host: &HostRoot, what: &str) -> String {
    match (distro(host), what) {
        (Distro::Debian, "containerd") => {
            "apt install containerd (1.7+: Debian 13, Ubuntu 24.04) && systemctl enable --now containerd".into()
        }
        (Distro::Fedora, "containerd") => "dnf install containerd && systemctl enable --now containerd".into(),
        (_, "containerd") => "install containerd 1.7+ and `systemctl enable --now containerd`".into(),
        (Distro::Debian, "cni") => "apt install containernetworking-plugins".into(),
        (Distro::Fedora, "cni") => "dnf install containernetworking-plugins (and link its plugins into /usr/lib/cni)".into(),
        (_, "cni") => "install the CNI reference plugins (bridge, host-local, loopback, portmap) into /usr/lib/cni".into(),
        (Distro::Debian, _) => {
            "apt install kubelet from the Kubernetes package repository (pkgs.k8s.io; Debian and Ubuntu do not ship the kubelet)".into()
        }
        (Distro::Fedora, _) => "dnf install kubelet from the Kubernetes package repository (pkgs.k8s.io)".into(),
        _ => "install the kubelet (pkgs.k8s.io packages, or the release binary at /usr/local/bin/kubelet)".into(),
    }
}

/// The kubelet and CNI plugins a managed machine needs (pailot configures them, it never downloads them).
fn check_node_packages(host: &HostRoot, network: Cni) -> Vec<Check> {
    let mut out = vec![];
    match crate::bootstrap::host::KUBELET_BINARIES
        .iter()
        .find(|b| host.exists(b))
    {
        Some(b) => out.push(check("kubelet", Status::Pass, b.to_string(), None)),
        None => out.push(check(
            "kubelet",
            Status::Fail,
            format!(
                "no kubelet binary ({})",
                crate::bootstrap::host::KUBELET_BINARIES.join(", ")
            ),
            Some(install_hint(host, "kubelet")),
        )),
    }
    if matches!(network, Cni::Bridge | Cni::Flannel) {
        let dir = crate::bootstrap::host::CNI_BIN_DIR;
        let missing: Vec<&str> = crate::bootstrap::host::CNI_PLUGINS
            .iter()
            .copied()
            .filter(|p| !host.exists(&format!("{dir}/{p}")))
            .collect();
        if missing.is_empty() {
            out.push(check(
                "cni",
                Status::Pass,
                format!("{dir}: {}", crate::bootstrap::host::CNI_PLUGINS.join(", ")),
                None,
            ));
        } else {
            out.push(check(
                "cni",
                Status::Fail,
                format!("CNI plugins missing in {dir}: {}", missing.join(", ")),
                Some(install_hint(host, "cni")),
            ));
        }
    }
    out
}

/// The version of an external control plane must be one the charts support.
fn check_api(api: &ApiProbe) -> Check {
    let version = match &api.version {
        Err(e) => {
            return check(
                "api",
                Status::Fail,
                format!("{} did not answer: {e}", api.server),
                Some("check the kubeconfig (--kubeconfig, $KUBECONFIG) and that the API server is up".into()),
            );
        }
        Ok(v) => v,
    };
    let minor = host::kernel_version(version.trim_start_matches('v'));
    let (lo, hi) = (MIN_KUBE_MINOR, MAX_KUBE_MINOR);
    match minor {
        Some(v) if v < lo => check(
            "api",
            Status::Fail,
            format!(
                "{} runs Kubernetes {version}, older than {}.{}",
                api.server, lo.0, lo.1
            ),
            Some(format!("upgrade the cluster to {}.{} or newer", lo.0, lo.1)),
        ),
        Some(v) if v > hi => check(
            "api",
            Status::Warn,
            format!(
                "{} runs Kubernetes {version}, newer than {}.{} that pailot is tested with",
                api.server, hi.0, hi.1
            ),
            None,
        ),
        Some(_) => check(
            "api",
            Status::Pass,
            format!("{} runs Kubernetes {version}", api.server),
            None,
        ),
        None => check(
            "api",
            Status::Warn,
            format!("{} answered an unknown version {version:?}", api.server),
            None,
        ),
    }
}

fn check_runtime(host: &HostRoot, cmds: &dyn HostCommands, input: &PreflightInput) -> Check {
    let mirrors = !input.mirrors.is_empty();
    let external = input.control_plane == ControlPlane::External;
    let Some((sock, name, cmd)) = RUNTIMES.iter().find(|(s, _, _)| host.exists(s)) else {
        // An adopted cluster may run its own runtime (k3s's); pailot itself does not need one there.
        return check(
            "runtime",
            if external { Status::Warn } else { Status::Fail },
            "no container runtime socket (/run/containerd/containerd.sock, /run/crio/crio.sock)",
            Some(install_hint(host, "containerd")),
        );
    };
    let version = cmds
        .run(cmd[0], &cmd[1..])
        .filter(|o| o.success)
        .and_then(|o| o.stdout.lines().next().map(str::to_string))
        .unwrap_or_default();
    if version.is_empty() {
        return check(
            "runtime",
            Status::Warn,
            format!(
                "{name} socket {sock}, but `{}` gave no version",
                cmd.join(" ")
            ),
            Some(format!("make sure the {name} binary is on PATH")),
        );
    }
    let ver = version
        .split_whitespace()
        .find_map(|w| host::kernel_version(w.trim_start_matches('v')).filter(|_| w.contains('.')));
    if *name == "containerd" && ver.is_some_and(|v| v < (1, 7)) {
        return check(
            "runtime",
            Status::Fail,
            format!("{version}: containerd older than 1.7"),
            Some("upgrade containerd to 1.7 or 2.x".into()),
        );
    }
    // A managed machine gets pailot's containerd drop-in; an adopted one must already read certs.d.
    if *name == "containerd" && mirrors && external {
        let mut cfg = host.read("/etc/containerd/config.toml").unwrap_or_default();
        cfg.push_str(
            &host
                .read(crate::bootstrap::host::CONTAINERD_DROPIN)
                .unwrap_or_default(),
        );
        if !cfg.contains("certs.d") {
            return check(
                "runtime",
                Status::Warn,
                format!("{version}; mirrors are configured but /etc/containerd/config.toml sets no certs.d config_path"),
                Some("set config_path = \"/etc/containerd/certs.d\" under the CRI registry plugin and restart containerd".into()),
            );
        }
    }
    check("runtime", Status::Pass, format!("{version} ({sock})"), None)
}

fn check_ports(host: &HostRoot, required: &[RequiredPort]) -> Vec<Check> {
    if required.is_empty() {
        return vec![];
    }
    let Some(listeners) = host.tcp_listeners() else {
        return vec![check(
            "ports",
            Status::Warn,
            "/proc/net/tcp not readable: ports not checked",
            None,
        )];
    };
    let owners = host.socket_owners();
    required
        .iter()
        .map(|rp| {
            let name = format!("port/{}", rp.port);
            let needed = rp.needed_by.join(", ");
            let held: Vec<&host::Listener> =
                listeners.iter().filter(|l| l.port == rp.port).collect();
            if held.is_empty() {
                return check(name, Status::Pass, format!("free ({needed})"), None);
            }
            let who: Vec<Option<&host::SocketOwner>> =
                held.iter().map(|l| owners.get(&l.inode)).collect();
            let addr = held[0].address.clone();
            match who.iter().flatten().next() {
                Some(o) if rp.expected_owners.contains(&o.comm) => check(
                    name,
                    Status::Pass,
                    format!("held by {} (pid {}) as expected ({needed})", o.comm, o.pid),
                    None,
                ),
                // Once bootstrapped, pods of the platform hold their hostPorts; a clash between pods is
                // the scheduler's business (the pod stays Pending), not the host's.
                Some(o) if o.in_pod => check(
                    name,
                    Status::Pass,
                    format!(
                        "held by {} (pid {}) in a Kubernetes pod ({needed})",
                        o.comm, o.pid
                    ),
                    None,
                ),
                Some(o) => check(
                    name,
                    Status::Fail,
                    format!(
                        "in use on {addr} by {} (pid {}); needed by {needed}",
                        o.comm, o.pid
                    ),
                    Some(format!("stop {} or move it off port {}", o.comm, rp.port)),
                ),
                None => check(
                    name,
                    Status::Fail,
                    format!("in use on {addr} by an unknown process; needed by {needed}"),
                    Some(format!(
                        "run preflight as root to see the owner (ss -ltnp 'sport = :{}')",
                        rp.port
                    )),
                ),
            }
        })
        .collect()
}

fn check_time(host: &HostRoot, cmds: &dyn HostCommands) -> Check {
    if let Some(o) = cmds
        .run("timedatectl", &["show", "-p", "NTPSynchronized", "--value"])
        .filter(|o| o.success)
    {
        match o.stdout.trim() {
            "yes" => return check("time", Status::Pass, "synchronised (timedatectl)", None),
            "no" => {
                return check(
                    "time",
                    Status::Warn,
                    "clock not synchronised (timedatectl NTPSynchronized=no)",
                    Some("enable NTP: timedatectl set-ntp true, or install chrony".into()),
                );
            }
            _ => {}
        }
    }
    let chrony_synced = cmds
        .run("chronyc", &["tracking"])
        .filter(|o| o.success)
        .is_some_and(|o| {
            o.stdout
                .lines()
                .any(|l| l.starts_with("Leap status") && l.contains("Normal"))
        });
    if chrony_synced {
        return check(
            "time",
            Status::Pass,
            "synchronised (chronyc tracking)",
            None,
        );
    }
    if host.exists("/run/systemd/timesync/synchronized") {
        return check(
            "time",
            Status::Pass,
            "synchronised (systemd-timesyncd)",
            None,
        );
    }
    let configured: Vec<&str> = [
        "/etc/chrony/chrony.conf",
        "/etc/chrony.conf",
        "/etc/ntp.conf",
        "/etc/ntpsec/ntp.conf",
        "/etc/systemd/timesyncd.conf",
    ]
    .into_iter()
    .filter(|p| host.exists(p))
    .collect();
    if configured.is_empty() {
        check(
            "time",
            Status::Warn,
            "no time synchronisation found (timedatectl, chrony, ntp)",
            Some("install chrony (apt install chrony) so certificates and etcd leases agree on the time".into()),
        )
    } else {
        check(
            "time",
            Status::Warn,
            format!(
                "configured ({}) but synchronisation state unknown",
                configured.join(", ")
            ),
            Some("check `chronyc tracking` or `timedatectl`".into()),
        )
    }
}

fn check_gpu(host: &HostRoot, cmds: &dyn HostCommands, input: &PreflightInput) -> Check {
    let driver = host
        .read("/proc/driver/nvidia/version")
        .and_then(|t| t.lines().next().map(str::to_string));
    let devices = host.nvidia_devices();
    let gpu_nodes = devices
        .iter()
        .filter(|d| d[6..].chars().all(|c| c.is_ascii_digit()) && d.len() > 6)
        .count();
    let smi: Vec<String> = cmds
        .run(
            "nvidia-smi",
            &["--query-gpu=name,memory.total", "--format=csv,noheader"],
        )
        .filter(|o| o.success)
        .map(|o| {
            o.stdout
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let present = driver.is_some() || gpu_nodes > 0 || !smi.is_empty();
    let count = if smi.is_empty() { gpu_nodes } else { smi.len() };
    let found = if !smi.is_empty() {
        format!("{count} GPU(s): {}", smi.join("; "))
    } else if gpu_nodes > 0 {
        format!("{count} GPU device node(s) /dev/nvidia*")
    } else if let Some(d) = &driver {
        format!("NVIDIA driver loaded ({d}) but no GPU listed")
    } else {
        String::new()
    };
    let declared = input.machine.capacity.gpu as usize;
    match (present, input.gpu_overlay) {
        (false, false) => check(
            "gpu",
            Status::Pass,
            "no NVIDIA GPU; gpu overlay not selected",
            None,
        ),
        (false, true) => check(
            "gpu",
            Status::Fail,
            "overlay gpu is selected but no NVIDIA GPU was found (/proc/driver/nvidia/version, /dev/nvidia*, nvidia-smi)",
            Some("install the NVIDIA driver, or remove overlay gpu from the cluster file".into()),
        ),
        (true, false) => check(
            "gpu",
            Status::Warn,
            format!("{found}, but overlay gpu is not selected: the GPUs stay unused"),
            Some("add overlay gpu to the cluster file's overlays".into()),
        ),
        (true, true) if count > 0 && declared > 0 && count != declared => check(
            "gpu",
            Status::Warn,
            format!("{found}; the cluster file declares capacity.gpu {declared}"),
            Some(format!(
                "set capacity.gpu: {count} for machine {}",
                input.machine.name
            )),
        ),
        (true, true) => check("gpu", Status::Pass, found, None),
    }
}

/// `http://127.0.0.1:5000/v2` -> `127.0.0.1:5000`, with the scheme's default port.
fn mirror_authority(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
    let hostport = rest.split('/').next()?;
    if hostport.is_empty() {
        return None;
    }
    let has_port = match hostport.rfind(']') {
        Some(i) => hostport[i..].contains(':'),
        None => hostport.contains(':'),
    };
    if has_port {
        Some(hostport.to_string())
    } else {
        Some(format!(
            "{hostport}:{}",
            if scheme == "http" { 80 } else { 443 }
        ))
    }
}

fn check_mirrors(mirrors: &BTreeMap<String, Vec<String>>, timeout: Duration) -> Vec<Check> {
    let mut out = Vec::new();
    for (registry, endpoints) in mirrors {
        for ep in endpoints {
            let name = format!("mirror/{registry}");
            let Some(auth) = mirror_authority(ep) else {
                out.push(check(
                    name,
                    Status::Fail,
                    format!("cannot parse endpoint {ep:?}"),
                    None,
                ));
                continue;
            };
            let addrs: Vec<SocketAddr> = auth
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default();
            let reached = addrs
                .iter()
                .any(|a| TcpStream::connect_timeout(a, timeout).is_ok());
            if reached {
                out.push(check(name, Status::Pass, format!("{ep} reachable"), None));
            } else {
                // A mirror down at boot must not stop bootstrap or GitOps: containerd falls back to the
                // upstream registry, and pulls work again when the mirror is back.
                let why = if addrs.is_empty() {
                    "does not resolve"
                } else {
                    "not reachable"
                };
                out.push(check(
                    name,
                    Status::Warn,
                    format!(
                        "{ep} {why} (TCP {auth}, {} ms timeout; pulls fall back to the registry)",
                        timeout.as_millis()
                    ),
                    Some(format!(
                        "start the mirror or fix mirrors.{registry} in the cluster file"
                    )),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_authority_defaults_ports() {
        assert_eq!(
            mirror_authority("http://127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            mirror_authority("https://mirror.example/v2").as_deref(),
            Some("mirror.example:443")
        );
        assert_eq!(
            mirror_authority("http://[::1]").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            mirror_authority("http://[::1]:81").as_deref(),
            Some("[::1]:81")
        );
    }

    #[test]
    fn mirrors_on_loopback_pass_and_closed_ports_fail() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap().port();
        let closed = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap().port()
        };
        let mut m = BTreeMap::new();
        m.insert(
            "docker.io".to_string(),
            vec![
                format!("http://127.0.0.1:{open}"),
                format!("http://127.0.0.1:{closed}"),
            ],
        );
        let c = check_mirrors(&m, Duration::from_millis(500));
        assert_eq!(c[0].status, Status::Pass);
        assert_eq!(
            c[1].status,
            Status::Warn,
            "an unreachable mirror must not fail bootstrap"
        );
        assert!(c[1].detail.contains(&closed.to_string()));
    }

    fn input(
        root: &std::path::Path,
        selected: u64,
        lowmem: Option<u64>,
        gpu_overlay: bool,
    ) -> PreflightInput {
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "name": "m1", "address": "10.0.0.1", "roles": ["pai-worker"],
            "capacity": {"memory": "32Gi", "cpu": "8", "gpu": 1}
        }))
        .unwrap();
        PreflightInput {
            root: root.to_path_buf(),
            machine,
            selected: MemoryBudget {
                overlays: vec!["base".into()],
                requests_memory: selected,
            },
            lowmem: lowmem.map(|r| MemoryBudget {
                overlays: vec!["base".into(), LOWMEM_OVERLAY.into()],
                requests_memory: r,
            }),
            gpu_overlay,
            required_ports: vec![],
            mirrors: BTreeMap::new(),
            mirror_timeout: Duration::from_millis(100),
            control_plane: ControlPlane::External,
            pod_network: Cni::None,
            api: None,
        }
    }

    fn fake_root(mem_kib: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(
            d.path().join("proc/meminfo"),
            format!("MemTotal: {mem_kib} kB\n"),
        )
        .unwrap();
        d
    }

    fn named<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn memory_says_which_overlay_list_fits() {
        let root = fake_root(32 << 20);
        let cmds = FixedCommands::default();
        let r = run(&input(root.path(), 40 << 30, Some(9 << 30), false), &cmds);
        let m = named(&r, "memory");
        assert_eq!(m.status, Status::Fail);
        assert!(
            m.detail.contains("requests 40.0Gi exceed 32.0Gi"),
            "{}",
            m.detail
        );
        assert_eq!(
            m.fix.as_deref(),
            Some(
                "add overlay single-node-lowmem (overlays base,single-node-lowmem): its requests 9.0Gi fit"
            )
        );
        let r = run(&input(root.path(), 40 << 30, Some(33 << 30), false), &cmds);
        assert!(
            named(&r, "memory")
                .fix
                .as_deref()
                .unwrap()
                .starts_with("add memory: even with single-node-lowmem")
        );
        let r = run(&input(root.path(), 32 << 30, None, false), &cmds);
        assert_eq!(
            named(&r, "memory").status,
            Status::Pass,
            "requests equal to MemTotal fit"
        );
    }

    #[test]
    fn gpu_matrix() {
        let root = fake_root(32 << 20);
        let none = FixedCommands::default();
        let two = FixedCommands::default().with(
            "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader",
            "Tesla T4, 15360 MiB\nTesla T4, 15360 MiB\n",
        );
        let one = FixedCommands::default().with(
            "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader",
            "NVIDIA A100, 81920 MiB\n",
        );
        assert_eq!(
            named(&run(&input(root.path(), 0, None, false), &none), "gpu").status,
            Status::Pass
        );
        assert_eq!(
            named(&run(&input(root.path(), 0, None, true), &none), "gpu").status,
            Status::Fail
        );
        assert_eq!(
            named(&run(&input(root.path(), 0, None, false), &one), "gpu").status,
            Status::Warn
        );
        assert_eq!(
            named(&run(&input(root.path(), 0, None, true), &one), "gpu").status,
            Status::Pass
        );
        // Two GPUs found but capacity.gpu says 1: a warning with the number to write.
        let c = run(&input(root.path(), 0, None, true), &two);
        let g = named(&c, "gpu");
        assert_eq!(g.status, Status::Warn);
        assert_eq!(g.fix.as_deref(), Some("set capacity.gpu: 2 for machine m1"));
        // /dev/nvidia0 alone counts as a GPU.
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/nvidia0"), "").unwrap();
        std::fs::write(root.path().join("dev/nvidiactl"), "").unwrap();
        let g = run(&input(root.path(), 0, None, true), &none);
        assert_eq!(
            named(&g, "gpu").status,
            Status::Pass,
            "{:?}",
            named(&g, "gpu")
        );
    }

    #[test]
    fn old_containerd_fails_and_missing_config_path_warns_with_mirrors() {
        let root = fake_root(1 << 20);
        std::fs::create_dir_all(root.path().join("run/containerd")).unwrap();
        std::fs::write(root.path().join("run/containerd/containerd.sock"), "").unwrap();
        let host = HostRoot::new(root.path());
        // An adopted (external) cluster with mirrors: containerd must read certs.d already.
        let plain = input(root.path(), 0, None, false);
        let mut with_mirrors = input(root.path(), 0, None, false);
        with_mirrors
            .mirrors
            .insert("docker.io".into(), vec!["http://127.0.0.1:5000".into()]);
        let old = FixedCommands::default().with(
            "containerd --version",
            "containerd containerd.io 1.6.33 d2d58213f\n",
        );
        assert_eq!(check_runtime(&host, &old, &plain).status, Status::Fail);
        let new = FixedCommands::default().with(
            "containerd --version",
            "containerd containerd.io 1.7.22 7f7fdf5fe\n",
        );
        assert_eq!(check_runtime(&host, &new, &plain).status, Status::Pass);
        assert_eq!(
            check_runtime(&host, &new, &with_mirrors).status,
            Status::Warn
        );
        // A managed machine gets pailot's containerd drop-in from bootstrap: nothing to warn about yet.
        let mut managed = with_mirrors.clone();
        managed.control_plane = ControlPlane::Managed;
        assert_eq!(check_runtime(&host, &new, &managed).status, Status::Pass);
        std::fs::create_dir_all(root.path().join("etc/containerd")).unwrap();
        std::fs::write(
            root.path().join("etc/containerd/config.toml"),
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        )
        .unwrap();
        assert_eq!(
            check_runtime(&host, &new, &with_mirrors).status,
            Status::Pass
        );
    }

    #[test]
    fn node_packages_name_the_distribution_package() {
        let root = fake_root(1 << 20);
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/os-release"),
            "ID=debian\nVERSION_ID=\"13\"\n",
        )
        .unwrap();
        let host = HostRoot::new(root.path());
        let c = check_node_packages(&host, Cni::Bridge);
        assert_eq!((c[0].name.as_str(), c[0].status), ("kubelet", Status::Fail));
        assert!(
            c[0].fix.as_deref().unwrap().contains("pkgs.k8s.io"),
            "{:?}",
            c[0]
        );
        assert_eq!((c[1].name.as_str(), c[1].status), ("cni", Status::Fail));
        assert_eq!(
            c[1].fix.as_deref(),
            Some("apt install containernetworking-plugins")
        );
        assert!(
            c[1].detail
                .contains("bridge, host-local, loopback, portmap"),
            "{}",
            c[1].detail
        );
        for p in [
            "usr/bin/kubelet",
            "usr/lib/cni/bridge",
            "usr/lib/cni/host-local",
            "usr/lib/cni/loopback",
            "usr/lib/cni/portmap",
        ] {
            let f = root.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "").unwrap();
        }
        let c = check_node_packages(&host, Cni::Bridge);
        assert!(c.iter().all(|c| c.status == Status::Pass), "{c:?}");
        // No pod network from pailot: no CNI check.
        assert_eq!(check_node_packages(&host, Cni::None).len(), 1);
    }

    #[test]
    fn external_api_version_is_checked_against_the_supported_range() {
        let probe = |v: Result<&str, &str>| ApiProbe {
            server: "https://127.0.0.1:6443".into(),
            version: v.map(str::to_string).map_err(str::to_string),
        };
        assert_eq!(check_api(&probe(Ok("v1.37.2"))).status, Status::Pass);
        assert_eq!(check_api(&probe(Ok("v1.31.4+k3s1"))).status, Status::Pass);
        let old = check_api(&probe(Ok("v1.29.9")));
        assert_eq!(old.status, Status::Fail);
        assert!(old.detail.contains("older than 1.30"), "{}", old.detail);
        assert_eq!(check_api(&probe(Ok("v1.38.0"))).status, Status::Warn);
        let down = check_api(&probe(Err("connection refused")));
        assert_eq!(down.status, Status::Fail);
        assert!(
            down.detail.contains("connection refused"),
            "{}",
            down.detail
        );
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(32 << 30), "32.0Gi");
        assert_eq!(human_bytes(512 << 20), "512Mi");
    }
}
