//! `pailot init --from quick-start.yaml`: paictl quick-start -> Cluster file, never a password.

use crate::harness::{TempTree, pailot_in};

#[test]
fn password_is_never_written_nor_printed_and_the_user_is_told_why() {
    let t = TempTree::new();
    t.write(
        "quick-start.yaml",
        "machines:\n  - 192.168.10.5\nssh-username: pai\nssh-password: Sup3r-S3cret-Pw\nssh-port: 22\ndns: 192.168.10.1\nservice-cluster-ip-range: 10.96.0.0/16\n",
    );
    let r = pailot_in(
        t.path(),
        &[
            "init",
            "--from",
            "quick-start.yaml",
            "-o",
            "clusters/lab.yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = std::fs::read_to_string(t.path().join("clusters/lab.yaml")).unwrap();
    assert!(!written.contains("Sup3r-S3cret-Pw"));
    assert!(!r.stdout.contains("Sup3r-S3cret-Pw") && !r.stderr.contains("Sup3r-S3cret-Pw"));
    assert!(
        r.stderr.contains("ssh-password is NOT written"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("git"),
        "the warning says why: {}",
        r.stderr
    );
    let cluster: pailot::cluster::Cluster = serde_saphyr::from_str(&written).unwrap();
    assert_eq!(cluster.name, "lab");
    assert_eq!(
        cluster.overlays,
        vec!["base".to_string(), "single-node-lowmem".into()]
    );
    assert_eq!(cluster.kubernetes.service_cluster_ip_range, "10.96.0.0/16");
    assert_eq!(cluster.machines[0].address, "192.168.10.5");
    assert!(
        written.contains("PLACEHOLDER"),
        "capacity placeholders are flagged"
    );
    // The generated file renders with the shipped charts' cluster loader.
    pailot::render::load_cluster(&t.path().join("clusters/lab.yaml"), "clusters/lab.yaml").unwrap();
}

#[test]
fn stdout_by_default_and_bad_input_exits_2() {
    let t = TempTree::new();
    t.write("qs.yaml", "machines: [10.0.0.1, 10.0.0.2, 10.0.0.3]\nssh-username: ops\nssh-keyfile-path: ~/.ssh/id_ed25519\n");
    let r = pailot_in(t.path(), &["init", "--from", "qs.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c: pailot::cluster::Cluster = serde_saphyr::from_str(&r.stdout).unwrap();
    assert_eq!(c.overlays, vec!["base".to_string()]);
    assert_eq!(c.machines.len(), 3);
    assert_eq!(
        c.machines[0].roles,
        vec![
            pailot::cluster::Role::K8sMaster,
            pailot::cluster::Role::PaiMaster,
            pailot::cluster::Role::Dashboard
        ]
    );
    assert!(!r.stderr.contains("NOT written"));

    t.write(
        "bad.yaml",
        "machines: [10.0.0.1]\nssh-username: ops\nssh-passwd: typo\n",
    );
    let r = pailot_in(t.path(), &["init", "--from", "bad.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("bad.yaml:3"), "{}", r.stderr);
}

#[test]
fn output_file_is_not_overwritten_without_force() {
    let t = TempTree::new();
    t.write("qs.yaml", "machines: [10.0.0.1]\nssh-username: ops\n");
    let existing = t.write("clusters/lab.yaml", "# hand-edited, keep me\n");
    let args = ["init", "--from", "qs.yaml", "-o", "clusters/lab.yaml"];
    let r = pailot_in(t.path(), &args);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("clusters/lab.yaml") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "# hand-edited, keep me\n"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = pailot_in(t.path(), &forced);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = std::fs::read_to_string(&existing).unwrap();
    assert!(written.contains("kind: Cluster"), "{written}");
}
