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
    /// (`pai-master`, `pai-worker`, `no-drivers`, `pailot.dev/gpu-count`, `kubernetes.io/hostname`).
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
    /// `apiServerUrl`, `singleMachine`, `gpuMachines`, and per machine `nodeLabels` and `zkid`).
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
        v
    }
}
