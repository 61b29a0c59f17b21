//! Operator controls against the real `pailot daemon` and the real control plane (issue 14): the history,
//! `pailot reconcile [--wait] [--correct-drift]`, `pailot suspend|resume` (surviving a restart), the control
//! socket's permissions, and notifications/commit statuses received by a local HTTP server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;

use crate::daemon::{DaemonProcess, metric_sum};
use crate::harness::{Run, pailot_in};
use crate::kube::TestNamespace;
use crate::trust::{free_addr, repo, wait_applied};

/// `pailot ARGS --state-dir DIR`.
fn control(state: &std::path::Path, args: &[&str]) -> Run {
    let dir = state.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--state-dir", &dir]);
    pailot_in(state, &all)
}

/// A daemon that neither watches nor polls (only `pailot reconcile` and restarts fetch), in `dir`.
fn quiet_daemon(
    dir: &std::path::Path,
    repo: &std::path::Path,
    ns: &TestNamespace,
    extra: &str,
) -> DaemonProcess {
    let addr = free_addr();
    let cfg = crate::daemon::write_config(
        dir,
        repo,
        Some(&ns.kubeconfig),
        &format!(
            "server:\n  listen: \"{addr}\"\nreconcile:\n  wait: false\n  driftInterval: 1h\n  driftMode: warn\n{extra}"
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "  pollInterval: 1h\n",
        "  pollInterval: 1h\n  watch: \"off\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    DaemonProcess::start(
        &cfg,
        addr,
        dir.join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        )),
    )
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_now_history_suspend_and_resume_drive_the_running_daemon() {
    let Some(ns) = TestNamespace::new("controls").await else {
        return;
    };
    let repo = repo(&ns.name);
    let first = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut d = quiet_daemon(dir.path(), repo.path(), &ns, "");
    wait_applied(&mut d, &first, Duration::from_secs(60)).await;

    // 1. Reconcile now: a new commit lands only when asked (no watch, no poll).
    repo.write(
        "charts/web/values.yaml",
        "greeting: now\nreplicas: 1\nmemory: 64Mi\nnodeSelector: {}\n",
    );
    let second = repo.commit("greeting now");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        d.status().await.unwrap()["revision"],
        first.as_str(),
        "nothing fetched by itself"
    );
    let r = tokio::task::spawn_blocking({
        let state = state.clone();
        move || control(&state, &["reconcile", "--wait"])
    })
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{r:?}\n{}", d.tail());
    assert!(
        r.stdout
            .starts_with(&format!("reconciled {}", &second[..12])),
        "{}",
        r.stdout
    );
    assert_eq!(d.status().await.unwrap()["revision"], second.as_str());

    // A failing reconcile: --wait exits non-zero and says why.
    repo.write("charts/web/templates/broken.yaml", "data: [unclosed\n");
    let broken = repo.commit("broken");
    let r = control(&state, &["reconcile", "--wait"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("invalid_input") || r.stderr.contains("invalid_input"),
        "{r:?}"
    );
    std::fs::remove_file(repo.path().join("charts/web/templates/broken.yaml")).unwrap();
    let third = repo.commit("fixed");
    assert_eq!(control(&state, &["reconcile", "--wait"]).code, 0);

    // 2. --correct-drift corrects once in warn mode.
    crate::kube::kubectl_scale(&ns, "web", 3);
    let deps: kube::Api<Deployment> = ns.api();
    let r = control(&state, &["reconcile", "--wait", "--correct-drift"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", d.tail());
    assert_eq!(
        replicas(&deps.get("web").await.unwrap()),
        1,
        "corrected once"
    );
    assert_eq!(d.status().await.unwrap()["revision"], third.as_str());
    crate::kube::kubectl_scale(&ns, "web", 2);

    // 3. Suspend: no apply, drift reported not corrected, visible in status and metrics; survives a restart.
    let r = control(
        &state,
        &["suspend", "--reason", "maintenance window", "--for", "1h"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let s = d
        .wait_status(Duration::from_secs(10), "suspended", |s| {
            s["phase"] == "suspended"
        })
        .await;
    assert_eq!(s["suspended"]["reason"], "maintenance window", "{s:#}");
    assert_eq!(metric_sum(&d.metrics().await, "pailot_suspended"), 1.0);
    let table = crate::harness::pailot(&["status", "--url", &format!("http://{}", d.addr)]);
    assert!(
        table.stdout.contains("SUSPENDED") && table.stdout.contains("maintenance window"),
        "{}",
        table.stdout
    );
    repo.write(
        "charts/web/values.yaml",
        "greeting: later\nreplicas: 1\nmemory: 64Mi\nnodeSelector: {}\n",
    );
    let fourth = repo.commit("greeting later");
    let r = control(&state, &["reconcile"]);
    assert_ne!(
        r.code, 0,
        "a manual reconcile is refused while suspended: {r:?}"
    );
    drop(d);
    let mut d = quiet_daemon(dir.path(), repo.path(), &ns, "");
    let s = d
        .wait_status(
            Duration::from_secs(30),
            "suspended after the restart",
            |s| s["phase"] == "suspended",
        )
        .await;
    assert_eq!(
        s["revision"],
        third.as_str(),
        "not applied while suspended: {s:#}"
    );
    assert_eq!(
        replicas(&deps.get("web").await.unwrap()),
        2,
        "drift not corrected while suspended"
    );

    // 4. Resume: the commit lands at once.
    let r = control(&state, &["resume"]);
    assert_eq!(r.code, 0, "{r:?}");
    wait_applied(&mut d, &fourth, Duration::from_secs(30)).await;
    assert_eq!(metric_sum(&d.metrics().await, "pailot_suspended"), 0.0);

    // 5. History: every reconcile, newest last, with trigger, revision, subject, author, result, reason;
    //    kept across the restart; JSON and per chart.
    let r = control(&state, &["history", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let revs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["revision"].as_str())
        .collect();
    for c in [&first, &second, &broken, &third, &fourth] {
        assert!(
            revs.contains(&c.as_str()),
            "{c} missing from the history: {entries:#?}"
        );
    }
    let failed = entries
        .iter()
        .find(|e| e["revision"] == broken.as_str())
        .unwrap();
    assert_eq!(
        (failed["result"].as_str(), failed["reason"].as_str()),
        (Some("failure"), Some("invalid_input")),
        "{failed}"
    );
    assert_eq!(failed["trigger"], "manual");
    assert_eq!(failed["subject"], "broken");
    assert!(failed["author"].as_str().unwrap().contains('@'), "{failed}");
    let ok = entries
        .iter()
        .find(|e| e["revision"] == second.as_str())
        .unwrap();
    assert_eq!(ok["charts"]["web"]["configured"], 1, "{ok}");
    assert!(
        entries.iter().any(|e| e["trigger"] == "resume"),
        "{entries:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["driftCorrections"].as_u64().unwrap_or(0) >= 1),
        "the --correct-drift reconcile: {entries:#?}"
    );
    let r = control(&state, &["history", "--chart", "db"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("web"), "{}", r.stdout);
    let st = d.status().await.unwrap();
    assert_eq!(st["latestHistory"]["revision"], fourth.as_str(), "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_cannot_suspend_the_daemon() {
    let Some(ns) = TestNamespace::new("controls-perm").await else {
        return;
    };
    let repo = repo(&ns.name);
    let head = repo.git(&["rev-parse", "HEAD"]);
    // A state directory anyone may enter, so that only the socket's own mode protects it.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = quiet_daemon(dir.path(), repo.path(), &ns, "");
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;
    let sock = state.join("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    // The binary where `nobody` can run it.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("pailot");
    std::fs::copy(crate::harness::pailot_bin(), &bin).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(&bin)
        .args(["suspend", "--reason", "not allowed", "--state-dir"])
        .arg(&state)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success(), "nobody suspended the daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("permission"), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.status().await.unwrap()["suspended"].is_null(),
        "still running"
    );
    // Root (the owner) can.
    assert_eq!(control(&state, &["suspend"]).code, 0);
    assert_eq!(control(&state, &["resume"]).code, 0);
}

/// What a local HTTP server received: (request line, headers, body).
pub(crate) type Received = Arc<Mutex<Vec<(String, Vec<(String, String)>, String)>>>;

/// A loopback HTTP server recording every request; answers `status` to paths starting with `/fail`, 201 else.
pub(crate) fn recorder() -> (SocketAddr, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((h, b)) = text.split_once("\r\n\r\n") {
                        let len: usize = h
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if b.len() >= len {
                            break (h.to_string(), b.to_string());
                        }
                    }
                };
                let mut lines = head.lines();
                let line = lines.next().unwrap_or("").to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let fail = line.contains(" /fail");
                g.lock().unwrap().push((line, headers, body));
                let code = if fail {
                    "500 Internal Server Error"
                } else {
                    "201 Created"
                };
                let _ = s.write_all(
                    format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_results_go_out_as_signed_webhooks_slack_messages_and_commit_statuses() {
    let Some(ns) = TestNamespace::new("controls-notify").await else {
        return;
    };
    let (rec, got) = recorder();
    let repo = repo(&ns.name);
    let head = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hmac"), "hmac-key\n").unwrap();
    std::fs::write(dir.path().join("token"), "gh-token\n").unwrap();
    let extra = format!(
        "notifications:\n  dedupWindow: 1s\n  retries: 0\n  sinks:\n    - {{type: webhook, url: \"http://{rec}/hook\", secretFile: hmac}}\n    - {{type: slack, url: \"http://{rec}/slack\"}}\n    - {{type: github, url: \"http://{rec}\", repository: o/r, tokenFile: token}}\n    - {{name: broken, type: webhook, url: \"http://{rec}/fail\"}}\n"
    );
    let addr = free_addr();
    let cfg = crate::daemon::write_config(
        dir.path(),
        repo.path(),
        Some(&ns.kubeconfig),
        &format!(
            "server:\n  listen: \"{addr}\"\nreconcile:\n  wait: false\n  driftInterval: 1h\n{extra}"
        ),
    );
    let mut d = DaemonProcess::start(&cfg, addr, dir.path().join("daemon.log"));
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;
    repo.write("charts/web/templates/broken.yaml", "data: [unclosed\n");
    let bad = repo.commit("broken");
    d.wait_status(Duration::from_secs(30), "the failure", |s| {
        s["failedRevision"] == bad.as_str()
    })
    .await;

    let t = Instant::now();
    let requests = loop {
        let r = got.lock().unwrap().clone();
        let statuses = r
            .iter()
            .filter(|(l, _, _)| l.contains("/statuses/"))
            .count();
        if statuses >= 2 && r.iter().filter(|(l, _, _)| l.contains("/hook")).count() >= 2 {
            break r;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "not all arrived: {r:#?}\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The signed webhook: X-Signature is the HMAC-SHA256 of the body under the key; JSON shape.
    let hooks: Vec<_> = requests
        .iter()
        .filter(|(l, _, _)| l.starts_with("POST /hook"))
        .collect();
    for (_, headers, body) in &hooks {
        let sig = headers
            .iter()
            .find(|(k, _)| k == "x-signature")
            .map(|(_, v)| v.clone())
            .expect("X-Signature");
        assert_eq!(
            sig,
            pailot::daemon::source::webhook::github_signature(b"hmac-key", body.as_bytes()),
            "signature"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            v["revision"].is_string()
                || v["metadata"]["revision"].is_string()
                || body.contains(&head[..12]),
            "{v}"
        );
    }
    assert!(
        hooks.iter().any(|(_, _, b)| b.contains("invalid_input")),
        "{hooks:#?}"
    );
    // Slack: an incoming-webhook message (`text`).
    let slack: Vec<_> = requests
        .iter()
        .filter(|(l, _, _)| l.starts_with("POST /slack"))
        .collect();
    assert!(!slack.is_empty());
    for (_, _, body) in &slack {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["text"].is_string() || v["attachments"].is_array(), "{v}");
    }
    // GitHub commit statuses on the applied and the refused commit, with the token.
    let ok = requests
        .iter()
        .find(|(l, _, _)| l.contains(&format!("/repos/o/r/statuses/{head}")))
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert!(
        ok.1.iter()
            .any(|(k, v)| k == "authorization" && v.contains("gh-token")),
        "{:?}",
        ok.1
    );
    let v: serde_json::Value = serde_json::from_str(&ok.2).unwrap();
    assert_eq!(v["state"], "success", "{v}");
    let failed = requests
        .iter()
        .find(|(l, _, _)| l.contains(&format!("/repos/o/r/statuses/{bad}")))
        .unwrap_or_else(|| panic!("{requests:#?}"));
    let v: serde_json::Value = serde_json::from_str(&failed.2).unwrap();
    assert!(v["state"] == "failure" || v["state"] == "error", "{v}");
    // A failing endpoint blocks nothing and is counted; the others count as sent.
    let m = d.metrics().await;
    assert!(
        metric_sum(
            &m,
            "pailot_notifications_total{sink=\"broken\",result=\"failed\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "pailot_notifications_total{sink=\"webhook\",result=\"sent\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "pailot_notifications_total{sink=\"github\",result=\"sent\"}"
        ) >= 2.0,
        "{m}"
    );
    // No secret in any of it.
    for (_, headers, body) in &requests {
        assert!(!body.contains("hmac-key"));
        assert!(
            headers
                .iter()
                .all(|(k, v)| k == "authorization" || !v.contains("gh-token"))
        );
    }
}
