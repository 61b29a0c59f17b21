//! The Cluster file (`clusters/<name>.yaml`): machines, roles, registry, mirrors, overlays.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::quantity::Quantity;

/// A cluster pailot deploys to: which machines with which roles, and which overlays apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Always `pailot.dev/v1`.
    pub api_version: String,
    /// Always `Cluster`.
    pub kind: String,
    /// Cluster name (also the ApplySet name and the OpenPAI cluster-id).
    pub name: String,
    /// Who runs the Kubernetes control plane: `managed` (pailot bootstrap brings it up: PKI, kubeconfigs,
    /// static pods, kubelet, containerd and node networking) or `external` (an existing cluster is
    /// adopted: bootstrap only labels nodes and writes registry mirrors).
    #[serde(default)]
    pub control_plane: ControlPlane,
    /// Overlays applied in order (later wins), e.g. `[base, single-node-lowmem]`.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// Namespace for namespaced objects that do not set one.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Root of all service host paths (OpenPAI `cluster.common.data-path`).
    #[serde(default = "default_data_path")]
    pub data_path: String,
    /// Where PAI images come from.
    #[serde(default)]
    pub registry: Registry,
    /// Registry mirrors: registry host -> mirror endpoints, written as containerd `hosts.toml` by bootstrap.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Control-plane settings used by the `kubernetes` chart and bootstrap.
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    /// The machines, in order; the first `pai-master` is "the master" OpenPAI services point at.
    pub machines: Vec<Machine>,
    /// Per-chart values set by this cluster, merged last (after chart defaults and every overlay).
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Files (repository-relative) with more per-chart values, merged after `values`, in order;
    /// a file may be encrypted with sops, e.g. `clusters/my-cluster.secrets.sops.yaml`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
}

/// Who runs the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlane {
    /// pailot bootstrap generates the PKI and configuration and writes the control-plane static pods.
    #[default]
    Managed,
    /// An existing cluster (kubeadm, k3s, a cloud): pailot labels nodes and writes registry mirrors only.
    External,
}

impl ControlPlane {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlPlane::Managed => "managed",
            ControlPlane::External => "external",
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}
fn default_data_path() -> String {
    "/datastorage".into()
}

/// Image registry for PAI images: `<domain>/<namespace>/<image>:<tag>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registry {
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default = "default_reg_namespace")]
    pub namespace: String,
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Name of the image pull secret every PAI pod lists.
    #[serde(default = "default_secret_name")]
    pub secret_name: String,
    /// File holding a docker `config.json` with registry credentials (never inlined in the cluster file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
}

fn default_domain() -> String {
    "docker.io".into()
}
fn default_reg_namespace() -> String {
    "openpai".into()
}
fn default_tag() -> String {
    "v0.14.0".into()
}
fn default_secret_name() -> String {
    "pai-secret".into()
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            domain: default_domain(),
            namespace: default_reg_namespace(),
            tag: default_tag(),
            secret_name: default_secret_name(),
            credentials_file: None,
        }
    }
}

impl Registry {
    /// `<domain>/<namespace>/`, or `<namespace>/` when the domain is the literal `public` (OpenPAI's rule).
    pub fn prefix(&self) -> String {
        if self.domain == "public" {
            format!("{}/", self.namespace)
        } else {
            format!("{}/{}/", self.domain, self.namespace)
        }
    }
}

/// Control-plane settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Kubernetes version of the control-plane images.
    #[serde(default = "default_k8s_version")]
    pub version: String,
    /// Registry for control-plane images.
    #[serde(default = "default_k8s_registry")]
    pub image_registry: String,
    #[serde(default = "default_api_port")]
    pub api_server_port: u16,
    #[serde(default = "default_service_cidr")]
    pub service_cluster_ip_range: String,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    /// Cluster DNS address for kubelets (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<String>,
    #[serde(default = "default_etcd_data_path")]
    pub etcd_data_path: String,
    /// Kubelet static pod directory bootstrap writes into.
    #[serde(default = "default_static_pod_dir")]
    pub static_pod_dir: String,
    /// DNS domain of the cluster (`kubernetes.default.svc.<domain>`, the kubelet's `clusterDomain`).
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// Pod network: `auto` (bridge on one machine, flannel on several), `bridge` (a CNI file written
    /// by bootstrap; one machine only), `flannel` (the flannel chart), `none` (bring your own CNI).
    #[serde(default)]
    pub cni: Cni,
    /// What bootstrap writes into the kubelet's configuration (managed control plane).
    #[serde(default)]
    pub kubelet: KubeletSettings,
}

/// The pod network a managed cluster gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    /// `bridge` for one machine, `flannel` for several.
    #[default]
    Auto,
    /// bridge + host-local plugins (Debian `containernetworking-plugins`); pods reach only their own node.
    Bridge,
    /// flannel VXLAN overlay (the `flannel` chart).
    Flannel,
    /// No pod network from pailot.
    None,
}

/// Kubelet settings bootstrap writes into `KubeletConfiguration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletSettings {
    /// Resources kept for the OS (`systemReserved`); OpenPAI v0.14 kept `memory: 3Gi`.
    #[serde(default = "default_system_reserved")]
    pub system_reserved: BTreeMap<String, String>,
    /// Resources kept for the kubelet and container runtime (`kubeReserved`).
    #[serde(default)]
    pub kube_reserved: BTreeMap<String, String>,
    /// Maximum pods per node.
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
}

fn default_system_reserved() -> BTreeMap<String, String> {
    BTreeMap::from([("memory".to_string(), "3Gi".to_string())])
}
fn default_max_pods() -> u32 {
    110
}

impl Default for KubeletSettings {
    fn default() -> Self {
        KubeletSettings {
            system_reserved: default_system_reserved(),
            kube_reserved: BTreeMap::new(),
            max_pods: default_max_pods(),
        }
    }
}

fn default_k8s_version() -> String {
    "v1.37.2".into()
}
fn default_k8s_registry() -> String {
    "registry.k8s.io".into()
}
fn default_api_port() -> u16 {
    6443
}
fn default_service_cidr() -> String {
    "10.254.0.0/16".into()
}
fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_etcd_data_path() -> String {
    "/var/lib/etcd".into()
}
fn default_static_pod_dir() -> String {
    "/etc/kubernetes/manifests".into()
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            version: default_k8s_version(),
            image_registry: default_k8s_registry(),
            api_server_port: default_api_port(),
            service_cluster_ip_range: default_service_cidr(),
            pod_cidr: default_pod_cidr(),
            cluster_dns: None,
            etcd_data_path: default_etcd_data_path(),
            static_pod_dir: default_static_pod_dir(),
            cluster_domain: default_cluster_domain(),
            cni: Cni::default(),
            kubelet: KubeletSettings::default(),
        }
    }
}

/// A role a machine plays.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the control-plane static pods (apiserver, controller-manager, scheduler, etcd).
    K8sMaster,
    /// Runs OpenPAI master services (label `pai-master=true`).
    PaiMaster,
    /// Runs OpenPAI worker services (label `pai-worker=true`).
    PaiWorker,
    /// Hosts the Kubernetes dashboard.
    Dashboard,
}

/// One machine of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// Kubernetes node name.
    pub name: String,
    /// Host name (defaults to `name`); ZooKeeper and host-configuration key on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Host IP address.
    pub address: String,
    pub roles: Vec<Role>,
    pub capacity: Capacity,
    /// Extra node labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// ZooKeeper id (required on pai-master machines; defaults to the 1-based index among them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zkid: Option<u32>,
    /// Do not run the drivers DaemonSet here (label `no-drivers=true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_drivers: bool,
    /// GPU model name when `capacity.gpu > 0` (e.g. `nvidia-a100`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// How an operator reaches the host. Passwords are never stored: use a key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshAccess>,
}

/// Node label marking a machine with NVIDIA GPUs (`capacity.gpu > 0`), value `true`. GPU consumers
/// and the `nvidia` RuntimeClass select it: a RuntimeClass's `scheduling.nodeSelector` needs a
/// fixed label value (a GPU count varies), and a pod cannot select on a node's `nvidia.com/gpu`
/// capacity without claiming a GPU, which the device plugin and job-exporter must not. It is the
/// label NVIDIA's GPU feature discovery and GPU operator set, so their DaemonSets and ours agree.
pub const GPU_NODE_LABEL: &str = "nvidia.com/gpu.present";

/// What a machine offers to the scheduler. Quantities are checked when the file is read: a
/// misspelt capacity (`32GiB`, `-16Gi`, `lots`) is an error at its line, never 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    /// Memory, as a Kubernetes quantity (`32Gi`).
    pub memory: Quantity,
    /// CPU, as a Kubernetes quantity (`8`, `7500m`).
    pub cpu: Quantity,
    /// Number of NVIDIA GPUs.
    #[serde(default)]
    pub gpu: u32,
}

/// SSH access for operators (user, port, key file); no password field exists on purpose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshAccess {
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

fn default_ssh_port() -> u16 {
    22
}

impl Machine {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    /// Labels pailot puts on this machine's node: the extra labels plus role labels
    /// (`pai-master`, `pai-worker`, `no-drivers`, `kubernetes.io/hostname`) and, with GPUs,
    /// `pailot.dev/gpu-count=<n>` and [`GPU_NODE_LABEL`]`=true`.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.insert("kubernetes.io/hostname".into(), self.name.clone());
        if self.has(Role::PaiMaster) {
            l.insert("pai-master".into(), "true".into());
        }
        if self.has(Role::PaiWorker) {
            l.insert("pai-worker".into(), "true".into());
        }
        if self.has(Role::K8sMaster) {
            l.insert(
                "node-role.kubernetes.io/control-plane".into(),
                String::new(),
            );
        }
        if self.no_drivers {
            l.insert("no-drivers".into(), "true".into());
        }
        if self.capacity.gpu > 0 {
            l.insert("pailot.dev/gpu-count".into(), self.capacity.gpu.to_string());
            l.insert(GPU_NODE_LABEL.into(), "true".into());
        }
        l
    }
}

impl Cluster {
    /// Machines with `role`, in file order.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(move |m| m.has(role))
    }

    /// The template variable `cluster`: this file plus derived facts charts need
    /// (`masterAddress`, `paiMasters`, `paiWorkers`, `k8sMasters`, `registryPrefix`, `zookeeperQuorum`,
    /// `apiServerUrl`, `singleMachine`, `gpuMachines`, `podNetwork`, and per machine `nodeLabels` and `zkid`).
    pub fn template_context(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        let masters: Vec<&Machine> = self.with_role(Role::PaiMaster).collect();
        let zk = |i: usize, m: &Machine| m.zkid.unwrap_or(i as u32 + 1);
        let machine_view = |m: &Machine| {
            let mut mv = serde_json::to_value(m).unwrap_or(Value::Null);
            mv["hostname"] = json!(m.hostname());
            mv["nodeLabels"] = json!(m.node_labels());
            mv
        };
        let pai_masters: Vec<Value> = masters
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut mv = machine_view(m);
                mv["zkid"] = json!(zk(i, m));
                mv
            })
            .collect();
        let first_master = masters
            .first()
            .map(|m| m.address.clone())
            .unwrap_or_default();
        let k8s_master = self
            .with_role(Role::K8sMaster)
            .next()
            .map(|m| m.address.clone())
            .unwrap_or_else(|| first_master.clone());
        let quorum: Vec<String> = masters
            .iter()
            .map(|m| format!("{}:2181", m.address))
            .collect();
        v["machines"] = Value::Array(self.machines.iter().map(machine_view).collect());
        v["paiMasters"] = Value::Array(pai_masters);
        v["paiWorkers"] = Value::Array(self.with_role(Role::PaiWorker).map(machine_view).collect());
        v["k8sMasters"] = Value::Array(self.with_role(Role::K8sMaster).map(machine_view).collect());
        v["gpuMachines"] = Value::Array(
            self.machines
                .iter()
                .filter(|m| m.capacity.gpu > 0)
                .map(machine_view)
                .collect(),
        );
        v["masterAddress"] = json!(first_master);
        v["k8sMasterAddress"] = json!(k8s_master);
        v["apiServerUrl"] = json!(format!(
            "https://{}:{}",
            k8s_master, self.kubernetes.api_server_port
        ));
        v["registryPrefix"] = json!(self.registry.prefix());
        v["zookeeperQuorum"] = json!(quorum.join(","));
        v["singleMachine"] = json!(self.machines.len() == 1);
        v["podNetwork"] = serde_json::to_value(self.pod_network()).unwrap_or(Value::Null);
        v
    }
}

/// True when `s` is a machine name pailot accepts: a Kubernetes node name (a DNS-1123 subdomain: dot-separated
/// labels of lowercase letters, digits and `-`) that is also a label value (at most 63 characters), since
/// it becomes `kubernetes.io/hostname`. paictl named nodes by their IP address, which this allows; nothing
/// with `/`, `..`, upper case or a leading `.` or `-` passes, so it is safe in a file name.
pub fn is_machine_name(s: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    !s.is_empty() && s.len() <= 63 && s.split('.').all(label)
}

/// True when `s` is a registry host as containerd's `certs.d/<host>` and image references name it:
/// a DNS name or IPv4 address, or a bracketed IPv6 address, with an optional `:port`.
pub fn is_registry_host(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip6, after)) = rest.split_once(']') else {
            return false;
        };
        if ip6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) && {
            let n: u32 = p.parse().unwrap_or(0);
            (1..=65535).contains(&n)
        }
    });
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    port_ok && host.len() <= 253 && host.split('.').all(label_ok)
}

/// True when `s` is a mirror endpoint: `[http://|https://]host[:port][/path]`, with no characters
/// that would need quoting in a path or TOML key.
pub fn is_mirror_endpoint(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    is_registry_host(authority)
        && !path.split('/').any(|seg| seg == "..")
        && path
            .bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\' | b'\'' | b'`'))
}

/// Start lines of the names the cluster file checks (read leniently from the same text).
#[derive(Deserialize, Default)]
struct NameLines {
    #[serde(default)]
    machines: Vec<MachineNameLine>,
    #[serde(default)]
    mirrors: MirrorLines,
}

#[derive(Deserialize, Default)]
struct MachineNameLine {
    #[serde(default)]
    name: Option<serde_saphyr::Spanned<String>>,
}

/// `mirrors` keys and endpoints with their lines.
#[derive(Default)]
struct MirrorLines(
    Vec<(
        serde_saphyr::Spanned<String>,
        Vec<serde_saphyr::Spanned<String>>,
    )>,
);

impl<'de> Deserialize<'de> for MirrorLines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MirrorLines;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of registry to endpoints")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<MirrorLines, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry()? {
                    out.push((k, v));
                }
                Ok(MirrorLines(out))
            }
            fn visit_unit<E>(self) -> Result<MirrorLines, E> {
                Ok(MirrorLines::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl Cluster {
    /// The pod network bootstrap and the charts set up: `none` for an external control plane, else
    /// `kubernetes.cni` with `auto` resolved by the number of machines.
    pub fn pod_network(&self) -> Cni {
        match (self.control_plane, self.kubernetes.cni) {
            (ControlPlane::External, _) => Cni::None,
            (_, Cni::Auto) if self.machines.len() == 1 => Cni::Bridge,
            (_, Cni::Auto) => Cni::Flannel,
            (_, c) => c,
        }
    }

    /// Check what serde cannot: machine names are unique node names (see [`is_machine_name`]), registry mirror keys are
    /// `host[:port]` and endpoints are URLs (each becomes a path or a TOML key bootstrap writes).
    /// `text` is the file's YAML, read again for the line of the offending name.
    pub fn check_names(&self, text: &str, file: &str) -> Result<(), crate::diag::InputError> {
        use crate::diag::InputError;
        let lines: NameLines = serde_saphyr::from_str_with_options(
            text,
            serde_saphyr::options! { legacy_octal_numbers: true },
        )
        .unwrap_or_default();
        let at = |e: InputError, pos: Option<(usize, usize)>| match pos.filter(|(l, _)| *l > 0) {
            Some((l, c)) => e.at(l, c.max(1)),
            None => e,
        };
        let pos = |s: &serde_saphyr::Spanned<String>| {
            (s.referenced.line() as usize, s.referenced.column() as usize)
        };
        let machine_line = |i: usize| lines.machines.get(i).and_then(|m| m.name.as_ref()).map(pos);
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, m) in self.machines.iter().enumerate() {
            if !is_machine_name(&m.name) {
                return Err(at(
                    InputError::new(
                        file,
                        format!(
                            "machine name {:?} is not a node name (DNS-1123: lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit, at most 63 characters)",
                            m.name
                        ),
                    )
                    .place(format!("machines[{i}].name")),
                    machine_line(i),
                ));
            }
            if let Some(first) = seen.insert(&m.name, i) {
                return Err(at(
                    InputError::new(
                        file,
                        format!(
                            "machine name {:?} is used twice (machines[{first}] and machines[{i}])",
                            m.name
                        ),
                    )
                    .place(format!("machines[{i}].name")),
                    machine_line(i),
                ));
            }
        }
        let key_line = |k: &str| {
            lines
                .mirrors
                .0
                .iter()
                .find(|(s, _)| s.value == k)
                .map(|(s, _)| pos(s))
        };
        let endpoint_line = |k: &str, j: usize| {
            lines
                .mirrors
                .0
                .iter()
                .find(|(s, _)| s.value == k)
                .and_then(|(_, eps)| eps.get(j))
                .map(pos)
        };
        for (registry, endpoints) in &self.mirrors {
            if !is_registry_host(registry) {
                return Err(at(
                    InputError::new(
                        file,
                        format!("mirror registry {registry:?} is not a registry host (host or host:port, e.g. docker.io or registry.local:5000)"),
                    )
                    .place(format!("mirrors.{registry}")),
                    key_line(registry),
                ));
            }
            for (j, ep) in endpoints.iter().enumerate() {
                if !is_mirror_endpoint(ep) {
                    return Err(at(
                        InputError::new(
                            file,
                            format!("mirror endpoint {ep:?} is not a URL (http://host[:port][/path] or https://...)"),
                        )
                        .place(format!("mirrors.{registry}[{j}]")),
                        endpoint_line(registry, j).or_else(|| key_line(registry)),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_are_node_names_usable_as_label_values() {
        for ok in [
            "a",
            "pai-node-1",
            "0",
            "192.168.10.5",
            "worker1.lab.example",
            &"x".repeat(63),
        ] {
            assert!(is_machine_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "../x",
            "a/b",
            ".a",
            "a.",
            "a..b",
            &"x".repeat(64),
        ] {
            assert!(!is_machine_name(bad), "{bad}");
        }
    }

    #[test]
    fn registry_hosts_and_endpoints() {
        for ok in [
            "docker.io",
            "registry.local:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[fe80::1]",
            "localhost",
            "Quay.IO",
        ] {
            assert!(is_registry_host(ok), "{ok}");
        }
        for bad in [
            "",
            "../../../../x",
            "a/b",
            "x:",
            "x:0",
            "x:70000",
            "[::1",
            "a..b",
            ".",
            "..",
            "-a.io",
            "a b",
            "docker.io/library",
        ] {
            assert!(!is_registry_host(bad), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:5000",
            "https://mirror.example/v2",
            "mirror.example",
            "https://[::1]:81/a/b",
        ] {
            assert!(is_mirror_endpoint(ok), "{ok}");
        }
        for bad in [
            "",
            "http://",
            "ftp://x",
            "http://a b",
            "http://x/\"]",
            "http://x/../y",
        ] {
            assert!(!is_mirror_endpoint(bad), "{bad}");
        }
    }
}
