//! Golden renders of the shipped overlay combinations: the full `pailot render` output is checked in.
//!
//! After an intended change to charts/overlays/clusters, regenerate with
//! `PAILOT_BLESS=1 cargo test --test it golden` and review the diff of `tests/golden/`.

use crate::harness::{assert_text_eq, pailot, repo_root};

fn golden(name: &str, args: &[&str]) {
    let r = pailot(args);
    assert_eq!(r.code, 0, "pailot {}: {}", args.join(" "), r.stderr);
    let path = repo_root()
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("PAILOT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &r.stdout).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate with PAILOT_BLESS=1 cargo test --test it golden)",
            path.display()
        )
    });
    assert_text_eq(
        &expected,
        &r.stdout,
        &format!("golden {name} (PAILOT_BLESS=1 to regenerate)"),
    );
}

#[test]
fn golden_single_node() {
    golden(
        "single-node",
        &["render", "--cluster", "clusters/single-node.yaml"],
    );
}

#[test]
fn golden_single_node_base_only() {
    golden(
        "single-node-base",
        &[
            "render",
            "--cluster",
            "clusters/single-node.yaml",
            "--overlay",
            "base",
        ],
    );
}

#[test]
fn golden_three_node() {
    golden(
        "three-node",
        &["render", "--cluster", "clusters/three-node.yaml"],
    );
}

#[test]
fn golden_single_node_gpu() {
    golden(
        "single-node-gpu",
        &["render", "--cluster", "clusters/single-node-gpu.yaml"],
    );
}

#[test]
fn golden_two_node_gpu() {
    golden(
        "two-node-gpu",
        &["render", "--cluster", "clusters/two-node-gpu.yaml"],
    );
}
