//! `pailot explain`: the provenance chain of fields, from template/values through overlay ops.

use serde_json::Value;

use crate::harness::pailot_in;
use crate::overlay::fixture_repo;

const MEM: &str = "/spec/template/spec/containers/0/resources/requests/memory";

#[test]
fn explain_shows_template_value_then_overlay_replacement() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "Deployment/web",
            MEM,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("POINTER") && lines[0].contains("ORIGIN"),
        "{}",
        r.stdout
    );
    assert!(
        lines[1].starts_with(MEM) && lines[1].contains("1Gi"),
        "{}",
        r.stdout
    );
    // The base step names the values file key or the template line that wrote it.
    assert!(lines[1].contains("charts/web/"), "{}", r.stdout);
    assert!(
        lines[2].contains("replace") && lines[2].contains("512Mi"),
        "{}",
        r.stdout
    );
    assert!(
        lines[2].contains("overlays/main/overlay.yaml patch 0 op 0"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("replaced with 512Mi by overlays/main/overlay.yaml patch 0 op 0"),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_json_lists_every_leaf_below_a_subtree() {
    let t = fixture_repo("all-six-ops-apply-in-order");
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "deployment/web.default",
            "/spec/template/spec/containers",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fields: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    let pointers: Vec<&str> = fields
        .iter()
        .map(|f| f["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/spec/template/spec/containers/1/name"),
        "{pointers:?}"
    );
    assert!(
        pointers.contains(&"/spec/template/spec/containers/0/image"),
        "{pointers:?}"
    );
    let field = |p: &str| {
        fields
            .iter()
            .find(|f| f["pointer"] == p)
            .unwrap_or_else(|| panic!("no {p}"))
    };
    // The sidecar came from the add op (op 1), its resources from the copy op (op 2).
    let name = &field("/spec/template/spec/containers/1/name")["steps"];
    assert_eq!(
        name.as_array().unwrap().last().unwrap()["origin"]["opKind"],
        "add"
    );
    assert_eq!(name.as_array().unwrap().last().unwrap()["value"], "sidecar");
    let cpu = &field("/spec/template/spec/containers/1/resources/requests/cpu")["steps"];
    let last = cpu.as_array().unwrap().last().unwrap();
    assert_eq!(last["origin"]["opKind"], "copy");
    assert_eq!(last["origin"]["op"], 2);
    assert_eq!(last["value"], "100m");
    // The removed request is listed, with its template value and the remove step.
    let removed = field("/spec/template/spec/containers/0/resources/requests/cpu")["steps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(removed[0]["value"], "100m");
    assert_eq!(removed.last().unwrap()["origin"]["opKind"], "remove");
    assert!(removed.last().unwrap()["value"].is_null());
}

#[test]
fn explain_moved_label_records_both_ends() {
    let t = fixture_repo("all-six-ops-apply-in-order");
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "Deployment/web",
            "/metadata/labels",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fields: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    let steps = |p: &str| {
        fields.iter().find(|f| f["pointer"] == p).unwrap()["steps"]
            .as_array()
            .unwrap()
            .clone()
    };
    let from = steps("/metadata/labels/tier");
    assert_eq!(from.last().unwrap()["origin"]["opKind"], "move");
    assert!(from.last().unwrap()["value"].is_null());
    let to = steps("/metadata/labels/layer");
    assert_eq!(
        to.last().unwrap()["origin"]["from"],
        "/metadata/labels/tier"
    );
    assert_eq!(to.last().unwrap()["value"], "web");
}

#[test]
fn explain_unknown_object_lists_close_matches() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "Deployment/wbe",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("Deployment/wbe") && r.stderr.contains("Deployment/web.default"),
        "{}",
        r.stderr
    );
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "Deployment/web",
            "/spec/nope",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/spec/nope"), "{}", r.stderr);
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "Deployment/web",
            "spec",
        ],
    );
    assert_eq!(r.code, 2);
}

#[test]
fn explain_without_pointer_covers_the_whole_object() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(
        t.path(),
        &["explain", "--cluster", "clusters/test.yaml", "Service/web"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for p in ["/apiVersion", "/metadata/name", "/spec/ports/0/port"] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(p)),
            "{p} missing:\n{}",
            r.stdout
        );
    }
}

#[test]
fn explain_lists_every_value_layer_that_set_a_key() {
    let t = fixture_repo("values-merge-star-then-chart-then-cluster");
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "--cluster",
            "clusters/test.yaml",
            "StatefulSet/db",
            "/metadata/labels/tier",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fields: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    let steps = fields[0]["steps"].as_array().unwrap();
    let got: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["origin"]["file"].as_str().unwrap(),
                s["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("charts/db/values.yaml", "db"),
            ("overlays/main/overlay.yaml", "star"),
            ("clusters/test.yaml", "from-cluster"),
        ]
    );
    assert!(
        steps
            .iter()
            .all(|s| s["origin"]["by"] == "values" && s["origin"]["key"] == "tier")
    );
}
