//! Overlay behaviour through `pailot render`: one fixture repository per behaviour and error path.
//!
//! Each case under `tests/fixtures/overlays/<case>/` is laid over `tests/fixtures/overlays/_common/`
//! (charts `web`, `db`, `agent`, overlay `all`, cluster `clusters/test.yaml` using overlay `main`).

use std::path::Path;

use serde_json::Value;

use crate::harness::{Run, TempTree, pailot_in, repo_root};

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A temporary repository: the common fixture with `case` laid over it.
pub fn fixture_repo(case: &str) -> TempTree {
    let base = repo_root().join("tests/fixtures/overlays");
    assert!(base.join(case).is_dir(), "no fixture {case}");
    let t = TempTree::new();
    copy_dir(&base.join("_common"), t.path());
    copy_dir(&base.join(case), t.path());
    t
}

/// `pailot ARGS` in the fixture repository of `case`.
pub fn run_case(case: &str, args: &[&str]) -> Run {
    let t = fixture_repo(case);
    pailot_in(t.path(), args)
}

/// Render `case` as JSON and return the objects.
pub fn render_case(case: &str) -> Vec<Value> {
    let r = run_case(
        case,
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    assert_eq!(r.code, 0, "render {case} failed: {}", r.stderr);
    serde_json::from_str(&r.stdout).expect("render -o json prints JSON")
}

pub fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(objs, kind, name).unwrap_or_else(|| panic!("no {kind}/{name} in the render"))
}

/// Render `case`, expect exit 2 and every needle in stderr (file, place, object).
fn expect_error(case: &str, needles: &[&str]) -> String {
    let r = run_case(case, &["render", "--cluster", "clusters/test.yaml"]);
    assert_eq!(
        r.code, 2,
        "{case}: expected exit 2, got {}\nstderr: {}",
        r.code, r.stderr
    );
    assert!(r.stdout.is_empty(), "{case}: nothing on stdout on error");
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "{case}: stderr lacks {n:?}:\n{}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("panicked"),
        "{case}: panic: {}",
        r.stderr
    );
    r.stderr
}

#[test]
fn overlay_replaces_memory_request() {
    let objs = render_case("overlay-replaces-memory-request");
    let web = get(&objs, "Deployment", "web");
    assert_eq!(
        web.pointer("/spec/template/spec/containers/0/resources/requests/memory")
            .unwrap(),
        "512Mi"
    );
    // Untouched siblings and other objects keep their chart values.
    assert_eq!(
        web.pointer("/spec/template/spec/containers/0/resources/requests/cpu")
            .unwrap(),
        "100m"
    );
    assert_eq!(
        get(&objs, "DaemonSet", "agent")
            .pointer("/spec/template/spec/containers/0/resources/requests/memory")
            .unwrap(),
        "256Mi"
    );
}

#[test]
fn extends_applies_parents_first_each_once() {
    // main extends [b, c]; c extends [all, b]: order all, b, c, main. The test op in main checks the
    // patch order (b adds, c replaces); values merge in the same order (c's replicas win).
    let objs = render_case("extends-applies-parents-first-each-once");
    let web = get(&objs, "Deployment", "web");
    assert_eq!(web.pointer("/metadata/labels/order").unwrap(), "b-c");
    assert_eq!(web.pointer("/spec/replicas").unwrap(), 3);
}

#[test]
fn charts_include_exclude_accumulate() {
    // all includes *, no-db excludes db and web, main includes db back and excludes agent.
    let objs = render_case("charts-include-exclude-accumulate");
    let charts: std::collections::BTreeSet<&str> = objs
        .iter()
        .map(|o| {
            o.pointer("/metadata/labels/pailot.dev~1chart")
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(charts.into_iter().collect::<Vec<_>>(), ["db"]);
}

#[test]
fn values_merge_star_then_chart_then_cluster() {
    let objs = render_case("values-merge-star-then-chart-then-cluster");
    let web = get(&objs, "Deployment", "web");
    assert_eq!(
        web.pointer("/spec/template/spec/containers/0/resources/requests/memory")
            .unwrap(),
        "3Gi"
    );
    assert_eq!(web.pointer("/metadata/labels/tier").unwrap(), "star");
    let db = get(&objs, "StatefulSet", "db");
    assert_eq!(
        db.pointer("/spec/template/spec/containers/0/resources/limits/memory")
            .unwrap(),
        "4Gi"
    );
    assert_eq!(db.pointer("/metadata/labels/tier").unwrap(), "from-cluster");
}

#[test]
fn selectors_pick_objects_by_labels_and_annotations() {
    let objs = render_case("selectors-pick-objects-by-labels-and-annotations");
    let label = |kind: &str, name: &str, l: &str| {
        get(&objs, kind, name)["metadata"]["labels"].get(l).cloned()
    };
    assert_eq!(label("DaemonSet", "agent", "selected"), Some("yes".into()));
    assert_eq!(label("StatefulSet", "db", "selected"), None);
    assert_eq!(label("Deployment", "web", "selected"), None);
    assert_eq!(label("Service", "web", "untiered"), Some("yes".into()));
    assert_eq!(
        label("ConfigMap", "db-config", "untiered"),
        Some("yes".into())
    );
    assert_eq!(label("Deployment", "web", "untiered"), None);
    assert_eq!(label("Deployment", "web", "workload"), Some("yes".into()));
    assert_eq!(label("StatefulSet", "db", "workload"), Some("yes".into()));
    assert_eq!(label("DaemonSet", "agent", "workload"), None);
    assert_eq!(
        label("ConfigMap", "db-config", "chart-db"),
        Some("yes".into())
    );
    assert_eq!(label("Service", "web", "chart-db"), None);
}

#[test]
fn target_regex_is_anchored() {
    let objs = render_case("target-regex-is-anchored");
    assert!(
        objs.iter()
            .all(|o| o["metadata"]["labels"].get("partial").is_none())
    );
    let anchored: Vec<String> = objs
        .iter()
        .filter(|o| o["metadata"]["labels"].get("anchored").is_some())
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        anchored,
        ["Deployment/web", "Service/web", "StatefulSet/db"]
    );
}

#[test]
fn patch_file_beside_overlay() {
    let objs = render_case("patch-file-beside-overlay");
    assert_eq!(
        get(&objs, "StatefulSet", "db")
            .pointer("/spec/template/spec/containers/0/resources/limits/memory")
            .unwrap(),
        "1Gi"
    );
}

#[test]
fn all_six_ops_apply_in_order() {
    let objs = render_case("all-six-ops-apply-in-order");
    let web = get(&objs, "Deployment", "web");
    let containers = web
        .pointer("/spec/template/spec/containers")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "sidecar");
    // copy ran before remove: the sidecar has the cpu request, the web container lost it.
    assert_eq!(containers[1]["resources"]["requests"]["cpu"], "100m");
    assert!(containers[0]["resources"]["requests"].get("cpu").is_none());
    assert!(web["metadata"]["labels"].get("tier").is_none());
    assert_eq!(web["metadata"]["labels"]["layer"], "web");
    assert_eq!(web["spec"]["replicas"], 2);
}

#[test]
fn optional_target_matching_nothing_is_fine() {
    let objs = render_case("optional-target-matching-nothing-is-fine");
    assert_eq!(objs.len(), 5);
}

#[test]
fn target_matching_nothing_is_an_error() {
    expect_error(
        "target-matching-nothing-is-an-error",
        &[
            "overlays/main/overlay.yaml:7",
            "patch 1",
            "name=webb",
            "matches no rendered object",
        ],
    );
}

#[test]
fn extends_cycle_is_rejected() {
    expect_error(
        "extends-cycle-is-rejected",
        &[
            "overlays/loop-b/overlay.yaml",
            "extends[0]",
            "main -> loop-a -> loop-b -> main",
        ],
    );
}

#[test]
fn unknown_overlay_in_extends_is_an_error() {
    expect_error(
        "unknown-overlay-in-extends-is-an-error",
        &["overlays/main/overlay.yaml", "extends[1]", "does-not-exist"],
    );
}

#[test]
fn failing_op_names_patch_op_pointer_and_object() {
    expect_error(
        "failing-op-names-patch-op-pointer-and-object",
        &[
            "overlays/main/overlay.yaml:11",
            "patch 1 op 1",
            "/spec/template/spec/containers/3",
            "StatefulSet/default/db",
        ],
    );
}

#[test]
fn failing_test_op_is_an_error() {
    expect_error(
        "failing-test-op-is-an-error",
        &[
            "overlays/main/overlay.yaml:7",
            "patch 0 op 0",
            "resources/requests/memory",
            "DaemonSet/default/agent",
            "test failed",
        ],
    );
}

#[test]
fn invalid_json_pointer_is_an_error() {
    expect_error(
        "invalid-json-pointer-is-an-error",
        &[
            "overlays/main/overlay.yaml:7",
            "patch 0 op 0",
            "spec/replicas",
            "not a JSON pointer",
        ],
    );
}

#[test]
fn invalid_target_regex_is_an_error() {
    expect_error(
        "invalid-target-regex-is-an-error",
        &[
            "overlays/main/overlay.yaml:5",
            "patch 0 target.kind",
            "regex",
        ],
    );
}

#[test]
fn invalid_label_selector_is_an_error() {
    expect_error(
        "invalid-label-selector-is-an-error",
        &[
            "overlays/main/overlay.yaml:5",
            "patch 0 target.labelSelector",
            "app in (web",
        ],
    );
}

#[test]
fn unknown_chart_in_include_is_an_error() {
    expect_error(
        "unknown-chart-in-include-is-an-error",
        &["overlays/main/overlay.yaml", "charts.include[1]", "wbe"],
    );
}

#[test]
fn unknown_overlay_field_is_an_error() {
    expect_error(
        "unknown-overlay-field-is-an-error",
        &["overlays/main/overlay.yaml:4:1", "unknown field `pathces`"],
    );
}

#[test]
fn unknown_op_field_is_an_error() {
    expect_error(
        "unknown-op-field-is-an-error",
        &["overlays/main/overlay.yaml:7", "unknown field `valeu`"],
    );
}

#[test]
fn overlay_yaml_syntax_error_has_line() {
    expect_error(
        "overlay-yaml-syntax-error-has-line",
        &["overlays/main/overlay.yaml:4"],
    );
}

#[test]
fn missing_patch_file_is_an_error() {
    expect_error(
        "missing-patch-file-is-an-error",
        &[
            "overlays/main/overlay.yaml:5",
            "patch 0 file",
            "overlays/main/patches/nope.yaml",
        ],
    );
}

#[test]
fn patch_file_outside_overlay_is_rejected() {
    expect_error(
        "patch-file-outside-overlay-is-rejected",
        &[
            "overlays/main/overlay.yaml:5",
            "patch 0 file",
            "inside the overlay directory",
        ],
    );
}

#[test]
fn patch_with_ops_and_file_is_an_error() {
    expect_error(
        "patch-with-ops-and-file-is-an-error",
        &["overlays/main/overlay.yaml:5", "patch 0", "not both"],
    );
}

#[test]
fn values_violating_schema_are_an_error() {
    expect_error(
        "values-violating-schema-are-an-error",
        &["overlays/main/overlay.yaml", "/replicas", "chart web"],
    );
}

#[test]
fn duplicate_object_across_charts_is_an_error() {
    expect_error(
        "duplicate-object-across-charts-is-an-error",
        &[
            "charts/web/templates/web.yaml",
            "charts/web-copy/templates/svc.yaml",
            "Service/default/web",
        ],
    );
}

#[test]
fn patch_renaming_into_duplicate_is_an_error() {
    expect_error(
        "patch-renaming-into-duplicate-is-an-error",
        &[
            "overlays/main/overlay.yaml:5",
            "patch 0",
            "ConfigMap/default/db-config",
            "charts/db/templates/db.yaml",
            "charts/web/templates/web.yaml",
        ],
    );
}

#[test]
fn depends_on_cycle_is_rejected() {
    expect_error(
        "depends-on-cycle-is-rejected",
        &[
            "charts/",
            "Chart.yaml",
            "dependsOn",
            "agent -> db -> web -> agent",
        ],
    );
}

#[test]
fn cluster_file_error_has_line() {
    expect_error(
        "cluster-file-error-has-line",
        &["clusters/test.yaml:10:5", "unknown field `colour`"],
    );
}

#[test]
fn overlay_flag_replaces_cluster_overlays_and_unknown_names_the_flag() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(
        t.path(),
        &[
            "render",
            "--cluster",
            "clusters/test.yaml",
            "--overlay",
            "all",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let objs: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        get(&objs, "Deployment", "web")
            .pointer("/spec/template/spec/containers/0/resources/requests/memory")
            .unwrap(),
        "1Gi"
    );
    let r = pailot_in(
        t.path(),
        &[
            "render",
            "--cluster",
            "clusters/test.yaml",
            "--overlay",
            "nope",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--overlay")
            && r.stderr.contains("overlays[0]")
            && r.stderr.contains("nope"),
        "{}",
        r.stderr
    );
}

/// Property tests: overlay + patch application and YAML loading never panic, and errors are
/// `InputError`s. Run longer with `PROPTEST_CASES=5000 cargo test --test it fuzz`.
mod fuzz {
    use std::collections::BTreeMap;

    use pailot::manifest::{ObjectId, RenderedObject};
    use pailot::overlay::{self, PatchOp, patch};
    use pailot::provenance::{FieldHistory, Origin};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const TOKENS: &[&str] = &["a", "b", "c", "0", "1", "2", "-", "~0", "~1", "x y", ""];

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..5).prop_map(|i| json!(i)),
            prop::sample::select(vec!["a", "1Gi", "", "~", "/"]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "c", "0", "~", "x/y"]),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    fn arb_pointer() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::collection::vec(prop::sample::select(TOKENS.to_vec()), 0..4)
                .prop_map(|t| t.iter().map(|s| format!("/{s}")).collect::<String>()),
            1 => "[a-z/~0-9]{0,6}",
        ]
    }

    fn arb_op() -> impl Strategy<Value = PatchOp> {
        (0..6u8, arb_pointer(), arb_pointer(), arb_json()).prop_map(
            |(k, path, from, value)| match k {
                0 => PatchOp::Add { path, value },
                1 => PatchOp::Remove { path },
                2 => PatchOp::Replace { path, value },
                3 => PatchOp::Move { from, path },
                4 => PatchOp::Copy { from, path },
                _ => PatchOp::Test { path, value },
            },
        )
    }

    fn leaves(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
        let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
        match v {
            Value::Object(m) if !m.is_empty() => m
                .iter()
                .for_each(|(k, c)| leaves(c, format!("{path}/{}", esc(k)), out)),
            Value::Array(a) if !a.is_empty() => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| leaves(c, format!("{path}/{i}"), out)),
            _ => out.push((path, v.clone())),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ))]

        /// Ops apply like plain json-patch, leave the object unchanged on error, and the recorded
        /// provenance always ends with each scalar leaf's final value.
        #[test]
        fn ops_apply_atomically_and_provenance_tracks_final_values(doc in arb_json(), ops in prop::collection::vec(arb_op(), 1..8)) {
            let mut origins = BTreeMap::new();
            let mut base = Vec::new();
            leaves(&doc, String::new(), &mut base);
            for (p, _) in &base {
                origins.insert(p.clone(), Origin::Template { file: "t.yaml".into(), line: Some(1) });
            }
            let mut history = FieldHistory::from_origins(origins);
            let (mut with, mut plain) = (doc.clone(), doc.clone());
            for (i, op) in ops.iter().enumerate() {
                let Ok(compiled) = op.compile() else { continue };
                let origin = std::sync::Arc::new(Origin::Overlay {
                    overlay: "o".into(), file: "o.yaml".into(), patch: 0, op: i, op_kind: op.kind().into(), line: None, from: None,
                });
                let before = with.clone();
                let r1 = patch::apply_op(&mut with, &compiled, Some(patch::Recorder { history: &mut history, seq: i as u32 + 1, origin: &origin }));
                let r2 = patch::apply_op(&mut plain, &compiled, None);
                prop_assert_eq!(r1.is_ok(), r2.is_ok());
                prop_assert_eq!(&with, &plain);
                if r1.is_err() {
                    prop_assert_eq!(&with, &before);
                }
            }
            let mut now = Vec::new();
            leaves(&with, String::new(), &mut now);
            for (p, v) in now {
                let chain = history.chain(&with, &p);
                if v.is_object() || v.is_array() {
                    continue; // an emptied container keeps the step that last set it whole
                }
                prop_assert!(!chain.is_empty() || base.is_empty(), "no provenance for {}", p);
                if let Some(last) = chain.last() {
                    prop_assert_eq!(last.value.as_ref(), Some(&v), "pointer {} chain {:?}", p, chain);
                }
            }
            let _ = history.pointers_under(&with, "");
        }

        /// Arbitrary text never panics the YAML loaders; errors name the file.
        #[test]
        fn yaml_loading_never_panics(text in "(?s).{0,200}") {
            if let Err(e) = overlay::parse_yaml::<overlay::Overlay>(&text, "overlays/f/overlay.yaml") {
                prop_assert_eq!(e.file.to_str(), Some("overlays/f/overlay.yaml"));
            }
            let _ = overlay::parse_yaml::<pailot::cluster::Cluster>(&text, "clusters/f.yaml");
            let _ = pailot::chart::parse_yaml_documents(&text, "charts/f/templates/f.yaml");
        }

        /// Overlay-shaped YAML built from fragments loads and applies without panicking.
        #[test]
        fn overlay_files_load_and_apply_without_panicking(
            target in prop::sample::select(vec![
                "{kind: Deployment}", "{name: 'we.*'}", "{labelSelector: 'app in (web'}", "{kind: '('}",
                "{annotationSelector: '!a,b notin (c)'}", "{}", "{chart: web, namespace: default}", "[1]",
            ]),
            ops in prop::collection::vec(arb_op(), 0..4),
            optional in any::<bool>(),
            junk in prop::sample::select(vec!["", "extends: [self]\n", "extends: [../x]\n", "charts: {include: ['*']}\n", "values: {'*': 1}\n", "patches: 3\n"]),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ops_yaml = serde_json::to_string(&ops).unwrap();
            let text = format!("apiVersion: pailot.dev/v1\nkind: Overlay\n{junk}patches:\n  - target: {target}\n    optional: {optional}\n    ops: {ops_yaml}\n");
            let p = dir.path().join("overlays/self/overlay.yaml");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &text).unwrap();
            let loaded = match overlay::resolve(dir.path(), &["self".to_string()], "clusters/c.yaml") {
                Ok(l) => l,
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    return Ok(());
                }
            };
            let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}}, "spec": {"replicas": 1, "c": [1, 2]}});
            let id = ObjectId::of(&obj).unwrap();
            let mut objects = BTreeMap::from([(id.clone(), RenderedObject { chart: "web".into(), template: "t".into(), object: obj })]);
            let mut histories = BTreeMap::from([(id, FieldHistory::default())]);
            if let Err(e) = overlay::apply_patches(&loaded, &mut objects, Some(&mut histories)) {
                prop_assert!(e.file.to_str().unwrap().starts_with("overlays/self/"), "{}", e);
            }
        }
    }
}
