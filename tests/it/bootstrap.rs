//! `pailot bootstrap`: files on a temp root (no API), idempotence, --reset, refusals; node labels on the
//! real control plane (tests/cluster).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Run, TempTree, repo_root};
use crate::preflight::{copy_tree, host_fixture, pailot_with_path, stub_commands};

/// A temp host root (copy of a clean 32 GiB host), stub commands, and a cluster file.
struct Host {
    t: TempTree,
    root: PathBuf,
    bin: PathBuf,
    cluster: PathBuf,
    /// Keeps the mirror endpoint open so preflight's mirror check passes.
    _mirror: std::net::TcpListener,
    mirror_url: String,
}

impl Host {
    /// `clusters/single-node.yaml` with machine `machine`, a loopback mirror for docker.io, and `edit` applied.
    fn new(machine: &str, edit: impl Fn(String) -> String) -> Host {
        Host::from_file("clusters/single-node.yaml", machine, edit)
    }

    /// Like `new`, from another cluster file of the repository.
    fn from_file(file: &str, machine: &str, edit: impl Fn(String) -> String) -> Host {
        let t = TempTree::new();
        let root = t.path().join("root");
        copy_tree(&host_fixture("single-node-32gib"), &root);
        let bin = stub_commands(&t, None);
        let mirror = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mirror_url = format!("http://127.0.0.1:{}", mirror.local_addr().unwrap().port());
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let text = text
            .replace("name: pai-node-1", &format!("name: {machine}"))
            .replace(
                "namespace: default\n",
                &format!("namespace: default\nmirrors:\n  docker.io: [\"{mirror_url}\"]\n"),
            );
        let cluster = t.write("cluster.yaml", &edit(text));
        Host {
            t,
            root,
            bin,
            cluster,
            _mirror: mirror,
            mirror_url,
        }
    }

    fn run(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "bootstrap",
            "--cluster",
            self.cluster.to_str().unwrap(),
            "--root",
            self.root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        pailot_with_path(&self.bin, &args)
    }

    fn file(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    fn record(&self) -> Option<Value> {
        let p = self.file("/var/lib/pailot/bootstrap.json");
        std::fs::read_to_string(p)
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap())
    }
}

/// The static pods of `pailot render` for `cluster`: (name, document text without `---` and `# Source:`).
fn rendered_static_pods(bin: &Path, cluster: &Path) -> Vec<(String, String)> {
    let r = pailot_with_path(bin, &["render", "--cluster", cluster.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut pods = Vec::new();
    for doc in r.stdout.split("---\n").filter(|d| !d.is_empty()) {
        let (source, body) = doc.split_once('\n').unwrap();
        assert!(source.starts_with("# Source: "), "{source}");
        let obj: Value = serde_saphyr::from_str(body).unwrap();
        if obj["kind"] == "Pod" && obj["metadata"]["annotations"]["pailot.dev/static-pod"] == "true"
        {
            pods.push((
                obj["metadata"]["name"].as_str().unwrap().to_string(),
                body.to_string(),
            ));
        }
    }
    pods
}

/// True when a line of the summary table starts with `action` then `what` (columns are padded).
fn has_line(out: &str, action: &str, what: &str) -> bool {
    out.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(action) && w.next() == Some(what)
    })
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn skip_api_writes_static_pods_byte_for_byte_mirrors_and_the_record() {
    let h = Host::new("pai-node-1", |t| t);
    let r = h.run(&["--skip-api"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let pods = rendered_static_pods(&h.bin, &h.cluster);
    let names: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            names.contains(&want),
            "render has no static pod {want}: {names:?}"
        );
    }
    for (name, body) in &pods {
        let path = h.file(&format!("/etc/kubernetes/manifests/{name}.yaml"));
        let got =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crate::harness::assert_text_eq(body, &got, &format!("static pod {name}"));
        assert!(
            has_line(
                &r.stdout,
                "created",
                &format!("/etc/kubernetes/manifests/{name}.yaml")
            ),
            "{}",
            r.stdout
        );
    }
    // Nothing else in the static pod directory (no temp files left behind, no non-static objects).
    let listed = std::fs::read_dir(h.file("/etc/kubernetes/manifests"))
        .unwrap()
        .count();
    assert_eq!(listed, pods.len());
    let toml =
        std::fs::read_to_string(h.file("/etc/containerd/certs.d/docker.io/hosts.toml")).unwrap();
    assert!(
        toml.contains("server = \"https://registry-1.docker.io\""),
        "{toml}"
    );
    assert!(
        toml.contains(&format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]",
            h.mirror_url
        )),
        "{toml}"
    );

    let rec = h.record().expect("record written");
    assert_eq!(rec["kind"], "BootstrapRecord");
    assert_eq!(rec["machine"], "pai-node-1");
    assert_eq!(
        rec["complete"], false,
        "--skip-api leaves the record incomplete"
    );
    let files = rec["files"].as_array().unwrap();
    assert_eq!(files.len(), pods.len() + 1);
    for f in files {
        let bytes = std::fs::read(h.file(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"], sha256(&bytes), "{f}");
    }
    assert!(!pailot::bootstrap::bootstrap_complete(
        &h.file("/var/lib/pailot")
    ));

    // A second run changes nothing and says so; the record is not rewritten.
    let before = std::fs::read(h.file("/var/lib/pailot/bootstrap.json")).unwrap();
    let again = h.run(&["--skip-api"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.contains("created") && !again.stdout.contains("updated"),
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read(h.file("/var/lib/pailot/bootstrap.json")).unwrap(),
        before
    );

    // --reset removes exactly what the record lists, and the record.
    let other = h.file("/etc/kubernetes/manifests/operator-own.yaml");
    std::fs::write(&other, "kept: true\n").unwrap();
    let reset = h.run(&["--reset", "--skip-api"]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    for (name, _) in &pods {
        assert!(
            !h.file(&format!("/etc/kubernetes/manifests/{name}.yaml"))
                .exists(),
            "{name} not removed"
        );
    }
    assert!(
        !h.file("/etc/containerd/certs.d/docker.io/hosts.toml")
            .exists()
    );
    assert!(other.exists(), "a file bootstrap did not write was removed");
    assert!(h.record().is_none());
    let nothing = h.run(&["--reset", "--skip-api"]);
    assert_eq!(nothing.code, 0);
    assert!(
        nothing.stdout.contains("nothing to change"),
        "{}",
        nothing.stdout
    );
}

#[test]
fn reset_keeps_files_changed_since_bootstrap() {
    let h = Host::new("pai-node-1", |t| t);
    assert_eq!(h.run(&["--skip-api", "-o", "json"]).code, 0);
    let etcd = h.file("/etc/kubernetes/manifests/etcd.yaml");
    std::fs::write(&etcd, "# edited by the operator\n").unwrap();
    let r = h.run(&["--reset", "--skip-api", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let etcd_outcome = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/kubernetes/manifests/etcd.yaml")
        .unwrap();
    assert_eq!(etcd_outcome["action"], "kept");
    assert!(etcd.exists());
    assert!(
        !h.file("/etc/kubernetes/manifests/kube-apiserver.yaml")
            .exists()
    );
}

#[test]
fn refuses_on_preflight_failure_unless_forced_and_never_overwrites_foreign_files() {
    // Base alone does not fit 32 GiB: preflight fails and nothing is written.
    let h = Host::new("pai-node-1", |t| {
        t.replace("overlays: [base, single-node-lowmem]", "overlays: [base]")
    });
    let r = h.run(&["--skip-api"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("preflight failed (memory)") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("add overlay single-node-lowmem"),
        "{}",
        r.stdout
    );
    assert!(!h.file("/etc/kubernetes/manifests").exists());
    assert!(h.record().is_none());
    let forced = h.run(&["--skip-api", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(h.file("/etc/kubernetes/manifests/etcd.yaml").is_file());
    // A static pod file someone else wrote stops the run before anything is written.
    let h = Host::new("pai-node-1", |t| t);
    std::fs::create_dir_all(h.file("/etc/kubernetes/manifests")).unwrap();
    std::fs::write(
        h.file("/etc/kubernetes/manifests/kube-scheduler.yaml"),
        "theirs\n",
    )
    .unwrap();
    let r = h.run(&["--skip-api"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("kube-scheduler.yaml exists with content pailot did not write"),
        "{}",
        r.stderr
    );
    assert!(!h.file("/etc/kubernetes/manifests/etcd.yaml").exists());
    assert!(h.record().is_none());
    assert_eq!(
        std::fs::read_to_string(h.file("/etc/kubernetes/manifests/kube-scheduler.yaml")).unwrap(),
        "theirs\n"
    );
}

#[test]
fn static_pod_dir_flag_and_worker_machines() {
    // --static-pod-dir moves the files (still under --root).
    let h = Host::new("pai-node-1", |t| t);
    let r = h.run(&[
        "--skip-api",
        "--static-pod-dir",
        "/srv/manifests",
        "--state-dir",
        "/srv/state",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(h.file("/srv/manifests/etcd.yaml").is_file());
    assert!(h.file("/srv/state/bootstrap.json").is_file());
    // A machine without k8s-master gets mirrors but no static pods.
    let w = Host::from_file("clusters/three-node.yaml", "pai-master-1", |t| t);
    let r = w.run(&["--skip-api", "--machine", "pai-worker-1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!w.file("/etc/kubernetes/manifests").exists());
    assert!(
        w.file("/etc/containerd/certs.d/docker.io/hosts.toml")
            .is_file()
    );
    drop(w.t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_nodes_on_the_real_cluster_and_reset_removes_them() {
    let Some(ns) = crate::kube::TestNamespace::new("bootstrap").await else {
        return;
    };
    let node_name = crate::kube::unique_name("pai-boot");
    ns.create_fake_node(json!({
        "metadata": {"name": node_name, "labels": {"kubernetes.io/hostname": node_name, "rack": "old"}},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                   "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}
    }))
    .await;
    let h = Host::new(&node_name, |t| {
        t.replace(
            "    zkid: 1\n",
            "    zkid: 1\n    labels: {rack: r1}\n    gpuType: nvidia-t4\n",
        )
    });
    let kubeconfig = ns.kubeconfig.to_str().unwrap().to_string();
    let run = |extra: Vec<String>| {
        let h_args: Vec<String> = extra;
        let root = h.root.clone();
        let bin = h.bin.clone();
        let cluster = h.cluster.clone();
        let kc = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut args: Vec<String> = vec![
                    "bootstrap".into(),
                    "--cluster".into(),
                    cluster.to_str().unwrap().into(),
                    "--root".into(),
                    root.to_str().unwrap().into(),
                    "--kubeconfig".into(),
                    kc,
                    "--timeout".into(),
                    "60".into(),
                ];
                args.extend(h_args);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                pailot_with_path(&bin, &refs)
            })
            .await
            .unwrap()
        }
    };
    let r = run(vec![]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        has_line(&r.stdout, "labelled", &format!("Node/{node_name}:")),
        "{}",
        r.stdout
    );

    let nodes: Api<Node> = Api::all(ns.client.clone());
    let node = nodes.get(&node_name).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("pai-master", "true"),
        ("pai-worker", "true"),
        ("no-drivers", "true"),
        ("node-role.kubernetes.io/control-plane", ""),
        ("rack", "r1"),
        ("kubernetes.io/hostname", node_name.as_str()),
    ] {
        assert_eq!(
            labels.get(k).map(String::as_str),
            Some(v),
            "label {k}: {labels:?}"
        );
    }
    let ann = node.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("pailot.dev/gpu-type").map(String::as_str),
        Some("nvidia-t4")
    );

    let rec = h.record().expect("record");
    assert_eq!(rec["complete"], true);
    let recorded = &rec["nodes"][0];
    assert_eq!(recorded["name"], node_name.as_str());
    assert_eq!(recorded["labels"]["rack"], "r1");
    assert!(
        recorded["labels"].get("kubernetes.io/hostname").is_none(),
        "a label that already had its value is not ours: {rec:#}"
    );
    assert!(pailot::bootstrap::bootstrap_complete(
        &h.file("/var/lib/pailot")
    ));
    let (bin, cluster) = (h.bin.clone(), h.cluster.clone());
    let pods = tokio::task::spawn_blocking(move || rendered_static_pods(&bin, &cluster))
        .await
        .unwrap();
    assert!(pods.len() >= 4);
    for (name, body) in &pods {
        let got =
            std::fs::read_to_string(h.file(&format!("/etc/kubernetes/manifests/{name}.yaml")))
                .unwrap();
        crate::harness::assert_text_eq(body, &got, &format!("static pod {name}"));
    }
    let toml =
        std::fs::read_to_string(h.file("/etc/containerd/certs.d/docker.io/hosts.toml")).unwrap();
    assert!(toml.contains(&h.mirror_url), "{toml}");

    // Idempotent against the API too.
    let again = run(vec![]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );

    // --reset removes the labels and annotation it set, and keeps what was there before.
    let reset = run(vec!["--reset".into()]).await;
    assert_eq!(reset.code, 0, "{}\n{}", reset.stdout, reset.stderr);
    let node = nodes.get(&node_name).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    for k in [
        "pai-master",
        "pai-worker",
        "no-drivers",
        "node-role.kubernetes.io/control-plane",
        "rack",
    ] {
        assert!(
            !labels.contains_key(k),
            "label {k} left after reset: {labels:?}"
        );
    }
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(node_name.as_str())
    );
    let ann = node.metadata.annotations.unwrap_or_default();
    assert!(!ann.contains_key("pailot.dev/gpu-type"));
    assert!(h.record().is_none());
    assert!(
        !h.file("/etc/kubernetes/manifests/kube-apiserver.yaml")
            .exists()
    );
    assert!(
        !h.file("/etc/containerd/certs.d/docker.io/hosts.toml")
            .exists()
    );
}

/// A kubeconfig whose API server refuses connections (port 1 on loopback).
const REFUSED_KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
";

/// The /readyz wait shows a progress line on a terminal (a pty from script(1)) and writes no
/// progress, no escape sequence, into a pipe.
#[test]
fn api_wait_shows_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let h = Host::new("pai-node-1", |t| t);
    let kubeconfig = h.t.write("kubeconfig", REFUSED_KUBECONFIG);
    let args = [
        "bootstrap",
        "--cluster",
        h.cluster.to_str().unwrap(),
        "--root",
        h.root.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--timeout",
        "2",
    ];

    let piped = pailot_with_path(&h.bin, &args);
    assert_eq!(piped.code, 1, "{piped:?}");
    assert!(
        piped.stderr.contains("/readyz"),
        "the failure is reported: {}",
        piped.stderr
    );
    for out in [&piped.stdout, &piped.stderr] {
        assert!(
            !out.contains("waiting for health") && !out.contains('\x1b'),
            "{out:?}"
        );
    }

    let command = std::iter::once(crate::harness::pailot_bin().to_str().unwrap().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    // Found on this process's PATH: the child's PATH is the stub directory.
    let script = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("script"))
        .find(|p| p.is_file())
        .expect("script (util-linux) on PATH");
    let tty: Run = std::process::Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .current_dir(repo_root())
        .env("PATH", &h.bin)
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .env_remove("KUBECONFIG")
        .output()
        .expect("script (util-linux)")
        .into();
    assert_eq!(tty.code, 1, "{tty:?}");
    assert!(
        tty.stdout.contains("API server") && tty.stdout.contains("waiting for health"),
        "no progress line on the terminal: {:?}",
        tty.stdout
    );
    assert!(tty.stdout.contains('\x1b'), "{:?}", tty.stdout);
    assert!(
        tty.stdout.contains("✗ API server"),
        "the failed step is marked: {:?}",
        tty.stdout
    );
}
