//! Defects `scripts/reliability` found, each reproduced against the real `pailot daemon` and control plane.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;

use crate::kube::TestNamespace;
use crate::trust::{NO_WAIT, daemon, repo, wait_applied};

/// The decoded `data[key]` of Secret `name`.
async fn secret_value(ns: &TestNamespace, name: &str, key: &str) -> Option<String> {
    let api: kube::Api<Secret> = ns.api();
    let s = api.get_opt(name).await.ok().flatten()?;
    let bytes = s.data?.get(key)?.0.clone();
    String::from_utf8(bytes).ok()
}

fn kubectl(ns: &TestNamespace, args: &[&str]) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ns.kubeconfig)
        .args(["-n", &ns.name])
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chart writes its Secret with `stringData` (the usual way); the API server stores it as `data`. Someone
/// changes the value (`kubectl edit`, `kubectl patch`): that is drift like any other field, and in
/// `driftMode: correct` the daemon puts the value back, without showing either value anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_value_changed_by_someone_else_is_drift_and_is_put_back() {
    let Some(ns) = TestNamespace::new("rel-secret-drift").await else {
        return;
    };
    const DESIRED: &str = "desired-4d1f9c0b7e";
    const LIVE: &str = "someone-else-8a2e61";
    let repo = repo(&ns.name);
    repo.write(
        "charts/db/templates/secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-pass\ntype: Opaque\nstringData:\n  password: {DESIRED}\n"
        ),
    );
    let head = repo.commit("a Secret");
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        &NO_WAIT.replace(
            "driftInterval: 1h\n",
            "driftInterval: 1h\n  driftMode: correct\n",
        ),
    );
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;
    assert_eq!(
        secret_value(&ns, "db-pass", "password").await.as_deref(),
        Some(DESIRED)
    );

    // As `kubectl edit` writes it: the base64 `data` field.
    let b64 = base64::engine::general_purpose::STANDARD.encode(LIVE);
    kubectl(
        &ns,
        &[
            "patch",
            "secret",
            "db-pass",
            "--type=merge",
            "-p",
            &format!("{{\"data\":{{\"password\":\"{b64}\"}}}}"),
        ],
    );
    let t = Instant::now();
    loop {
        if secret_value(&ns, "db-pass", "password").await.as_deref() == Some(DESIRED) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the changed Secret value was not put back within 15 s (drift: {})\n{}",
            d.status()
                .await
                .map(|s| s["drift"].to_string())
                .unwrap_or_default(),
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "Secret value changed by kubectl → put back in {:?}",
        t.elapsed()
    );
    let m = d.metrics().await;
    assert!(
        crate::daemon::metric_sum(&m, "pailot_drift_detected_total") >= 1.0,
        "{m}"
    );
    let log = d.log();
    for v in [DESIRED, LIVE, b64.as_str()] {
        assert!(!log.contains(v), "{v} in the daemon log\n{}", d.tail());
        let status = d.get("/status").await.unwrap().1;
        assert!(!status.contains(v), "{v} in /status: {status}");
    }
}

/// Kinds of hostile connection a flood keeps open.
#[derive(Clone, Copy, PartialEq)]
enum Hostile {
    /// Sends its request headers a byte at a time and never finishes them (slowloris).
    SlowHeaders,
    /// Makes one request, then idles on the kept-alive connection.
    Idle,
}

/// Keep `n` hostile connections of `kinds` open against `addr` until `stop`, opening a new one for each that
/// the daemon closes (as an attacker would); bounded to 60 s and 50,000 connects. Returns the connects made.
fn hostile_flood(
    addr: std::net::SocketAddr,
    n: usize,
    kinds: &'static [Hostile],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut opens = 0;
        let mut conns: Vec<(Hostile, std::net::TcpStream)> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed)
            && t.elapsed() < Duration::from_secs(60)
        {
            while conns.len() < n && opens < 50_000 {
                let kind = kinds[conns.len() % kinds.len()];
                let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                    break;
                };
                opens += 1;
                let first: &[u8] = match kind {
                    Hostile::SlowHeaders => b"GET /status HTTP/1.1\r\nHost: x\r\n",
                    Hostile::Idle => b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                };
                if s.write_all(first).is_ok() && s.set_nonblocking(true).is_ok() {
                    conns.push((kind, s));
                }
            }
            let mut buf = [0u8; 4096];
            conns.retain_mut(|(kind, s)| {
                let open = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break false,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                        Err(_) => break false,
                    }
                };
                open && (*kind == Hostile::Idle || s.write_all(b"X").is_ok())
            });
            std::thread::sleep(Duration::from_millis(200));
        }
        opens
    })
}

/// Connections that never finish their headers (slowloris), and connections that idle after one request,
/// reopened as fast as the daemon closes them: `/healthz`, `/metrics` and `/status` must still answer every
/// time, because a monitoring probe that fails restarts or pages for a daemon that is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_every_time_under_a_sustained_slowloris_and_idle_flood() {
    let Some(ns) = TestNamespace::new("rel-slowloris").await else {
        return;
    };
    let repo = repo(&ns.name);
    let head = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = hostile_flood(
        d.addr,
        600,
        &[Hostile::SlowHeaders, Hostile::Idle],
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Over 8 s: longer than the header timeout, so closed connections have been replaced.
    let mut answered = 0;
    let mut failed = Vec::new();
    for i in 0..20 {
        let path = ["/healthz", "/metrics", "/status"][i % 3];
        match tokio::time::timeout(
            Duration::from_secs(2),
            crate::alerting_e2e::http_get(d.addr, path),
        )
        .await
        {
            Ok(Some((200, _))) => answered += 1,
            other => failed.push(format!("{path}: {:?}", other.map(|o| o.map(|(c, _)| c)))),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opens = flood.join().unwrap();
    eprintln!("slowloris + idle flood: {opens} connects; {answered}/20 probes answered");
    assert!(
        failed.is_empty(),
        "{} of 20 probes failed under the flood ({opens} hostile connects): {failed:?}",
        failed.len()
    );
    d.assert_running();
}
