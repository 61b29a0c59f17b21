//! The daemon in-process against temporary repositories, without a cluster: render errors in `/status`,
//! webhooks, SIGHUP reloads, the bootstrap gate, and config errors from the command line.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pailot::daemon::config::Config;
use pailot::daemon::source::webhook::github_signature;
use tokio::sync::mpsc;

use crate::harness::pailot_in;
use crate::source::TempRepo;

/// A deployment repository with one chart (`web`: a ConfigMap whose `data.greeting` comes from values).
pub fn deploy_repo(greeting: &str) -> TempRepo {
    let repo = TempRepo::new();
    repo.write(
        "charts/web/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: web\nversion: 0.1.0\ndescription: A ConfigMap\n",
    );
    repo.write("charts/web/values.yaml", &format!("greeting: {greeting}\n"));
    repo.write(
        "charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  greeting: \"{{ values.greeting }}\"\n",
    );
    repo.write("overlays/all/overlay.yaml", "apiVersion: pailot.dev/v1\nkind: Overlay\ndescription: Every chart\ncharts:\n  include: [\"*\"]\n");
    repo.write(
        "clusters/test.yaml",
        "apiVersion: pailot.dev/v1\nkind: Cluster\nname: test\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {memory: 16Gi, cpu: \"4\"}\n",
    );
    repo.commit("initial");
    repo
}

/// A daemon config file in `dir` for `repo`; `extra` is appended (top-level YAML).
pub fn write_config(dir: &Path, repo: &Path, kubeconfig: Option<&Path>, extra: &str) -> PathBuf {
    let state = dir.join("state");
    let mut text = format!(
        "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: {}\n  cluster: clusters/test.yaml\n  pollInterval: 1h\nstateDir: {}\n",
        repo.display(),
        state.display()
    );
    if let Some(k) = kubeconfig {
        text.push_str(&format!("kubeconfig: {}\n", k.display()));
    }
    text.push_str(extra);
    let f = dir.join("pailot.yaml");
    std::fs::write(&f, text).unwrap();
    f
}

/// A kubeconfig pointing at a port where nothing listens (the API is "unreachable").
pub fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let f = dir.join("kubeconfig");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:9'}\nusers:\n- name: u\n  user: {token: x}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    f
}

/// A running in-process daemon.
pub struct RunningDaemon {
    pub addr: SocketAddr,
    pub reload: mpsc::Sender<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), pailot::daemon::Error>>,
}

impl RunningDaemon {
    pub async fn start(config_file: &Path, no_bootstrap: bool) -> Self {
        if let Ok(filter) = std::env::var("PAILOT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let cfg = Config::load(config_file).expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reload, reload_rx) = mpsc::channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let options = pailot::daemon::Options { no_bootstrap };
        let task = tokio::spawn(pailot::daemon::run(
            cfg,
            listener,
            async move {
                let _ = stop_rx.await;
            },
            reload_rx,
            options,
        ));
        RunningDaemon {
            addr,
            reload,
            stop: Some(stop_tx),
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], b"").await
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// Poll `/status` until `pred` holds (or panic after `limit`).
    pub async fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "timed out waiting for {what}; last status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("daemon stops")
            .unwrap()
            .unwrap();
    }
}

/// The real `pailot daemon --no-bootstrap` as a child process (so it gets real signals); its output goes to a
/// log file shown by `tail()`. Killed on drop.
pub struct DaemonProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl DaemonProcess {
    /// Start it with `config`, whose `server.listen` must be `addr`; logs to `log`.
    pub fn start(config: &Path, addr: SocketAddr, log: PathBuf) -> Self {
        Self::start_with_open_files(config, addr, log, None)
    }

    /// Like `start`, with the soft open-files limit the daemon starts with (systemd's default is 1024).
    pub fn start_with_open_files(
        config: &Path,
        addr: SocketAddr,
        log: PathBuf,
        soft_nofile: Option<u64>,
    ) -> Self {
        Self::spawn(config, addr, log, soft_nofile, true)
    }

    /// Like `start`, without `--no-bootstrap`: the daemon applies only once `stateDir` holds a bootstrap record.
    pub fn start_gated(config: &Path, addr: SocketAddr, log: PathBuf) -> Self {
        Self::spawn(config, addr, log, None, false)
    }

    fn spawn(
        config: &Path,
        addr: SocketAddr,
        log: PathBuf,
        soft_nofile: Option<u64>,
        no_bootstrap: bool,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(crate::harness::pailot_bin());
        cmd.arg("daemon");
        if no_bootstrap {
            cmd.arg("--no-bootstrap");
        }
        cmd.arg("--config")
            .arg(config)
            .env("PAILOT_LOG", "info,kube=warn,hyper=warn")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        if let Some(soft) = soft_nofile {
            // SAFETY: getrlimit/setrlimit only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start pailot daemon");
        DaemonProcess { child, addr, log }
    }

    /// The last 60 lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!("--- daemon log (tail) ---\n{}", lines[from..].join("\n"))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its child processes (the fetch/render helpers in flight).
    pub fn children(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        out
    }

    /// Its resident memory in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("daemon exited ({st})\n{}", self.tail());
        }
    }

    /// `GET path`: status code and body, `None` while it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        crate::alerting_e2e::http_get(self.addr, path).await
    }

    /// `/status` as JSON, `None` while it does not answer.
    pub async fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/status").await?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|r| r.1).unwrap_or_default()
    }

    /// Poll `/status` until `pred` holds (or panic, with the log, after `limit`).
    pub async fn wait_status(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            self.assert_running();
            let s = self.status().await;
            if let Some(s) = &s
                && pred(s)
            {
                return s.clone();
            }
            assert!(
                t.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; last status: {s:#?}\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `signal` (`TERM`, `INT`) and wait up to `limit` for the exit; the exit status and the time
    /// from the signal to the exit.
    pub async fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let st = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{signal} {pid}");
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            assert!(
                t.elapsed() < limit,
                "daemon still running {limit:?} after SIG{signal}\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status code and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let method = method.to_string();
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp).to_string();
        let code: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    })
    .await
    .unwrap()
}

/// Sum of a metric's samples whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const BROKEN_TEMPLATE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata: [unclosed\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_yaml_commit_is_refused_with_file_and_line_in_status() {
    let repo = deploy_repo("hello");
    let dir = tempfile::tempdir().unwrap();
    let kc = unreachable_kubeconfig(dir.path());
    let cfg = write_config(dir.path(), repo.path(), Some(&kc), "");
    let d = RunningDaemon::start(&cfg, true).await;
    // The good commit renders; applying it fails (API unreachable) and backs off.
    d.wait_status(Duration::from_secs(20), "an apply failure", |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["stage"] == "apply"))
    })
    .await;
    assert!(
        metric_sum(
            &d.metrics().await,
            "pailot_reconcile_failures_total{stage=\"apply\",reason=\"api_unreachable\"}"
        ) >= 1.0
    );

    repo.write("charts/web/templates/cm.yaml", BROKEN_TEMPLATE);
    let bad = repo.commit("broken yaml");
    let s = d
        .wait_status(Duration::from_secs(20), "a render error", |s| {
            s["phase"] == "idle"
                && s["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["stage"] == "render"))
        })
        .await;
    let err = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stage"] == "render")
        .unwrap();
    assert_eq!(err["file"], "charts/web/templates/cm.yaml", "{s:#}");
    // The position is the file's line, or (for rendered template output) the line of the output in `place`.
    let place = err["place"].as_str().unwrap_or("");
    assert!(
        err["line"].as_u64().is_some() || place.contains("line 5"),
        "position missing: {s:#}"
    );
    assert_eq!(s["lastReconcile"]["revision"], bad.as_str());
    assert_eq!(
        s["phase"], "idle",
        "a render error waits for the next commit, no backoff: {s:#}"
    );
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(&m, "pailot_reconcile_failures_total{stage=\"render\""),
        1.0,
        "{m}"
    );
    d.shutdown().await;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["lastFailedRevision"], bad.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_good_signature_triggers_a_fetch_bad_one_gets_401() {
    let repo = deploy_repo("hello");
    repo.write("charts/web/templates/cm.yaml", BROKEN_TEMPLATE);
    repo.commit("broken from the start: the daemon idles after one failed render");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook-secret"), "s3cret\n").unwrap();
    let cfg = write_config(
        dir.path(),
        repo.path(),
        None,
        "server:\n  webhookSecretFile: hook-secret\n",
    );
    let d = RunningDaemon::start(&cfg, true).await;
    d.wait_status(Duration::from_secs(20), "the first render failure", |s| {
        s["phase"] == "idle" && s["lastReconcile"].is_object()
    })
    .await;
    let fetches = |m: &str| metric_sum(m, "pailot_source_fetch_duration_seconds_count");
    let before = fetches(&d.metrics().await);
    assert!(before >= 1.0);

    let body = br#"{"ref":"refs/heads/main"}"#;
    let bad = github_signature(b"wrong", body);
    let (code, _) = http(
        d.addr,
        "POST",
        "/hooks/git",
        &[("X-Hub-Signature-256", &bad)],
        body,
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = http(d.addr, "POST", "/hooks/git", &[], body).await;
    assert_eq!(code, 401, "no signature at all");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fetches(&d.metrics().await),
        before,
        "a refused webhook must not fetch"
    );

    let good = github_signature(b"s3cret", body);
    // A signed ping (sent when the webhook is created) and a signed non-push event fetch nothing.
    let (code, text) = http(
        d.addr,
        "POST",
        "/hooks/git",
        &[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "ping")],
        body,
    )
    .await;
    assert_eq!(code, 200, "ping: {text}");
    let (code, _) = http(
        d.addr,
        "POST",
        "/hooks/git",
        &[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "issues")],
        body,
    )
    .await;
    assert_eq!(code, 400, "not a push event");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fetches(&d.metrics().await),
        before,
        "ping/issues fetch nothing"
    );
    let (code, _) = http(
        d.addr,
        "POST",
        "/hooks/git",
        &[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "push")],
        body,
    )
    .await;
    assert_eq!(code, 202);
    let t = Instant::now();
    while fetches(&d.metrics().await) == before {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "webhook did not trigger a fetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = http(
        d.addr,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", "s3cret")],
        body,
    )
    .await;
    assert_eq!(code, 202);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_applies_a_valid_config_and_refuses_an_invalid_one() {
    let repo = deploy_repo("hello");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        repo.path(),
        Some(&unreachable_kubeconfig(dir.path())),
        "",
    );
    let d = RunningDaemon::start(&cfg, true).await;
    d.wait_status(Duration::from_secs(10), "drift mode", |s| {
        s["driftMode"] == "correct"
    })
    .await;

    // Invalid: unknown field. Refused; the old config keeps running.
    let good_text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{good_text}reconcile:\n  driftMode: warn\n  bogus: 1\n"),
    )
    .unwrap();
    assert!(Config::load(&cfg).is_err());
    d.reload.send(()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(d.status().await["driftMode"], "correct");

    // Valid: takes effect.
    std::fs::write(&cfg, format!("{good_text}reconcile:\n  driftMode: warn\n")).unwrap();
    d.reload.send(()).await.unwrap();
    d.wait_status(
        Duration::from_secs(5),
        "drift mode warn after reload",
        |s| s["driftMode"] == "warn",
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bootstrap_record_it_serves_metrics_and_does_not_fetch() {
    let repo = deploy_repo("hello");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), repo.path(), None, "");
    let d = RunningDaemon::start(&cfg, false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = d.metrics().await;
    assert_eq!(metric_sum(&m, "pailot_bootstrap_complete"), 0.0, "{m}");
    assert_eq!(
        metric_sum(&m, "pailot_source_fetch_duration_seconds_count"),
        0.0,
        "{m}"
    );
    assert_eq!(d.get("/healthz").await.0, 200);
    assert_eq!(d.get("/readyz").await.0, 503);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repository_is_watched_unless_watch_is_off() {
    let repo = deploy_repo("hello");
    repo.write("charts/web/templates/cm.yaml", BROKEN_TEMPLATE);
    repo.commit("broken: each reconcile ends in a render error, the daemon idles in between");
    for (extra, want) in [("", "refs"), ("  watch: off\n", "off")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), repo.path(), None, "");
        // `extra` belongs under `source:` (after `pollInterval`).
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "  pollInterval: 1h\n",
            &format!("  pollInterval: 1h\n{extra}"),
        );
        std::fs::write(&cfg, text).unwrap();
        let d = RunningDaemon::start(&cfg, true).await;
        let s = d
            .wait_status(Duration::from_secs(20), "the first render failure", |s| {
                s["phase"] == "idle" && s["lastReconcile"].is_object()
            })
            .await;
        assert_eq!(s["source"]["watch"], want, "{s:#}");
        // A commit reaches a watching daemon at once; with `watch: off` nothing fires before the (1 h) poll.
        let before = |s: &serde_json::Value| s["source"]["triggers"]["watch"].as_u64().unwrap_or(0);
        let n0 = before(&s);
        repo.write("README.md", &format!("{want}\n"));
        repo.commit(&format!("touch for {want}"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let n1 = before(&d.status().await);
        if want == "refs" {
            assert!(n1 > n0, "the commit did not trigger the watch");
        } else {
            assert_eq!(n1, 0, "a watch fired with watch: off");
        }
        d.shutdown().await;
    }
}

#[test]
fn invalid_config_is_an_input_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pailot.yaml");
    std::fs::write(&f, "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: /srv/repo\n  pollIntervall: 5s\n").unwrap();
    let r = pailot_in(
        dir.path(),
        &["daemon", "--config", f.to_str().unwrap(), "--check"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("pailot.yaml:5"), "{}", r.stderr);
    assert!(r.stderr.contains("pollIntervall"), "{}", r.stderr);

    std::fs::write(&f, "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: /srv/repo\n  pollInterval: 5s\n").unwrap();
    let r = pailot_in(
        dir.path(),
        &["daemon", "--config", f.to_str().unwrap(), "--check"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok-very-secret\n").unwrap();
    let f = dir.path().join("pailot.yaml");
    std::fs::write(
        &f,
        "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: https://git.example/r.git\n  tokenFile: token\n  pollInterval: soon\n",
    )
    .unwrap();
    let r = pailot_in(
        dir.path(),
        &["daemon", "--config", f.to_str().unwrap(), "--check"],
    );
    assert_eq!(r.code, 2);
    assert!(!r.stderr.contains("tok-very-secret") && !r.stdout.contains("tok-very-secret"));
    let cfg = Config::load(&f.with_file_name("pailot.yaml")).err();
    assert!(!format!("{cfg:?}").contains("tok-very-secret"));
}
