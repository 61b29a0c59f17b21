//! The daemon and the CLI tell the truth (issue 11), against the real control plane and the real `pailot daemon`
//! process: one inventory for every command, gates that refuse what would hurt (over budget, empty render),
//! failures reported as what they are, and a new commit that ends a doomed wait.
//!
//! Each test causes the real condition (a commit that asks for 40Gi, a pod that can never schedule, an object
//! the API refuses, a render with no object) and asserts what the operator sees: exit codes, `/status`,
//! metrics, and the objects in the cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;

use crate::daemon::{DaemonProcess, metric_sum, write_config};
use crate::harness::{Run, pailot_in};
use crate::kube::TestNamespace;
use crate::source::TempRepo;

/// A deployment repository for `ns` (cluster and ApplySet named after it): chart `db` (a ConfigMap) and
/// chart `web` (a ConfigMap and a Deployment) that depends on it, on one 16Gi machine.
pub(crate) fn repo(ns: &str) -> TempRepo {
    let repo = TempRepo::new();
    repo.write(
        "charts/db/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: db\nversion: 0.1.0\ndescription: a database stand-in\n",
    );
    repo.write(
        "charts/db/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-config\ndata:\n  role: db\n",
    );
    repo.write(
        "charts/web/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: web\nversion: 0.1.0\ndescription: a web service\ndependsOn: [db]\n",
    );
    repo.write(
        "charts/web/values.yaml",
        "greeting: hello\nreplicas: 1\nmemory: 64Mi\nnodeSelector: {}\n",
    );
    repo.write(
        "charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  greeting: \"{{ values.greeting }}\"\n",
    );
    repo.write(
        "charts/web/templates/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {{ values.replicas }}\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      nodeSelector: {{ values.nodeSelector | tojson }}\n      containers:\n        - name: web\n          image: example/web:1.0\n          resources:\n            requests: {memory: \"{{ values.memory }}\"}\n",
    );
    repo.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ndescription: Every chart\ncharts:\n  include: [\"*\"]\n",
    );
    repo.write(
        "clusters/test.yaml",
        &format!(
            "apiVersion: pailot.dev/v1\nkind: Cluster\nname: {ns}\nnamespace: {ns}\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {{memory: 16Gi, cpu: \"4\"}}\n"
        ),
    );
    repo.commit("two charts");
    repo
}

/// Set `key: value` in chart web's values and commit.
fn set_value(repo: &TempRepo, key: &str, value: &str) -> String {
    let path = repo.path().join("charts/web/values.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key}:")))
        .map(str::to_string)
        .collect();
    lines.push(format!("{key}: {value}"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    repo.commit(&format!("{key} {value}"))
}

/// `pailot ARGS --repo R -c clusters/test.yaml --kubeconfig K`.
pub(crate) fn cli(repo: &TempRepo, ns: &TestNamespace, args: &[&str]) -> Run {
    let repo_arg = repo.path().display().to_string();
    let kc = ns.kubeconfig.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--repo",
        &repo_arg,
        "-c",
        "clusters/test.yaml",
        "--kubeconfig",
        &kc,
    ]);
    pailot_in(repo.path(), &all)
}

pub(crate) fn free_addr() -> SocketAddr {
    let port = crate::alerting_e2e::free_port();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Start the real daemon on `repo` with `extra` config (YAML appended under `reconcile:` etc.).
pub(crate) fn daemon(
    dir: &Path,
    repo: &TempRepo,
    ns: &TestNamespace,
    extra: &str,
) -> DaemonProcess {
    let addr = free_addr();
    let cfg = write_config(
        dir,
        repo.path(),
        Some(&ns.kubeconfig),
        &format!("server:\n  listen: \"{addr}\"\n{extra}"),
    );
    DaemonProcess::start(&cfg, addr, dir.join("daemon.log"))
}

pub(crate) async fn wait_applied(d: &mut DaemonProcess, commit: &str, limit: Duration) -> Value {
    d.wait_status(limit, &format!("revision {commit} applied"), |s| {
        s["revision"] == commit && s["lastReconcile"]["result"] == "success"
    })
    .await
}

async fn configmap(ns: &TestNamespace, name: &str) -> Option<ConfigMap> {
    ns.api::<ConfigMap>().get_opt(name).await.unwrap()
}

async fn deployment(ns: &TestNamespace) -> Option<Deployment> {
    ns.api::<Deployment>().get_opt("web").await.unwrap()
}

fn memory_request(d: &Deployment) -> String {
    serde_json::to_value(d).unwrap()["spec"]["template"]["spec"]["containers"][0]["resources"]
        ["requests"]["memory"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A daemon reconciling the namespace, a drift check that never fires by itself, and health waits off.
pub(crate) const NO_WAIT: &str = "reconcile:\n  wait: false\n  driftInterval: 1h\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_inventory_daemon_applies_diff_is_clean_uninstall_removes_all_in_reverse_order() {
    let Some(ns) = TestNamespace::new("trust-inv").await else {
        return;
    };
    let repo = repo(&ns.name);
    let head = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;
    drop(d);

    // The CLI finds the daemon's inventory: nothing to change, nothing relabelled.
    let diff = cli(&repo, &ns, &["diff"]);
    assert_eq!(
        diff.code, 0,
        "diff after the daemon applied:\n{}\n{}",
        diff.stdout, diff.stderr
    );
    assert!(!diff.stdout.contains("configured"), "{}", diff.stdout);

    // Uninstall removes every member, web (which depends on db) before db, then the parent.
    let un = cli(&repo, &ns, &["uninstall"]);
    assert_eq!(un.code, 0, "{}\n{}", un.stdout, un.stderr);
    let pos = |what: &str| {
        un.stdout
            .find(what)
            .unwrap_or_else(|| panic!("{what} not deleted:\n{}", un.stdout))
    };
    assert!(
        pos(&format!("Deployment/{}/web deleted", ns.name))
            < pos(&format!("ConfigMap/{}/db-config deleted", ns.name)),
        "reverse dependency order:\n{}",
        un.stdout
    );
    assert!(
        un.stdout
            .contains(&format!("ConfigMap/{}/web-config deleted", ns.name)),
        "{}",
        un.stdout
    );
    assert!(configmap(&ns, "db-config").await.is_none());
    assert!(deployment(&ns).await.is_none());
    let parent = ns
        .api::<Secret>()
        .get_opt(&format!("applyset-{}", ns.name))
        .await
        .unwrap();
    assert!(parent.is_none(), "the parent goes last");

    // Nothing left: both commands say so, and exit non-zero.
    let again = cli(&repo, &ns, &["uninstall"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("no inventory"), "{}", again.stderr);
    let diff = cli(&repo, &ns, &["diff"]);
    assert_eq!(diff.code, 1, "{diff:?}");
    assert!(diff.stderr.contains("no inventory"), "{}", diff.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_left_in_kube_system_is_adopted_not_duplicated() {
    let Some(ns) = TestNamespace::new("trust-adopt").await else {
        return;
    };
    let repo = repo(&ns.name);
    // What the CLI of the previous version did: the parent in kube-system.
    let legacy = pailot::inventory::Inventory::for_cluster(&ns.name, "kube-system");
    let (_, set) = pailot::render::render(&pailot::render::RenderRequest {
        repo_root: repo.path().to_path_buf(),
        cluster_file: "clusters/test.yaml".into(),
        overlays: None,
        revision: None,
        age_keys: Default::default(),
    })
    .unwrap();
    let plan = pailot::apply::plan::Plan::new(&set, &legacy).unwrap();
    let server = pailot::apply::Server::new(ns.client.clone()).await.unwrap();
    let report = pailot::apply::apply(
        &server,
        &plan,
        &legacy,
        &pailot::apply::Config::default(),
        &pailot::apply::progress::Progress::quiet(),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.failures);

    let diff = cli(&repo, &ns, &["diff"]);
    assert_eq!(
        diff.code, 0,
        "adopted, nothing relabelled:\n{}\n{}",
        diff.stdout, diff.stderr
    );
    assert!(
        diff.stderr.contains("kube-system"),
        "says where it found it: {}",
        diff.stderr
    );
    let apply = cli(&repo, &ns, &["apply"]);
    assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);
    let here = ns
        .api::<Secret>()
        .get_opt(&format!("applyset-{}", ns.name))
        .await
        .unwrap();
    assert!(
        here.is_none(),
        "no second parent in the cluster's namespace"
    );
    let un = cli(&repo, &ns, &["uninstall"]);
    assert_eq!(un.code, 0, "{}\n{}", un.stdout, un.stderr);
    assert!(deployment(&ns).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_the_daemon_refuse_an_over_budget_render() {
    let Some(ns) = TestNamespace::new("trust-budget").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;

    // ZooKeeper-style mistake: 40Gi on the 16Gi machine.
    let huge = set_value(&repo, "memory", "40Gi");
    let s = d
        .wait_status(Duration::from_secs(30), "over_budget", |s| {
            s["lastReconcile"]["reason"] == "over_budget"
        })
        .await;
    let msg = s["lastReconcile"]["message"].as_str().unwrap();
    assert!(msg.contains("machine node-1"), "names the machine: {msg}");
    assert!(
        msg.contains(&format!("Deployment/{}/web web 40.0 GiB", ns.name)),
        "names the container: {msg}"
    );
    assert_eq!(
        s["revision"],
        ok.as_str(),
        "the last good revision keeps running"
    );
    assert_eq!(s["failedRevision"], huge.as_str());
    assert_eq!(
        memory_request(&deployment(&ns).await.unwrap()),
        "64Mi",
        "not applied"
    );
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "pailot_reconcile_failing{stage=\"plan\",reason=\"over_budget\""
        ),
        1.0,
        "{m}"
    );
    drop(d);

    // The CLI refuses the same render (exit 1, nothing applied) unless told otherwise.
    let r = cli(&repo, &ns, &["apply"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("does not fit") && r.stderr.contains("40.0 GiB"),
        "{}",
        r.stderr
    );
    assert_eq!(memory_request(&deployment(&ns).await.unwrap()), "64Mi");
    let r = cli(&repo, &ns, &["apply", "--allow-over-budget"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(memory_request(&deployment(&ns).await.unwrap()), "40Gi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_failure_is_reported_as_the_failed_revision_and_a_fix_ends_the_wait() {
    let Some(ns) = TestNamespace::new("trust-health").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        "reconcile:\n  wait: true\n  timeout: 90s\n  driftInterval: 1h\n",
    );
    wait_applied(&mut d, &ok, Duration::from_secs(90)).await;

    // A pod that can never schedule: the health wait would last 90 s.
    let doomed = set_value(&repo, "nodeSelector", "{nope: xx}");
    let s = d
        .wait_status(Duration::from_secs(30), "web waiting for health", |s| {
            s["charts"]["web"]["result"] == "waiting"
        })
        .await;
    assert_eq!(s["phase"], "waiting", "{s:#}");
    // A fixing commit ends the doomed wait at once.
    let t = Instant::now();
    let fixed = set_value(&repo, "nodeSelector", "{}");
    wait_applied(&mut d, &fixed, Duration::from_secs(30)).await;
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_ne!(doomed, fixed);
    drop(d);

    // With a short timeout the same commit fails, and is reported as what it is.
    let dir2 = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir2.path(),
        &repo,
        &ns,
        "reconcile:\n  wait: true\n  timeout: 5s\n  driftInterval: 1h\n",
    );
    wait_applied(&mut d, &fixed, Duration::from_secs(60)).await;
    let bad = set_value(&repo, "nodeSelector", "{nope: yy}");
    let s = d
        .wait_status(Duration::from_secs(40), "a health failure", |s| {
            s["lastReconcile"]["reason"] == "unhealthy"
        })
        .await;
    assert_eq!(s["failedRevision"], bad.as_str(), "{s:#}");
    assert_eq!(s["lastReconcile"]["revision"], bad.as_str());
    assert_eq!(s["lastReconcile"]["stage"], "wait");
    assert_eq!(s["charts"]["web"]["result"], "failed", "{s:#}");
    assert_eq!(s["charts"]["web"]["ready"], false);
    let msg = s["lastReconcile"]["message"].as_str().unwrap();
    assert!(msg.contains("Deployment") && msg.contains("web"), "{msg}");
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(&m, "pailot_chart_ready{chart=\"web\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "pailot_reconcile_failing{stage=\"wait\",reason=\"unhealthy\",chart=\"web\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_health_failure_reapplies_the_last_healthy_revision() {
    let Some(ns) = TestNamespace::new("trust-rollback").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        "reconcile:\n  wait: true\n  timeout: 5s\n  driftInterval: 1h\n  rollback: onHealthFailure\n",
    );
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    let bad = set_value(&repo, "nodeSelector", "{nope: zz}");
    let s = d
        .wait_status(Duration::from_secs(60), "a rollback", |s| {
            s["lastReconcile"]["rolledBackTo"] == ok.as_str()
        })
        .await;
    assert_eq!(s["revision"], ok.as_str(), "{s:#}");
    assert_eq!(s["failedRevision"], bad.as_str());
    assert_eq!(
        s["lastReconcile"]["result"], "failure",
        "the failure stays reported"
    );
    let live = serde_json::to_value(deployment(&ns).await.unwrap()).unwrap();
    assert!(
        live["spec"]["template"]["spec"]["nodeSelector"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "the healthy spec is back: {live}"
    );
    let m = d.metrics().await;
    assert_eq!(metric_sum(&m, "pailot_rollbacks_total"), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "pailot_reconcile_failing{"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_render_fails_and_drift_on_the_last_good_revision_is_still_corrected() {
    let Some(ns) = TestNamespace::new("trust-empty").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    repo.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ndescription: Nothing\ncharts:\n  include: []\n",
    );
    let empty = repo.commit("select nothing");
    let s = d
        .wait_status(Duration::from_secs(30), "empty_render", |s| {
            s["lastReconcile"]["reason"] == "empty_render"
        })
        .await;
    assert_eq!(s["revision"], ok.as_str());
    assert_eq!(s["failedRevision"], empty.as_str());
    // Drift on what the last good revision applied is still corrected.
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ns.kubeconfig)
        .args([
            "-n",
            &ns.name,
            "patch",
            "configmap",
            "web-config",
            "--type=merge",
            "-p",
            "{\"data\":{\"greeting\":\"hacked\"}}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    loop {
        let g = configmap(&ns, "web-config")
            .await
            .and_then(|c| c.data)
            .and_then(|d| d.get("greeting").cloned());
        if g.as_deref() == Some("hello") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "drift not corrected: {g:?}\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refused commit is still the one reported.
    let s = d.status().await.unwrap();
    assert_eq!(s["lastReconcile"]["reason"], "empty_render", "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_objects_read_as_text_and_wait_for_a_new_commit() {
    let Some(ns) = TestNamespace::new("trust-reject").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    // A number where the schema wants a string: the API server answers 500 "failed to create typed patch".
    repo.write(
        "charts/db/templates/bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typed\ndata:\n  port: 8080\n",
    );
    repo.commit("an int in a ConfigMap");
    let s = d
        .wait_status(Duration::from_secs(30), "a rejection", |s| {
            s["lastReconcile"]["result"] == "failure"
        })
        .await;
    assert_eq!(s["lastReconcile"]["reason"], "rejected", "{s:#}");
    assert_eq!(s["lastReconcile"]["next"], "awaitChange");
    let msg = s["lastReconcile"]["message"].as_str().unwrap();
    assert!(msg.contains("ConfigMap") && msg.contains("typed"), "{msg}");
    assert!(
        !msg.contains("Status {") && !msg.contains("ErrorResponse"),
        "readable: {msg}"
    );
    // Not retried: one failure, however long we wait.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "pailot_reconcile_failures_total{stage=\"apply\",reason=\"rejected\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "pailot_reconcile_failures_total{stage=\"apply\",reason=\"api_unreachable\"}"
        ),
        0.0,
        "{m}"
    );
    // An invalid name is refused the same way (422).
    repo.write(
        "charts/db/templates/bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\ndata:\n  port: \"8080\"\n",
    );
    let c = repo.commit("an invalid name");
    let s = d
        .wait_status(Duration::from_secs(30), "a 422", |s| {
            s["failedRevision"] == c.as_str()
        })
        .await;
    assert_eq!(s["lastReconcile"]["reason"], "rejected", "{s:#}");
    assert!(
        s["lastReconcile"]["message"]
            .as_str()
            .unwrap()
            .contains("422"),
        "{s:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_records_keep_provenance_however_many_commits_fail_after_the_applied_one() {
    let Some(ns) = TestNamespace::new("trust-prov").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        "reconcile:\n  wait: false\n  driftInterval: 1h\n  driftMode: warn\n",
    );
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    for i in 0..5 {
        repo.write(
            "charts/web/templates/broken.yaml",
            &format!("data: [unclosed {i}\n"),
        );
        let c = repo.commit(&format!("broken {i}"));
        d.wait_status(Duration::from_secs(30), "the broken commit refused", |s| {
            s["failedRevision"] == c.as_str()
        })
        .await;
    }
    crate::kube::kubectl_scale(&ns, "web", 3);
    let s = d
        .wait_status(Duration::from_secs(30), "a drift record", |s| {
            s["drift"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["pointer"] == "/spec/replicas"))
        })
        .await;
    let rec = s["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pointer"] == "/spec/replicas")
        .unwrap();
    let prov = rec["provenance"].as_str().unwrap_or("");
    assert!(
        prov.contains("charts/web/values.yaml") && prov.contains("replicas"),
        "provenance of the applied revision: {rec}\n{}",
        d.tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mass_prune_says_how_the_daemon_allows_it() {
    let Some(ns) = TestNamespace::new("trust-prune").await else {
        return;
    };
    let repo = repo(&ns.name);
    let many: String = (0..30)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra-{i}\ndata:\n  i: \"{i}\"\n"))
        .collect();
    repo.write("charts/db/templates/many.yaml", &many);
    let full = repo.commit("thirty more");
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &full, Duration::from_secs(60)).await;
    std::fs::remove_file(repo.path().join("charts/db/templates/many.yaml")).unwrap();
    repo.commit("drop them");
    let s = d
        .wait_status(Duration::from_secs(30), "prune_blocked", |s| {
            s["lastReconcile"]["reason"] == "prune_blocked"
        })
        .await;
    let msg = s["lastReconcile"]["message"].as_str().unwrap();
    assert!(
        msg.contains("reconcile.massPruneThreshold"),
        "a daemon setting, not a CLI flag: {msg}"
    );
    assert!(!msg.contains("more than 25 and more than 25"), "{msg}");
    assert!(configmap(&ns, "extra-7").await.is_some(), "nothing deleted");
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "pailot_prune_blocked_total{reason=\"mass_prune_threshold\"}"
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn daemon_check_of_a_missing_file_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("nope.yaml");
    let r = pailot_in(
        dir.path(),
        &[
            "daemon",
            "--check",
            "--config",
            &missing.display().to_string(),
        ],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("nope.yaml"), "{}", r.stderr);
}
