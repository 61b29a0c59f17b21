//! The API server stopped in the middle of the daemon's apply, then started again: the daemon backs off
//! (no crash, no retry storm), reports the transient API error, and converges once the API is back.
//!
//! Runs its own control plane (`PrivateCluster`: own ports and data dir, so the restart keeps the objects,
//! the CA and the port) rather than the shared one, which other tests use at the same time.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;

use crate::daemon::{DaemonProcess, metric_sum};
use crate::kube::{PrivateCluster, client_for};
use crate::reconcile::{
    CORPUS_OBJECTS, assert_inventory_consistent, corpus_config, corpus_objects, corpus_repo,
    state_inventory,
};

/// How long the API server stays down once it has stopped (on top of the time its stop and restart take).
const OUTAGE: Duration = Duration::from_secs(12);

/// The daemon's backoff before retry `n` (1-based): 1 s, 2 s, 4 s, … (src/daemon/reconcile.rs).
fn backoff(n: usize) -> Duration {
    Duration::from_secs(1 << (n - 1).min(8))
}

const FAILURES: &str = "pailot_reconcile_failures_total{";
const API_DOWN: &str =
    "pailot_reconcile_failures_total{stage=\"apply\",reason=\"api_unreachable\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_stopped_during_an_apply_backs_off_then_converges_when_it_returns() {
    if crate::kube::skip_cluster() {
        eprintln!("skipped: {}=1", crate::kube::SKIP_ENV);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cdir = tmp.path().join("cluster");
    std::fs::create_dir_all(&cdir).unwrap();
    let t = Instant::now();
    let cluster = {
        let d = cdir.clone();
        tokio::task::spawn_blocking(move || PrivateCluster::start(&d, "first", &[]))
            .await
            .unwrap()
    };
    eprintln!("private control plane ready in {:?}", t.elapsed());
    let kubeconfig = cluster.kubeconfig();
    let client = client_for(&kubeconfig).await;
    let ns = "outage";
    let ns_obj: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    kube::Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns_obj)
        .await
        .unwrap();

    let (repo, head) = corpus_repo("outage", ns);
    let ddir = tmp.path().join("daemon");
    std::fs::create_dir_all(&ddir).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::alerting_e2e::free_port())
        .parse()
        .unwrap();
    let cfg = corpus_config(
        &ddir,
        &repo,
        &kubeconfig,
        &format!("server:\n  listen: {addr}\n"),
    );
    let state_dir = ddir.join("state");
    let mut d = DaemonProcess::start(&cfg, addr, ddir.join("daemon.log"));

    // Stop the control plane once the apply is under way.
    let t = Instant::now();
    let before = loop {
        let (m, _) = corpus_objects(&client, ns).await;
        if m.len() >= 30 {
            break m.len();
        }
        d.assert_running();
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no apply\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(client);
    let t_stop = Instant::now();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    let stop_took = t_stop.elapsed();
    eprintln!(
        "control plane stopped ({before} objects applied at the stop signal) in {stop_took:?}"
    );

    // During the outage: failures follow the backoff, the daemon keeps running and says why.
    let t_down = Instant::now();
    let mut saw_status = None;
    while t_down.elapsed() < OUTAGE {
        d.assert_running();
        if saw_status.is_none()
            && let Some(s) = d.status().await
            && s["phase"] == "backoff"
            && s["errors"][0]["reason"] == "api_unreachable"
        {
            saw_status = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = saw_status.unwrap_or_else(|| {
        panic!(
            "/status never showed backoff with reason api_unreachable\n{}",
            d.tail()
        )
    });
    assert_eq!(s["errors"][0]["stage"], "apply", "{s:#}");
    assert_eq!(s["lastReconcile"]["result"], "failure", "{s:#}");
    // The attempts, timed by the daemon's own log lines (one per failure; the metric counts the same).
    let failures = failure_times(&d.log());
    let m = d.metrics().await;
    assert_eq!(metric_sum(&m, API_DOWN), failures.len() as f64, "{m}");
    assert_eq!(
        metric_sum(&m, FAILURES),
        metric_sum(&m, API_DOWN),
        "every failure is a transient API failure (a 5xx while the server shuts down is not a rejection):\n{}",
        m.lines()
            .filter(|l| l.starts_with(FAILURES))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for l in d.log().lines().filter(|l| l.contains("reconcile failed")) {
        eprintln!("  daemon: {}", l.chars().take(400).collect::<String>());
    }
    let gaps: Vec<Duration> = failures
        .windows(2)
        .map(|w| Duration::from_secs_f64(w[1] - w[0]))
        .collect();
    eprintln!(
        "outage of {:?}: {} failed attempts, gaps {gaps:?}",
        t_down.elapsed() + stop_took,
        failures.len()
    );
    assert!(
        failures.len() >= 2,
        "no retry during the outage\n{}",
        d.tail()
    );
    for (i, g) in gaps.iter().enumerate() {
        // Retry i+1 waits backoff(i+1) after failure i+1 (plus fetch and render), no less.
        assert!(
            *g >= backoff(i + 1),
            "retry {} came {g:?} after the failure before it, sooner than the {:?} backoff: {gaps:?}",
            i + 1,
            backoff(i + 1)
        );
        assert!(
            *g <= backoff(i + 1) + Duration::from_secs(5),
            "retry {} came {g:?} after the failure before it, far later than its backoff: {gaps:?}",
            i + 1
        );
    }
    // 1 + 2 + 4 + 8 s: at most five attempts fit in a 12 s outage (plus the stop's own time).
    let window = OUTAGE + stop_took;
    let mut most = 1;
    let mut spent = Duration::ZERO;
    while spent + backoff(most) <= window {
        spent += backoff(most);
        most += 1;
    }
    assert!(
        failures.len() <= most,
        "{} attempts in {window:?}: more than the backoff allows ({most})",
        failures.len()
    );

    // The API server returns with the same data dir (same port, CA and objects).
    let t_up = Instant::now();
    let cluster = {
        let d = cdir.clone();
        tokio::task::spawn_blocking(move || PrivateCluster::start(&d, "second", &[]))
            .await
            .unwrap()
    };
    let restart_took = t_up.elapsed();
    let s = d
        .wait_status(
            Duration::from_secs(180),
            "converged after the restart",
            |s| s["revision"] == head.as_str() && s["phase"] == "idle",
        )
        .await;
    let converged = t_up.elapsed();
    eprintln!(
        "control plane restarted in {restart_took:?}; daemon converged {converged:?} after the restart began ({:?} after it was ready)",
        converged - restart_took
    );
    assert_eq!(s["lastReconcile"]["result"], "success", "{s:#}");
    assert_eq!(s["lastReconcile"]["trigger"], "retry", "{s:#}");
    assert!(s["errors"].as_array().unwrap().is_empty(), "{s:#}");
    assert_eq!(d.get("/readyz").await.map(|r| r.0), Some(200));
    let m = d.metrics().await;
    assert_eq!(metric_sum(&m, FAILURES), metric_sum(&m, API_DOWN), "{m}");
    let client = client_for(&cluster.kubeconfig()).await;
    let members = assert_inventory_consistent(&client, ns, "outage", &state_dir).await;
    assert_eq!(members.len(), CORPUS_OBJECTS);
    assert_eq!(
        state_inventory(&state_dir).1.as_deref(),
        Some(head.as_str())
    );
    let (code, took) = d.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(code.success(), "exit {code}\n{}", d.tail());
    eprintln!("SIGTERM after convergence → exit in {took:?}");
    drop(client);
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
}

/// Times (seconds of the day, from the log's UTC timestamps) of the daemon's `reconcile failed` lines.
fn failure_times(log: &str) -> Vec<f64> {
    let ts = regex::Regex::new(r"\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d(?:\.\d+)?)Z").unwrap();
    let mut out: Vec<f64> = Vec::new();
    for line in log.lines().filter(|l| l.contains("reconcile failed")) {
        let c = ts
            .captures(line)
            .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
        let mut t = c[1].parse::<f64>().unwrap() * 3600.0
            + c[2].parse::<f64>().unwrap() * 60.0
            + c[3].parse::<f64>().unwrap();
        if let Some(prev) = out.last()
            && t < *prev
        {
            t += 86400.0; // past midnight
        }
        out.push(t);
    }
    out
}
