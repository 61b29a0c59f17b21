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

/// A chart whose env values come from a `{% for %}` loop after an `{% if %}` branch that writes the
/// same keys: decidable at the top level (`single`), undecidable inside a loop over workers.
fn branch_and_loop_repo() -> crate::harness::TempTree {
    let t = crate::harness::TempTree::new();
    t.write(
        "charts/app/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: app\nversion: 0.1.0\n",
    );
    t.write(
        "charts/app/values.yaml",
        r#"legacy: false
legacyEnv: {name: A, value: "1"}
env:
  - {name: A, value: "1"}
  - {name: B, value: "2"}
workers:
  - {name: a, legacy: true, env: [{name: X, value: "1"}]}
  - {name: b, legacy: false, env: [{name: MODE, value: legacy}, {name: Y, value: "2"}]}
"#,
    );
    // Lines 15-16: the branch not taken; 19-20: the loop that produced the values.
    t.write(
        "charts/app/templates/single.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: single
spec:
  selector: {matchLabels: {app: single}}
  template:
    metadata: {labels: {app: single}}
    spec:
      containers:
        - name: main
          image: example/app:1
          env:
{%- if values.legacy %}
            - name: {{ values.legacyEnv.name }}
              value: {{ values.legacyEnv.value | tojson }}
{%- endif %}
{%- for e in values.env %}
            - name: {{ e.name }}
              value: {{ e.value | tojson }}
{%- endfor %}
"#,
    );
    // Lines 17-18: a branch taken for worker a only; 21-22: the loop over a worker's env.
    t.write(
        "charts/app/templates/workers.yaml",
        r#"{%- for w in values.workers %}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ w.name }}
spec:
  selector: {matchLabels: {app: "{{ w.name }}"}}
  template:
    metadata: {labels: {app: "{{ w.name }}"}}
    spec:
      containers:
        - name: main
          image: example/app:1
          env:
{%- if w.legacy %}
            - name: MODE
              value: legacy
{%- endif %}
{%- for e in w.env %}
            - name: {{ e.name }}
              value: {{ e.value | tojson }}
{%- endfor %}
{%- endfor %}
"#,
    );
    t.write(
        "overlays/main/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [app]}\n",
    );
    t.write(
        "clusters/test.yaml",
        "apiVersion: pailot.dev/v1\nkind: Cluster\nname: test\noverlays: [main]\nmachines:\n  - {name: n1, address: 10.0.0.1, roles: [pai-worker], capacity: {memory: 8Gi, cpu: \"2\"}}\n",
    );
    t
}

/// Step 0 of `explain OBJECT POINTER -o json`.
fn first_step(t: &crate::harness::TempTree, object: &str, pointer: &str) -> Value {
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "-c",
            "clusters/test.yaml",
            object,
            pointer,
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fields: Value = serde_json::from_str(&r.stdout).unwrap();
    fields[0]["steps"][0].clone()
}

#[test]
fn explain_names_the_loop_that_produced_a_value_not_the_branch_that_was_not_taken() {
    let t = branch_and_loop_repo();
    let env = "/spec/template/spec/containers/0/env";
    // `values.legacy` is false: the branch's identical-looking lines 15-16 did not run.
    let step = first_step(&t, "Deployment/single", &format!("{env}/0/value"));
    assert_eq!(step["value"], "1", "{step}");
    assert_eq!(
        step["origin"]["template"], "charts/app/templates/single.yaml",
        "{step}"
    );
    assert_eq!(step["origin"]["line"], 20, "the loop's line: {step}");
    // The loop goes over values.env: the item that gives "1" is env.0 (not legacyEnv).
    assert_eq!(step["origin"]["by"], "values", "{step}");
    assert_eq!(step["origin"]["key"], "env.0.value", "{step}");
    assert_eq!(step["origin"]["file"], "charts/app/values.yaml", "{step}");
    let step = first_step(&t, "Deployment/single", &format!("{env}/1/name"));
    assert_eq!(step["origin"]["line"], 19, "{step}");
    assert_eq!(step["origin"]["key"], "env.1.name", "{step}");
}

#[test]
fn explain_says_the_line_is_unknown_when_a_loop_hides_which_branch_ran() {
    let t = branch_and_loop_repo();
    let env = "/spec/template/spec/containers/0/env";
    // Worker b: `w.legacy` is false, but pailot cannot evaluate a condition inside the loop; both
    // the branch (18) and the env loop (22) can write MODE=legacy.
    let step = first_step(&t, "Deployment/b", &format!("{env}/0/value"));
    assert_eq!(step["value"], "legacy", "{step}");
    assert_eq!(step["origin"]["by"], "templateUncertain", "{step}");
    assert_eq!(
        step["origin"]["candidates"],
        serde_json::json!([18, 22]),
        "{step}"
    );
    // The table says so in words.
    let r = pailot_in(
        t.path(),
        &[
            "explain",
            "-c",
            "clusters/test.yaml",
            "Deployment/b",
            &format!("{env}/0/value"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(
            "charts/app/templates/workers.yaml: line unknown, a loop or condition decides it (candidate lines 18, 22)"
        ),
        "{}",
        r.stdout
    );
    // Values only the loop can give are named by their line; the env loop goes over a loop
    // variable's list (w.env), so the item is found through both loops.
    let step = first_step(&t, "Deployment/b", &format!("{env}/1/value"));
    assert_eq!(step["origin"]["line"], 22, "{step}");
    assert_eq!(step["origin"]["key"], "workers.1.env.1.value", "{step}");
}
