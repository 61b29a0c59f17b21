//! Metrics against real Prometheus tools: `promtool check metrics` on a scrape, and a real Prometheus
//! that scrapes the server, loads pailot's rendered alert rules (each evaluates cleanly), and runs every dashboard query.
//!
//! Both need Debian's `prometheus` package (promtool, prometheus); they fail when it is missing
//! unless `PAILOT_SKIP_PROMTOOL=1` says to skip them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pailot::apply::Action;
use pailot::daemon::status::BootstrapStatus;
use pailot::failure::{Failure, Reason, Stage};
use pailot::metrics::{FetchResult, Metrics, PruneBlockedReason, ReconcileResult};

use crate::harness::{TempTree, repo_root};
use crate::server::{get, request, start, state};

/// `None` when the test should be skipped (PAILOT_SKIP_PROMTOOL=1); panics when a tool is missing otherwise.
fn tool(name: &str) -> Option<String> {
    if std::env::var("PAILOT_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("skipping: PAILOT_SKIP_PROMTOOL=1");
        return None;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p.display().to_string()),
        None => panic!(
            "{name} not found: install Debian's prometheus package (apt-get install prometheus) \
             or set PAILOT_SKIP_PROMTOOL=1 to skip this test"
        ),
    }
}

/// Metrics with every family populated, as a busy daemon has them.
fn busy_metrics() -> Arc<Metrics> {
    let m = Arc::new(Metrics::new());
    m.record_reconcile(ReconcileResult::Success, Duration::from_millis(850));
    m.record_failure(
        &Failure::new(Stage::Render, Reason::InvalidInput, "x").with_charts(["zookeeper".into()]),
    );
    m.record_fetch(FetchResult::Success, Duration::from_millis(12));
    m.record_fetch(FetchResult::Failure, Duration::from_secs(3));
    m.record_apply(&[(Action::Configured, 4)].into());
    m.set_revision("4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    m.set_inventory(42);
    m.set_drifted("grafana", 1);
    m.inc_drift("grafana");
    m.set_charts(
        &[
            ("grafana".to_string(), true),
            ("zookeeper".to_string(), false),
        ]
        .into(),
    );
    m.inc_prune_blocked(PruneBlockedReason::MassPruneThreshold);
    m.set_bootstrap(&BootstrapStatus {
        complete: true,
        ..Default::default()
    });
    m.inc_rollbacks();
    m.set_leader(true);
    m
}

#[tokio::test]
async fn promtool_check_metrics_passes_on_a_real_scrape() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let srv = start(state(busy_metrics()).0).await;
    let r = request(
        srv.addr,
        "GET",
        "/metrics",
        &[("Accept", "text/plain;version=0.0.4")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for family in [
        "pailot_reconcile_total",
        "pailot_reconcile_duration_seconds_bucket",
        "pailot_reconcile_failures_total",
        "pailot_last_success_timestamp_seconds",
        "pailot_source_revision_info",
        "pailot_source_fetch_duration_seconds_bucket",
        "pailot_apply_objects_total",
        "pailot_inventory_objects",
        "pailot_drifted_objects",
        "pailot_drift_detected_total",
        "pailot_chart_ready",
        "pailot_prune_blocked_total",
        "pailot_bootstrap_complete",
        "pailot_build_info",
        "pailot_leader",
        "pailot_process_resident_memory_bytes",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing from the scrape:\n{text}"
        );
    }
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a counter without its _total suffix is reported.
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# HELP bad_count x\n# TYPE bad_count counter\nbad_count 1\n")
        .unwrap();
    assert!(
        !child.wait_with_output().unwrap().status.success(),
        "promtool must flag a bad counter name"
    );
    srv.stop().await;
}

/// pailot's rule file rendered from the prometheus chart's partial with its default values
/// (the same template the chart renders into the ConfigMap prometheus-alert).
fn render_pailot_rules() -> String {
    let chart = repo_root().join("charts/prometheus");
    let values_text = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let values: serde_json::Value = serde_saphyr::from_str(&values_text).unwrap();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let src = std::fs::read_to_string(chart.join("templates/_pailot.rules.j2")).unwrap();
    env.add_template("_pailot.rules.j2", &src).unwrap();
    env.get_template("_pailot.rules.j2")
        .unwrap()
        .render(minijinja::context! { values => minijinja::Value::from(minijinja::value::Serde(&values)) })
        .unwrap()
}

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(bin: &str, dir: &Path, target: SocketAddr) -> Prometheus {
    let port = free_port();
    std::fs::write(dir.join("pailot.rules"), render_pailot_rules()).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\n\
         scrape_configs:\n  - job_name: pailot\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules = dir.join("pailot.rules").display().to_string()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// GET a Prometheus API path and parse the JSON answer.
async fn api(prom: &Prometheus, path_and_query: &str) -> Option<serde_json::Value> {
    let addr: SocketAddr = prom.url.trim_start_matches("http://").parse().unwrap();
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return None;
    }
    let r = get(addr, path_and_query).await;
    serde_json::from_slice(&r.body).ok()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Poll `f` every 250 ms until it returns `Some`, or fail after `limit` with `what`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, dir: &Path, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("timed out after {limit:?} waiting for {what}\n--- prometheus.log ---\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_evaluates_rules_and_runs_dashboard_queries() {
    let Some(bin) = tool("prometheus") else {
        return;
    };
    let metrics = busy_metrics();
    let srv = start(state(metrics.clone()).0).await;
    let tmp = TempTree::new();
    let dir = tmp.path().to_path_buf();
    let prom = start_prometheus(&bin, &dir, srv.addr);

    // 1. The target is scraped (OpenMetrics negotiated by Prometheus itself) and is up.
    let q = format!("/api/v1/query?query={}", encode("up{job=\"pailot\"}"));
    wait_for(
        Duration::from_secs(60),
        "a successful scrape of the pailot target",
        &dir,
        || async {
            let v = api(&prom, &q).await?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        },
    )
    .await;

    // 2. (Alerts are proven from their real causes in alerting_e2e, not from synthetic series here.)
    // 3. Every pailot rule loaded and evaluates without error.
    let rules = api(&prom, "/api/v1/rules").await.expect("rules API");
    let group = &rules["data"]["groups"][0];
    let list = group["rules"].as_array().expect("rules");
    assert!(list.len() >= 7, "{rules}");
    for r in list {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate cleanly: {}",
            r["name"], r["lastError"]
        );
    }
    let names: Vec<&str> = list.iter().filter_map(|r| r["name"].as_str()).collect();
    for alert in [
        "PailotReconcileFailing",
        "PailotDriftDetected",
        "PailotStale",
        "PailotSourceUnreachable",
        "PailotBootstrapIncomplete",
        "PailotPruneBlocked",
        "PailotDown",
    ] {
        assert!(names.contains(&alert), "{alert} not loaded: {names:?}");
    }

    // 4. Every dashboard query (and rule expression) runs; pailot series that the busy daemon
    //    exports must return data.
    let script = repo_root().join("scripts/check-dashboard-queries");
    let rules_file = dir.join("pailot.rules");
    let url = prom.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&url)
            .arg("--rules")
            .arg(&rules_file)
            .args([
                "--require-data",
                r"^max by \(revision\) \(pailot_source_revision_info\)$",
            ])
            .args(["--require-data", r"pailot_process_resident_memory_bytes"])
            .args(["--require-data", r"^max\(pailot_inventory_objects\)$"])
            .args([
                "--require-data",
                r"^max by \(chart\) \(pailot_drifted_objects\)$",
            ])
            .output()
            .expect("run check-dashboard-queries")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard queries failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("queries ran against"), "{stdout}");

    // 5. …and the script does fail on a query Prometheus rejects.
    let bad = tmp.write("bad.json", r#"{"panels": [{"title": "broken", "targets": [{"refId": "A", "expr": "sum(rate(pailot_reconcile_total[5m])"}]}]}"#);
    let url = prom.url.clone();
    let script = repo_root().join("scripts/check-dashboard-queries");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&url)
            .arg(&bad)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(prom);
    srv.stop().await;
}

/// The objects of kind/name in a `pailot render -o json` output.
fn find<'a>(objs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

#[test]
fn observability_charts_render_through_pailot() {
    let run = crate::harness::pailot(&[
        "render",
        "-c",
        "clusters/single-node.yaml",
        "--overlay",
        "base",
        "-o",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objs: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();

    // Prometheus: host network on a pai-master, v0.14.0 resources under qos (base overlay: qos on).
    let dep = find(&objs, "Deployment", "prometheus-deployment");
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "pai-master"
    );
    assert_eq!(
        spec["containers"][0]["resources"],
        serde_json::json!({"requests": {"memory": "256Mi"}, "limits": {"memory": "10Gi"}})
    );
    assert_eq!(dep["metadata"]["labels"]["pailot.dev/chart"], "prometheus");
    let config = find(&objs, "ConfigMap", "prometheus-configmap")["data"]["prometheus.yml"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("job_name: pai_serivce_exporter"),
        "{config}"
    );
    assert!(config.contains("kubernetes_sd_configs"), "{config}");
    assert!(config.contains("job_name: pailot"), "{config}");
    assert!(config.contains("targets: [\"127.0.0.1:9464\"]"), "{config}");
    assert!(
        config.contains("- /etc/prometheus-alert/*.rules"),
        "{config}"
    );

    // The rules file in the ConfigMap is the partial rendered with the chart's values.
    let alert = &find(&objs, "ConfigMap", "prometheus-alert")["data"];
    for f in [
        "gpu.rules",
        "jobs.rules",
        "k8s.rules",
        "node.rules",
        "pai-services.rules",
        "pailot.rules",
    ] {
        assert!(alert.get(f).is_some(), "prometheus-alert lacks {f}");
    }
    assert_eq!(
        alert["pailot.rules"].as_str().unwrap().trim(),
        render_pailot_rules().trim()
    );

    // Grafana: limit-only 256Mi; each dashboard as plain and as wrapped JSON; provisioning files.
    let g = find(&objs, "Deployment", "grafana");
    assert_eq!(
        g["spec"]["template"]["spec"]["containers"][0]["resources"],
        serde_json::json!({"limits": {"memory": "256Mi"}})
    );
    let data = &find(&objs, "ConfigMap", "grafana-configuration")["data"];
    let dash: serde_json::Value =
        serde_json::from_str(data["pailot.json"].as_str().unwrap()).unwrap();
    assert_eq!(dash["title"], "pailot");
    let wrapped: serde_json::Value =
        serde_json::from_str(data["pailot-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(wrapped["dashboard"], dash);
    assert!(
        data["provisioning-datasources.yaml"]
            .as_str()
            .unwrap()
            .contains("url: \"http://10.0.0.11:9091/prometheus\"")
    );
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["expr"].as_str())
        })
        .collect();
    for metric in [
        "pailot_reconcile_total",
        "pailot_reconcile_duration_seconds_bucket",
        "pailot_reconcile_failures_total",
        "pailot_drifted_objects",
        "pailot_inventory_objects",
        "pailot_source_revision_info",
        "pailot_apply_objects_total",
        "pailot_process_resident_memory_bytes",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
}

/// The single-node cluster file with `extra` prepended to its `values:` map.
fn cluster_with_values(tmp: &TempTree, extra: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("clusters/single-node.yaml")).unwrap();
    assert!(
        base.contains("\nvalues:\n"),
        "single-node.yaml has a values map"
    );
    let tuned = base.replacen("\nvalues:\n", &format!("\nvalues:\n  {extra}\n"), 1);
    tmp.write("tuned.yaml", &tuned).display().to_string()
}

#[test]
fn alert_thresholds_follow_cluster_and_overlay_values() {
    let tmp = TempTree::new();
    let cluster = cluster_with_values(
        &tmp,
        "prometheus: {pailot: {alerts: {failingFor: 2m, interval: 5, staleFactor: 4, driftMode: warn}}}",
    );
    let run = crate::harness::pailot(&["render", "-c", &cluster, "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objs: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let rules = find(&objs, "ConfigMap", "prometheus-alert")["data"]["pailot.rules"]
        .as_str()
        .unwrap()
        .to_string();
    let after = |alert: &str| {
        rules
            .split(&format!("alert: {alert}\n"))
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(
        after("PailotReconcileFailing").contains("for: 2m"),
        "{rules}"
    );
    assert!(
        after("PailotDriftDetected")
            .trim_start()
            .lines()
            .nth(1)
            .unwrap()
            .contains("for: 5s"),
        "{rules}"
    );
    assert!(after("PailotStale").contains("> 20\n"), "4 x 5 s: {rules}");
    assert!(
        after("PailotDriftDetected").contains("warn mode"),
        "{rules}"
    );

    let bad = cluster_with_values(&tmp, "prometheus: {pailot: {alerts: {failingFor: soon}}}");
    let run = crate::harness::pailot(&["render", "-c", &bad, "-o", "json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("/pailot/alerts/failingFor"),
        "{}",
        run.stderr
    );
}
