//! `pailot schema`: generated JSON Schemas are current, and `--check` catches stale ones.

use crate::harness::{TempTree, pailot, pailot_in};

#[test]
fn checked_in_schemas_are_current() {
    let r = pailot(&["schema", "--out", "schemas", "--check"]);
    assert_eq!(
        r.code, 0,
        "run `pailot schema --out schemas/`: {}{}",
        r.stdout, r.stderr
    );
}

#[test]
fn write_then_check_then_detect_stale() {
    let t = TempTree::new();
    let w = pailot_in(t.path(), &["schema", "--out", "out"]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    for f in [
        "chart.schema.json",
        "cluster.schema.json",
        "overlay.schema.json",
        "daemon-config.schema.json",
    ] {
        let text = std::fs::read_to_string(t.path().join("out").join(f)).unwrap();
        assert!(text.ends_with("}\n"), "{f}");
        let _: serde_json::Value = serde_json::from_str(&text).unwrap();
    }
    let again = std::fs::read(t.path().join("out/cluster.schema.json")).unwrap();
    assert_eq!(
        pailot_in(t.path(), &["schema", "--out", "out", "--check"]).code,
        0
    );
    std::fs::write(t.path().join("out/cluster.schema.json"), b"{}\n").unwrap();
    let c = pailot_in(t.path(), &["schema", "--out", "out", "--check"]);
    assert_eq!(c.code, 1);
    assert!(c.stderr.contains("cluster.schema.json"), "{}", c.stderr);
    pailot_in(t.path(), &["schema", "--out", "out"]);
    assert_eq!(
        std::fs::read(t.path().join("out/cluster.schema.json")).unwrap(),
        again,
        "deterministic"
    );
}
