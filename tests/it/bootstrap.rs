//! `pailot bootstrap`: files on a temp root (no API), idempotence, --reset, refusals; node labels on the
//! real control plane (tests/cluster); the real control plane started from the PKI bootstrap wrote.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    assert_eq!(rec["controlPlane"], "managed");
    assert_eq!(
        rec["complete"], false,
        "--skip-api leaves the record incomplete"
    );
    assert_eq!(rec["incomplete"][0]["step"], "apiSkipped", "{rec:#}");
    let files = rec["files"].as_array().unwrap();
    for f in files {
        let bytes = std::fs::read(h.file(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"], sha256(&bytes), "{f}");
    }
    // Every file under the root that bootstrap created is in the record (nothing written unrecorded).
    let recorded: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    for (name, _) in &pods {
        assert!(recorded.contains(&format!("/etc/kubernetes/manifests/{name}.yaml").as_str()));
    }
    for written in new_files(&h) {
        assert!(
            recorded.contains(&written.as_str())
                || written == "/var/lib/pailot/bootstrap.json"
                || written.starts_with("/var/lib/pailot/originals/"),
            "{written} written but not recorded"
        );
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

    // --reset removes exactly what the record lists, except the credentials; --include-pki those too.
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
    assert!(
        h.file("/etc/kubernetes/pki/ca.key").is_file(),
        "credentials are kept by a plain reset"
    );
    assert!(
        has_line(&reset.stdout, "kept-pki", "/etc/kubernetes/pki/ca.key"),
        "{}",
        reset.stdout
    );
    let kept = h
        .record()
        .expect("the record keeps listing the credentials");
    assert!(
        kept["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["pki"] == true),
        "{kept:#}"
    );
    assert_eq!(kept["incomplete"][0]["step"], "reset");
    let all = h.run(&["--reset", "--include-pki", "--skip-api"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert!(h.record().is_none());
    let left = new_files(&h);
    assert_eq!(
        left,
        ["/etc/kubernetes/manifests/operator-own.yaml"],
        "left behind after --reset --include-pki"
    );
    assert_eq!(
        sha256(&std::fs::read(h.file("/etc/containerd/config.toml")).unwrap()),
        sha256(
            &std::fs::read(host_fixture("single-node-32gib").join("etc/containerd/config.toml"))
                .unwrap()
        ),
        "Debian's containerd config.toml is put back"
    );
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
    // The refusal is recorded, so the daemon can say why bootstrap is incomplete.
    let rec = h
        .record()
        .expect("a refused bootstrap still records what is missing");
    assert_eq!(rec["complete"], false);
    assert_eq!(rec["incomplete"][0]["step"], "preflight", "{rec:#}");
    assert!(
        rec["incomplete"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("memory: requests"),
        "{rec:#}"
    );
    assert!(rec["files"].as_array().unwrap().is_empty());
    let state = pailot::bootstrap::bootstrap_state(&h.file("/var/lib/pailot"));
    assert!(
        state.summary().starts_with("preflight: memory: requests"),
        "{}",
        state.summary()
    );
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
    assert!(
        !h.file("/etc/kubernetes/pki").exists(),
        "nothing is written before a conflict is found"
    );
    let rec = h.record().expect("the conflict is recorded");
    assert_eq!(rec["incomplete"][0]["step"], "files", "{rec:#}");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_an_external_control_plane_writes_only_mirrors_and_labels_and_reset_removes_them()
{
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
        .replace(
            "name: single-node\n",
            "name: single-node\ncontrolPlane: external\n",
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
    assert_eq!(rec["controlPlane"], "external");
    // Adopted: nothing but the mirror configuration and the record (no PKI, no kubelet or containerd
    // configuration, no static pods: the render has none).
    let (bin, cluster) = (h.bin.clone(), h.cluster.clone());
    let pods = tokio::task::spawn_blocking(move || rendered_static_pods(&bin, &cluster))
        .await
        .unwrap();
    assert!(
        pods.is_empty(),
        "an external control plane renders no static pods: {pods:?}"
    );
    assert_eq!(
        new_files(&h),
        [
            "/etc/containerd/certs.d/docker.io/hosts.toml".to_string(),
            "/var/lib/pailot/bootstrap.json".to_string()
        ]
    );
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

/// Files under the host root that the fixture did not have, as sorted host paths.
fn new_files(h: &Host) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = vec![];
    walk(&h.root, &mut all);
    let fixture = host_fixture("single-node-32gib");
    let mut out: Vec<String> = all
        .iter()
        .map(|p| p.strip_prefix(&h.root).unwrap().to_path_buf())
        .filter(|rel| !fixture.join(rel).exists())
        .map(|rel| format!("/{}", rel.display()))
        .collect();
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Run a host tool; panics with its output when it fails.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not runnable ({e}): install it (Debian: openssl, kubectl)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl verify -CAfile ca cert` (the chain the control plane checks).
fn openssl_verify(ca: &Path, cert: &Path) {
    let out = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(out.trim().ends_with(": OK"), "{out}");
}

/// `openssl x509 -noout -subject -ext subjectAltName,extendedKeyUsage` of a certificate file.
fn x509_text(cert: &Path) -> String {
    tool(
        "openssl",
        &[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    )
}

/// The client certificate and key of a kubeconfig, written beside it as `<name>.crt`/`<name>.key`.
fn kubeconfig_client(h: &Host, name: &str) -> (PathBuf, Value) {
    let text = std::fs::read_to_string(h.file(&format!("/etc/kubernetes/{name}"))).unwrap();
    let v: Value = serde_saphyr::from_str(&text).unwrap();
    let b64 = |s: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let crt = h.t.path().join(format!("{name}.crt"));
    std::fs::write(&crt, b64(&v["users"][0]["user"]["client-certificate-data"])).unwrap();
    (crt, v)
}

#[test]
fn managed_bootstrap_writes_a_kubeadm_pki_kubeconfigs_and_node_configuration() {
    let h = Host::new("pai-node-1", |t| t);
    let r = h.run(&["--skip-api"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let pki = |f: &str| h.file(&format!("/etc/kubernetes/pki/{f}"));
    // kubeadm's names; keys 0600, certificates 0644; no etcd certificates while etcd stays on loopback.
    for stem in [
        "ca",
        "apiserver",
        "apiserver-kubelet-client",
        "front-proxy-ca",
        "front-proxy-client",
    ] {
        assert_eq!(mode(&pki(&format!("{stem}.crt"))), 0o644, "{stem}.crt");
        assert_eq!(mode(&pki(&format!("{stem}.key"))), 0o600, "{stem}.key");
    }
    assert_eq!(mode(&pki("sa.key")), 0o600);
    assert_eq!(mode(&pki("sa.pub")), 0o644);
    assert!(!pki("etcd").exists() && !pki("apiserver-etcd-client.crt").exists());
    // Every certificate verifies against its CA.
    openssl_verify(&pki("ca.crt"), &pki("apiserver.crt"));
    openssl_verify(&pki("ca.crt"), &pki("apiserver-kubelet-client.crt"));
    openssl_verify(&pki("front-proxy-ca.crt"), &pki("front-proxy-client.crt"));
    let api = x509_text(&pki("apiserver.crt"));
    for want in [
        "CN = kube-apiserver",
        "IP Address:10.0.0.11",
        "DNS:pai-node-1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:10.254.0.1",
        "TLS Web Server Authentication",
    ] {
        assert!(api.contains(want), "apiserver.crt lacks {want}: {api}");
    }
    let kc = x509_text(&pki("apiserver-kubelet-client.crt"));
    assert!(
        kc.contains("O = system:masters") && kc.contains("TLS Web Client Authentication"),
        "{kc}"
    );
    // sa.pub is sa.key's public key.
    let derived = tool(
        "openssl",
        &["pkey", "-in", pki("sa.key").to_str().unwrap(), "-pubout"],
    );
    assert_eq!(derived, std::fs::read_to_string(pki("sa.pub")).unwrap());
    // Kubeconfigs: 0600, the API server of the cluster file, the CA, a client certificate signed by it.
    for (name, subject) in [
        ("admin.conf", "O = system:masters, CN = kubernetes-admin"),
        (
            "controller-manager.conf",
            "CN = system:kube-controller-manager",
        ),
        ("scheduler.conf", "CN = system:kube-scheduler"),
        (
            "kubelet.conf",
            "O = system:nodes, CN = system:node:pai-node-1",
        ),
    ] {
        assert_eq!(
            mode(&h.file(&format!("/etc/kubernetes/{name}"))),
            0o600,
            "{name}"
        );
        let (crt, v) = kubeconfig_client(&h, name);
        assert_eq!(
            v["clusters"][0]["cluster"]["server"], "https://10.0.0.11:6443",
            "{name}"
        );
        openssl_verify(&pki("ca.crt"), &crt);
        let text = x509_text(&crt);
        assert!(text.contains(subject), "{name}: {text}");
    }
    // The static pods reference only files that now exist under the root.
    for (name, body) in rendered_static_pods(&h.bin, &h.cluster) {
        let pod: Value = serde_saphyr::from_str(&body).unwrap();
        for arg in pod["spec"]["containers"][0]["command"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            if let Some((_, path)) = arg.split_once("=/etc/kubernetes/") {
                let p = h.file(&format!("/etc/kubernetes/{path}"));
                assert!(
                    p.is_file(),
                    "static pod {name}: {arg} names a file bootstrap did not write"
                );
            }
        }
    }
    // containerd: the drop-in (read by a TOML parser) sets config_path and the systemd cgroup driver,
    // and Debian's config.toml was replaced by one that imports it (the original kept for --reset).
    let dropin: toml::Table =
        std::fs::read_to_string(h.file("/etc/containerd/conf.d/10-pailot.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let cri = &dropin["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(
        cri["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
    let main: toml::Table = std::fs::read_to_string(h.file("/etc/containerd/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        main["imports"][0].as_str(),
        Some("/etc/containerd/conf.d/*.toml")
    );
    assert!(
        has_line(&r.stdout, "replaced", "/etc/containerd/config.toml"),
        "{}",
        r.stdout
    );
    let hosts: toml::Table =
        std::fs::read_to_string(h.file("/etc/containerd/certs.d/docker.io/hosts.toml"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(
        hosts["server"].as_str(),
        Some("https://registry-1.docker.io")
    );
    assert!(
        hosts["host"]
            .as_table()
            .unwrap()
            .contains_key(&h.mirror_url)
    );
    // One machine: the bridge CNI network over podCidr.
    let cni: Value = serde_json::from_str(
        &std::fs::read_to_string(h.file("/etc/cni/net.d/10-pailot-bridge.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(cni["plugins"][0]["type"], "bridge");
    assert_eq!(
        cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.0.0/16"
    );
    // The kubelet: its unit drop-in points at pailot's files; its configuration is read by the kubelet's
    // own Go types and validation (strict decoding) in the test control plane's binary.
    let dropin =
        std::fs::read_to_string(h.file("/etc/systemd/system/kubelet.service.d/10-pailot.conf"))
            .unwrap();
    assert!(
        dropin.contains("--kubeconfig=/etc/kubernetes/kubelet.conf"),
        "{dropin}"
    );
    assert!(
        dropin.contains("--config=/var/lib/kubelet/config.yaml"),
        "{dropin}"
    );
    assert!(
        dropin.contains("--hostname-override=pai-node-1 --node-ip=10.0.0.11"),
        "{dropin}"
    );
    if !crate::kube::skip_cluster() {
        let out = Command::new(crate::kube::testcluster_bin())
            .args([
                "check-kubelet-config",
                h.file("/var/lib/kubelet/config.yaml").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("staticPodPath=/etc/kubernetes/manifests cgroupDriver=systemd clusterDomain=cluster.local"), "{text}");
        assert!(text.contains("systemReserved=map[memory:3Gi]"), "{text}");
        // And it does reject a field the kubelet does not know.
        let bad = h.t.write(
            "bad-kubelet.yaml",
            &std::fs::read_to_string(h.file("/var/lib/kubelet/config.yaml"))
                .unwrap()
                .replace("maxPods:", "maxPod:"),
        );
        let out = Command::new(crate::kube::testcluster_bin())
            .args(["check-kubelet-config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "an unknown field passed the strict check"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("maxPod"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The earliest expiry (the metric's source) covers the PKI files and the kubeconfigs.
    let expiries = pailot::bootstrap::pki::certificate_expiries(&h.root).unwrap();
    let labels: Vec<&str> = expiries.iter().map(|e| e.cert.as_str()).collect();
    for want in [
        "ca",
        "apiserver",
        "front-proxy-client",
        "admin.conf",
        "kubelet.conf",
    ] {
        assert!(labels.contains(&want), "{want} not in {labels:?}");
    }
    let first = pailot::bootstrap::pki::earliest_expiry(&h.root)
        .unwrap()
        .unwrap();
    let now = pailot::bootstrap::now_unix() as i64;
    assert!(
        (first.not_after_unix - now - 365 * 86_400).abs() < 3600,
        "{first:?}"
    );
}

#[test]
fn second_run_keeps_every_certificate_and_renew_certs_keeps_the_keys() {
    let h = Host::new("pai-node-1", |t| t);
    assert_eq!(h.run(&["--skip-api"]).code, 0);
    let snapshot = |h: &Host| -> Vec<(String, Vec<u8>)> {
        new_files(h)
            .into_iter()
            .filter(|p| {
                p.starts_with("/etc/kubernetes/pki/")
                    || p.ends_with(".conf") && p.starts_with("/etc/kubernetes/")
            })
            .map(|p| (p.clone(), std::fs::read(h.file(&p)).unwrap()))
            .collect()
    };
    let before = snapshot(&h);
    assert!(before.len() >= 15, "{before:?}");
    let again = h.run(&["--skip-api"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );
    assert!(
        has_line(&again.stdout, "kept", "cert/apiserver"),
        "{}",
        again.stdout
    );
    assert_eq!(snapshot(&h), before, "a second run rewrote a credential");
    let old_ca = h.t.write(
        "old-ca.crt",
        &std::fs::read_to_string(h.file("/etc/kubernetes/pki/ca.crt")).unwrap(),
    );

    let renewed = h.run(&["--skip-api", "--renew-certs"]);
    assert_eq!(renewed.code, 0, "{}", renewed.stderr);
    assert!(
        has_line(&renewed.stdout, "reissued", "cert/apiserver"),
        "{}",
        renewed.stdout
    );
    let after = snapshot(&h);
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        if path.ends_with(".key") || path.ends_with(".pub") {
            assert_eq!(a, b, "{path}: renewal must keep the key");
        } else {
            assert_ne!(a, b, "{path} was not renewed");
        }
    }
    // Same CA key: certificates renewed now still verify against the CA certificate clients already hold.
    openssl_verify(&old_ca, &h.file("/etc/kubernetes/pki/apiserver.crt"));
    let (crt, _) = kubeconfig_client(&h, "admin.conf");
    openssl_verify(&old_ca, &crt);
    let after_again = h.run(&["--skip-api"]);
    assert!(
        after_again.stdout.contains("nothing to change"),
        "{}",
        after_again.stdout
    );
}

#[test]
fn names_that_would_leave_the_root_are_input_errors() {
    // A mirror key like ../../../../x wrote hosts.toml outside --root; now the cluster file is refused.
    let h = Host::new("pai-node-1", |t| {
        t.replace("  docker.io: [", "  \"../../../../x\": [")
    });
    let r = h.run(&["--skip-api", "--force"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("{}:9:", h.cluster.display()))
            && r.stderr.contains("mirrors.../../../../x")
            && r.stderr.contains("is not a registry host"),
        "{}",
        r.stderr
    );
    assert!(h.record().is_none());
    assert!(!h.t.path().join("x").exists() && !h.root.parent().unwrap().join("x").exists());
    // Machine names become node names, label values and file names: unique DNS-1123 names of at most 63 characters.
    {
        let (edit, msg) = (
            "name: pai-node-1",
            "machine name \"Pai_Node\" is not a node name",
        );
        let h = Host::new("pai-node-1", |t| t.replacen(edit, "name: Pai_Node", 1));
        let r = h.run(&["--skip-api"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains(msg) && r.stderr.contains("machines[0].name"),
            "{}",
            r.stderr
        );
    }
    let w = Host::from_file("clusters/three-node.yaml", "pai-master-1", |t| {
        t.replace("name: pai-worker-2", "name: pai-worker-1")
    });
    let r = w.run(&["--skip-api", "--machine", "pai-master-1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("machine name \"pai-worker-1\" is used twice (machines[1] and machines[2])"),
        "{}",
        r.stderr
    );
    // A symlink inside the root that points out of it is not followed for writing.
    let h = Host::new("pai-node-1", |t| t);
    let outside = h.t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir_all(h.file("/etc/containerd")).unwrap();
    std::os::unix::fs::symlink(&outside, h.file("/etc/containerd")).unwrap();
    let r = h.run(&["--skip-api", "--force"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("refusing to write /etc/containerd/"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written through the symlink"
    );
}

#[test]
fn an_unreachable_mirror_is_a_warning_that_the_record_keeps() {
    let h = Host::new("pai-node-1", |t| t);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    std::fs::write(
        &h.cluster,
        std::fs::read_to_string(&h.cluster)
            .unwrap()
            .replace(&h.mirror_url, &dead),
    )
    .unwrap();
    let r = h.run(&["--skip-api", "--mirror-timeout-ms", "300"]);
    assert_eq!(
        r.code, 0,
        "an unreachable mirror stopped bootstrap: {}\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains("preflight warn: mirror/docker.io"),
        "{}",
        r.stderr
    );
    let rec = h.record().unwrap();
    let warnings = rec["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with(&format!("mirror/docker.io: {dead} not reachable"))),
        "{rec:#}"
    );
    // The mirror configuration is written all the same: containerd falls back to the registry.
    assert!(
        h.file("/etc/containerd/certs.d/docker.io/hosts.toml")
            .is_file()
    );
}

#[test]
fn a_worker_gets_its_kubelet_credentials_from_the_k8s_master() {
    let master = Host::from_file("clusters/three-node.yaml", "pai-master-1", |t| t);
    let r = master.run(&["--skip-api", "--machine", "pai-master-1"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let bundle = master.file("/etc/kubernetes/pailot-nodes/pai-worker-1.conf");
    assert_eq!(mode(&bundle), 0o600);
    // Several machines: no bridge network (flannel is a chart).
    assert!(
        !master
            .file("/etc/cni/net.d/10-pailot-bridge.conflist")
            .exists()
    );

    let w = Host::from_file("clusters/three-node.yaml", "pai-master-1", |t| t);
    let r = w.run(&["--skip-api", "--machine", "pai-worker-1"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("missing    kubelet_credentials: /etc/kubernetes/kubelet.conf is missing: copy /etc/kubernetes/pailot-nodes/pai-worker-1.conf from pai-master-1"),
        "{}",
        r.stdout
    );
    assert!(
        !w.file("/etc/kubernetes/manifests").exists(),
        "no static pods on a worker"
    );
    assert!(
        !w.file("/etc/kubernetes/pki/ca.key").exists(),
        "no CA key on a worker"
    );
    assert_eq!(
        w.record().unwrap()["incomplete"][0]["step"],
        "kubeletCredentials"
    );
    // The operator copies the bundle; the next run takes the CA certificate from it.
    std::fs::create_dir_all(w.file("/etc/kubernetes")).unwrap();
    std::fs::copy(&bundle, w.file("/etc/kubernetes/kubelet.conf")).unwrap();
    let r = w.run(&["--skip-api", "--machine", "pai-worker-1"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(w.file("/etc/kubernetes/pki/ca.crt")).unwrap(),
        std::fs::read(master.file("/etc/kubernetes/pki/ca.crt")).unwrap()
    );
    let (crt, _) = kubeconfig_client(&w, "kubelet.conf");
    openssl_verify(&w.file("/etc/kubernetes/pki/ca.crt"), &crt);
    assert!(x509_text(&crt).contains("CN = system:node:pai-worker-1"));
    // A bundle for another machine is refused.
    std::fs::copy(
        master.file("/etc/kubernetes/pailot-nodes/pai-worker-2.conf"),
        w.file("/etc/kubernetes/kubelet.conf"),
    )
    .unwrap();
    let r = w.run(&["--skip-api", "--machine", "pai-worker-1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("is for \"system:node:pai-worker-2\""),
        "{}",
        r.stdout
    );
}

#[test]
fn external_control_plane_that_does_not_answer_fails_preflight() {
    let h = Host::new("pai-node-1", |t| {
        t.replace(
            "name: single-node\n",
            "name: single-node\ncontrolPlane: external\n",
        )
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = h.t.write(
        "dead.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    );
    let r = h.run(&["--kubeconfig", kc.to_str().unwrap(), "--timeout", "5"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("preflight failed (api)"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("https://127.0.0.1:{port}/ did not answer")),
        "{}",
        r.stdout
    );
    assert_eq!(h.record().unwrap()["incomplete"][0]["step"], "preflight");
    // No kubelet or CNI check for an adopted cluster: the host has its own.
    assert!(!r.stdout.contains(" kubelet "), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_starts_from_the_pki_and_kubeconfigs_bootstrap_wrote() {
    if crate::kube::skip_cluster() {
        return;
    }
    // The cluster file's control plane on loopback, at a free port: bootstrap writes the PKI and the
    // kubeconfigs, the real kube-apiserver, controller-manager and scheduler start from them.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Host::new("pai-node-1", |t| {
        t.replace("address: 10.0.0.11", "address: 127.0.0.1")
            .replace("apiServerPort: 6443", &format!("apiServerPort: {port}"))
    });
    let r = h.run(&["--skip-api"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let dir = h.t.path().join("cp");
    std::fs::create_dir_all(&dir).unwrap();
    let root = h.root.clone();
    let cp = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            crate::kube::PrivateCluster::start_with(
                &dir,
                "pki",
                &["pai-node-1"],
                &[
                    "--pki-root",
                    root.to_str().unwrap(),
                    "--apiserver-arg=--service-cluster-ip-range=10.254.0.0/16",
                ],
            )
        }
    })
    .await
    .unwrap();
    let kube = |kubeconfig: &str, args: &[&str]| {
        let mut all = vec![
            "--kubeconfig".to_string(),
            h.file(&format!("/etc/kubernetes/{kubeconfig}"))
                .to_str()
                .unwrap()
                .to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        tool("kubectl", &refs)
    };
    // kubectl with pailot's admin.conf.
    assert_eq!(
        kube("admin.conf", &["get", "nodes", "-o", "name"]).trim(),
        "node/pai-node-1"
    );
    // The API server serves pailot's certificate.
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -outform PEM"))
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&served.stdout).to_string();
    let ours = std::fs::read_to_string(h.file("/etc/kubernetes/pki/apiserver.crt")).unwrap();
    assert_eq!(
        served.trim(),
        ours.trim(),
        "the API server does not serve pailot's apiserver.crt"
    );
    // Every identity authenticates as what its certificate says.
    for (conf, user) in [
        ("admin.conf", "kubernetes-admin"),
        ("controller-manager.conf", "system:kube-controller-manager"),
        ("scheduler.conf", "system:kube-scheduler"),
        ("kubelet.conf", "system:node:pai-node-1"),
    ] {
        let who = kube(
            conf,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        assert_eq!(who.trim(), user, "{conf}");
    }
    // The controller-manager (controller-manager.conf) works: a new namespace gets its service account
    // and the root CA it publishes is pailot's; the scheduler (scheduler.conf) binds a pod.
    kube("admin.conf", &["create", "namespace", "pki-check"]);
    let client = crate::kube::client_for(&h.file("/etc/kubernetes/admin.conf")).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "pki-check");
    crate::kube::wait_for(
        "service account pki-check/default",
        std::time::Duration::from_secs(60),
        || async {
            sas.get_opt("default")
                .await
                .ok()
                .flatten()
                .ok_or_else(|| "absent".to_string())
        },
    )
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "pki-check");
    let root_ca = crate::kube::wait_for(
        "kube-root-ca.crt",
        std::time::Duration::from_secs(60),
        || async {
            cms.get_opt("kube-root-ca.crt")
                .await
                .ok()
                .flatten()
                .ok_or_else(|| "absent".to_string())
        },
    )
    .await;
    assert_eq!(
        root_ca.data.unwrap()["ca.crt"].trim(),
        std::fs::read_to_string(h.file("/etc/kubernetes/pki/ca.crt"))
            .unwrap()
            .trim()
    );
    kube(
        "admin.conf",
        &[
            "-n",
            "pki-check",
            "run",
            "p",
            "--image=registry.k8s.io/pause:3.10",
        ],
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "pki-check");
    crate::kube::wait_for(
        "pod pki-check/p scheduled",
        std::time::Duration::from_secs(60),
        || async {
            let p = pods.get("p").await.map_err(|e| e.to_string())?;
            p.spec
                .and_then(|s| s.node_name)
                .filter(|n| n == "pai-node-1")
                .ok_or("not bound".to_string())
        },
    )
    .await;
    // Now bootstrap's API steps run against it through the admin.conf it wrote: complete.
    let h2 = h.cluster.clone();
    let (bin, root) = (h.bin.clone(), h.root.clone());
    let r = tokio::task::spawn_blocking(move || {
        pailot_with_path(
            &bin,
            &[
                "bootstrap",
                "--cluster",
                h2.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--timeout",
                "60",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        has_line(&r.stdout, "labelled", "Node/pai-node-1:"),
        "{}",
        r.stdout
    );
    let state = pailot::bootstrap::bootstrap_state(&h.file("/var/lib/pailot"));
    assert!(state.is_complete(), "{state:?}");
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

/// Run `pailot ARGS` on a pseudo-terminal (util-linux `script`) with `input` typed on it.
fn pailot_on_terminal(args: &[String], input: &str) -> Option<Run> {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        assert!(
            std::env::var_os("PAILOT_SKIP_TTY").is_some(),
            "/usr/bin/script (util-linux) not found: install it or set PAILOT_SKIP_TTY=1"
        );
        return None;
    }
    let quoted: Vec<String> = std::iter::once(crate::harness::pailot_bin().display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut child = Command::new(script)
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap().into())
}

#[test]
fn reset_include_pki_asks_twice_on_a_terminal() {
    let h = Host::new("pai-node-1", |t| t);
    assert_eq!(h.run(&["--skip-api"]).code, 0);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "bootstrap",
            "--cluster",
            h.cluster.to_str().unwrap(),
            "--root",
            h.root.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // The second answer is not the cluster name: nothing is removed.
    let Some(r) = pailot_on_terminal(
        &args(&["--reset", "--include-pki", "--skip-api"]),
        "yes\nnope\n",
    ) else {
        return;
    };
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let out = r.stdout.clone() + &r.stderr;
    assert!(
        out.contains("--include-pki removes the cluster's CA"),
        "{out}"
    );
    assert!(out.contains("Type the cluster name (single-node)"), "{out}");
    assert!(
        out.contains("reset cancelled: nothing was changed"),
        "{out}"
    );
    assert!(h.file("/etc/kubernetes/pki/ca.key").is_file());
    assert!(h.file("/etc/kubernetes/manifests/etcd.yaml").is_file());
    // Both answers right: everything bootstrap wrote is gone.
    let r = pailot_on_terminal(
        &args(&["--reset", "--include-pki", "--skip-api"]),
        "yes\nsingle-node\n",
    )
    .unwrap();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!h.file("/etc/kubernetes/pki/ca.key").exists());
    assert!(h.record().is_none());
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

/// Adopt mode end to end (issue 15): a daemon started on a host with no bootstrap record applies nothing;
/// `pailot bootstrap` against the running control plane with `controlPlane: external` writes labels,
/// mirrors and the record; the daemon notices the record and applies the whole distribution, so that
/// `pailot diff` then finds nothing to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_the_distribution_once_an_adopted_host_is_bootstrapped() {
    use std::time::{Duration, Instant};
    let Some(ns) = crate::kube::TestNamespace::new("adopt").await else {
        return;
    };
    let node_name = crate::kube::unique_name("pai-adopt");
    ns.create_fake_node(json!({
        "metadata": {"name": node_name, "labels": {"kubernetes.io/hostname": node_name}},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                   "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}
    }))
    .await;
    let ns_name = ns.name.clone();
    let h = Host::new(&node_name, |t| {
        t.replace(
            "name: single-node\n",
            &format!("name: {ns_name}\ncontrolPlane: external\n"),
        )
        .replace("namespace: default\n", &format!("namespace: {ns_name}\n"))
    });
    // The deployment repository the daemon reconciles: this repository's charts and overlays, the host's
    // cluster file, and the encrypted example values it reads (decrypted with the public test key).
    let repo = crate::source::TempRepo::new();
    copy_tree(&repo_root().join("charts"), &repo.path().join("charts"));
    copy_tree(&repo_root().join("overlays"), &repo.path().join("overlays"));
    repo.write(
        "clusters/example.secrets.sops.yaml",
        &std::fs::read_to_string(repo_root().join("clusters/example.secrets.sops.yaml")).unwrap(),
    );
    repo.write(
        "clusters/adopted.yaml",
        &std::fs::read_to_string(&h.cluster).unwrap(),
    );
    let head = repo.commit("the distribution on an adopted cluster");

    let state = h.file("/var/lib/pailot");
    std::fs::create_dir_all(&state).unwrap();
    let addr = crate::trust::free_addr();
    // The daemon refuses a key file other users can read: give it a private copy.
    let key = h.t.path().join("age-key.txt");
    std::fs::copy(repo_root().join("tests/fixtures/sops/test-key.txt"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = h.t.write(
        "pailot.yaml",
        &format!(
            "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: {}\n  cluster: clusters/adopted.yaml\n  pollInterval: 1h\nstateDir: {}\nkubeconfig: {}\nhostRoot: {}\nserver:\n  listen: \"{addr}\"\ndecryption:\n  ageKeyFile: {}\n",
            repo.path().display(),
            state.display(),
            ns.kubeconfig.display(),
            h.root.display(),
            key.display(),
        ),
    );
    let mut d =
        crate::daemon::DaemonProcess::start_gated(&cfg, addr, h.t.path().join("daemon.log"));

    // No record: the daemon serves, says why it waits, applies nothing.
    let s = d
        .wait_status(Duration::from_secs(30), "the bootstrap gate", |s| {
            s["bootstrap"]["complete"] == false
        })
        .await;
    let missing = s["bootstrap"]["missing"].to_string();
    assert!(missing.contains("record"), "{s:#}");
    let diff = |repo: &Path| {
        pailot_with_path(
            &h.bin,
            &[
                "diff",
                "--repo",
                repo.to_str().unwrap(),
                "-c",
                "clusters/adopted.yaml",
                "--kubeconfig",
                ns.kubeconfig.to_str().unwrap(),
                "--age-key-file",
                key.to_str().unwrap(),
            ],
        )
    };
    let before = diff(repo.path());
    assert_eq!(before.code, 1, "no inventory yet: {before:?}");
    assert!(
        d.metrics()
            .await
            .contains("pailot_bootstrap_missing{item=\"record\"} 1"),
        "{}",
        d.metrics().await
    );

    // Adopt the cluster; the daemon reads the record again within 10 s and applies.
    let r = h.run(&[
        "--repo",
        repo.path().to_str().unwrap(),
        "--kubeconfig",
        ns.kubeconfig.to_str().unwrap(),
        "--timeout",
        "60",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let s = d
        .wait_status(Duration::from_secs(60), "the distribution applied", |s| {
            s["bootstrap"]["complete"] == true && s["revision"] == head.as_str()
        })
        .await;
    assert_eq!(s["bootstrap"]["missing"], json!([]), "{s:#}");
    d.assert_running();
    // Everything the render holds is in the cluster as rendered (diff exits 0 only then); the charts may
    // still be rolling out, which diff does not look at.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = diff(repo.path());
    while after.code != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        after = diff(repo.path());
    }
    assert_eq!(after.code, 0, "{after:?}\n{}", d.tail());
    drop(d);

    let gone = pailot_with_path(
        &h.bin,
        &[
            "uninstall",
            "--repo",
            repo.path().to_str().unwrap(),
            "-c",
            "clusters/adopted.yaml",
            "--kubeconfig",
            ns.kubeconfig.to_str().unwrap(),
            "--age-key-file",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(gone.code, 0, "{gone:?}");
}
