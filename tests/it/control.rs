//! `pailot reconcile|suspend|resume|history` against a control socket served by a stand-in daemon:
//! what the operator sees (exit codes, messages), the history file fallback, and that a user outside
//! the `pailot` group cannot use the socket (checked by the kernel, with `setpriv`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use pailot::control::{
    self, ControlError, ControlHandler, HistoryQuery, Peer, ReconcileOutcome, ReconcileRequest,
    SuspendRequest,
};
use pailot::history::{self, ActionCounts, Entry, Outcome};
use pailot::suspension::Suspension;

use crate::harness::{Run, pailot_bin};

const REV: &str = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";

fn entry(result: Outcome) -> Entry {
    Entry {
        started_at: 1_800_000_000,
        duration_ms: 2300,
        trigger: "manual".into(),
        revision: Some(REV.into()),
        subject: Some("tune zookeeper".into()),
        author: Some("Ops <ops@example.com>".into()),
        result,
        stage: (result == Outcome::Failure).then(|| "apply".into()),
        reason: (result == Outcome::Failure).then(|| "rejected".into()),
        message: (result == Outcome::Failure)
            .then(|| "Deployment/default/zookeeper: spec.replicas: Invalid value".into()),
        charts: BTreeMap::from([(
            "zookeeper".to_string(),
            ActionCounts {
                configured: 1,
                unchanged: 2,
                ..Default::default()
            },
        )]),
        drift_corrections: 0,
    }
}

/// A daemon stand-in that keeps its suspension in the state directory, as the daemon does.
struct Daemon {
    state_dir: PathBuf,
    requests: Mutex<Vec<String>>,
    next_result: Mutex<Outcome>,
}

impl ControlHandler for Daemon {
    async fn reconcile(
        &self,
        r: ReconcileRequest,
        _peer: &Peer,
    ) -> Result<ReconcileOutcome, ControlError> {
        self.requests
            .lock()
            .unwrap()
            .push(format!("reconcile wait={}", r.wait));
        if let Some(s) = Suspension::load(&self.state_dir).unwrap() {
            return Err(ControlError::refused(format!(
                "the daemon is {}; `pailot resume` first",
                s.describe(pailot::clock::unix_now())
            )));
        }
        if !r.wait {
            return Ok(ReconcileOutcome::Queued);
        }
        let result = *self.next_result.lock().unwrap();
        Ok(ReconcileOutcome::Finished(Box::new(entry(result))))
    }
    async fn suspend(&self, r: SuspendRequest, peer: &Peer) -> Result<Suspension, ControlError> {
        self.requests
            .lock()
            .unwrap()
            .push(format!("suspend by {peer}"));
        let s = r.to_suspension(pailot::clock::unix_now(), peer);
        s.save(&self.state_dir)
            .map_err(|e| ControlError::failed(e.to_string()))?;
        Ok(s)
    }
    async fn resume(&self, _peer: &Peer) -> Result<Option<Suspension>, ControlError> {
        self.requests.lock().unwrap().push("resume".into());
        let s = Suspension::load(&self.state_dir).unwrap();
        Suspension::clear(&self.state_dir).unwrap();
        Ok(s)
    }
    async fn history(&self, q: HistoryQuery) -> Result<Vec<Entry>, ControlError> {
        self.requests.lock().unwrap().push("history".into());
        let read = history::read(&self.state_dir, usize::MAX).unwrap();
        Ok(q.select(read.entries))
    }
}

struct Running {
    daemon: Arc<Daemon>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(state_dir: &Path, group: Option<&str>) -> Running {
        let listener = control::bind(&control::socket_path(state_dir), group).unwrap();
        let daemon = Arc::new(Daemon {
            state_dir: state_dir.to_path_buf(),
            requests: Mutex::new(Vec::new()),
            next_result: Mutex::new(Outcome::Success),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(control::serve(listener, daemon.clone(), async {
            let _ = rx.await;
        }));
        Running {
            daemon,
            stop: Some(tx),
            task,
        }
    }
    fn requests(&self) -> Vec<String> {
        self.daemon.requests.lock().unwrap().clone()
    }
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Run the binary off the async test thread (the stand-in daemon serves on the runtime's workers).
async fn pailot(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(pailot_bin())
            .args(&args)
            .env_remove("PAILOT_STATE_DIR")
            .env_remove("PAILOT_SOCKET")
            .output()
            .unwrap()
            .into()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_reconcile_resume_through_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let d = Running::start(tmp.path(), None);

    let r = pailot(&[
        "suspend",
        "--state-dir",
        dir,
        "--reason",
        "disk swap",
        "--for",
        "90m",
    ])
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("suspended since "), "{}", r.stdout);
    assert!(
        r.stdout.contains("1h30m left") && r.stdout.contains(": disk swap"),
        "{}",
        r.stdout
    );
    let on_disk = Suspension::load(tmp.path())
        .unwrap()
        .expect("the record survives the daemon");
    assert_eq!(on_disk.until.unwrap() - on_disk.since, 5400);

    // Suspended: the daemon refuses, the operator is told why and how, exit 1.
    let r = pailot(&["reconcile", "--state-dir", dir]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("disk swap") && r.stderr.contains("pailot resume"),
        "{}",
        r.stderr
    );

    let r = pailot(&["resume", "--state-dir", dir]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("resumed (it was suspended since"),
        "{}",
        r.stdout
    );
    let r = pailot(&["resume", "--state-dir", dir]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "not suspended: nothing to resume")
    );

    let r = pailot(&["reconcile", "--state-dir", dir]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("reconcile requested"), "{}", r.stdout);

    // --wait prints the result and its exit code says whether it worked.
    let r = pailot(&["reconcile", "--wait", "--state-dir", dir]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("reconciled 1a2b3c4d5e6f in 2s (manual): tune zookeeper"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("zookeeper  1 configured"), "{}", r.stdout);
    *d.daemon.next_result.lock().unwrap() = Outcome::Failure;
    let r = pailot(&["reconcile", "--wait", "--state-dir", dir]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.starts_with("failed 1a2b3c4d5e6f"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("apply/rejected: Deployment/default/zookeeper"),
        "{}",
        r.stdout
    );
    let r = pailot(&["reconcile", "--wait", "-o", "json", "--state-dir", dir]).await;
    assert_eq!(r.code, 1, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["result"].as_str(), v["reason"].as_str()),
        (Some("failure"), Some("rejected"))
    );

    // A bad duration is a usage error, caught before the daemon hears of it.
    let r = pailot(&["suspend", "--state-dir", dir, "--for", "soon"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        d.requests()
            .iter()
            .filter(|r| r.starts_with("suspend"))
            .count(),
        1,
        "{:?}",
        d.requests()
    );
    d.stop().await;
    assert!(!control::socket_path(tmp.path()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_commands_fail_clearly_and_history_reads_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for cmd in ["reconcile", "suspend", "resume"] {
        let r = pailot(&[cmd, "--state-dir", dir]).await;
        assert_eq!(r.code, 1, "{cmd}: {r:?}");
        assert!(
            r.stderr.contains("the pailot daemon is not running")
                && r.stderr.contains(&format!("{dir}/control.sock")),
            "{cmd}: {}",
            r.stderr
        );
    }
    let r = pailot(&["history", "--state-dir", dir]).await;
    assert_eq!(
        (r.code, r.stderr.trim()),
        (0, "no reconciles recorded yet"),
        "{r:?}"
    );

    let (mut h, _) = history::History::open(tmp.path(), 100).unwrap();
    h.append(&entry(Outcome::Success)).unwrap();
    let mut other = entry(Outcome::Failure);
    other.charts = BTreeMap::from([("grafana".to_string(), ActionCounts::default())]);
    h.append(&other).unwrap();
    // A line a crash or a disk error mangled: skipped with a warning, the rest still shown.
    std::fs::OpenOptions::new()
        .append(true)
        .open(h.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\x00\x00garbage\n"))
        .unwrap();
    let r = pailot(&["history", "--state-dir", dir]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[1].contains("manual")
            && lines[1].contains("success")
            && lines[1].contains("1 configured"),
        "{}",
        r.stdout
    );
    assert!(
        lines[2].contains("failure") && lines[2].contains("apply/rejected"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("history.jsonl line 3: not a history entry"),
        "{}",
        r.stderr
    );

    let r = pailot(&[
        "history",
        "--state-dir",
        dir,
        "--chart",
        "zookeeper",
        "-o",
        "json",
    ])
    .await;
    let v: Vec<Entry> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].charts.keys().collect::<Vec<_>>(), ["zookeeper"]);

    // With the daemon running, the same answer comes through the socket.
    let d = Running::start(tmp.path(), None);
    let r2 = pailot(&[
        "history",
        "--state-dir",
        dir,
        "--chart",
        "zookeeper",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(r2.stdout, r.stdout);
    assert_eq!(d.requests(), ["history"]);
    d.stop().await;
}

/// Root runs the tests here and in CI; `setpriv` switches to `nobody` with and without the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_and_the_pailot_group_may_use_the_socket() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("PAILOT_SKIP_ROOT_TESTS").is_some(),
            "this test switches users and needs root (set PAILOT_SKIP_ROOT_TESTS=1 to skip it)"
        );
        return;
    }
    // What systemd-sysusers does on an installed host (systemd/sysusers.d/pailot.conf).
    if control::group_id(control::CONTROL_GROUP).is_none() {
        let ok = Command::new("groupadd")
            .args(["--system", control::CONTROL_GROUP])
            .status()
            .unwrap();
        assert!(ok.success(), "groupadd --system pailot");
    }
    let tmp = tempfile::tempdir().unwrap();
    // As /var/lib/pailot: traversable, so the socket's own mode is what decides.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    // A copy nobody can run wherever the checkout is (CI clones may live under a 0700 /root).
    let bin = tmp.path().join("pailot");
    std::fs::copy(pailot_bin(), &bin).unwrap();
    let d = Running::start(tmp.path(), Some(control::CONTROL_GROUP));
    let meta = std::fs::metadata(control::socket_path(tmp.path())).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&meta),
        control::group_id(control::CONTROL_GROUP).unwrap()
    );

    let as_nobody = |groups: &'static str| {
        let (dir, bin) = (dir.clone(), bin.clone());
        async move {
            tokio::task::spawn_blocking(move || -> Run {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=nobody", "--regid=nogroup"]);
                if groups.is_empty() {
                    c.arg("--clear-groups");
                } else {
                    c.arg(format!("--groups={groups}"));
                }
                c.arg(&bin)
                    .args(["suspend", "--reason", "not allowed?", "--state-dir", &dir])
                    .env_remove("PAILOT_SOCKET")
                    .output()
                    .expect("setpriv (util-linux)")
                    .into()
            })
            .await
            .unwrap()
        }
    };
    let r = as_nobody("").await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("permission denied") && r.stderr.contains("group pailot"),
        "{}",
        r.stderr
    );
    assert!(
        d.requests().is_empty(),
        "the daemon never saw it: {:?}",
        d.requests()
    );
    assert!(Suspension::load(tmp.path()).unwrap().is_none());

    let r = as_nobody(control::CONTROL_GROUP).await;
    assert_eq!(r.code, 0, "a member of group pailot may: {r:?}");
    assert_eq!(d.requests(), ["suspend by uid 65534 (nobody)"]);
    d.stop().await;
}
