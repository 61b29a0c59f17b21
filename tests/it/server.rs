//! The daemon's HTTP server over real sockets: routes, readiness, status, webhook, limits, shutdown; `pailot status`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pailot::daemon::status::{
    ChartStatus, DriftRecord, Phase, Status as StatusSnapshot, StatusError, StatusTx,
};
use pailot::metrics::Metrics;
use pailot::server::{MAX_BODY_BYTES, ServerState, WebhookHandler, WebhookOutcome, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::pailot;

/// A server on 127.0.0.1:0 plus the means to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Ask for shutdown and wait for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("task")
            .expect("serve ok");
    }
}

/// A server state over `metrics` and a status the test writes through the returned sender.
pub fn state(metrics: Arc<Metrics>) -> (ServerState, StatusTx) {
    let (tx, rx) = StatusTx::new();
    (ServerState::new(metrics, rx), tx)
}

/// Start `serve` on a loopback port with `state`.
pub async fn start(state: ServerState) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(state);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        state,
        stop: Some(tx),
        task,
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`, over a plain socket.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before the whole body is written.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"").await
}

/// Records what it was called with and answers a fixed outcome.
struct Recorder {
    outcome: WebhookOutcome,
    calls: Mutex<Vec<(Option<String>, Vec<u8>)>>,
}

impl WebhookHandler for Recorder {
    fn handle(&self, headers: &hyper::HeaderMap, body: &[u8]) -> WebhookOutcome {
        let sig = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.calls.lock().unwrap().push((sig, body.to_vec()));
        self.outcome
    }
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let (st, tx) = state(Arc::new(Metrics::new()));
    let srv = start(st).await;
    let r = get(srv.addr, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = get(srv.addr, "/readyz").await;
    assert_eq!(
        r.status,
        503,
        "not ready before the first successful reconcile: {}",
        r.text()
    );
    // Readiness is the status's: set by the loop after its first successful reconcile.
    tx.update(|s| s.last_reconcile = Some(Default::default()));
    assert_eq!(
        get(srv.addr, "/readyz").await.status,
        503,
        "a failed reconcile does not make it ready"
    );
    tx.update(|s| s.ready = true);
    assert_eq!(get(srv.addr, "/readyz").await.status, 200);
    assert_eq!(get(srv.addr, "/nope").await.status, 404);
    let r = request(srv.addr, "POST", "/metrics", &[], b"x").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        request(srv.addr, "GET", "/hooks/git", &[], b"")
            .await
            .status,
        405
    );
    srv.stop().await;
}

#[tokio::test]
async fn metrics_negotiates_openmetrics_and_prometheus_text() {
    let srv = start(state(Arc::new(Metrics::new())).0).await;
    srv.state.metrics.set_revision("0123abcd");
    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{r:?}"
    );
    let t = r.text();
    assert!(t.ends_with("# EOF\n"), "{t}");
    assert!(
        t.contains("pailot_source_revision_info{revision=\"0123abcd\"} 1"),
        "{t}"
    );
    assert!(t.contains("# TYPE pailot_reconcile counter"), "{t}");
    let r = request(
        srv.addr,
        "GET",
        "/metrics",
        &[("Accept", "text/plain;version=0.0.4")],
        b"",
    )
    .await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    let t = r.text();
    assert!(t.contains("# TYPE pailot_reconcile_total counter"), "{t}");
    assert!(!t.contains("# EOF"));
    // Prometheus' own Accept header prefers OpenMetrics.
    let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = request(srv.addr, "GET", "/metrics", &[("Accept", prom_accept)], b"").await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    srv.stop().await;
}

#[tokio::test]
async fn status_serves_the_snapshot_as_json() {
    let (st, tx) = state(Arc::new(Metrics::new()));
    let srv = start(st).await;
    let empty: StatusSnapshot =
        serde_json::from_slice(&get(srv.addr, "/status").await.body).unwrap();
    assert_eq!(empty, StatusSnapshot::default());
    let snap = sample_snapshot();
    tx.update(|s| *s = snap.clone());
    let r = get(srv.addr, "/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let got: StatusSnapshot = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got, snap);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["errors"][0]["line"], 4,
        "camelCase JSON with the error position: {v}"
    );
    assert_eq!(v["drift"][0]["pointer"], "/spec/replicas");
    assert!(v.get("nextWakeup").is_some(), "{v}");
    tx.update(|s| s.phase = Some(Phase::Applying));
    let got: StatusSnapshot = serde_json::from_slice(&get(srv.addr, "/status").await.body).unwrap();
    assert_eq!(got.phase, Some(Phase::Applying));
    srv.stop().await;
}

fn sample_snapshot() -> StatusSnapshot {
    let mut s = StatusSnapshot {
        revision: Some("9f8e7d6c5b4a".into()),
        phase: Some(Phase::Idle),
        drift_mode: Some("warn".into()),
        next_wakeup: Some(4_102_444_800.0),
        ..Default::default()
    };
    s.charts.insert(
        "zookeeper".into(),
        ChartStatus {
            result: "applied".into(),
            ready: true,
            objects: 2,
            drifted: 1,
            message: None,
        },
    );
    s.charts.insert(
        "grafana".into(),
        ChartStatus {
            result: "failed".into(),
            ready: false,
            objects: 2,
            drifted: 0,
            message: Some("render error".into()),
        },
    );
    s.drift.push(DriftRecord {
        chart: "zookeeper".into(),
        object: "DaemonSet/default/zookeeper-ds".into(),
        pointer: "/spec/replicas".into(),
        manager: Some("kubectl-edit".into()),
        provenance: Some("charts/zookeeper/templates/zookeeper.yaml".into()),
        action: "reported".into(),
        detected_at: Some(1_700_000_000.0),
    });
    s.errors.push(StatusError {
        stage: "render".into(),
        message: "undefined value `values.port`".into(),
        file: Some("charts/grafana/templates/grafana.yaml".into()),
        line: Some(4),
        column: Some(12),
        ..Default::default()
    });
    s
}

#[tokio::test]
async fn webhook_without_handler_is_404() {
    let srv = start(state(Arc::new(Metrics::new())).0).await;
    let r = request(srv.addr, "POST", "/hooks/git", &[], b"{}").await;
    assert_eq!(r.status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn webhook_outcomes_map_to_status_codes_and_bodies_are_limited() {
    for (outcome, code) in [
        (WebhookOutcome::Accepted, 202),
        (WebhookOutcome::Unauthorized, 401),
        (WebhookOutcome::BadRequest, 400),
    ] {
        let rec = Arc::new(Recorder {
            outcome,
            calls: Mutex::new(Vec::new()),
        });
        let srv = start(state(Arc::new(Metrics::new())).0.with_webhook(rec.clone())).await;
        let r = request(
            srv.addr,
            "POST",
            "/hooks/git",
            &[("X-Hub-Signature-256", "sha256=00ff")],
            b"{\"ref\":\"x\"}",
        )
        .await;
        assert_eq!(r.status, code, "{outcome:?}");
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![(Some("sha256=00ff".to_string()), b"{\"ref\":\"x\"}".to_vec())]
        );
        // Over the limit: refused before the handler sees it.
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        let r = request(srv.addr, "POST", "/hooks/git", &[], &big).await;
        assert_eq!(r.status, 413);
        assert_eq!(
            rec.calls.lock().unwrap().len(),
            1,
            "handler not called for an oversized body"
        );
        srv.stop().await;
    }
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let srv = start(state(Arc::new(Metrics::new())).0).await;
    let addr = srv.addr;
    assert_eq!(get(addr, "/healthz").await.status, 200);
    srv.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pailot_status_prints_table_and_json() {
    let (st, tx) = state(Arc::new(Metrics::new()));
    let srv = start(st).await;
    let snap = sample_snapshot();
    tx.update(|s| *s = snap.clone());
    let url = format!("http://{}", srv.addr);
    let u = url.clone();
    let table = tokio::task::spawn_blocking(move || pailot(&["status", "--url", &u]))
        .await
        .unwrap();
    assert_eq!(table.code, 0, "{}", table.stderr);
    let out = &table.stdout;
    for want in [
        "REVISION",
        "9f8e7d6c5b4a",
        "DRIFT MODE    warn",
        "grafana    failed   no     2        0        render error",
        "zookeeper  applied  yes    2        1        -",
        "DaemonSet/default/zookeeper-ds",
        "kubectl-edit",
        "[render] charts/grafana/templates/grafana.yaml:4:12: undefined value `values.port`",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let u = url.clone();
    let json = tokio::task::spawn_blocking(move || pailot(&["status", "--url", &u, "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(json.code, 0, "{}", json.stderr);
    let got: StatusSnapshot = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(got, snap);
    srv.stop().await;
    // Nothing listens any more: a clear error and exit 1.
    let down = tokio::task::spawn_blocking(move || pailot(&["status", "--url", &url]))
        .await
        .unwrap();
    assert_eq!(down.code, 1, "{down:?}");
    assert!(
        down.stderr.contains("cannot read the daemon's status"),
        "{}",
        down.stderr
    );
    let bad = tokio::task::spawn_blocking(|| pailot(&["status", "--url", "https://x"]))
        .await
        .unwrap();
    assert_eq!(bad.code, 2, "{bad:?}");
}
