//! `pailot render`: output order, `# Source:` lines, byte-identical output, JSON and YAML agree.

use serde_json::Value;

use crate::harness::pailot_in;
use crate::overlay::fixture_repo;

const ARGS: &[&str] = &["render", "--cluster", "clusters/test.yaml"];

#[test]
fn render_is_byte_identical_across_runs() {
    let t = fixture_repo("selectors-pick-objects-by-labels-and-annotations");
    let a = pailot_in(t.path(), ARGS);
    assert_eq!(a.code, 0, "{}", a.stderr);
    for _ in 0..3 {
        let b = pailot_in(t.path(), ARGS);
        assert!(a.stdout == b.stdout, "two renders differ");
    }
    let j1 = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    let j2 = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    assert!(j1.stdout == j2.stdout);
}

#[test]
fn charts_come_in_dependency_order_then_stage_kind_namespace_name() {
    // db dependsOn web; agent dependsOn db and a chart outside the render (ignored).
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(t.path(), ARGS);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sources: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# Source: "))
        .collect();
    assert_eq!(
        sources,
        [
            "charts/web/templates/web.yaml",
            "charts/web/templates/web.yaml",
            "charts/db/templates/db.yaml",
            "charts/db/templates/db.yaml",
            "charts/agent/templates/agent.yaml",
        ]
    );
    let j = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    let objs: Vec<Value> = serde_json::from_str(&j.stdout).unwrap();
    let ids: Vec<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    // Within a chart: by kind (Deployment < Service; ConfigMap < StatefulSet).
    assert_eq!(
        ids,
        [
            "Deployment/web",
            "Service/web",
            "ConfigMap/db-config",
            "StatefulSet/db",
            "DaemonSet/agent"
        ]
    );
}

#[test]
fn yaml_stream_and_json_hold_the_same_objects() {
    let t = fixture_repo("all-six-ops-apply-in-order");
    let y = pailot_in(t.path(), ARGS);
    let j = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    assert_eq!((y.code, j.code), (0, 0), "{} {}", y.stderr, j.stderr);
    let from_json: Vec<Value> = serde_json::from_str(&j.stdout).unwrap();
    let from_yaml = pailot::chart::parse_yaml_documents(&y.stdout, "render.yaml").unwrap();
    assert_eq!(from_json, from_yaml);
    assert!(y.stdout.starts_with("---\n# Source: "));
}

#[test]
fn namespaced_objects_get_the_cluster_namespace_and_chart_label() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let j = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "json"],
    );
    let objs: Vec<Value> = serde_json::from_str(&j.stdout).unwrap();
    for o in &objs {
        assert_eq!(o["metadata"]["namespace"], "default", "{o}");
        assert!(o["metadata"]["labels"]["pailot.dev/chart"].is_string());
    }
}

#[test]
fn help_lists_only_the_formats_render_accepts() {
    let r = crate::harness::pailot(&["render", "--help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("possible values"))
        .unwrap_or_else(|| panic!("no possible values in:\n{}", r.stdout));
    assert!(
        line.contains("yaml") && line.contains("json") && !line.contains("table"),
        "{line}"
    );
}

#[test]
fn table_output_is_a_usage_error() {
    let t = fixture_repo("overlay-replaces-memory-request");
    let r = pailot_in(
        t.path(),
        &["render", "--cluster", "clusters/test.yaml", "-o", "table"],
    );
    assert_eq!(r.code, 2);
}

#[test]
fn lint_passes_a_good_repository_and_lists_unused_overlays() {
    let t = fixture_repo("extends-applies-parents-first-each-once");
    t.write(
        "overlays/spare/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\n",
    );
    let r = pailot_in(t.path(), &["lint", "--cluster", "clusters/test.yaml"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("overlays/spare: not used"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("overlays/b: not used"),
        "b is used through extends: {}",
        r.stdout
    );
}

#[test]
fn lint_rejects_a_cluster_with_no_overlays() {
    let t = fixture_repo("extends-applies-parents-first-each-once");
    let good = std::fs::read_to_string(t.path().join("clusters/test.yaml")).unwrap();
    assert!(good.contains("overlays: [main]"), "{good}");
    // Charts start from none: without an overlay the cluster renders nothing at all.
    t.write(
        "clusters/empty.yaml",
        &good.replace("overlays: [main]", "overlays: []"),
    );
    t.write(
        "clusters/unset.yaml",
        &good.replace("overlays: [main]\n", ""),
    );
    let r = pailot_in(t.path(), &["lint", "--cluster", "clusters/test.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    for f in ["clusters/empty.yaml", "clusters/unset.yaml"] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("problem: {f}: overlays:"))
                    && l.contains("renders nothing")),
            "{f}: {}",
            r.stdout
        );
    }
    // The cluster given with --cluster is checked too, wherever it lives.
    t.write(
        "elsewhere/none.yaml",
        &good.replace("overlays: [main]", "overlays: []"),
    );
    std::fs::remove_file(t.path().join("clusters/empty.yaml")).unwrap();
    std::fs::remove_file(t.path().join("clusters/unset.yaml")).unwrap();
    let r = pailot_in(t.path(), &["lint", "--cluster", "elsewhere/none.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("problem: elsewhere/none.yaml: overlays:"),
        "{}",
        r.stdout
    );
}

#[test]
fn lint_warns_about_a_host_port_deployment_that_cannot_surge_on_its_machines() {
    let t = fixture_repo("extends-applies-parents-first-each-once");
    let one = std::fs::read_to_string(t.path().join("clusters/test.yaml")).unwrap();
    let two = format!(
        "{one}  - name: node-2\n    address: 10.0.0.2\n    roles: [pai-worker]\n    capacity: {{memory: 16Gi, cpu: \"4\"}}\n"
    );
    // The web Deployment (1 replica, default RollingUpdate: maxSurge 25% = 1) on the host network.
    t.write(
        "overlays/hostnet/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\nextends: [all]\npatches:\n  - target: {kind: Deployment, name: web}\n    ops: [{op: add, path: /spec/template/spec/hostNetwork, value: true}]\n",
    );
    t.write(
        "overlays/hostnet-recreate/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\nextends: [hostnet]\npatches:\n  - target: {kind: Deployment, name: web}\n    ops: [{op: add, path: /spec/strategy, value: {type: Recreate}}]\n",
    );
    t.write("clusters/test.yaml", &one.replace("[main]", "[hostnet]"));
    t.write("clusters/two.yaml", &two.replace("[main]", "[hostnet]"));
    t.write(
        "clusters/recreate.yaml",
        &one.replace("[main]", "[hostnet-recreate]"),
    );
    let r = pailot_in(t.path(), &["lint", "--cluster", "clusters/test.yaml"]);
    assert_eq!(
        r.code, 0,
        "a warning is not a problem: {}{}",
        r.stdout, r.stderr
    );
    let warnings: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.stdout);
    let w = warnings[0];
    for want in [
        "clusters/test.yaml: Deployment/default/web (chart web)",
        "hostNetwork",
        "maxSurge 1",
        "needs 2 machines",
        "1 machine (node-1)",
        "Recreate",
    ] {
        assert!(w.contains(want), "{want:?} not in {w}");
    }
    assert!(r.stdout.contains("1 warning(s)"), "{}", r.stdout);
}

#[test]
fn lint_lists_every_problem_with_its_place() {
    let t = fixture_repo("overlay-replaces-memory-request");
    // A broken overlay nobody uses, and a second cluster whose overlay patch fails.
    t.write(
        "overlays/broken/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\nextends: [nope]\n",
    );
    t.write(
        "overlays/bad-patch/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\nextends: [all]\npatches:\n  - target: {kind: Service}\n    ops: [{op: remove, path: /spec/missing}]\n",
    );
    let cluster = std::fs::read_to_string(t.path().join("clusters/test.yaml"))
        .unwrap()
        .replace("[main]", "[bad-patch]");
    t.write("clusters/other.yaml", &cluster);
    let r = pailot_in(t.path(), &["lint", "--cluster", "clusters/test.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("overlays/broken/overlay.yaml: extends[0]: unknown overlay `nope`"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("overlays/bad-patch/overlay.yaml:6:1: patch 0 op 0 (Service/default/web) at /spec/missing"), "{}", r.stdout);
    assert!(r.stdout.contains("2 problem(s)"), "{}", r.stdout);
}

#[test]
fn provenance_mode_does_not_change_the_objects() {
    use pailot::render::{ProvenanceMode, RenderRequest, render_with, to_yaml_stream};
    let t = fixture_repo("all-six-ops-apply-in-order");
    let req = RenderRequest {
        repo_root: t.path().to_path_buf(),
        cluster_file: "clusters/test.yaml".into(),
        overlays: None,
        revision: Some("abc123".into()),
        age_keys: Default::default(),
    };
    let (_, with) = render_with(&req, ProvenanceMode::Record).unwrap();
    let (_, without) = render_with(&req, ProvenanceMode::Skip).unwrap();
    assert_eq!(to_yaml_stream(&with), to_yaml_stream(&without));
    assert!(!with.provenance.objects.is_empty());
    assert!(without.provenance.objects.is_empty());
    assert_eq!(
        with.charts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["web", "db", "agent"]
    );
    assert_eq!(
        with.charts[2].depends_on,
        ["db"],
        "dependsOn outside the render is dropped"
    );
}

/// Charts are loaded, rendered and emitted on several threads; the bytes must not depend on it.
#[test]
fn parallel_and_sequential_renders_are_the_same_bytes() {
    let root = crate::harness::repo_root();
    let run = |threads: &str| {
        let r = crate::harness::pailot_env(
            &root,
            &[("PAILOT_THREADS", threads)],
            &["render", "--cluster", "clusters/three-node.yaml"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout
    };
    let sequential = run("1");
    assert!(sequential.len() > 10_000);
    for threads in ["2", "7"] {
        assert!(
            run(threads) == sequential,
            "PAILOT_THREADS={threads} changed the output"
        );
    }
}

/// Batch commands allocate with mimalloc; the daemon (and its helpers) keep glibc malloc.
#[test]
fn allocator_is_chosen_per_command() {
    let root = crate::harness::repo_root();
    let debug = [("PAILOT_DEBUG_ALLOCATOR", "1")];
    let render = crate::harness::pailot_env(&root, &debug, &["render", "--help"]);
    assert!(
        render.stderr.contains("allocator: mimalloc"),
        "{}",
        render.stderr
    );
    let daemon = crate::harness::pailot_env(&root, &debug, &["daemon", "--help"]);
    assert!(
        daemon.stderr.contains("allocator: system"),
        "{}",
        daemon.stderr
    );
}
