//! One commit, one client or one error message cannot hurt the daemon (issue 12, daemon side), against the real
//! `pailot daemon` and the real control plane: a runaway template is killed at the helper's limits and the fix
//! lands, SIGTERM ends a render in flight, a flood of slow HTTP clients leaves `/healthz` and reconciling alone,
//! and a secret value that an error quotes reaches no output channel.

use std::io::Write as _;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::daemon::{DaemonProcess, http};
use crate::kube::TestNamespace;
use crate::trust::{NO_WAIT, daemon, repo, wait_applied};

/// Two nested `range(100000)` loops: 10^10 iterations, forever in practice.
const RUNAWAY: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: runaway\ndata:\n  n: \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x\"\n";

/// A string doubled 40 times: 2^40 bytes.
const GROWING: &str = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: grown\ndata:\n  n: \"{{ ns.s | length }}\"\n";

async fn healthz_answers(d: &DaemonProcess) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            crate::alerting_e2e::http_get(d.addr, "/healthz")
        )
        .await,
        Ok(Some((200, _)))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_template_is_killed_at_its_limit_and_a_fix_lands_at_once() {
    let Some(ns) = TestNamespace::new("limits-loop").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        &format!("{NO_WAIT}helpers:\n  timeout: 4s\n"),
    );
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;

    repo.write("charts/db/templates/runaway.yaml", RUNAWAY);
    let bad = repo.commit("a runaway template");
    let t = Instant::now();
    let s = d
        .wait_status(Duration::from_secs(30), "the runaway render refused", |s| {
            s["failedRevision"] == bad.as_str()
        })
        .await;
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(s["lastReconcile"]["stage"], "render", "{s:#}");
    assert_eq!(s["lastReconcile"]["reason"], "invalid_input", "{s:#}");
    assert_eq!(
        s["revision"],
        ok.as_str(),
        "the last good revision keeps running"
    );
    assert!(healthz_answers(&d).await);
    assert!(
        d.children().is_empty(),
        "no helper left behind: {:?}",
        d.children()
    );

    // The fix lands.
    std::fs::remove_file(repo.path().join("charts/db/templates/runaway.yaml")).unwrap();
    let fixed = repo.commit("no runaway");
    wait_applied(&mut d, &fixed, Duration::from_secs(30)).await;
    drop(d);

    // With the default limit (60 s), a fixing commit does not wait for the doomed render.
    let dir2 = tempfile::tempdir().unwrap();
    let mut d = daemon(dir2.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &fixed, Duration::from_secs(60)).await;
    repo.write("charts/db/templates/runaway.yaml", RUNAWAY);
    repo.commit("the runaway again");
    d.wait_status(Duration::from_secs(30), "rendering the runaway", |s| {
        s["phase"] == "rendering"
    })
    .await;
    std::fs::remove_file(repo.path().join("charts/db/templates/runaway.yaml")).unwrap();
    repo.write(
        "charts/web/values.yaml",
        "greeting: fixed\nreplicas: 1\nmemory: 64Mi\nnodeSelector: {}\n",
    );
    let fix = repo.commit("fix");
    let t = Instant::now();
    wait_applied(&mut d, &fix, Duration::from_secs(30)).await;
    eprintln!(
        "fix commit during a doomed render: applied after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_grows_a_string_hits_the_memory_limit() {
    let Some(ns) = TestNamespace::new("limits-mem").await else {
        return;
    };
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        &format!("{NO_WAIT}helpers:\n  memory: 256Mi\n"),
    );
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    repo.write("charts/db/templates/grown.yaml", GROWING);
    let bad = repo.commit("a growing string");
    let s = d
        .wait_status(Duration::from_secs(60), "the growing render refused", |s| {
            s["failedRevision"] == bad.as_str()
        })
        .await;
    assert_eq!(s["lastReconcile"]["reason"], "invalid_input", "{s:#}");
    let msg = s["lastReconcile"]["message"].as_str().unwrap();
    assert!(msg.contains("limit"), "{msg}");
    assert_eq!(s["revision"], ok.as_str());
    // Not retried: the same commit would break the same limit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = d.metrics().await;
    assert_eq!(
        crate::daemon::metric_sum(
            &m,
            "pailot_reconcile_failures_total{stage=\"render\",reason=\"invalid_input\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_render_in_flight_and_kills_its_helper() {
    let Some(ns) = TestNamespace::new("limits-term").await else {
        return;
    };
    let repo = repo(&ns.name);
    repo.write("charts/db/templates/runaway.yaml", RUNAWAY);
    repo.commit("a runaway template");
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    d.wait_status(Duration::from_secs(30), "rendering", |s| {
        s["phase"] == "rendering"
    })
    .await;
    let t = Instant::now();
    let helpers = loop {
        let c = d.children();
        if !c.is_empty() {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no render helper seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, took) = d.signal_and_wait("TERM", Duration::from_secs(10)).await;
    eprintln!("SIGTERM during a render: exit {status} after {took:?}");
    assert!(status.success(), "{status}\n{}", d.tail());
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::thread::sleep(Duration::from_millis(200));
    for pid in helpers {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| !s.contains("State:\tZ"));
        assert!(!alive, "helper {pid} outlived the daemon");
    }
}

/// Raise this process's open-files limit to its hard limit (the flood needs more than 1024).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_clients_leaves_healthz_and_reconciling_alone() {
    let Some(ns) = TestNamespace::new("limits-flood").await else {
        return;
    };
    assert!(raise_nofile() >= 2400, "the test needs 2400 open files");
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    // As systemd starts a service without LimitNOFILE: a soft limit of 1024 open files.
    let addr = crate::trust::free_addr();
    let cfg = crate::daemon::write_config(
        dir.path(),
        repo.path(),
        Some(&ns.kubeconfig),
        &format!("server:\n  listen: \"{addr}\"\n{NO_WAIT}"),
    );
    let mut d =
        DaemonProcess::start_with_open_files(&cfg, addr, dir.path().join("daemon.log"), Some(1024));
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;
    let rss_before = d.rss();

    // 1,100 clients that announce a body and send it a byte at a time.
    let addr = d.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns = Vec::new();
            for _ in 0..1100 {
                if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                    let _ = s.write_all(
                        b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{",
                    );
                    conns.push(s);
                }
            }
            let opened = conns.len();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conns.retain_mut(|s| s.write_all(b" ").is_ok());
                std::thread::sleep(Duration::from_millis(500));
            }
            opened
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // /healthz keeps answering, every time, under the flood.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert!(
            healthz_answers(&d).await,
            "/healthz did not answer under the flood\n{}",
            d.tail()
        );
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A commit still applies (fetch and render helpers need descriptors; the apply needs sockets).
    repo.write(
        "charts/web/values.yaml",
        "greeting: flooded\nreplicas: 1\nmemory: 64Mi\nnodeSelector: {}\n",
    );
    let c = repo.commit("under the flood");
    let t = Instant::now();
    wait_applied(&mut d, &c, Duration::from_secs(30)).await;
    let applied_in = t.elapsed();
    let rss_flood = d.rss();
    let (code, _) = http(d.addr, "GET", "/status", &[], b"").await;
    assert_eq!(code, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flood.join().unwrap();
    eprintln!(
        "HTTP flood: {opened} slow clients; /healthz worst {worst:?}; commit applied in {applied_in:?}; RSS {} MiB before, {} MiB under the flood",
        rss_before >> 20,
        rss_flood >> 20
    );
    assert!(
        rss_flood < rss_before + (24 << 20),
        "RSS {} MiB under the flood ({} MiB before)",
        rss_flood >> 20,
        rss_before >> 20
    );
    let cm: kube::Api<ConfigMap> = ns.api();
    let greeting = cm.get("web-config").await.unwrap().data.unwrap()["greeting"].clone();
    assert_eq!(greeting, "flooded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_value_quoted_by_an_error_reaches_no_output_channel() {
    let Some(ns) = TestNamespace::new("limits-leak").await else {
        return;
    };
    const PLANTED: &str = "73219944551";
    const PASSWORD: &str = "hunter2-SECRET";
    let repo = repo(&ns.name);
    let ok = repo.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &repo, &ns, NO_WAIT);
    wait_applied(&mut d, &ok, Duration::from_secs(60)).await;

    // 1. A Secret whose value the API server quotes in its error (an int where a string must be).
    repo.write(
        "charts/db/templates/secret.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-pass\nstringData:\n  pin: {PLANTED}\n"),
    );
    let c1 = repo.commit("a Secret the API refuses");
    d.wait_status(Duration::from_secs(30), "the Secret refused", |s| {
        s["failedRevision"] == c1.as_str()
    })
    .await;
    // 2. A schema error on a value bound for a Secret (too short), which the validator would quote.
    std::fs::remove_file(repo.path().join("charts/db/templates/secret.yaml")).unwrap();
    repo.write(
        "charts/db/values.schema.json",
        "{\"type\": \"object\", \"properties\": {\"password\": {\"type\": \"string\", \"minLength\": 16}}}",
    );
    repo.write("charts/db/values.yaml", &format!("password: {PASSWORD}\n"));
    let c2 = repo.commit("a password too short");
    let s = d
        .wait_status(Duration::from_secs(30), "the schema error", |s| {
            s["failedRevision"] == c2.as_str()
        })
        .await;
    assert_eq!(s["lastReconcile"]["reason"], "invalid_input", "{s:#}");

    // Every output channel: CLI stdout/stderr of render/apply/diff/lint, pailot status (table, JSON),
    // /status, /metrics, the daemon log, the state directory.
    let mut seen = Vec::new();
    let url = format!("http://{}", d.addr);
    let mut outputs: Vec<(String, String)> = Vec::new();
    for args in [vec!["render"], vec!["lint"], vec!["apply"], vec!["diff"]] {
        let r = crate::trust::cli(&repo, &ns, &args);
        outputs.push((
            format!("pailot {args:?}"),
            format!("{}{}", r.stdout, r.stderr),
        ));
    }
    repo.write(
        "charts/db/values.yaml",
        "password: a-long-enough-password\n",
    );
    repo.write(
        "charts/db/templates/secret.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-pass\nstringData:\n  pin: {PLANTED}\n"),
    );
    for args in [vec!["apply"], vec!["diff"]] {
        let r = crate::trust::cli(&repo, &ns, &args);
        outputs.push((
            format!("pailot {args:?} (Secret)"),
            format!("{}{}", r.stdout, r.stderr),
        ));
    }
    for args in [
        vec!["status", "--url", &url],
        vec!["status", "--url", &url, "-o", "json"],
    ] {
        let r = crate::harness::pailot(&args);
        outputs.push((
            format!("pailot {args:?}"),
            format!("{}{}", r.stdout, r.stderr),
        ));
    }
    outputs.push(("/status".into(), d.get("/status").await.unwrap().1));
    outputs.push(("/metrics".into(), d.metrics().await));
    outputs.push(("daemon log".into(), d.log()));
    for e in walk(&dir.path().join("state")) {
        outputs.push((
            e.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&e).unwrap_or_default()).into_owned(),
        ));
    }
    for (channel, text) in &outputs {
        for planted in [PLANTED, PASSWORD] {
            if text.contains(planted) {
                seen.push(format!("{planted} in {channel}"));
            }
        }
    }
    assert!(seen.is_empty(), "secret values leaked: {seen:?}");
    // The errors still say what and where.
    let log = d.log();
    assert!(
        log.contains("Secret") && log.contains("db-pass"),
        "{}",
        d.tail()
    );
    assert!(log.contains("password"), "the schema error names the key");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("source") {
                    out.extend(walk(&p));
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}
