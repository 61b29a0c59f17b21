//! The real `pailot daemon` under a fake service manager: `READY=1` after the first reconcile, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` and exit 0 on SIGTERM.
//!
//! A `UnixDatagram` in a temporary directory plays systemd's notify socket (`NOTIFY_SOCKET`); the
//! daemon reconciles the alerting fixture repository (tests/fixtures/alerting/repo) into a fresh
//! namespace of the test control plane (skipped only with `PAILOT_SKIP_CLUSTER=1`).
//! `WATCHDOG_PID` is removed from the child's environment: sd-notify 0.5 then trusts `WATCHDOG_USEC`.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::mpsc;

use crate::alerting_e2e::{deploy_repo, fixture, free_port, http_get};
use crate::harness::pailot_bin;
use crate::kube::TestNamespace;

/// `WATCHDOG_USEC` given to the daemon: 2 s, so it pings every 1 s.
const WATCHDOG_USEC: u64 = 2_000_000;
/// The largest gap accepted between two pings: half of 2 s plus slack for a loaded machine.
const MAX_PING_GAP: Duration = Duration::from_millis(1500);
/// How long pings are collected after `READY=1`.
const PING_WINDOW: Duration = Duration::from_secs(5);

/// The daemon, killed on drop; its output goes to a log file shown on failure.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!("--- daemon log (tail) ---\n{}", lines[from..].join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One datagram received on the notify socket, with its arrival time.
struct Note {
    at: Instant,
    lines: Vec<String>,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

/// The fake service manager: a thread reading the socket until dropped.
struct NotifySocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> (NotifySocket, mpsc::UnboundedReceiver<Note>) {
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let at = Instant::now();
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let lines = text.lines().map(str::to_string).collect();
                        if tx.send(Note { at, lines }).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        (
            NotifySocket {
                path,
                stop,
                thread: Some(thread),
            },
            rx,
        )
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Both fixture objects exist in the namespace.
async fn objects_applied(ns: &TestNamespace) -> bool {
    let cm = ns.api::<ConfigMap>().get_opt("web-config").await;
    let deploy = ns.api::<Deployment>().get_opt("web").await;
    matches!((cm, deploy), (Ok(Some(_)), Ok(Some(_))))
}

/// Next datagram within `limit`, or a panic naming `what` with the daemon log.
async fn next_note(
    rx: &mut mpsc::UnboundedReceiver<Note>,
    limit: Duration,
    what: &str,
    daemon: &Daemon,
) -> Note {
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(n)) => n,
        _ => panic!(
            "no datagram within {limit:?} waiting for {what}\n{}",
            daemon.tail()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sends_ready_after_first_reconcile_then_watchdog_pings_and_stopping() {
    let Some(ns) = TestNamespace::new("notify").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let rev = deploy_repo(&repo, &ns.name);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = tmp.path().join("pailot.yaml");
    let text = std::fs::read_to_string(fixture().join("daemon.yaml.in"))
        .unwrap()
        .replace("@REPO@", &repo.display().to_string())
        .replace("@KUBECONFIG@", &ns.kubeconfig.display().to_string())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@STATE@", &tmp.path().join("state").display().to_string())
        .replace("@DRIFT_MODE@", "warn");
    std::fs::write(&cfg, text).unwrap();

    let (_socket, mut notes) = NotifySocket::bind(tmp.path().join("notify.sock"));
    assert!(
        !objects_applied(&ns).await,
        "fresh namespace already holds the objects"
    );

    let log = tmp.path().join("daemon.log");
    let f = std::fs::File::create(&log).unwrap();
    let t_spawn = Instant::now();
    let child = Command::new(pailot_bin())
        .args(["daemon", "--no-bootstrap", "--config"])
        .arg(&cfg)
        .env("PAILOT_LOG", "info")
        .env("NOTIFY_SOCKET", tmp.path().join("notify.sock"))
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("start pailot daemon");
    let mut daemon = Daemon { child, log };

    // Everything up to READY=1: no READY before the repository's objects are in the cluster.
    let mut before_ready = Vec::new();
    let ready = loop {
        let n = next_note(&mut notes, Duration::from_secs(90), "READY=1", &daemon).await;
        if n.has("READY=1") {
            break n;
        }
        before_ready.push(n);
    };
    let ready_after = ready.at - t_spawn;
    assert!(
        objects_applied(&ns).await,
        "READY=1 arrived before ConfigMap web-config and Deployment web exist in {}\n{}",
        ns.name,
        daemon.tail()
    );
    let readyz = http_get(listen, "/readyz").await;
    assert_eq!(
        readyz.as_ref().map(|r| r.0),
        Some(200),
        "/readyz when READY=1 was read: {readyz:?}\n{}",
        daemon.tail()
    );
    let status = http_get(listen, "/status").await;
    assert!(
        status
            .as_ref()
            .is_some_and(|(c, b)| *c == 200 && b.contains(&rev)),
        "/status does not show the applied revision {rev} when READY=1 was read: {status:?}"
    );

    // WATCHDOG=1 every second (half of WATCHDOG_USEC) after READY.
    let mut pings: Vec<Instant> = before_ready
        .iter()
        .filter(|n| n.has("WATCHDOG=1"))
        .map(|n| n.at)
        .collect();
    let pings_before = pings.len();
    let window_end = ready.at + PING_WINDOW;
    loop {
        let left = window_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, notes.recv()).await {
            Ok(Some(n)) => {
                assert!(!n.has("STOPPING=1"), "STOPPING=1 before SIGTERM");
                if n.has("WATCHDOG=1") {
                    pings.push(n.at);
                }
            }
            Ok(None) => panic!("notify socket reader ended"),
            Err(_) => break,
        }
    }
    let after: Vec<Instant> = pings
        .iter()
        .copied()
        .filter(|t| *t >= ready.at && *t <= window_end)
        .collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "READY=1 {ready_after:?} after spawn; {pings_before} WATCHDOG=1 before it, {} in the {PING_WINDOW:?} after; gaps {gaps:?}",
        after.len()
    );
    assert!(
        after.len() >= 3,
        "only {} WATCHDOG=1 within {PING_WINDOW:?} after READY=1\n{}",
        after.len(),
        daemon.tail()
    );
    // Gaps between consecutive pings, including the one spanning READY and the window's edge.
    let last_ping = *pings.last().unwrap();
    let edge_gap = window_end.saturating_duration_since(last_ping);
    for g in gaps.iter().chain(std::iter::once(&edge_gap)) {
        assert!(
            *g <= MAX_PING_GAP,
            "WATCHDOG=1 gap {g:?} > {MAX_PING_GAP:?}; gaps {gaps:?}, {edge_gap:?} since the last ping"
        );
    }

    // SIGTERM: STOPPING=1, then exit 0.
    let pid = daemon.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success(), "kill -TERM {pid}");
    let t_term = Instant::now();
    loop {
        let n = next_note(&mut notes, Duration::from_secs(10), "STOPPING=1", &daemon).await;
        if n.has("STOPPING=1") {
            break;
        }
    }
    let stopping_after = t_term.elapsed();
    let code = loop {
        if let Some(st) = daemon.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t_term.elapsed() < Duration::from_secs(30),
            "daemon still running 30 s after SIGTERM\n{}",
            daemon.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "STOPPING=1 {stopping_after:?} after SIGTERM; exit {code} after {:?}",
        t_term.elapsed()
    );
    assert!(
        code.success(),
        "daemon exit {code} after SIGTERM\n{}",
        daemon.tail()
    );
}
