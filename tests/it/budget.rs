//! `pailot budget`: per-machine effective requests vs capacity, on a small repo and on the shipped one.

use serde_json::Value;

use crate::harness::{TempTree, pailot, pailot_in};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn small_repo(capacity: &str) -> TempTree {
    let t = TempTree::new();
    t.write(
        "charts/app/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: app\nversion: 0.1.0\n",
    );
    t.write("charts/app/values.yaml", "replicas: 2\nmemory: 3Gi\n");
    t.write(
        "charts/app/templates/app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  replicas: {{ replicas }}\n  template:\n    spec:\n      containers:\n      - name: app\n        image: app\n        resources:\n          limits:\n            memory: {{ memory }}\n            cpu: 500m\n",
    );
    t.write(
        "overlays/base/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts:\n  include: [\"*\"]\n",
    );
    t.write(
        "clusters/c.yaml",
        &format!(
            "apiVersion: pailot.dev/v1\nkind: Cluster\nname: c\noverlays: [base]\nmachines:\n  - name: n1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {{memory: {capacity}, cpu: \"2\"}}\n"
        ),
    );
    t
}

#[test]
fn limit_only_containers_count_at_their_limit_and_over_exits_1() {
    let t = small_repo("4Gi");
    let r = pailot_in(t.path(), &["budget", "--cluster", "clusters/c.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let first = r.stdout.lines().nth(1).unwrap();
    assert!(first.starts_with("n1"), "{}", r.stdout);
    assert!(first.contains("6.0 / 4.0"), "{}", r.stdout);
    assert!(
        first.contains("1 / 2"),
        "cpu: two 500m limits count as requests: {}",
        r.stdout
    );
    assert!(first.trim_end().ends_with("OVER"), "{}", r.stdout);
    assert!(
        r.stdout.contains("Deployment/default/app #1"),
        "{}",
        r.stdout
    );
}

#[test]
fn fitting_machine_exits_0_and_json_carries_the_budget() {
    let t = small_repo("8Gi");
    let r = pailot_in(
        t.path(),
        &["budget", "--cluster", "clusters/c.yaml", "-o", "json"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let m = &v["machines"][0];
    assert_eq!(m["machine"], "n1");
    assert_eq!(m["requestsMemory"].as_f64().unwrap(), 6.0 * GIB);
    assert_eq!(m["limitsMemory"].as_f64().unwrap(), 6.0 * GIB);
    assert_eq!(m["requestsCpuMilli"], 1000);
    assert_eq!(m["fits"], true);
    assert_eq!(m["items"].as_array().unwrap().len(), 2);
    let y = pailot_in(
        t.path(),
        &["budget", "--cluster", "clusters/c.yaml", "-o", "yaml"],
    );
    assert_eq!(y.code, 0);
    assert!(
        y.stdout.contains("requestsMemory: 6442450944"),
        "{}",
        y.stdout
    );
}

#[test]
fn bad_cluster_file_is_an_input_error() {
    let t = small_repo("lots");
    let r = pailot_in(t.path(), &["budget", "--cluster", "clusters/missing.yaml"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("clusters/missing.yaml"), "{}", r.stderr);
}

fn single_node_budget(extra: &[&str]) -> (i32, f64, String) {
    let mut args = vec![
        "budget",
        "--cluster",
        "clusters/single-node.yaml",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let r = pailot(&args);
    let v: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", r.stdout, r.stderr));
    let mem = v["machines"][0]["requestsMemory"].as_f64().unwrap() / GIB;
    (r.code, mem, r.stderr)
}

/// The acceptance check of issue 2: base on one 32 GiB machine does not fit (> 32 GiB),
/// the cluster's default overlays (base + single-node-lowmem) fit in ≤ 24 GiB.
#[test]
fn shipped_single_node_base_is_over_32gib_and_lowmem_fits_in_24gib() {
    let (code, mem, err) = single_node_budget(&["--overlay", "base"]);
    assert!(
        mem > 32.0,
        "base footprint {mem:.2} GiB should exceed 32 GiB"
    );
    assert_eq!(code, 1, "{err}");
    let (code, mem, err) = single_node_budget(&[]);
    assert!(
        mem <= 24.0,
        "single-node-lowmem footprint {mem:.2} GiB should be <= 24 GiB"
    );
    assert_eq!(code, 0, "{err}");
}
