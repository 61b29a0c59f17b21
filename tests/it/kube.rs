//! Shared test control plane (tests/cluster): a kube client and a fresh namespace per test.
//!
//! The cluster is found in this order: `PAILOT_TEST_KUBECONFIG`; `KUBECONFIG` when its server is on
//! loopback (what `scripts/cluster-up` prints); otherwise `scripts/cluster-up` is run (it builds and
//! starts the testcluster unless one is running) and its kubeconfig is used. When no cluster can be
//! had the test fails loudly; it is skipped only when `PAILOT_SKIP_CLUSTER=1`.
//!
//! ```ignore
//! let Some(ns) = crate::kube::TestNamespace::new("apply").await else { return };
//! let cms: Api<ConfigMap> = ns.api();
//! ```

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::kube::api::{DeleteParams, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Api, Client, Config, Resource};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Set to `1` to skip every test that needs the control plane.
pub const SKIP_ENV: &str = "PAILOT_SKIP_CLUSTER";
/// Annotation that makes kwok (inside testcluster) play kubelet for a Node.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// True when the cluster tests are explicitly skipped.
pub fn skip_cluster() -> bool {
    std::env::var(SKIP_ENV).as_deref() == Ok("1")
}

/// Repository root (holds scripts/ and tests/cluster/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// State dir of the shared cluster (`PAILOT_CLUSTER_DIR`, default /tmp/pailot-testcluster).
pub fn state_dir() -> PathBuf {
    std::env::var_os("PAILOT_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pailot-testcluster"))
}

/// Kubeconfig of the shared cluster, starting the cluster when none runs. Panics when it cannot.
pub fn shared_kubeconfig() -> PathBuf {
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match KUBECONFIG.get_or_init(find_or_start_cluster) {
        Ok(p) => p.clone(),
        Err(e) => {
            panic!("no test cluster: {e}\n(set {SKIP_ENV}=1 to skip the tests that need one)")
        }
    }
}

fn find_or_start_cluster() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PAILOT_TEST_KUBECONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("KUBECONFIG").map(PathBuf::from)
        && loopback_server(&p).unwrap_or(false)
    {
        return Ok(p);
    }
    let script = repo_root().join("scripts/cluster-up");
    let out = Command::new(&script)
        .arg("--print-env")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {stdout}",
            script.display(),
            out.status
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .map(|p| PathBuf::from(p.trim()))
        .ok_or_else(|| {
            format!(
                "{} printed no `export KUBECONFIG=` line: {stdout}",
                script.display()
            )
        })
}

/// Whether the current context of the kubeconfig at `path` points at a loopback server.
fn loopback_server(path: &Path) -> Result<bool, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let cluster = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    Ok(
        ["https://127.0.0.1:", "https://localhost:", "https://[::1]:"]
            .iter()
            .any(|p| server.starts_with(p)),
    )
}

/// A client for the kubeconfig file at `path` (its current context).
pub async fn client_for(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("kube client for {}: {e}", path.display()))
}

/// The testcluster binary, built by `scripts/cluster-up --build-only` when its sources changed.
pub fn testcluster_bin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let script = repo_root().join("scripts/cluster-up");
        let status = Command::new(&script)
            .arg("--build-only")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !status.success() {
            return Err(format!(
                "{} --build-only failed: {status}",
                script.display()
            ));
        }
        Ok(repo_root().join("tests/cluster/bin/testcluster"))
    });
    r.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh namespace on the shared cluster, deleted (with the fake nodes and cluster-scoped objects
/// registered on it) when dropped.
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
    pub kubeconfig: PathBuf,
    cleanup: Mutex<Vec<(String, String)>>,
}

impl TestNamespace {
    /// Create `<prefix>-<unique>`; `None` when `PAILOT_SKIP_CLUSTER=1` (the caller returns early).
    pub async fn new(prefix: &str) -> Option<TestNamespace> {
        if skip_cluster() {
            eprintln!("skipped: {SKIP_ENV}=1");
            return None;
        }
        let kubeconfig = tokio::task::spawn_blocking(shared_kubeconfig)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let client = client_for(&kubeconfig).await;
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"pailot-test": "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        Some(TestNamespace {
            client,
            name,
            kubeconfig,
            cleanup: Mutex::new(Vec::new()),
        })
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Delete the cluster-scoped object `kind`/`name` (kinds: "node", "crd") when this is dropped.
    pub fn delete_on_drop(&self, kind: &str, name: &str) {
        self.cleanup
            .lock()
            .unwrap()
            .push((kind.to_string(), name.to_string()));
    }

    /// Create a fake Node (kwok plays its kubelet) from `node` (labels, taints, status.capacity...),
    /// adding the kwok annotation; it is deleted when this is dropped.
    pub async fn create_fake_node(&self, mut node: serde_json::Value) -> Node {
        node["metadata"]["annotations"][KWOK_ANNOTATION] = "fake".into();
        let node: Node = serde_json::from_value(node).expect("node object");
        let name = node.metadata.name.clone().expect("node name");
        self.delete_on_drop("node", &name);
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("create node {name}: {e}"))
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await on the test's runtime: delete from a thread with its own runtime/client.
        let kubeconfig = self.kubeconfig.clone();
        let name = self.name.clone();
        let extra = std::mem::take(&mut *self.cleanup.lock().unwrap());
        let t = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async move {
                let client = client_for(&kubeconfig).await;
                let dp = DeleteParams::background();
                let namespaces = Api::<Namespace>::all(client.clone());
                if let Err(e) = namespaces.delete(&name, &dp).await {
                    eprintln!("cleanup: delete namespace {name}: {e}");
                }
                if extra.is_empty() {
                    return;
                }
                // Pods on fake nodes are finalized by kwok: keep the nodes until the namespace is gone.
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    match namespaces.get_opt(&name).await {
                        Ok(None) | Err(_) => break,
                        Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                for (kind, obj) in extra {
                    let r = match kind.as_str() {
                        "node" => Api::<Node>::all(client.clone())
                            .delete(&obj, &dp)
                            .await
                            .map(|_| ()),
                        "crd" => Api::<CustomResourceDefinition>::all(client.clone())
                            .delete(&obj, &dp)
                            .await
                            .map(|_| ()),
                        _ => Ok(()),
                    };
                    if let Err(e) = r {
                        eprintln!("cleanup: delete {kind} {obj}: {e}");
                    }
                }
            });
        });
        let _ = t.join();
    }
}

/// `<prefix>-<pid>-<n><time>`: a DNS label unique across tests and runs.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    p.truncate(30);
    let p = p.trim_matches('-');
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    format!("{p}-{}-{n}-{t:x}", std::process::id())
}

/// Poll `check` every 250 ms until it yields `Some`, panicking with `what` and the last state after
/// `timeout`. `check` returns `Err(state)` to report why it is not there yet.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A private testcluster instance (own ports, own directory) for tests that stop and restart the control
/// plane. `<dir>/kubeconfig` is its admin kubeconfig; `<dir>/data` keeps etcd, the CA and the port, so a
/// restart with the same `dir` serves the same objects at the same address with the same kubeconfig.
pub struct PrivateCluster {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
}

impl PrivateCluster {
    /// Start it in `dir` (log `testcluster-<label>.log`) with fake `nodes` (`NAME[:label=value,...]`) and
    /// wait until it is ready (blocking: call from `spawn_blocking` in async tests).
    pub fn start(dir: &Path, label: &str, nodes: &[&str]) -> PrivateCluster {
        PrivateCluster::start_with(dir, label, nodes, &[])
    }

    /// Like [`PrivateCluster::start`], with the fake nodes of a nodes file (`tests/cluster/nodes/*.yaml`:
    /// labels, capacities such as `nvidia.com/gpu`, taints).
    pub fn start_with_nodes_file(dir: &Path, label: &str, nodes_file: &Path) -> PrivateCluster {
        let file = nodes_file.to_str().expect("UTF-8 path");
        Self::start_with(dir, label, &[], &["--nodes-file", file])
    }

    /// [`PrivateCluster::start`] with extra testcluster flags (`--pki-root DIR`, `--apiserver-arg=...`).
    pub fn start_with(dir: &Path, label: &str, nodes: &[&str], extra: &[&str]) -> PrivateCluster {
        let log = dir.join(format!("testcluster-{label}.log"));
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(testcluster_bin());
        cmd.arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready);
        for n in nodes {
            cmd.args(["--node", n]);
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn testcluster");
        let mut inst = PrivateCluster {
            child,
            log,
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(st) = inst.child.try_wait().unwrap() {
                panic!("testcluster exited ({st}) before ready:\n{}", inst.tail());
            }
            if start.elapsed() > Duration::from_secs(300) {
                panic!("testcluster not ready after 300s:\n{}", inst.tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        inst
    }

    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The last 40 lines of its log.
    pub fn tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM and wait for a clean (exit 0) stop (blocking).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(st.success());
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "testcluster exit status {st} after SIGTERM:\n{}",
                    self.tail()
                );
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!(
                    "testcluster did not stop within 60s of SIGTERM:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kubectl scale deployment/<name> --replicas=n` in the test namespace (a foreign field manager).
pub fn kubectl_scale(ns: &TestNamespace, deployment: &str, n: u32) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ns.kubeconfig)
        .args([
            "-n",
            &ns.name,
            "scale",
            &format!("deployment/{deployment}"),
            &format!("--replicas={n}"),
        ])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
