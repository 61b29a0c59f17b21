//! Nothing escapes the repository (issue 12 item 4): symlinks committed into a repository that
//! point outside it are refused wherever pailot reads input, and `chart package` neither
//! archives files from outside the chart nor writes outside its destination.
//!
//! Every test plants a fake key outside the repository, links to it the way an attacker would,
//! and checks the render fails with exit 2 naming the link, and that the key's text appears in
//! no output.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::harness::{Run, TempTree, pailot_in};
use crate::limits::{CLUSTER, config_map, repo_with_template};

const KEY: &str = "PLANTED-FAKE-CLIENT-KEY-3f9a1c";
const RENDER: &[&str] = &["render", "--cluster", "clusters/c.yaml"];

/// A directory outside the repository holding the fake key in several shapes.
fn outside() -> TempTree {
    let o = TempTree::new();
    o.write("key.pem", &format!("{KEY}\n"));
    o.write("values.yaml", &format!("stolen: {KEY}\n"));
    o.write(
        "ops.yaml",
        &format!("- {{op: add, path: /data/stolen, value: {KEY}}}\n"),
    );
    o.write("template.yaml", &config_map("", KEY));
    o.write(
        "overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [web]}\n",
    );
    o.write("schema.json", &format!("{{\"description\": \"{KEY}\"}}"));
    o.write(
        "cluster.yaml",
        &CLUSTER.replace("name: c\n", &format!("name: c\nnamespace: {KEY}\n")),
    );
    o.write(
        "chart/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: evil\nversion: 0.1.0\n",
    );
    o.write("chart/templates/cm.yaml", &config_map("", KEY));
    o
}

fn link(target: &Path, at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    if at.exists() || at.symlink_metadata().is_ok() {
        if at.is_dir() && !at.symlink_metadata().unwrap().file_type().is_symlink() {
            std::fs::remove_dir_all(at).unwrap();
        } else {
            std::fs::remove_file(at).unwrap();
        }
    }
    symlink(target, at).unwrap();
}

fn assert_refused(r: &Run, file: &str) {
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(file),
        "stderr lacks {file}:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("outside"), "{}", r.stderr);
    assert!(
        !r.stdout.contains(KEY) && !r.stderr.contains(KEY),
        "the planted key reached the output:\n{}{}",
        r.stdout,
        r.stderr
    );
}

/// A repository whose template reads `values.stolen`, `files.get("key.pem")`: whatever the
/// links give it would be printed.
fn repo() -> TempTree {
    let t = repo_with_template(&config_map("", "{{ values.get('stolen', 'none') }}"));
    t.write("charts/web/values.yaml", "stolen: none\n");
    t
}

#[test]
fn a_values_file_linked_outside_is_refused() {
    let (o, t) = (outside(), repo());
    link(
        &o.path().join("values.yaml"),
        &t.path().join("charts/web/values.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "charts/web/values.yaml");
}

/// `valuesFiles` of the Cluster file and of an overlay (issue 13's layers) are read through the
/// same confinement: a link out of the repository is refused, its content never rendered.
#[test]
fn values_files_of_a_cluster_or_an_overlay_linked_outside_are_refused() {
    let o = outside();
    o.write("layer.yaml", &format!("web:\n  stolen: {KEY}\n"));
    let t = repo();
    t.write(
        "clusters/c.yaml",
        &format!("{CLUSTER}valuesFiles: [clusters/extra.yaml]\n"),
    );
    link(
        &o.path().join("layer.yaml"),
        &t.path().join("clusters/extra.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "clusters/extra.yaml");

    let t = repo();
    t.write(
        "overlays/base/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [web]}\nvaluesFiles: [layer.yaml]\n",
    );
    link(
        &o.path().join("layer.yaml"),
        &t.path().join("overlays/base/layer.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "overlays/base/layer.yaml");
}

#[test]
fn a_chart_directory_linked_outside_is_refused() {
    let (o, t) = (outside(), repo());
    link(&o.path().join("chart"), &t.path().join("charts/evil"));
    t.write(
        "overlays/base/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [web, evil]}\n",
    );
    assert_refused(&pailot_in(t.path(), RENDER), "charts/evil/Chart.yaml");
}

#[test]
fn a_patch_file_linked_outside_is_refused() {
    let (o, t) = (outside(), repo());
    t.write(
        "overlays/base/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [web]}\npatches:\n  - target: {kind: ConfigMap}\n    file: ops.yaml\n",
    );
    link(
        &o.path().join("ops.yaml"),
        &t.path().join("overlays/base/ops.yaml"),
    );
    let r = pailot_in(t.path(), RENDER);
    assert_refused(&r, "overlays/base/ops.yaml");
    assert!(
        r.stderr.contains("overlays/base/overlay.yaml"),
        "{}",
        r.stderr
    );
}

#[test]
fn templates_linked_outside_are_refused_file_or_directory() {
    let (o, t) = (outside(), repo());
    link(
        &o.path().join("template.yaml"),
        &t.path().join("charts/web/templates/x.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "charts/web/templates/x.yaml");

    let t = repo();
    std::fs::remove_dir_all(t.path().join("charts/web/templates")).unwrap();
    std::fs::create_dir_all(o.path().join("tdir")).unwrap();
    std::fs::copy(
        o.path().join("template.yaml"),
        o.path().join("tdir/cm.yaml"),
    )
    .unwrap();
    link(
        &o.path().join("tdir"),
        &t.path().join("charts/web/templates"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "charts/web/templates");
}

#[test]
fn files_linked_outside_are_refused_even_unread() {
    let (o, t) = (outside(), repo());
    t.write(
        "charts/web/templates/cm.yaml",
        &config_map("", "{{ files.get('key.pem') | trim }}"),
    );
    link(
        &o.path().join("key.pem"),
        &t.path().join("charts/web/files/key.pem"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "charts/web/files/key.pem");
    // The whole files/ directory linked outside.
    let t = repo();
    std::fs::create_dir_all(o.path().join("fdir")).unwrap();
    std::fs::copy(o.path().join("key.pem"), o.path().join("fdir/key.pem")).unwrap();
    link(&o.path().join("fdir"), &t.path().join("charts/web/files"));
    assert_refused(&pailot_in(t.path(), RENDER), "charts/web/files");
}

#[test]
fn overlay_schema_and_cluster_files_linked_outside_are_refused() {
    let o = outside();
    let t = repo();
    link(
        &o.path().join("overlay.yaml"),
        &t.path().join("overlays/base/overlay.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "overlays/base/overlay.yaml");

    let t = repo();
    link(
        &o.path().join("schema.json"),
        &t.path().join("charts/web/values.schema.json"),
    );
    assert_refused(
        &pailot_in(t.path(), RENDER),
        "charts/web/values.schema.json",
    );

    let t = repo();
    link(
        &o.path().join("cluster.yaml"),
        &t.path().join("clusters/c.yaml"),
    );
    assert_refused(&pailot_in(t.path(), RENDER), "clusters/c.yaml");
    // An operator may still name a cluster file outside the repository explicitly.
    let given = o.path().join("cluster.yaml");
    let r = pailot_in(t.path(), &["render", "--cluster", given.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn links_that_stay_inside_the_repository_still_work() {
    let t = repo();
    t.write(
        "shared/_helpers.j2",
        "{% macro greeting() %}hello{% endmacro %}",
    );
    t.write(
        "charts/web/templates/cm.yaml",
        &config_map("{% import \"_helpers.j2\" as h %}", "{{ h.greeting() }}"),
    );
    link(
        &t.path().join("shared/_helpers.j2"),
        &t.path().join("charts/web/templates/_helpers.j2"),
    );
    t.write("shared/values.yaml", "stolen: from-inside\n");
    link(
        &t.path().join("shared/values.yaml"),
        &t.path().join("charts/web/values.yaml"),
    );
    let r = pailot_in(t.path(), RENDER);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("x: hello"), "{}", r.stdout);
}

fn chart(t: &TempTree, version: &str) {
    t.write(
        "charts/web/Chart.yaml",
        &format!("apiVersion: pailot.dev/v1\nname: web\nversion: \"{version}\"\n"),
    );
    t.write("charts/web/templates/cm.yaml", &config_map("", "x"));
}

#[test]
fn chart_package_does_not_archive_files_outside_the_chart() {
    let (o, t) = (outside(), TempTree::new());
    chart(&t, "0.1.0");
    link(
        &o.path().join("key.pem"),
        &t.path().join("charts/web/files/key.pem"),
    );
    let r = pailot_in(t.path(), &["chart", "package", "charts/web", "-d", "dist"]);
    assert_refused(&r, "charts/web/files/key.pem");
    assert!(!t.path().join("dist/web-0.1.0.tgz").exists());
    // A link to a file outside, not read by any template, is refused just the same.
    let t = TempTree::new();
    chart(&t, "0.1.0");
    link(
        &o.path().join("key.pem"),
        &t.path().join("charts/web/NOTES.txt"),
    );
    let r = pailot_in(t.path(), &["chart", "package", "charts/web", "-d", "dist"]);
    assert_refused(&r, "charts/web/NOTES.txt");
    // A link inside the chart is archived as the file it points to.
    let t = TempTree::new();
    chart(&t, "0.1.0");
    t.write("charts/web/README.md", "readme\n");
    link(
        &t.path().join("charts/web/README.md"),
        &t.path().join("charts/web/NOTES.txt"),
    );
    let r = pailot_in(t.path(), &["chart", "package", "charts/web", "-d", "dist"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tgz = std::fs::read(t.path().join("dist/web-0.1.0.tgz")).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz.as_slice()));
    let mut found = false;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("NOTES.txt") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert_eq!(s, "readme\n");
            found = true;
        }
    }
    assert!(found);
}

#[test]
fn chart_package_writes_nothing_outside_its_destination() {
    let t = TempTree::new();
    chart(&t, "0.1.0+x/../../pwned");
    let r = pailot_in(
        t.path(),
        &["chart", "package", "charts/web", "-d", "dist/a/b"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not a semantic version"), "{}", r.stderr);
    assert!(!t.path().join("dist/pwned.tgz").exists());
    assert!(!t.path().join("dist/a/pwned.tgz").exists());
    // An existing symlink with the archive's name is replaced, not followed.
    let (o, t) = (outside(), TempTree::new());
    chart(&t, "0.1.0");
    std::fs::create_dir_all(t.path().join("dist")).unwrap();
    link(
        &o.path().join("victim"),
        &t.path().join("dist/web-0.1.0.tgz"),
    );
    let r = pailot_in(t.path(), &["chart", "package", "charts/web", "-d", "dist"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !o.path().join("victim").exists(),
        "wrote through the symlink"
    );
    assert!(
        !std::fs::symlink_metadata(t.path().join("dist/web-0.1.0.tgz"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn chart_names_must_be_dns_labels() {
    let t = TempTree::new();
    t.write(
        "charts/Web_1/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: Web_1\nversion: 0.1.0\n",
    );
    let r = pailot_in(
        t.path(),
        &["chart", "package", "charts/Web_1", "-d", "dist"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("DNS-1123"), "{}", r.stderr);
}
