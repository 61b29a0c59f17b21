//! Node configuration bootstrap writes on a managed machine: the kubelet's `KubeletConfiguration` and
//! systemd drop-in, containerd's CRI drop-in (mirrors through `config_path`, systemd cgroups, Debian's CNI
//! directory) and, for a one-machine cluster, a bridge + host-local CNI network.

use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, Machine};

/// The kubelet's configuration file (kubeadm's path).
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// systemd drop-in that points the distribution's kubelet unit at pailot's files.
pub const KUBELET_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/10-pailot.conf";
/// The kubelet's kubeconfig.
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
/// containerd's main configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// pailot's containerd drop-in.
pub const CONTAINERD_DROPIN: &str = "/etc/containerd/conf.d/10-pailot.toml";
/// The import pattern containerd's main configuration needs for the drop-in to take effect.
pub const CONTAINERD_IMPORT: &str = "/etc/containerd/conf.d/*.toml";
/// Where containerd finds the mirror `hosts.toml` files.
pub const CERTS_D: &str = "/etc/containerd/certs.d";
/// The bridge CNI network of a one-machine cluster.
pub const CNI_BRIDGE: &str = "/etc/cni/net.d/10-pailot-bridge.conflist";
/// CNI configuration directory.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CNI plugins pailot's networks use (bridge network, and flannel's delegate).
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
/// Kubelet binaries looked for, in order (Debian/Ubuntu packages, then a manual install).
pub const KUBELET_BINARIES: &[&str] = &["/usr/bin/kubelet", "/usr/local/bin/kubelet"];
/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";

/// sha256 of containerd main configurations shipped by distributions, which bootstrap may replace
/// (keeping the original for `--reset`): Debian 12/13's `/etc/containerd/config.toml`.
pub const KNOWN_CONTAINERD_DEFAULTS: &[&str] =
    &["6355083d91d4ed68a14819d9bca266dbd16384fac5ebc594e1c3f68c7d3f3c9a"];

fn quantities(m: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1) for `machine`.
pub fn kubelet_config(cluster: &Cluster, static_pod_dir: &str) -> String {
    let k = &cluster.kubernetes;
    let mut c = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "systemd",
        "containerRuntimeEndpoint": CONTAINERD_SOCKET,
        "staticPodPath": static_pod_dir,
        "clusterDomain": k.cluster_domain,
        "failSwapOn": true,
        "maxPods": k.kubelet.max_pods,
        // pailot renews the kubelet's client certificate (`bootstrap --renew-certs`); no CSR flow.
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
    });
    if let Some(dns) = k.cluster_dns.as_deref().filter(|d| !d.is_empty()) {
        c["clusterDNS"] = json!([dns]);
    }
    if !k.kubelet.system_reserved.is_empty() {
        c["systemReserved"] = quantities(&k.kubelet.system_reserved);
    }
    if !k.kubelet.kube_reserved.is_empty() {
        c["kubeReserved"] = quantities(&k.kubelet.kube_reserved);
    }
    let mut text = String::from(
        "# Written by pailot bootstrap from the cluster file (kubernetes.kubelet); `pailot bootstrap --reset` removes it.\n",
    );
    text.push_str(&serde_saphyr::to_string(&c).expect("kubelet config serializes"));
    text
}

/// The kubelet unit drop-in: pailot's kubeconfig and configuration, node name and IP from the cluster file.
pub fn kubelet_dropin(machine: &Machine, kubelet_bin: &str) -> String {
    format!(
        "# Written by pailot bootstrap; `pailot bootstrap --reset` removes it.\n\
# Points the kubelet unit of the distribution's package at the files pailot bootstrap writes.\n\
[Unit]\n\
After=containerd.service\n\
Wants=containerd.service\n\
\n\
[Service]\n\
Environment=\"KUBELET_KUBECONFIG_ARGS=--kubeconfig={KUBELET_KUBECONFIG}\"\n\
Environment=\"KUBELET_CONFIG_ARGS=--config={KUBELET_CONFIG}\"\n\
Environment=\"KUBELET_NODE_ARGS=--hostname-override={name} --node-ip={ip}\"\n\
ExecStart=\n\
ExecStart={kubelet_bin} $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_NODE_ARGS\n\
Restart=always\n\
RestartSec=10\n",
        name = machine.name,
        ip = machine.address,
    )
}

/// containerd's CRI drop-in (config version 2, read by containerd 1.7 and migrated by 2.x): registry
/// mirrors from `certs.d`, the systemd cgroup driver (matching the kubelet's), Debian's CNI plugins.
pub fn containerd_dropin() -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    [
        "# Written by pailot bootstrap; `pailot bootstrap --reset` removes it.".to_string(),
        "# containerd merges an imported plugin section over the main file's: this is the whole CRI section.".into(),
        "version = 2".into(),
        String::new(),
        format!("[{cri}]"),
        format!("  [{cri}.containerd]"),
        "    default_runtime_name = \"runc\"".into(),
        format!("    [{cri}.containerd.runtimes.runc]"),
        "      runtime_type = \"io.containerd.runc.v2\"".into(),
        format!("      [{cri}.containerd.runtimes.runc.options]"),
        "        SystemdCgroup = true".into(),
        format!("  [{cri}.registry]"),
        format!("    config_path = \"{CERTS_D}\""),
        format!("  [{cri}.cni]"),
        format!("    bin_dir = \"{CNI_BIN_DIR}\""),
        format!("    conf_dir = \"{CNI_CONF_DIR}\""),
        String::new(),
    ]
    .join("\n")
}

/// The main containerd configuration bootstrap writes when there is none (or the distribution's default).
pub fn containerd_main() -> String {
    format!(
        "# Written by pailot bootstrap; `pailot bootstrap --reset` removes it (or restores the file it replaced).\n\
version = 2\n\
imports = [\"{CONTAINERD_IMPORT}\"]\n"
    )
}

/// What the host's main containerd configuration means for pailot's drop-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerdMain {
    /// No file: bootstrap writes [`containerd_main`].
    Absent,
    /// It imports the drop-in already.
    Imports,
    /// A distribution default (see [`KNOWN_CONTAINERD_DEFAULTS`]): replaced, the original kept for reset.
    KnownDefault,
    /// Someone's own configuration without the import: left alone, reported.
    Foreign(String),
}

/// The strings of the top-level `imports = [...]` of a containerd configuration (before any table).
/// A deliberately small reader: containerd's main files are machine-written; anything it does not
/// understand counts as "no import", which only makes bootstrap report instead of relying on it.
pub fn containerd_imports(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut in_imports = false;
    for line in text.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if !in_imports {
            if l.starts_with('[') {
                break;
            }
            let Some(rest) = l.strip_prefix("imports") else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('=') else {
                continue;
            };
            in_imports = true;
            out.extend(quoted(rest));
            if rest.contains(']') {
                break;
            }
        } else {
            out.extend(quoted(l));
            if l.contains(']') {
                break;
            }
        }
    }
    out
}

fn quoted(s: &str) -> Vec<String> {
    s.split(['"', '\''])
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// Classify the host's `/etc/containerd/config.toml` (its bytes, if any; `ours` when pailot wrote them).
pub fn containerd_main_state(existing: Option<&[u8]>, ours: bool) -> ContainerdMain {
    let Some(bytes) = existing else {
        return ContainerdMain::Absent;
    };
    if ours || KNOWN_CONTAINERD_DEFAULTS.contains(&super::sha256_hex(bytes).as_str()) {
        return ContainerdMain::KnownDefault;
    }
    let imports = containerd_imports(&String::from_utf8_lossy(bytes));
    if imports
        .iter()
        .any(|i| i == CONTAINERD_IMPORT || i == CONTAINERD_DROPIN)
    {
        ContainerdMain::Imports
    } else {
        ContainerdMain::Foreign(format!(
            "it does not import {CONTAINERD_IMPORT}: add imports = [\"{CONTAINERD_IMPORT}\"] at its top and restart containerd"
        ))
    }
}

/// The bridge + host-local CNI network of a one-machine cluster (pods get addresses from `podCidr`).
pub fn cni_bridge(pod_cidr: &str) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "pailot",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).expect("cni config serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_main_states() {
        assert_eq!(containerd_main_state(None, false), ContainerdMain::Absent);
        let debian = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";
        assert_eq!(
            containerd_main_state(Some(debian.as_bytes()), false),
            ContainerdMain::KnownDefault
        );
        let with = format!("version = 2\nimports = [\"{CONTAINERD_IMPORT}\"]\n");
        assert_eq!(
            containerd_main_state(Some(with.as_bytes()), false),
            ContainerdMain::Imports
        );
        assert!(
            matches!(containerd_main_state(Some(b"version = 2\n[x]\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n"), false), ContainerdMain::Foreign(m) if m.contains("does not import"))
        );
        let multi = "version = 3\nimports = [\n  \"/opt/x.toml\", # theirs\n  '/etc/containerd/conf.d/*.toml',\n]\n[plugins]\n";
        assert_eq!(
            containerd_imports(multi),
            ["/opt/x.toml", "/etc/containerd/conf.d/*.toml"]
        );
        assert_eq!(
            containerd_main_state(Some(multi.as_bytes()), false),
            ContainerdMain::Imports
        );
        assert_eq!(containerd_imports(&containerd_main()), [CONTAINERD_IMPORT]);
    }

    #[test]
    fn cni_bridge_uses_the_pod_cidr() {
        let v: Value = serde_json::from_str(&cni_bridge("10.244.0.0/16")).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.0.0/16"
        );
        assert_eq!(v["plugins"][0]["type"], "bridge");
    }
}
