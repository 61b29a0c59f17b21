//! End-to-end alerting: a real Prometheus, loaded with the rules rendered from the prometheus chart, scrapes the real `pailot daemon` reconciling the test control plane; drift and a broken commit fire alerts.
//!
//! Flow (one test, about a minute): a temporary deployment repository (tests/fixtures/alerting/repo:
//! chart `web` = Deployment of 1 replica + ConfigMap) is reconciled by `pailot daemon --no-bootstrap`
//! (warn mode, 2 s drift interval) into a fresh namespace; Prometheus (1 s scrape and evaluation)
//! scrapes it with `pailot.rules` taken from `pailot render` of the shipped repository with short
//! thresholds (tests/fixtures/alerting/alert-values.yaml). Then:
//! 1. every dashboard and rule query runs without error (scripts/check-dashboard-queries);
//! 2. `kubectl scale --replicas=3` → PailotDriftDetected fires (warn mode: not corrected);
//! 3. SIGHUP into `correct` mode → replicas back to 1 and the alert resolves;
//! 4. a commit with broken YAML → PailotReconcileFailing fires; the previous revision stays applied.
//!
//! Needs the control plane (skipped only with PAILOT_SKIP_CLUSTER=1), `kubectl`, `python3` and
//! Debian's `prometheus`; fails loudly when one is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{pailot_bin, repo_root};
use crate::kube::TestNamespace;

/// Bound on edit → PailotDriftDetected firing: watch/sweep detection (≤ 2 s drift interval) +
/// `for: 3s` + scrape (1 s) + evaluation (1 s) ≈ 7 s; asserted with slack for a loaded machine.
const DRIFT_FIRING_BOUND: Duration = Duration::from_secs(20);
/// Bound on repair → resolved: the correction (next sweep, ≤ 2 s) + the 20 s corrections window
/// sliding past the last warn-mode detection + scrape + evaluation ≈ 24 s at most.
const RESOLVE_BOUND: Duration = Duration::from_secs(35);
/// Bound on bad commit → PailotReconcileFailing firing: the source watch/poll (1 s) + render +
/// `for: 5s` + scrape + evaluation ≈ 8 s.
const FAILING_BOUND: Duration = Duration::from_secs(25);

pub(crate) fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/alerting")
}

/// Full path of `name` on PATH; panics (no silent skip) when missing.
fn need_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: the end-to-end alerting test needs it (apt-get install prometheus kubectl python3)")
        })
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process (daemon or Prometheus) with its log file; killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child, log }
    }
    /// The last 60 lines of its log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- {} log (tail) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
    /// Panics with the log when the process has exited.
    fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited early ({st})\n{}", self.name, self.tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET: `(status, body)`, `None` when the server cannot be reached.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
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

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=pailot-test",
            "-c",
            "user.email=test@pailot.invalid",
        ])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, msg: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The fixture deployment repository, its cluster file naming `ns`, committed on `main`.
pub(crate) fn deploy_repo(dir: &Path, ns: &str) -> String {
    copy_tree(&fixture().join("repo"), dir);
    let tmpl = dir.join("clusters/test.yaml.in");
    let cluster = std::fs::read_to_string(&tmpl)
        .unwrap()
        .replace("@NAMESPACE@", ns);
    std::fs::remove_file(&tmpl).unwrap();
    std::fs::write(dir.join("clusters/test.yaml"), cluster).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    commit(dir, "web: Deployment (1 replica) + ConfigMap")
}

fn daemon_config(
    file: &Path,
    repo: &Path,
    kubeconfig: &Path,
    listen: SocketAddr,
    state: &Path,
    mode: &str,
) {
    let text = std::fs::read_to_string(fixture().join("daemon.yaml.in"))
        .unwrap()
        .replace("@REPO@", &repo.display().to_string())
        .replace("@KUBECONFIG@", &kubeconfig.display().to_string())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@STATE@", &state.display().to_string())
        .replace("@DRIFT_MODE@", mode);
    std::fs::write(file, text).unwrap();
}

/// `pailot.rules` of the ConfigMap prometheus-alert, from `pailot render` of the shipped repository
/// with clusters/single-node.yaml plus the short thresholds of alert-values.yaml (a temporary
/// cluster file: the same path an operator's overlay or cluster values take).
fn render_rules(tmp: &Path) -> String {
    let extra = std::fs::read_to_string(fixture().join("alert-values.yaml")).unwrap();
    let rules = render_rules_with(tmp, &extra);
    assert!(rules.contains("alert: PailotDriftDetected"), "{rules}");
    assert!(
        rules.contains("for: 3s"),
        "short drift interval not rendered: {rules}"
    );
    assert!(
        rules.contains("for: 5s"),
        "short failingFor not rendered: {rules}"
    );
    rules
}

/// `pailot.rules` rendered with the prometheus chart values `extra` (one YAML line under `values:`).
fn render_rules_with(tmp: &Path, extra: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("clusters/single-node.yaml")).unwrap();
    assert!(
        base.contains("\nvalues:\n"),
        "clusters/single-node.yaml has a values map"
    );
    let tuned = base.replacen(
        "\nvalues:\n",
        &format!("\nvalues:\n  {}\n", extra.trim()),
        1,
    );
    let cluster = tmp.join("alerting-cluster.yaml");
    std::fs::write(&cluster, tuned).unwrap();
    let out = Command::new(pailot_bin())
        .current_dir(repo_root())
        .args(["render", "-c"])
        .arg(&cluster)
        .args(["-o", "json"])
        .output()
        .expect("run pailot render");
    assert!(
        out.status.success(),
        "pailot render of the shipped repository failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("render JSON");
    objs.iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "prometheus-alert")
        .and_then(|o| o["data"]["pailot.rules"].as_str())
        .expect("ConfigMap prometheus-alert with data key pailot.rules")
        .to_string()
}

fn start_prometheus(dir: &Path, rules: &str, target: SocketAddr) -> (Proc, SocketAddr) {
    let bin = need_tool("prometheus");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rules_file = dir.join("pailot.rules");
    std::fs::write(&rules_file, rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{:?}]\n\
         scrape_configs:\n  - job_name: pailot\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules_file.display().to_string()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let p = Proc::spawn(
        "prometheus",
        Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}")),
        dir.join("prometheus.log"),
    );
    (p, addr)
}

/// Poll `f` every 250 ms until `Some`; panics after `limit` with `what` and both logs. Returns the value
/// and the time it took.
async fn poll<T, F, Fut>(
    limit: Duration,
    what: &str,
    procs: &mut [&mut Proc],
    mut f: F,
) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let t = Instant::now();
    loop {
        for p in procs.iter_mut() {
            p.assert_alive();
        }
        match f().await {
            Ok(v) => return (v, t.elapsed()),
            Err(state) if t.elapsed() > limit => {
                let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; last state: {state}\n{}",
                    logs.join("\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Active (pending or firing) alerts named `name`, from Prometheus's /api/v1/alerts.
async fn alerts(prom: SocketAddr, name: &str) -> Result<Vec<serde_json::Value>, String> {
    let (code, body) = http_get(prom, "/api/v1/alerts")
        .await
        .ok_or("prometheus unreachable")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
    Ok(v["data"]["alerts"]
        .as_array()
        .ok_or(format!("no alerts array: {body}"))?
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .cloned()
        .collect())
}

async fn firing(prom: SocketAddr, name: &str) -> Result<serde_json::Value, String> {
    let list = alerts(prom, name).await?;
    list.iter()
        .find(|a| a["state"] == "firing")
        .cloned()
        .ok_or_else(|| format!("{name}: {list:?}"))
}

async fn query(prom: SocketAddr, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .await
        .ok_or("prometheus unreachable")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
    v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or(format!("{q}: {body}"))
}

async fn replicas(ns: &TestNamespace) -> Option<i32> {
    let deps: kube::Api<Deployment> = ns.api();
    deps.get_opt("web").await.ok().flatten()?.spec.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_and_broken_commits_fire_pailot_alerts_in_a_real_prometheus() {
    let Some(ns) = TestNamespace::new("alerting").await else {
        return;
    };
    let python = need_tool("python3");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let good_rev = deploy_repo(&repo, &ns.name);

    // The daemon, warn mode first.
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let t_spawn = Instant::now();
    let cfg = tmp.path().join("pailot.yaml");
    daemon_config(
        &cfg,
        &repo,
        &ns.kubeconfig,
        listen,
        &tmp.path().join("state"),
        "warn",
    );
    let mut daemon = Proc::spawn(
        "pailot daemon",
        Command::new(pailot_bin())
            .args(["daemon", "--no-bootstrap", "--config"])
            .arg(&cfg)
            .env("PAILOT_LOG", "info"),
        tmp.path().join("daemon.log"),
    );

    // Prometheus with the rules rendered through pailot.
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let rules = render_rules(tmp.path());
    let (mut prom, prom_addr) = start_prometheus(&prom_dir, &rules, listen);

    // First reconcile: /readyz 200, the Deployment at 1 replica.
    let (_, _) = poll(
        Duration::from_secs(90),
        "daemon /readyz 200",
        &mut [&mut daemon, &mut prom],
        || async {
            match http_get(listen, "/readyz").await {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "first reconcile: /readyz 200 {:?} after the daemon started",
        t_spawn.elapsed()
    );
    assert_eq!(
        replicas(&ns).await,
        Some(1),
        "Deployment web applied with 1 replica"
    );

    // Prometheus scrapes the daemon and sees the applied revision.
    let rev_q = format!("pailot_source_revision_info{{job=\"pailot\",revision=\"{good_rev}\"}}");
    poll(
        Duration::from_secs(60),
        "Prometheus to scrape the applied revision",
        &mut [&mut daemon, &mut prom],
        || async {
            let r = query(prom_addr, &rev_q).await?;
            if r.is_empty() {
                Err(format!("{rev_q}: no data"))
            } else {
                Ok(())
            }
        },
    )
    .await;

    // Every pailot rule loaded and evaluates cleanly.
    poll(
        Duration::from_secs(15),
        "every pailot rule evaluated with health ok",
        &mut [&mut daemon, &mut prom],
        || async {
            let (_, body) = http_get(prom_addr, "/api/v1/rules")
                .await
                .ok_or("unreachable")?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let list = v["data"]["groups"][0]["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if list.len() < 6 {
                return Err(format!("rules not loaded: {body}"));
            }
            match list.iter().find(|r| r["health"] != "ok") {
                Some(r) => Err(format!(
                    "{} health {} {}",
                    r["name"], r["health"], r["lastError"]
                )),
                None => Ok(()),
            }
        },
    )
    .await;

    // Every dashboard (and rule) query runs against this Prometheus without error.
    let rules_file = prom_dir.join("pailot.rules");
    let url = format!("http://{prom_addr}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo_root().join("scripts/check-dashboard-queries"))
            .arg(&url)
            .arg("--rules")
            .arg(&rules_file)
            .args([
                "--require-data",
                r"^max by \(revision\) \(pailot_source_revision_info\)$",
            ])
            .args(["--require-data", r"^max\(pailot_inventory_objects\)$"])
            .output()
            .expect("run scripts/check-dashboard-queries")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard queries failed against the live Prometheus:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing fires before the edit.
    let before = alerts(prom_addr, "PailotDriftDetected").await.unwrap();
    assert!(
        before.is_empty(),
        "PailotDriftDetected active before any drift: {before:?}"
    );

    // 2. Out-of-band edit (warn mode): PailotDriftDetected fires, the drift is left in place.
    crate::kube::kubectl_scale(&ns, "web", 3);
    let (alert, edit_to_firing) = poll(
        DRIFT_FIRING_BOUND,
        "PailotDriftDetected firing after kubectl scale",
        &mut [&mut daemon, &mut prom],
        || firing(prom_addr, "PailotDriftDetected"),
    )
    .await;
    eprintln!(
        "edit → PailotDriftDetected firing: {edit_to_firing:?} (bound {DRIFT_FIRING_BOUND:?})"
    );
    assert_eq!(alert["labels"]["chart"], "web", "{alert}");
    assert_eq!(alert["labels"]["job"], "pailot", "{alert}");
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap_or("")
            .contains("pailot diff"),
        "{alert}"
    );
    assert_eq!(
        replicas(&ns).await,
        Some(3),
        "warn mode must not correct the drift"
    );

    // 3. Reload into correct mode (SIGHUP): the drift is repaired and the alert resolves.
    daemon_config(
        &cfg,
        &repo,
        &ns.kubeconfig,
        listen,
        &tmp.path().join("state"),
        "correct",
    );
    let st = Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .expect("run kill -HUP");
    assert!(st.success());
    let t_reload = Instant::now();
    let ns_ref = &ns;
    let (_, reload_to_repaired) = poll(
        Duration::from_secs(20),
        "correct mode to scale web back to 1 replica",
        &mut [&mut daemon, &mut prom],
        || async move {
            match replicas(ns_ref).await {
                Some(1) => Ok(()),
                r => Err(format!("replicas {r:?}")),
            }
        },
    )
    .await;
    let (_, repair_to_resolved) = poll(
        RESOLVE_BOUND,
        "PailotDriftDetected to resolve after the repair",
        &mut [&mut daemon, &mut prom],
        || async {
            let list = alerts(prom_addr, "PailotDriftDetected").await?;
            if list.is_empty() {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "SIGHUP correct → repaired: {reload_to_repaired:?}; repaired → PailotDriftDetected resolved: {repair_to_resolved:?} (bound {RESOLVE_BOUND:?}; {:?} after the reload)",
        t_reload.elapsed()
    );
    assert_eq!(replicas(&ns).await, Some(1));

    // 3b. Correct mode, something keeps changing the object: three edits, each corrected at once,
    //     within the 20 s corrections window fire PailotDriftDetected (corrections branch); it
    //     resolves once the window slides past them.
    let t_edits = Instant::now();
    for n in [3, 4, 5] {
        crate::kube::kubectl_scale(&ns, "web", n);
        poll(
            Duration::from_secs(10),
            "correct mode to undo the edit",
            &mut [&mut daemon, &mut prom],
            || async move {
                match replicas(ns_ref).await {
                    Some(1) => Ok(()),
                    r => Err(format!("replicas {r:?}")),
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (alert, _) = poll(
        DRIFT_FIRING_BOUND,
        "PailotDriftDetected firing after repeated corrections",
        &mut [&mut daemon, &mut prom],
        || firing(prom_addr, "PailotDriftDetected"),
    )
    .await;
    let edits_to_firing = t_edits.elapsed();
    assert_eq!(alert["labels"]["chart"], "web", "{alert}");
    let (_, corrected_resolved) = poll(
        RESOLVE_BOUND,
        "PailotDriftDetected to resolve after the repeated corrections stop",
        &mut [&mut daemon, &mut prom],
        || async {
            let list = alerts(prom_addr, "PailotDriftDetected").await?;
            if list.is_empty() {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "correct mode, 3 corrected edits: first edit → firing {edits_to_firing:?}; firing → resolved {corrected_resolved:?}"
    );

    // 4. A render-breaking commit (broken YAML, and a replica change that must not land).
    std::fs::copy(
        fixture().join("broken-cm.yaml"),
        repo.join("charts/web/templates/cm.yaml"),
    )
    .unwrap();
    std::fs::write(
        repo.join("charts/web/values.yaml"),
        "greeting: broken\nreplicas: 2\n",
    )
    .unwrap();
    let bad_rev = commit(&repo, "broken YAML");
    let (alert, commit_to_firing) = poll(
        FAILING_BOUND,
        "PailotReconcileFailing firing after the broken commit",
        &mut [&mut daemon, &mut prom],
        || firing(prom_addr, "PailotReconcileFailing"),
    )
    .await;
    eprintln!(
        "bad commit → PailotReconcileFailing firing: {commit_to_firing:?} (bound {FAILING_BOUND:?})"
    );
    assert_eq!(alert["labels"]["stage"], "render", "{alert}");
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap_or("")
            .contains("pailot status"),
        "{alert}"
    );
    // The previous revision stays applied: old spec live, /status still on the good revision.
    assert_eq!(
        replicas(&ns).await,
        Some(1),
        "the broken commit's replica change must not land"
    );
    let cms: kube::Api<ConfigMap> = ns.api();
    let cm = cms
        .get("web-config")
        .await
        .expect("ConfigMap web-config still exists");
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );
    let (_, body) = http_get(listen, "/status").await.expect("daemon /status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["revision"], good_rev.as_str(), "{status:#}");
    assert_eq!(
        status["lastReconcile"]["revision"],
        bad_rev.as_str(),
        "{status:#}"
    );

    eprintln!(
        "alerting e2e figures: edit→firing {edit_to_firing:?}, repair→resolved {repair_to_resolved:?}, 3 corrected edits→firing {edits_to_firing:?}, bad commit→firing {commit_to_firing:?}"
    );
    drop(prom);
    drop(daemon);
}

/// Thresholds of the every-alert test: each `for` a few seconds, so each cause shows within seconds.
const ALL_ALERT_VALUES: &str = "prometheus: {pailot: {alerts: {driftMode: correct, interval: 3, staleFactor: 5, failingFor: 3s, corrections: 3, correctionsWindow: 20s, sourceUnreachableFor: 4s, pendingFor: 2s, bootstrapIncompleteFor: 2s, certificateExpiryDays: 400, pruneBlockedWindow: 8s, suspendedFor: 3s, downFor: 3s}}}";

/// The daemon of the every-alert test: a polled `file://` remote, correct mode, a small mass-prune
/// threshold, and no `--no-bootstrap` (the bootstrap record decides).
fn start_daemon(cfg: &Path, log: PathBuf) -> Proc {
    Proc::spawn(
        "pailot daemon",
        Command::new(pailot_bin())
            .args(["daemon", "--config"])
            .arg(cfg)
            .env("PAILOT_LOG", "info"),
        log,
    )
}

/// Wait until `name` fires (labels matching `want`), then return the alert.
async fn fires(
    prom: SocketAddr,
    name: &str,
    want: &[(&str, &str)],
    limit: Duration,
    procs: &mut [&mut Proc],
) -> serde_json::Value {
    let (alert, took) = poll(limit, &format!("{name} {want:?} firing"), procs, || async {
        let list = alerts(prom, name).await?;
        list.iter()
            .find(|a| a["state"] == "firing" && want.iter().all(|(k, v)| a["labels"][*k] == *v))
            .cloned()
            .ok_or_else(|| format!("{list:?}"))
    })
    .await;
    eprintln!("{name} {want:?}: firing after {took:?}");
    alert
}

/// Wait until no alert named `name` (with labels matching `want`) is pending or firing.
async fn resolves(
    prom: SocketAddr,
    name: &str,
    want: &[(&str, &str)],
    limit: Duration,
    procs: &mut [&mut Proc],
) {
    let (_, took) = poll(
        limit,
        &format!("{name} {want:?} resolved"),
        procs,
        || async {
            let list = alerts(prom, name).await?;
            let left: Vec<_> = list
                .iter()
                .filter(|a| want.iter().all(|(k, v)| a["labels"][*k] == *v))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    eprintln!("{name} {want:?}: resolved after {took:?}");
}

/// Push the working tree's `main` to the bare remote.
fn push(repo: &Path, remote: &Path) {
    git(
        repo,
        &[
            "push",
            "-q",
            "--force",
            &remote.display().to_string(),
            "main",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_alert_fires_from_its_real_cause_and_resolves_after_the_fix() {
    let Some(ns) = TestNamespace::new("alert-causes").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    deploy_repo(&repo, &ns.name);
    let remote = tmp.path().join("remote.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &repo.display().to_string(),
            &remote.display().to_string(),
        ],
    );
    let state = tmp.path().join("state");
    // A control-plane PKI as bootstrap writes it (valid a year: inside a 400-day expiry window).
    let host = tmp.path().join("host");
    let boot = Command::new(pailot_bin())
        .args(["bootstrap", "--skip-api", "--force", "--repo"])
        .arg(&repo)
        .args(["-c", "clusters/test.yaml", "--root"])
        .arg(&host)
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let (hooks, received) = crate::controls::recorder();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = tmp.path().join("pailot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: file://{}\n  cluster: clusters/test.yaml\n  pollInterval: 1s\n  pollJitter: 0\nkubeconfig: {}\nreconcile:\n  wait: false\n  driftInterval: 2s\n  massPruneThreshold: 3\nserver:\n  listen: \"{listen}\"\nstateDir: {}\nhostRoot: {}\nnotifications:\n  dedupWindow: 1s\n  sinks: [{{type: webhook, url: \"http://{hooks}/hook\"}}]\n",
            remote.display(),
            ns.kubeconfig.display(),
            state.display(),
            host.display()
        ),
    )
    .unwrap();
    let mut daemon = start_daemon(&cfg, tmp.path().join("daemon.log"));
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let rules = render_rules_with(tmp.path(), ALL_ALERT_VALUES);
    let (mut prom, p) = start_prometheus(&prom_dir, &rules, listen);
    let long = Duration::from_secs(45);

    // 1. Incomplete bootstrap: no record, nothing applied.
    let a = fires(
        p,
        "PailotBootstrapIncomplete",
        &[("item", "record")],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("pailot bootstrap"),
        "{a}"
    );
    assert_eq!(
        replicas(&ns).await,
        None,
        "nothing applied without a bootstrap record"
    );
    // The fix: bootstrap writes its record; the daemon reads it again and applies.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("bootstrap.json"),
        format!(
            "{{\"apiVersion\":\"pailot.dev/v1\",\"kind\":\"BootstrapRecord\",\"cluster\":\"{}\",\"machine\":\"node-1\",\"pailotVersion\":\"test\",\"complete\":true,\"files\":[],\"nodes\":[],\"updatedAtUnix\":0}}",
            ns.name
        ),
    )
    .unwrap();
    resolves(
        p,
        "PailotBootstrapIncomplete",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    let ns_ref = &ns;
    poll(
        long,
        "the first apply",
        &mut [&mut daemon, &mut prom],
        || async move {
            match replicas(ns_ref).await {
                Some(1) => Ok(()),
                r => Err(format!("{r:?}")),
            }
        },
    )
    .await;

    // 2. A broken commit.
    std::fs::copy(
        fixture().join("broken-cm.yaml"),
        repo.join("charts/web/templates/cm.yaml"),
    )
    .unwrap();
    commit(&repo, "broken YAML");
    push(&repo, &remote);
    let a = fires(
        p,
        "PailotReconcileFailing",
        &[("stage", "render"), ("reason", "invalid_input")],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("pailot status"),
        "{a}"
    );
    git(
        &repo,
        &["checkout", "HEAD~1", "--", "charts/web/templates/cm.yaml"],
    );
    commit(&repo, "fixed");
    push(&repo, &remote);
    resolves(
        p,
        "PailotReconcileFailing",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;

    // 3. Over budget: 40Gi on the 16Gi machine.
    std::fs::write(
        repo.join("charts/web/values.yaml"),
        "greeting: hello\nreplicas: 1\nmemory: 40Gi\n",
    )
    .unwrap();
    commit(&repo, "40Gi");
    push(&repo, &remote);
    fires(
        p,
        "PailotReconcileFailing",
        &[("stage", "plan"), ("reason", "over_budget")],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    std::fs::write(
        repo.join("charts/web/values.yaml"),
        "greeting: hello\nreplicas: 1\n",
    )
    .unwrap();
    commit(&repo, "back to 64Mi");
    push(&repo, &remote);
    resolves(
        p,
        "PailotReconcileFailing",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;

    // 4. A mass prune refused: six ConfigMaps applied, then removed at once (threshold 3).
    let six: String = (0..6)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra-{i}\ndata:\n  i: \"{i}\"\n"))
        .collect();
    std::fs::write(repo.join("charts/web/templates/extra.yaml"), &six).unwrap();
    commit(&repo, "six more");
    push(&repo, &remote);
    poll(
        long,
        "the six ConfigMaps",
        &mut [&mut daemon, &mut prom],
        || async move {
            let cms: kube::Api<ConfigMap> = ns_ref.api();
            match cms.get_opt("extra-5").await {
                Ok(Some(_)) => Ok(()),
                r => Err(format!("{r:?}")),
            }
        },
    )
    .await;
    std::fs::remove_file(repo.join("charts/web/templates/extra.yaml")).unwrap();
    commit(&repo, "drop them");
    push(&repo, &remote);
    let a = fires(
        p,
        "PailotPruneBlocked",
        &[("reason", "mass_prune_threshold")],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("pailot diff"),
        "{a}"
    );
    // The fix: put them back (or raise the threshold); the alert resolves once the window passes.
    std::fs::write(repo.join("charts/web/templates/extra.yaml"), &six).unwrap();
    commit(&repo, "keep them");
    push(&repo, &remote);
    resolves(
        p,
        "PailotPruneBlocked",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    resolves(
        p,
        "PailotReconcileFailing",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;

    // 5. The remote goes away: fetches fail (unreachable), no success confirms the cluster (stale).
    let moved = tmp.path().join("remote-away.git");
    std::fs::rename(&remote, &moved).unwrap();
    fires(
        p,
        "PailotSourceUnreachable",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    fires(p, "PailotStale", &[], long, &mut [&mut daemon, &mut prom]).await;
    std::fs::rename(&moved, &remote).unwrap();
    resolves(
        p,
        "PailotSourceUnreachable",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    resolves(p, "PailotStale", &[], long, &mut [&mut daemon, &mut prom]).await;

    // 6. The daemon dies; it comes back.
    drop(daemon);
    fires(p, "PailotDown", &[], long, &mut [&mut prom]).await;
    let mut daemon = start_daemon(&cfg, tmp.path().join("daemon-2.log"));
    resolves(p, "PailotDown", &[], long, &mut [&mut daemon, &mut prom]).await;

    // 7. Certificates bootstrap wrote, inside the (400-day) expiry window.
    let a = fires(
        p,
        "PailotCertificateExpiring",
        &[("cert", "apiserver")],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("--renew-certs"),
        "{a}"
    );

    // 8. A suspension held too long; then resumed.
    let suspend = Command::new(pailot_bin())
        .args(["suspend", "--reason", "maintenance", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        suspend.status.success(),
        "{}",
        String::from_utf8_lossy(&suspend.stderr)
    );
    fires(
        p,
        "PailotSuspended",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;
    let resume = Command::new(pailot_bin())
        .args(["resume", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(resume.status.success());
    resolves(
        p,
        "PailotSuspended",
        &[],
        long,
        &mut [&mut daemon, &mut prom],
    )
    .await;

    // 9. The notifications that went out are counted, as the local receiver saw them.
    let sent = received.lock().unwrap().len();
    assert!(sent >= 3, "reconcile results posted: {sent}");
    let (r, _) = poll(
        long,
        "pailot_notifications_total in Prometheus",
        &mut [&mut daemon, &mut prom],
        || async {
            let r = query(
                p,
                "pailot_notifications_total{sink=\"webhook\",result=\"sent\"}",
            )
            .await?;
            let n: f64 = r
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse().ok())
                .unwrap_or(0.0);
            if n >= 1.0 {
                Ok(n)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    eprintln!("notifications sent (Prometheus): {r}");

    // Nothing else is left firing (the certificates stay inside the 400-day window by design).
    let (_, body) = http_get(p, "/api/v1/alerts").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let firing: Vec<&serde_json::Value> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["state"] == "firing" && a["labels"]["alertname"] != "PailotCertificateExpiring"
        })
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
    drop(prom);
    drop(daemon);
}
