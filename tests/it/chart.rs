//! Charts: loading, rendering (context, filters, files, partials), errors, values, lint and package.

use std::path::{Path, PathBuf};

use pailot::chart::{
    self, Chart, MergedValues, RenderContext, RenderedDoc, ValueLayer, load_chart, merge_values,
    render_chart, validate_values,
};
use pailot::provenance::Origin;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::{TempTree, pailot, pailot_in, repo_root};

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

fn fixture(name: &str) -> Chart {
    load_chart(&fixtures(), &fixtures().join("charts").join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn ctx() -> RenderContext {
    let cluster = chart::lint::sample_cluster();
    RenderContext {
        cluster: cluster.template_context(),
        release: json!({"name": "demo", "namespace": "pai", "revision": "abc123"}),
        record_origins: true,
    }
}

fn render_with(
    c: &Chart,
    extra: Vec<ValueLayer>,
) -> (
    MergedValues,
    Result<Vec<RenderedDoc>, pailot::diag::InputError>,
) {
    let mut layers = vec![c.default_layer()];
    layers.extend(extra);
    let merged = merge_values(&layers);
    let docs = render_chart(c, &merged, &ctx());
    (merged, docs)
}

fn find<'a>(docs: &'a [RenderedDoc], kind: &str, name: &str) -> &'a RenderedDoc {
    docs.iter()
        .find(|d| d.object["kind"] == kind && d.object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

#[test]
fn unchanged_openpai_template_reads_cluster_cfg_as_top_level_variable() {
    let c = fixture("openpai-template-reads-cluster-cfg");
    let (_, docs) = render_with(&c, vec![]);
    let docs = docs.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1);
    let ds = &docs[0];
    assert_eq!(
        ds.template,
        "charts/openpai-template-reads-cluster-cfg/templates/zookeeper.yaml.template"
    );
    let o = &ds.object;
    assert_eq!(
        o.pointer("/spec/template/spec/volumes/0/hostPath/path"),
        Some(&json!("/datastorage/zoodata"))
    );
    assert_eq!(
        o.pointer("/spec/template/spec/containers/0/image"),
        Some(&json!("openpai/zookeeper:v0.14.0"))
    );
    assert_eq!(
        o.pointer("/metadata/namespace"),
        Some(&json!("pai")),
        "namespaced objects get release.namespace"
    );
    assert_eq!(
        o.pointer("/metadata/labels/pailot.dev~1chart"),
        Some(&json!("openpai-template-reads-cluster-cfg"))
    );
    // Provenance: the memory limit came from values.yaml's cluster_cfg.zookeeper.memory on template line 20.
    match &ds.origins["/spec/template/spec/containers/0/resources/limits/memory"] {
        Origin::Values {
            file, key, line, ..
        } => {
            assert_eq!(
                file,
                "charts/openpai-template-reads-cluster-cfg/values.yaml"
            );
            assert_eq!(key, "cluster_cfg.zookeeper.memory");
            assert_eq!(*line, Some(20));
        }
        other => panic!("unexpected origin {other:?}"),
    }
    assert_eq!(
        ds.origins["/metadata/namespace"],
        Origin::Template {
            file: ds.template.clone(),
            line: None
        },
        "a defaulted namespace has no template line"
    );
    match &ds.origins["/spec/template/spec/hostNetwork"] {
        Origin::Template { line, .. } => assert_eq!(*line, Some(14)),
        other => panic!("unexpected origin {other:?}"),
    }
}

#[test]
fn unchanged_openpai_template_builds_a_list_with_append_like_jinja2() {
    let name = "openpai-data-node-builds-list-with-append";
    let c = fixture(name);
    let (_, docs) = render_with(&c, vec![]);
    let docs = docs.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1);
    let got = &docs[0].object;
    assert_eq!(
        got.pointer("/spec/template/spec/containers/0/env/2/value"),
        Some(&json!(
            "file:///var/lib/hdfs/data-1,file:///var/lib/hdfs/data-2"
        ))
    );
    // What Jinja2 3.1 (paictl's engine) renders from the same template and values.
    let text = std::fs::read_to_string(fixtures().join(format!("jinja2/{name}.out"))).unwrap();
    let mut want: Value = serde_saphyr::from_str(&text).unwrap();
    want["metadata"]["namespace"] = json!("pai");
    want["metadata"]["labels"] = json!({"pailot.dev/chart": name});
    assert_eq!(got, &want);
}

#[test]
fn context_filters_partials_files_and_scoping() {
    let c = fixture("files-and-filters");
    assert!(
        c.rendered_templates()
            .all(|t| t.name != "NOTES.txt" && t.name != "_helpers.j2")
    );
    let (_, docs) = render_with(&c, vec![]);
    let docs = docs.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        docs.len(),
        6,
        "{:#?}",
        docs.iter()
            .map(|d| &d.object["metadata"]["name"])
            .collect::<Vec<_>>()
    );

    let cm = &find(&docs, "ConfigMap", "web-config").object;
    assert_eq!(cm["metadata"]["labels"]["app"], "web");
    assert_eq!(cm["metadata"]["labels"]["chart"], "files-and-filters-1.2.3");
    let config: Value =
        chart::parse_yaml_documents(cm["data"]["config.yaml"].as_str().unwrap(), "x")
            .unwrap()
            .remove(0);
    assert_eq!(
        config,
        json!({"enabled": "yes", "port": 9090, "mode": "0644"}),
        "to_yaml quotes YAML 1.1 booleans"
    );
    assert_eq!(cm["data"]["dashboard.json"], "{\"title\": \"dash\"}\n");
    assert_eq!(cm["data"]["a.yml"], "groups:\n- name: a\n");
    assert_eq!(cm["data"]["b.yml"], "groups:\n- name: b\n");
    assert!(
        cm["data"].get("c.yml").is_none(),
        "glob * does not cross directories"
    );
    assert_eq!(cm["data"]["release"], "demo-abc123");
    assert_eq!(cm["data"]["master"], "10.0.0.11");
    let checksum = cm["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .unwrap();
    assert_eq!(checksum.len(), 64);
    assert!(checksum.bytes().all(|b| b.is_ascii_hexdigit()));

    let secret = &find(&docs, "Secret", "web-secret").object;
    assert_eq!(
        secret["metadata"]["namespace"], "other",
        "an explicit namespace is kept"
    );
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    assert_eq!(secret["data"]["roundtrip"], "s3cret");

    let dep = &find(&docs, "Deployment", "web").object;
    assert_eq!(
        dep["metadata"]["labels"],
        json!({"tier": "web", "pailot.dev/chart": "files-and-filters"})
    );

    for (kind, name) in [
        ("CustomResourceDefinition", "widgets.example.com"),
        ("Widget", "global-widget"),
        ("ClusterRole", "web-reader"),
    ] {
        let o = &find(&docs, kind, name).object;
        assert!(
            o["metadata"].get("namespace").is_none(),
            "{kind} is cluster-scoped"
        );
        assert_eq!(
            o["metadata"]["labels"]["pailot.dev/chart"],
            "files-and-filters"
        );
    }
}

#[test]
fn values_provenance_names_the_layer_that_set_the_key() {
    let c = fixture("files-and-filters");
    let overlay = ValueLayer {
        file: "overlays/small/overlay.yaml".into(),
        key_prefix: "values.files-and-filters".into(),
        values: json!({"memory": "256Mi"}),
        secret: Default::default(),
    };
    let (merged, docs) = render_with(&c, vec![overlay]);
    validate_values(&c, &merged).unwrap();
    let docs = docs.unwrap();
    let dep = find(&docs, "Deployment", "web");
    assert_eq!(
        dep.object
            .pointer("/spec/template/spec/containers/0/resources/requests/memory"),
        Some(&json!("256Mi"))
    );
    match &dep.origins["/spec/template/spec/containers/0/resources/requests/memory"] {
        Origin::Values {
            file,
            key,
            template,
            line,
        } => {
            assert_eq!(file, "overlays/small/overlay.yaml");
            assert_eq!(key, "memory");
            assert_eq!(template, "charts/files-and-filters/templates/config.yaml");
            assert_eq!(*line, Some(43));
        }
        other => panic!("unexpected origin {other:?}"),
    }
    match &dep.origins["/spec/replicas"] {
        Origin::Template { file, line } => {
            assert_eq!(file, "charts/files-and-filters/templates/config.yaml");
            assert_eq!(*line, Some(35));
        }
        other => panic!("unexpected origin {other:?}"),
    }
}

#[test]
fn final_values_violating_the_schema_name_layer_pointer_and_chart() {
    let c = fixture("files-and-filters");
    let bad = ValueLayer {
        file: "clusters/lab.yaml".into(),
        key_prefix: "values.files-and-filters".into(),
        values: json!({"config": {"port": 0}}),
        secret: Default::default(),
    };
    let merged = merge_values(&[c.default_layer(), bad]);
    let err = validate_values(&c, &merged).unwrap_err();
    assert_eq!(err.file, Path::new("clusters/lab.yaml"));
    assert_eq!(err.pointer.as_deref(), Some("/config/port"));
    assert_eq!(
        err.line, None,
        "clusters/lab.yaml does not exist here: no line"
    );
    assert!(
        err.object.as_deref().unwrap().contains("files-and-filters"),
        "{err}"
    );
    // Deleting a required key with null is caught on the FINAL values.
    let del = ValueLayer {
        file: "overlays/o/overlay.yaml".into(),
        key_prefix: String::new(),
        values: json!({"memory": null}),
        secret: Default::default(),
    };
    let merged = merge_values(&[c.default_layer(), del]);
    let err = validate_values(&c, &merged).unwrap_err();
    assert!(err.message.contains("memory"), "{err}");
}

#[test]
fn strict_undefined_names_template_line_and_expression() {
    let c = fixture("strict-undefined-fails");
    let err = render_with(&c, vec![]).1.unwrap_err();
    assert_eq!(
        err.file,
        Path::new("charts/strict-undefined-fails/templates/svc.yaml")
    );
    assert_eq!(err.line, Some(8));
    assert!(err.message.contains("values.missing.port"), "{err}");
    assert!(err.to_string().contains("svc.yaml:8"), "{err}");
}

#[test]
fn document_without_kind_names_template_and_document_index() {
    let c = fixture("document-without-kind-fails");
    let err = render_with(&c, vec![]).1.unwrap_err();
    assert_eq!(
        err.file,
        Path::new("charts/document-without-kind-fails/templates/objs.yaml")
    );
    assert_eq!(err.place.as_deref(), Some("document 1"));
    assert!(err.message.contains("kind"), "{err}");
}

#[test]
fn chart_name_must_equal_directory_name() {
    let err = load_chart(
        &fixtures(),
        &fixtures().join("charts/chart-name-differs-from-dir"),
    )
    .unwrap_err();
    assert_eq!(
        err.file,
        Path::new("charts/chart-name-differs-from-dir/Chart.yaml")
    );
    assert_eq!(err.line, Some(2));
    assert_eq!(err.pointer.as_deref(), Some("/name"));
}

fn escape_chart(t: &TempTree, expr: &str) -> Chart {
    t.write(
        "charts/esc/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: esc\nversion: 0.1.0\n",
    );
    t.write("charts/esc/files/ok.txt", "inside\n");
    t.write("secret.txt", "outside\n");
    t.write(
        "charts/esc/templates/cm.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: esc\ndata:\n  x: {{{{ {expr} | quote }}}}\n"),
    );
    load_chart(t.path(), &t.path().join("charts/esc")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn files_get_cannot_leave_the_files_directory() {
    let t = TempTree::new();
    let ok = escape_chart(&t, "files.get(\"ok.txt\")");
    let docs = render_with(&ok, vec![]).1.unwrap();
    assert_eq!(docs[0].object["data"]["x"], "inside\n");

    for expr in [
        "files.get(\"../Chart.yaml\")",
        "files.get(\"../../secret.txt\")",
        "files.get(\"/etc/passwd\")",
        "files.get(\"nope.txt\")",
    ] {
        let t = TempTree::new();
        let c = escape_chart(&t, expr);
        let err = render_with(&c, vec![]).1.unwrap_err();
        assert_eq!(
            err.file,
            Path::new("charts/esc/templates/cm.yaml"),
            "{expr}: {err}"
        );
        assert_eq!(err.line, Some(6), "{expr}: {err}");
    }

    #[cfg(unix)]
    {
        let t = TempTree::new();
        let c = escape_chart(&t, "files.get(\"link.txt\")");
        std::os::unix::fs::symlink(
            t.path().join("secret.txt"),
            t.path().join("charts/esc/files/link.txt"),
        )
        .unwrap();
        let err = render_with(&c, vec![]).1.unwrap_err();
        assert!(err.message.contains("outside"), "{err}");
        // A tree with an escaping symlink does not load at all, read or not (glob would read it).
        let t2 = TempTree::new();
        std::fs::create_dir_all(t2.path().join("charts/esc/files")).unwrap();
        std::os::unix::fs::symlink(
            t2.path().join("secret.txt"),
            t2.path().join("charts/esc/files/link.txt"),
        )
        .unwrap();
        t2.write("secret.txt", "outside\n");
        t2.write(
            "charts/esc/Chart.yaml",
            "apiVersion: pailot.dev/v1\nname: esc\nversion: 0.1.0\n",
        );
        let err = load_chart(t2.path(), &t2.path().join("charts/esc")).unwrap_err();
        assert_eq!(err.file, Path::new("charts/esc/files/link.txt"), "{err}");
        assert!(err.message.contains("outside"), "{err}");
    }
}

#[test]
fn template_syntax_error_is_reported_at_load_with_line() {
    let t = TempTree::new();
    t.write(
        "charts/bad/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: bad\nversion: 0.1.0\n",
    );
    t.write("charts/bad/templates/x.yaml", "a: 1\nb: {% if %}\n");
    let err = load_chart(t.path(), &t.path().join("charts/bad")).unwrap_err();
    assert_eq!(err.file, Path::new("charts/bad/templates/x.yaml"));
    assert_eq!(err.line, Some(2));
}

#[test]
fn chart_lint_exit_codes() {
    let ok = pailot(&["chart", "lint", "tests/fixtures/charts/files-and-filters"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let bad = pailot(&[
        "chart",
        "lint",
        "tests/fixtures/charts/strict-undefined-fails",
    ]);
    assert_eq!(bad.code, 1, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr
            .contains("charts/strict-undefined-fails/templates/svc.yaml:8"),
        "{}",
        bad.stderr
    );
    let missing = pailot(&["chart", "lint", "tests/fixtures/charts/does-not-exist"]);
    assert_eq!(missing.code, 2, "{}{}", missing.stdout, missing.stderr);
}

#[test]
fn chart_lint_outside_a_repository_names_the_real_path() {
    let t = TempTree::new();
    let dir = t.path().join("not-a-chart");
    std::fs::create_dir_all(&dir).unwrap();
    let r = pailot(&["chart", "lint", dir.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let want = dir.join("Chart.yaml");
    assert!(
        r.stderr.contains(&format!("{}:", want.display())),
        "want {} in: {}",
        want.display(),
        r.stderr
    );
}

#[test]
fn chart_package_is_byte_reproducible() {
    let t = TempTree::new();
    let src = fixtures().join("charts/files-and-filters");
    let a = pailot_in(
        t.path(),
        &["chart", "package", src.to_str().unwrap(), "-d", "a"],
    );
    assert_eq!(a.code, 0, "{}", a.stderr);
    // Touch the sources: mtimes must not matter.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = pailot_in(
        t.path(),
        &["chart", "package", src.to_str().unwrap(), "-d", "b"],
    );
    assert_eq!(b.code, 0, "{}", b.stderr);
    let fa = std::fs::read(t.path().join("a/files-and-filters-1.2.3.tgz")).unwrap();
    let fb = std::fs::read(t.path().join("b/files-and-filters-1.2.3.tgz")).unwrap();
    assert_eq!(fa, fb);
    let line = a.stdout.trim();
    let (file, sum) = line
        .split_once("  sha256:")
        .expect("`<file>  sha256:<hex>`");
    assert!(file.ends_with("files-and-filters-1.2.3.tgz"), "{line}");
    use sha2::Digest as _;
    assert_eq!(sum, hex::encode(sha2::Sha256::digest(&fa)));
    // The archive lists sorted entries under `<name>/` with owner 0 and mtime 0.
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(fa.as_slice()));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().mtime().unwrap(), 0);
        assert_eq!(e.header().uid().unwrap(), 0);
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"files-and-filters/templates/config.yaml".to_string()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn yaml_loading_never_panics(text in "\\PC{0,200}") {
        let _ = chart::parse_yaml_documents(&text, "fuzz.yaml");
    }

    #[test]
    fn yaml_like_text_never_panics(text in "([a-z]{1,3}: ?(\\[|\\{|-|&a|\\*a|!!|'|\"|0[0-7]{1,3}|[0-9.e+-]{1,5}|yes|~)?\n {0,4}){0,12}") {
        let _ = chart::parse_yaml_documents(&text, "fuzz.yaml");
    }

    #[test]
    fn merging_never_panics_and_later_scalars_win(a in arb_json(), b in arb_json(), c in arb_json()) {
        let layers: Vec<ValueLayer> = [a, b, c.clone()].into_iter().enumerate()
            .map(|(i, v)| ValueLayer { file: format!("l{i}"), key_prefix: String::new(), values: v, secret: Default::default() }).collect();
        let m = merge_values(&layers);
        if let (Value::Object(last), Value::Object(_)) = (&c, &m.values) {
            for (k, v) in last {
                if !v.is_object() && !v.is_null() {
                    prop_assert_eq!(m.values.get(k), Some(v));
                    let ptr = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
                    prop_assert_eq!(m.origin_of(&ptr), Some("l2"));
                }
                if v.is_null() {
                    prop_assert!(m.values.get(k).is_none());
                }
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z/~]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[ab/~]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every shipped chart passes `chart lint` (metadata, default values vs schema, renders
/// against the sample cluster, every document an object).
#[test]
fn every_shipped_chart_lints_clean() {
    let root = repo_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("charts"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("Chart.yaml").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    let mut problems = Vec::new();
    for d in &dirs {
        match chart::lint::lint_chart(&root, d, &pailot::sops::Keyring::new(Default::default())) {
            Ok(p) => problems.extend(p.into_iter().map(|e| e.to_string())),
            Err(e) => problems.push(e.to_string()),
        }
    }
    assert!(
        problems.is_empty(),
        "{} chart(s) checked:\n{}",
        dirs.len(),
        problems.join("\n")
    );
}

#[test]
fn schema_error_points_at_the_line_in_the_layer_file() {
    let t = TempTree::new();
    t.write(
        "charts/app/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: app\nversion: 0.1.0\n",
    );
    t.write("charts/app/values.yaml", "config:\n  port: 80\n");
    t.write(
        "charts/app/values.schema.json",
        r#"{"type": "object", "properties": {"config": {"type": "object", "properties": {"port": {"type": "integer", "minimum": 1}}}}}"#,
    );
    t.write(
        "overlays/o/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\nvalues:\n  other:\n    port: 1\n  app:\n    config:\n      port: -5\n",
    );
    let c = load_chart(t.path(), &t.path().join("charts/app")).unwrap();
    let layer = ValueLayer {
        file: "overlays/o/overlay.yaml".into(),
        key_prefix: "values.app".into(),
        values: json!({"config": {"port": -5}}),
        secret: Default::default(),
    };
    let merged = merge_values(&[c.default_layer(), layer]);
    let err = validate_values(&c, &merged).unwrap_err();
    assert_eq!(err.file, Path::new("overlays/o/overlay.yaml"));
    assert_eq!(err.pointer.as_deref(), Some("/config/port"));
    assert_eq!(err.line, Some(8), "{err}");
}

/// A manifest without template syntax is not compiled, but renders the same (with provenance)
/// and another template can still include it.
#[test]
fn plain_manifest_renders_as_itself_and_stays_includable() {
    let t = TempTree::new();
    t.write(
        "charts/plain/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: plain\nversion: 0.1.0\n",
    );
    t.write(
        "charts/plain/templates/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n",
    );
    t.write(
        "charts/plain/templates/b.yaml",
        "{% filter replace(\"name: a\", \"name: b\") %}{% include \"a.yaml\" %}{% endfilter %}\n",
    );
    let c = load_chart(t.path(), &t.path().join("charts/plain")).unwrap_or_else(|e| panic!("{e}"));
    let docs = render_with(&c, vec![]).1.unwrap();
    assert_eq!(find(&docs, "ConfigMap", "a").object["data"]["k"], "v");
    assert_eq!(find(&docs, "ConfigMap", "b").object["data"]["k"], "v");
    let a = find(&docs, "ConfigMap", "a");
    assert!(
        matches!(a.origins.get("/data/k"), Some(Origin::Template { file, line: Some(6) }) if file.ends_with("a.yaml")),
        "{:?}",
        a.origins.get("/data/k")
    );
}
