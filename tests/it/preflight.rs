//! `pailot preflight` on fake host roots (tests/fixtures/hosts) with stubbed host commands on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Run, TempTree, pailot_bin, repo_root};

/// A fixture host root.
pub fn host_fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/hosts").join(name)
}

/// Copy a directory tree (files, directories and symlinks).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&e.path(), &to);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A directory of stub host commands: `containerd --version`, `timedatectl`, and `nvidia-smi` when `gpus` is given.
pub fn stub_commands(tree: &TempTree, gpus: Option<&[&str]>) -> PathBuf {
    let bin = tree.path().join("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut scripts = vec![
        ("containerd", "echo 'containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376'".to_string()),
        ("timedatectl", "echo yes".to_string()),
    ];
    if let Some(gpus) = gpus {
        let lines: Vec<String> = gpus.iter().map(|g| format!("echo '{g}'")).collect();
        scripts.push(("nvidia-smi", lines.join("\n")));
    }
    for (name, body) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// Run `pailot ARGS` in the repository root with only `path` on PATH (so no real host command answers).
pub fn pailot_with_path(path: &Path, args: &[&str]) -> Run {
    Command::new(pailot_bin())
        .current_dir(repo_root())
        .args(args)
        .env("PATH", path)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run pailot")
        .into()
}

fn preflight_json(path: &Path, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["preflight", "-o", "json"];
    all.extend_from_slice(args);
    let r = pailot_with_path(path, &all);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {} stderr {}", r.stdout, r.stderr));
    (r.code, v, r.stderr)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn statuses_except<'a>(report: &'a Value, except: &[&str]) -> Vec<(&'a str, &'a str)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !except.contains(&c["name"].as_str().unwrap()))
        .filter(|c| c["status"] != "pass")
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect()
}

#[test]
fn single_node_32gib_with_base_fails_memory_and_suggests_lowmem() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = host_fixture("single-node-32gib");
    let (code, r, stderr) = preflight_json(
        &bin,
        &[
            "--cluster",
            "clusters/single-node.yaml",
            "--overlay",
            "base",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    let mem = check(&r, "memory");
    assert_eq!(mem["status"], "fail", "{mem}");
    assert!(
        mem["detail"].as_str().unwrap().contains("32.0Gi MemTotal"),
        "{mem}"
    );
    let fix = mem["fix"].as_str().unwrap();
    assert!(
        fix.contains("add overlay single-node-lowmem") && fix.contains("fit"),
        "{fix}"
    );
    // Everything else on this clean host passes, so the failure is the memory budget alone.
    assert_eq!(statuses_except(&r, &["memory"]), vec![], "{r:#}");
}

#[test]
fn single_node_32gib_with_lowmem_passes_with_an_aligned_table() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = host_fixture("single-node-32gib");
    let (code, r, stderr) = preflight_json(
        &bin,
        &[
            "--cluster",
            "clusters/single-node.yaml",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_eq!(r["result"], "pass");
    assert!(
        check(&r, "memory")["detail"]
            .as_str()
            .unwrap()
            .contains("overlays base,single-node-lowmem")
    );
    assert!(
        check(&r, "runtime")["detail"]
            .as_str()
            .unwrap()
            .contains("v2.1.4")
    );
    assert_eq!(check(&r, "time")["detail"], "synchronised (timedatectl)");
    // The control plane's ports and the render's hostPorts are all checked.
    for p in [
        "port/6443",
        "port/2379",
        "port/2380",
        "port/10250",
        "port/10257",
        "port/10259",
        "port/80",
        "port/9100",
    ] {
        assert_eq!(check(&r, p)["status"], "pass", "{p}");
    }
    let table = pailot_with_path(&bin, &["preflight", "--root", root.to_str().unwrap()]);
    assert_eq!(table.code, 0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("STATUS  CHECK"), "{}", table.stdout);
    let detail_col = lines[0].find("DETAIL").unwrap();
    for l in lines.iter().skip(1).take_while(|l| !l.is_empty()) {
        assert!(
            l.len() > detail_col && l.as_bytes()[detail_col - 1] == b' ',
            "misaligned: {l:?}"
        );
    }
    assert!(
        table.stdout.contains("machine pai-node-1: "),
        "{}",
        table.stdout
    );
}

#[test]
fn worker_16gib_passes_without_control_plane_ports() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = host_fixture("worker-16gib");
    // No --machine: the fake root's /etc/hostname names the machine.
    let (code, r, stderr) = preflight_json(
        &bin,
        &[
            "--cluster",
            "clusters/three-node.yaml",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_eq!(r["machine"], "pai-worker-1");
    assert_eq!(check(&r, "memory")["status"], "pass");
    assert!(
        check(&r, "memory")["detail"]
            .as_str()
            .unwrap()
            .contains("16.0Gi MemTotal")
    );
    assert_eq!(check(&r, "port/10250")["status"], "pass");
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"port/6443") && !names.contains(&"port/2379"),
        "{names:?}"
    );
}

#[test]
fn swap_and_cgroup_v1_fail_with_fixes() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = t.path().join("root");
    copy_tree(&host_fixture("single-node-32gib"), &root);
    std::fs::write(
        root.join("proc/swaps"),
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile                               file\t\t2097148\t\t0\t\t-2\n",
    )
    .unwrap();
    std::fs::remove_file(root.join("sys/fs/cgroup/cgroup.controllers")).unwrap();
    let (code, r, _) = preflight_json(&bin, &["--root", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(check(&r, "swap")["status"], "fail");
    assert!(
        check(&r, "swap")["fix"]
            .as_str()
            .unwrap()
            .contains("swapoff -a")
    );
    assert_eq!(check(&r, "cgroup")["status"], "fail");
    assert_eq!(statuses_except(&r, &["swap", "cgroup"]), vec![]);
}

/// A fake `/proc/<pid>` holding a LISTEN socket on `port` (0.0.0.0), named `comm`.
fn fake_listener(root: &Path, port: u16, pid: u32, comm: &str, inode: u64) {
    let line = format!(
        "   0: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    );
    let tcp = root.join("proc/net/tcp");
    let mut text = std::fs::read_to_string(&tcp).unwrap();
    text.push_str(&line);
    std::fs::write(&tcp, text).unwrap();
    let p = root.join(format!("proc/{pid}"));
    std::fs::create_dir_all(p.join("fd")).unwrap();
    std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
    std::os::unix::fs::symlink(format!("socket:[{inode}]"), p.join("fd/7")).unwrap();
    std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).unwrap();
}

#[test]
fn taken_port_is_named_with_its_process_from_a_fake_proc() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = t.path().join("root");
    copy_tree(&host_fixture("single-node-32gib"), &root);
    fake_listener(&root, 6443, 4321, "nginx", 424242);
    // The API server itself on its port is what a bootstrapped host looks like: not a failure.
    fake_listener(&root, 2379, 77, "etcd", 4711);
    // Nor is a platform pod holding its hostPort (pylon's nginx on 80, in a kubepods cgroup).
    fake_listener(&root, 80, 900, "nginx", 4712);
    std::fs::write(
        root.join("proc/900/cgroup"),
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-abc.scope\n",
    )
    .unwrap();
    let (code, r, _) = preflight_json(&bin, &["--root", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    let p = check(&r, "port/6443");
    assert_eq!(p["status"], "fail");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("in use on 0.0.0.0 by nginx (pid 4321)"),
        "{p}"
    );
    assert!(p["fix"].as_str().unwrap().contains("stop nginx"), "{p}");
    let e = check(&r, "port/2379");
    assert_eq!(e["status"], "pass", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("held by etcd (pid 77) as expected"),
        "{e}"
    );
    let pod = check(&r, "port/80");
    assert_eq!(pod["status"], "pass", "{pod}");
    assert!(
        pod["detail"]
            .as_str()
            .unwrap()
            .contains("held by nginx (pid 900) in a Kubernetes pod"),
        "{pod}"
    );
    assert_eq!(statuses_except(&r, &["port/6443"]), vec![]);
}

#[test]
fn taken_port_on_the_real_host_names_this_test_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = pailot::preflight::HostRoot::new("/");
    let listeners = host.tcp_listeners().expect("/proc/net/tcp readable");
    let mine = listeners
        .iter()
        .find(|l| l.port == port && l.address == "127.0.0.1")
        .expect("our listener in /proc/net/tcp");
    let owners = host.socket_owners();
    let owner = owners
        .get(&mine.inode)
        .expect("our socket inode in /proc/self/fd");
    assert_eq!(owner.pid, std::process::id());
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(owner.comm, comm.trim());
    // And the check built on it fails naming us.
    let cluster: pailot::cluster::Cluster = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("clusters/single-node.yaml")).unwrap(),
    )
    .unwrap();
    let input = pailot::preflight::PreflightInput {
        root: "/".into(),
        machine: cluster.machines[0].clone(),
        selected: pailot::preflight::MemoryBudget {
            overlays: vec![],
            requests_memory: 0,
        },
        lowmem: None,
        gpu_overlay: false,
        required_ports: vec![pailot::preflight::RequiredPort {
            port,
            needed_by: vec!["test".into()],
            expected_owners: vec!["kube-apiserver".into()],
        }],
        mirrors: Default::default(),
        mirror_timeout: std::time::Duration::from_millis(100),
        control_plane: pailot::cluster::ControlPlane::External,
        pod_network: pailot::cluster::Cni::None,
        api: None,
    };
    let report = pailot::preflight::run(&input, &pailot::preflight::FixedCommands::default());
    let c = report
        .checks
        .iter()
        .find(|c| c.name == format!("port/{port}"))
        .unwrap();
    assert_eq!(c.status, pailot::preflight::Status::Fail);
    assert!(
        c.detail
            .contains(&format!("by {} (pid {})", comm.trim(), std::process::id())),
        "{}",
        c.detail
    );
    drop(listener);
}

#[test]
fn gpu_present_without_gpu_overlay_warns() {
    let t = TempTree::new();
    let bin = stub_commands(&t, Some(&["Tesla T4, 15360 MiB", "Tesla T4, 15360 MiB"]));
    let root = host_fixture("gpu-32gib");
    let (code, r, stderr) = preflight_json(
        &bin,
        &["--machine", "pai-node-1", "--root", root.to_str().unwrap()],
    );
    assert_eq!(code, 0, "warnings do not fail: {stderr}");
    assert_eq!(r["result"], "warn");
    let g = check(&r, "gpu");
    assert_eq!(g["status"], "warn", "{g}");
    assert!(
        g["detail"]
            .as_str()
            .unwrap()
            .contains("2 GPU(s): Tesla T4, 15360 MiB"),
        "{g}"
    );
    assert!(
        g["fix"].as_str().unwrap().contains("add overlay gpu"),
        "{g}"
    );
}

#[test]
fn gpu_overlay_on_a_host_with_gpus_passes() {
    let t = TempTree::new();
    let bin = stub_commands(&t, Some(&["Tesla T4, 15360 MiB", "Tesla T4, 15360 MiB"]));
    let root = host_fixture("gpu-32gib");
    let (code, r, stderr) = preflight_json(
        &bin,
        &[
            "--cluster",
            "clusters/single-node-gpu.yaml",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr} {r:#}");
    assert_eq!(check(&r, "gpu")["status"], "pass");
}

#[test]
fn gpu_overlay_without_gpu_fails() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let root = host_fixture("single-node-32gib");
    let (code, r, _) = preflight_json(
        &bin,
        &[
            "--cluster",
            "clusters/single-node-gpu.yaml",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    let g = check(&r, "gpu");
    assert_eq!(g["status"], "fail", "{g}");
    assert!(
        g["fix"].as_str().unwrap().contains("remove overlay gpu"),
        "{g}"
    );
    assert_eq!(statuses_except(&r, &["gpu"]), vec![]);
}

#[test]
fn unknown_machine_is_an_input_error_naming_the_cluster_file() {
    let t = TempTree::new();
    let bin = stub_commands(&t, None);
    let r = pailot_with_path(
        &bin,
        &[
            "preflight",
            "--machine",
            "nope",
            "--root",
            host_fixture("single-node-32gib").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--machine nope") && r.stderr.contains("clusters/single-node.yaml"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("pai-node-1"), "{}", r.stderr);
}
