//! Resource budget: effective requests/limits of what would run on each machine vs its capacity.
//!
//! Effective request = the request, or the limit when only a limit is set (Kubernetes defaulting).
//! A pod's request is max(largest init container, sum of containers) per resource, like the
//! scheduler. Placement: DaemonSets on every matching machine; Deployments, StatefulSets,
//! ReplicaSets and Jobs replica by replica on the matching machine with the most free memory;
//! Pods by `nodeName` or selector; static pods (`pailot.dev/static-pod: "true"`) on every k8s-master.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::{Cluster, Machine, Role};
use crate::diag::InputError;
use crate::manifest::{ObjectId, RenderedSet};
use crate::quantity::{parse_count_value, parse_cpu_value, parse_memory_value};

/// Annotation marking a Pod written as a kubelet static pod (the control plane).
pub use crate::manifest::STATIC_POD_ANNOTATION;
/// The GPU resource name.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Replicas placed per workload at most (a typo like `replicas: 1000000000` must not hang).
pub const MAX_REPLICAS: u64 = 10_000;

/// Budget of every machine of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub machines: Vec<MachineBudget>,
    /// Pods no machine can take (selector/affinity matches no machine).
    pub unplaced: Vec<BudgetItem>,
}

impl Budget {
    /// True when every machine fits (requests within capacity).
    pub fn fits(&self) -> bool {
        self.machines.iter().all(|m| m.fits)
    }

    /// One line per machine that does not fit: what is over, by how much, and the `top` largest
    /// containers by memory request (what an operator lowers first). `None` when everything fits.
    pub fn over_summary(&self, top: usize) -> Option<String> {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let lines: Vec<String> = self
            .machines
            .iter()
            .filter(|m| !m.fits)
            .map(|m| {
                let mut over = Vec::new();
                if m.requests_memory > m.capacity_memory {
                    over.push(format!(
                        "memory requests {} of {}",
                        gib(m.requests_memory),
                        gib(m.capacity_memory)
                    ));
                }
                if m.requests_cpu_milli > m.capacity_cpu_milli {
                    over.push(format!(
                        "cpu requests {}m of {}m",
                        m.requests_cpu_milli, m.capacity_cpu_milli
                    ));
                }
                if m.requests_gpu > m.capacity_gpu {
                    over.push(format!(
                        "gpu requests {} of {}",
                        m.requests_gpu, m.capacity_gpu
                    ));
                }
                let mut items: Vec<&BudgetItem> = m.items.iter().collect();
                items.sort_by(|a, b| {
                    b.request_memory
                        .cmp(&a.request_memory)
                        .then_with(|| a.object.cmp(&b.object))
                });
                let biggest: Vec<String> = items
                    .iter()
                    .take(top)
                    .map(|i| format!("{} {} {}", i.object, i.container, gib(i.request_memory)))
                    .collect();
                format!(
                    "machine {}: {}; largest: {}",
                    m.machine,
                    over.join(", "),
                    biggest.join(", ")
                )
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

/// What would run on one machine, summed, against its capacity.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineBudget {
    pub machine: String,
    /// Bytes.
    pub capacity_memory: u64,
    pub capacity_cpu_milli: u64,
    pub capacity_gpu: u64,
    /// Bytes of effective memory requests.
    pub requests_memory: u64,
    /// Bytes of memory limits (containers without a limit add nothing).
    pub limits_memory: u64,
    pub requests_cpu_milli: u64,
    pub limits_cpu_milli: u64,
    pub requests_gpu: u64,
    pub items: Vec<BudgetItem>,
    /// Requests (memory, cpu, gpu) within capacity.
    pub fits: bool,
}

/// One container (or the init-container excess) of one pod replica placed on a machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetItem {
    /// `Kind/namespace/name` of the workload.
    pub object: String,
    /// Container name; `(init)` for the amount init containers need beyond the containers.
    pub container: String,
    pub machine: String,
    /// Replica index (0 for DaemonSets and static pods).
    pub replica: u32,
    pub request_memory: u64,
    pub request_cpu_milli: u64,
    pub request_gpu: u64,
    pub limit_memory: u64,
    pub limit_cpu_milli: u64,
}

/// Resource amounts of a container or pod.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Amounts {
    req_mem: u64,
    req_cpu: u64,
    req_gpu: u64,
    lim_mem: u64,
    lim_cpu: u64,
}

impl Amounts {
    fn add(&mut self, o: &Amounts) {
        self.req_mem = self.req_mem.saturating_add(o.req_mem);
        self.req_cpu = self.req_cpu.saturating_add(o.req_cpu);
        self.req_gpu = self.req_gpu.saturating_add(o.req_gpu);
        self.lim_mem = self.lim_mem.saturating_add(o.lim_mem);
        self.lim_cpu = self.lim_cpu.saturating_add(o.lim_cpu);
    }
}

/// Where a pod spec sits, for messages: the object, the template that rendered it, the pointer.
struct PodAt<'a> {
    object: &'a str,
    template: &'a str,
    spec_pointer: &'a str,
}

impl PodAt<'_> {
    /// The error for a quantity at `pointer` (relative to the pod spec) that does not parse.
    fn bad_quantity(&self, pointer: &str, e: crate::quantity::QuantityError) -> InputError {
        InputError::new(self.template, e.to_string())
            .object(self.object)
            .pointer(format!("{}{pointer}", self.spec_pointer))
    }
}

fn container_amounts(at: &PodAt<'_>, c: &Value, c_ptr: &str) -> Result<Amounts, InputError> {
    let res = c.get("resources");
    let get = |section: &str, name: &str| {
        res.and_then(|r| r.get(section))
            .and_then(|s| s.get(name))
            .map(|v| {
                (
                    v,
                    format!("{c_ptr}/resources/{section}/{}", name.replace('/', "~1")),
                )
            })
    };
    type Parse = fn(&Value) -> Result<u64, crate::quantity::QuantityError>;
    let read = |section: &str, name: &str, parse: Parse| -> Result<Option<u64>, InputError> {
        get(section, name)
            .map(|(v, ptr)| parse(v).map_err(|e| at.bad_quantity(&ptr, e)))
            .transpose()
    };
    let (rm, lm) = (
        read("requests", "memory", parse_memory_value)?,
        read("limits", "memory", parse_memory_value)?,
    );
    let (rc, lc) = (
        read("requests", "cpu", parse_cpu_value)?,
        read("limits", "cpu", parse_cpu_value)?,
    );
    let (rg, lg) = (
        read("requests", GPU_RESOURCE, parse_count_value)?,
        read("limits", GPU_RESOURCE, parse_count_value)?,
    );
    Ok(Amounts {
        req_mem: rm.or(lm).unwrap_or(0),
        req_cpu: rc.or(lc).unwrap_or(0),
        req_gpu: rg.or(lg).unwrap_or(0),
        lim_mem: lm.unwrap_or(0),
        lim_cpu: lc.unwrap_or(0),
    })
}

/// Per-container items of one pod (without machine/replica) and the pod's total.
fn pod_items(at: &PodAt<'_>, spec: &Value) -> Result<(Vec<BudgetItem>, Amounts), InputError> {
    let object = at.object;
    let mut items = Vec::new();
    let mut sum = Amounts::default();
    let list = |k: &str| {
        spec.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let push = |c: &Value, a: &Amounts, items: &mut Vec<BudgetItem>| {
        items.push(BudgetItem {
            object: object.to_string(),
            container: c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            request_memory: a.req_mem,
            request_cpu_milli: a.req_cpu,
            request_gpu: a.req_gpu,
            limit_memory: a.lim_mem,
            limit_cpu_milli: a.lim_cpu,
            ..Default::default()
        });
    };
    // Sidecar init containers (restartPolicy: Always) run alongside the containers.
    let mut max_init = Amounts::default();
    for (i, c) in list("initContainers").iter().enumerate() {
        let a = container_amounts(at, c, &format!("/initContainers/{i}"))?;
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            sum.add(&a);
            push(c, &a, &mut items);
        } else {
            max_init.req_mem = max_init.req_mem.max(a.req_mem);
            max_init.req_cpu = max_init.req_cpu.max(a.req_cpu);
            max_init.req_gpu = max_init.req_gpu.max(a.req_gpu);
        }
    }
    for (i, c) in list("containers").iter().enumerate() {
        let a = container_amounts(at, c, &format!("/containers/{i}"))?;
        sum.add(&a);
        push(c, &a, &mut items);
    }
    let excess = Amounts {
        req_mem: max_init.req_mem.saturating_sub(sum.req_mem),
        req_cpu: max_init.req_cpu.saturating_sub(sum.req_cpu),
        req_gpu: max_init.req_gpu.saturating_sub(sum.req_gpu),
        ..Default::default()
    };
    if excess != Amounts::default() {
        sum.add(&excess);
        items.push(BudgetItem {
            object: object.to_string(),
            container: "(init)".into(),
            request_memory: excess.req_mem,
            request_cpu_milli: excess.req_cpu,
            request_gpu: excess.req_gpu,
            ..Default::default()
        });
    }
    if let Some(overhead) = spec.get("overhead") {
        let mem = overhead
            .get("memory")
            .map(|v| parse_memory_value(v).map_err(|e| at.bad_quantity("/overhead/memory", e)))
            .transpose()?
            .unwrap_or(0);
        let cpu = overhead
            .get("cpu")
            .map(|v| parse_cpu_value(v).map_err(|e| at.bad_quantity("/overhead/cpu", e)))
            .transpose()?
            .unwrap_or(0);
        if mem > 0 || cpu > 0 {
            let a = Amounts {
                req_mem: mem,
                req_cpu: cpu,
                ..Default::default()
            };
            sum.add(&a);
            items.push(BudgetItem {
                object: object.to_string(),
                container: "(overhead)".into(),
                request_memory: mem,
                request_cpu_milli: cpu,
                ..Default::default()
            });
        }
    }
    Ok((items, sum))
}

/// True when `labels` satisfy the pod's `nodeSelector` and required node affinity.
pub fn node_matches(spec: &Value, machine: &Machine) -> bool {
    let mut labels = machine.node_labels();
    // The kubelet labels its node with the OS itself; every pailot machine runs Linux.
    labels
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());
    if let Some(sel) = spec.get("nodeSelector").and_then(Value::as_object) {
        for (k, v) in sel {
            if labels.get(k).map(String::as_str) != Some(v.as_str().unwrap_or("")) {
                return false;
            }
        }
    }
    let terms = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    match terms {
        Some(terms) if !terms.is_empty() => terms
            .iter()
            .any(|t| term_matches(t, &labels, &machine.name)),
        _ => true,
    }
}

fn term_matches(term: &Value, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.get("matchExpressions").and_then(Value::as_array);
    let fields = term.get("matchFields").and_then(Value::as_array);
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        // An empty term matches nothing (Kubernetes semantics).
        return false;
    }
    let ok_exprs = exprs.is_none_or(|es| {
        es.iter()
            .all(|e| expr_matches(e, |k| labels.get(k).cloned()))
    });
    let ok_fields = fields.is_none_or(|fs| {
        fs.iter().all(|e| {
            expr_matches(e, |k| {
                if k == "metadata.name" {
                    Some(name.to_string())
                } else {
                    None
                }
            })
        })
    });
    ok_exprs && ok_fields
}

fn expr_matches(e: &Value, lookup: impl Fn(&str) -> Option<String>) -> bool {
    let key = e.get("key").and_then(Value::as_str).unwrap_or("");
    let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
    let vals: Vec<&str> = e
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let have = lookup(key);
    match op {
        "In" => have.is_some_and(|h| vals.contains(&h.as_str())),
        "NotIn" => have.is_none_or(|h| !vals.contains(&h.as_str())),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                vals.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { h > v } else { h < v }
        }
        _ => false,
    }
}

/// How one object places pods.
enum Placement<'a> {
    EveryMatching(&'a Value),
    EveryK8sMaster(&'a Value),
    Node(String, &'a Value),
    Replicas(u64, &'a Value),
}

/// Where the pod spec of a workload of `kind` is.
fn spec_pointer(kind: &str) -> &'static str {
    if kind == "Pod" {
        "/spec"
    } else {
        "/spec/template/spec"
    }
}

fn placement<'a>(id: &ObjectId, obj: &'a Value) -> Option<Placement<'a>> {
    let tmpl_spec = || obj.pointer("/spec/template/spec");
    let count = |p: &str, default: u64| obj.pointer(p).and_then(Value::as_u64).unwrap_or(default);
    match id.kind.as_str() {
        "DaemonSet" => tmpl_spec().map(Placement::EveryMatching),
        "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController" => {
            tmpl_spec().map(|s| Placement::Replicas(count("/spec/replicas", 1), s))
        }
        "Job" => tmpl_spec().map(|s| Placement::Replicas(count("/spec/parallelism", 1), s)),
        "Pod" => {
            let spec = obj.get("spec")?;
            let is_static = crate::manifest::is_static_pod(obj);
            if is_static {
                Some(Placement::EveryK8sMaster(spec))
            } else if let Some(n) = spec.get("nodeName").and_then(Value::as_str) {
                Some(Placement::Node(n.to_string(), spec))
            } else {
                Some(Placement::Replicas(1, spec))
            }
        }
        _ => None,
    }
}

/// Compute the budget of `set` on `cluster`'s machines.
///
/// A request, limit or overhead that is not a valid quantity (`64GiB`, `-1`, `lots`) is an
/// error naming the template, the object and the JSON pointer: counting it as 0 would let an
/// over-committed machine pass as fitting.
pub fn compute(cluster: &Cluster, set: &RenderedSet) -> Result<Budget, InputError> {
    let mut machines: Vec<MachineBudget> = cluster
        .machines
        .iter()
        .map(|m| MachineBudget {
            machine: m.name.clone(),
            capacity_memory: m.capacity.memory.units(),
            capacity_cpu_milli: m.capacity.cpu.millis(),
            capacity_gpu: u64::from(m.capacity.gpu),
            ..Default::default()
        })
        .collect();
    let mut unplaced = Vec::new();

    let place = |mb: &mut MachineBudget, items: &[BudgetItem], total: &Amounts, replica: u32| {
        for it in items {
            let mut it = it.clone();
            it.machine = mb.machine.clone();
            it.replica = replica;
            mb.items.push(it);
        }
        mb.requests_memory = mb.requests_memory.saturating_add(total.req_mem);
        mb.requests_cpu_milli = mb.requests_cpu_milli.saturating_add(total.req_cpu);
        mb.requests_gpu = mb.requests_gpu.saturating_add(total.req_gpu);
        mb.limits_memory = mb.limits_memory.saturating_add(total.lim_mem);
        mb.limits_cpu_milli = mb.limits_cpu_milli.saturating_add(total.lim_cpu);
    };

    // Fixed placements first (DaemonSets, static pods, pinned pods), then replicas by free memory.
    let mut replicated = Vec::new();
    for (id, ro) in &set.objects {
        let Some(p) = placement(id, &ro.object) else {
            continue;
        };
        let object = id.display_name();
        let at = PodAt {
            object: &object,
            template: &ro.template,
            spec_pointer: spec_pointer(&id.kind),
        };
        match p {
            Placement::EveryMatching(spec) => {
                let (items, total) = pod_items(&at, spec)?;
                for (i, m) in cluster.machines.iter().enumerate() {
                    if node_matches(spec, m) {
                        place(&mut machines[i], &items, &total, 0);
                    }
                }
            }
            Placement::EveryK8sMaster(spec) => {
                let (items, total) = pod_items(&at, spec)?;
                for (i, m) in cluster.machines.iter().enumerate() {
                    if m.has(Role::K8sMaster) {
                        place(&mut machines[i], &items, &total, 0);
                    }
                }
            }
            Placement::Node(node, spec) => {
                let (items, total) = pod_items(&at, spec)?;
                match cluster.machines.iter().position(|m| m.name == node) {
                    Some(i) => place(&mut machines[i], &items, &total, 0),
                    None => unplaced.extend(items),
                }
            }
            Placement::Replicas(n, spec) => {
                let pod = pod_items(&at, spec)?;
                replicated.push((n, spec, pod));
            }
        }
    }
    for (n, spec, (items, total)) in replicated {
        let matching: Vec<usize> = cluster
            .machines
            .iter()
            .enumerate()
            .filter(|(_, m)| node_matches(spec, m))
            .map(|(i, _)| i)
            .collect();
        for r in 0..n.min(MAX_REPLICAS) {
            let best = matching.iter().copied().max_by_key(|&i| {
                let mb = &machines[i];
                // Most free memory; ties go to the earlier machine (max_by_key keeps the last max).
                (
                    mb.capacity_memory as i128 - mb.requests_memory as i128,
                    std::cmp::Reverse(i),
                )
            });
            match best {
                Some(i) => place(&mut machines[i], &items, &total, r as u32),
                None => unplaced.extend(items.iter().cloned().map(|mut it| {
                    it.replica = r as u32;
                    it
                })),
            }
        }
    }
    for mb in &mut machines {
        mb.fits = mb.requests_memory <= mb.capacity_memory
            && mb.requests_cpu_milli <= mb.capacity_cpu_milli
            && mb.requests_gpu <= mb.capacity_gpu;
    }
    Ok(Budget { machines, unplaced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Capacity;
    use crate::manifest::RenderedObject;
    use serde_json::json;

    fn machine(name: &str, roles: Vec<Role>, mem: &str) -> Machine {
        Machine {
            name: name.into(),
            hostname: None,
            address: "10.0.0.1".into(),
            roles,
            capacity: Capacity {
                memory: mem.parse().unwrap(),
                cpu: "8".parse().unwrap(),
                gpu: 0,
            },
            labels: Default::default(),
            zkid: None,
            no_drivers: false,
            gpu_type: None,
            ssh: None,
        }
    }

    fn cluster(machines: Vec<Machine>) -> Cluster {
        let mut c = crate::chart::lint::sample_cluster();
        c.machines = machines;
        c
    }

    fn set(objs: Vec<Value>) -> RenderedSet {
        let mut s = RenderedSet::default();
        for o in objs {
            let id = ObjectId::of(&o).unwrap();
            s.objects.insert(
                id,
                RenderedObject {
                    chart: "t".into(),
                    template: "t".into(),
                    object: o,
                },
            );
        }
        s
    }

    fn pod_spec(containers: Value) -> Value {
        json!({"containers": containers})
    }

    fn workload(kind: &str, name: &str, extra: Value, spec: Value) -> Value {
        let mut o = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "default"},
                           "spec": {"template": {"spec": spec}}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                o["spec"][k] = v;
            }
        }
        o
    }

    const GI: u64 = 1024 * 1024 * 1024;

    fn compute_ok(c: &Cluster, s: &RenderedSet) -> Budget {
        compute(c, s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn limit_only_counts_as_request_and_init_max_vs_sum() {
        let spec = json!({
        "initContainers": [{"name": "init", "resources": {"requests": {"memory": "3Gi"}}}],
        "containers": [
            {"name": "a", "resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}}
        ]});
        let c = cluster(vec![machine("n1", vec![Role::PaiMaster], "4Gi")]);
        let b = compute_ok(&c, &set(vec![workload("DaemonSet", "ds", json!({}), spec)]));
        let m = &b.machines[0];
        assert_eq!(m.requests_memory, 3 * GI, "max(init 3Gi, 1Gi+1Gi)");
        assert_eq!(m.limits_memory, 3 * GI);
        assert_eq!(m.requests_cpu_milli, 500);
        assert!(
            m.items
                .iter()
                .any(|i| i.container == "(init)" && i.request_memory == GI)
        );
        assert!(m.fits);
    }

    #[test]
    fn daemonset_counts_on_every_matching_node() {
        let spec = json!({"nodeSelector": {"pai-worker": "true"},
                          "containers": [{"name": "c", "resources": {"requests": {"memory": "1Gi"}}}]});
        let c = cluster(vec![
            machine("m", vec![Role::PaiMaster], "8Gi"),
            machine("w1", vec![Role::PaiWorker], "8Gi"),
            machine("w2", vec![Role::PaiWorker], "8Gi"),
        ]);
        let b = compute_ok(&c, &set(vec![workload("DaemonSet", "ds", json!({}), spec)]));
        let mem: Vec<u64> = b.machines.iter().map(|m| m.requests_memory).collect();
        assert_eq!(mem, vec![0, GI, GI]);
    }

    #[test]
    fn node_affinity_operators() {
        let spec = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pai-master", "operator": "Exists"}, {"key": "no-drivers", "operator": "DoesNotExist"}]},
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["w2"]}]}
        ]}}}, "containers": [{"name": "c", "resources": {"requests": {"memory": "1Gi"}}}]});
        let mut nd = machine("m2", vec![Role::PaiMaster], "8Gi");
        nd.no_drivers = true;
        let c = cluster(vec![
            machine("m1", vec![Role::PaiMaster], "8Gi"),
            nd,
            machine("w1", vec![Role::PaiWorker], "8Gi"),
            machine("w2", vec![Role::PaiWorker], "8Gi"),
        ]);
        let b = compute_ok(&c, &set(vec![workload("DaemonSet", "ds", json!({}), spec)]));
        let mem: Vec<u64> = b.machines.iter().map(|m| m.requests_memory / GI).collect();
        assert_eq!(mem, vec![1, 0, 0, 1]);
    }

    #[test]
    fn replicas_spread_by_free_memory_and_over_is_reported() {
        let spec = pod_spec(json!([{"name": "c", "resources": {"requests": {"memory": "3Gi"}}}]));
        let c = cluster(vec![
            machine("a", vec![Role::PaiWorker], "8Gi"),
            machine("b", vec![Role::PaiWorker], "4Gi"),
        ]);
        let b = compute_ok(
            &c,
            &set(vec![workload(
                "Deployment",
                "d",
                json!({"replicas": 3}),
                spec,
            )]),
        );
        // a(8) takes #0 -> 5 free; a(5) vs b(4): a takes #1 -> 2 free; b takes #2.
        let mem: Vec<u64> = b.machines.iter().map(|m| m.requests_memory / GI).collect();
        assert_eq!(mem, vec![6, 3]);
        assert!(b.fits());
        let spec = pod_spec(json!([{"name": "c", "resources": {"requests": {"memory": "5Gi"}}}]));
        let b = compute_ok(
            &c,
            &set(vec![workload(
                "StatefulSet",
                "s",
                json!({"replicas": 3}),
                spec,
            )]),
        );
        assert!(!b.fits());
        assert!(b.machines[0].requests_memory > b.machines[0].capacity_memory);
    }

    #[test]
    fn static_pods_on_k8s_masters_and_jobs_by_parallelism() {
        let static_pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kube-apiserver", "namespace": "kube-system", "annotations": {STATIC_POD_ANNOTATION: "true"}},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"memory": "1Gi", "cpu": "250m"}}}]}});
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default"},
            "spec": {"parallelism": 2, "template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}}]}}}});
        let mut w = machine("w", vec![Role::PaiWorker], "8Gi");
        w.capacity.gpu = 1;
        let c = cluster(vec![machine("k", vec![Role::K8sMaster], "1Gi"), w]);
        let b = compute_ok(&c, &set(vec![static_pod, job]));
        assert_eq!(b.machines[0].requests_memory, GI);
        assert_eq!(b.machines[0].requests_cpu_milli, 250);
        assert_eq!(
            b.machines[1].requests_memory,
            2 * GI,
            "job pods are placed where the selector allows"
        );
        assert_eq!(b.machines[1].requests_gpu, 2);
        assert!(
            !b.machines[1].fits,
            "two GPUs requested on a one-GPU machine"
        );
        let _ = &b.machines[0];
    }

    #[test]
    fn absurd_replicas_neither_panic_nor_hang() {
        let spec = pod_spec(json!([
            {"name": "a", "resources": {"requests": {"memory": "8Ei", "cpu": "1e9"}}},
            {"name": "b", "resources": {"limits": {"memory": 18446744073709551615u64}}},
            {"name": "c", "resources": "not a map"}
        ]));
        let c = cluster(vec![machine("a", vec![Role::PaiWorker], "8Gi")]);
        let objs = vec![workload(
            "Deployment",
            "d",
            json!({"replicas": 1_000_000_000_000u64}),
            spec,
        )];
        let b = compute_ok(&c, &set(objs));
        assert_eq!(b.machines[0].requests_memory, u64::MAX);
        assert!(!b.fits());
        assert!(b.machines[0].items.len() as u64 <= 3 * MAX_REPLICAS);
    }

    #[test]
    fn invalid_quantities_are_errors_naming_object_and_pointer() {
        let c = cluster(vec![machine("a", vec![Role::PaiWorker], "8Gi")]);
        for (resources, pointer) in [
            (
                json!({"requests": {"memory": "64GiB"}}),
                "/spec/template/spec/containers/0/resources/requests/memory",
            ),
            (
                json!({"limits": {"cpu": "-1"}}),
                "/spec/template/spec/containers/0/resources/limits/cpu",
            ),
            (
                json!({"limits": {"nvidia.com/gpu": "x"}}),
                "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
            ),
            (
                json!({"requests": {"memory": "99999999999999999999999Ti"}}),
                "/spec/template/spec/containers/0/resources/requests/memory",
            ),
        ] {
            let spec = pod_spec(json!([{"name": "a", "resources": resources}]));
            let e =
                compute(&c, &set(vec![workload("Deployment", "d", json!({}), spec)])).unwrap_err();
            assert_eq!(e.pointer.as_deref(), Some(pointer), "{e}");
            assert_eq!(e.object.as_deref(), Some("Deployment/default/d"));
            assert_eq!(e.file.to_str(), Some("t"));
        }
    }

    #[test]
    fn unmatched_selector_is_unplaced() {
        let spec = json!({"nodeSelector": {"gpu": "yes"}, "containers": [{"name": "c"}]});
        let c = cluster(vec![machine("a", vec![Role::PaiWorker], "8Gi")]);
        let b = compute_ok(&c, &set(vec![workload("Deployment", "d", json!({}), spec)]));
        assert_eq!(b.unplaced.len(), 1);
        assert_eq!(b.machines[0].requests_memory, 0);
    }
}
