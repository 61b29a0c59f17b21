//! The GitOps daemon: source triggers, the reconcile loop, drift, leader election and systemd, wired together.
//!
//! `run(config, listener, shutdown, reloads, options)` is the whole daemon (mini-redis shape): the caller
//! binds the listener and owns the signals, so tests pass `127.0.0.1:0` and their own futures.

pub mod applier;
pub mod config;
pub mod drift;
pub mod helper;
pub mod leader;
pub mod memory;
pub mod reconcile;
pub mod source;
pub mod stages;
pub mod state;
pub mod status;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use self::applier::{KubeAccess, KubeApplier};
use self::config::{Config, DriftMode, Secret};
use self::reconcile::{Heartbeat, Reconciler, Trigger};
use self::source::git::GitSource;
use self::source::webhook::{GitWebhook, Verdict};
use self::stages::{GitStage, RepoRenderer};
use self::status::{BootstrapStatus, Outcome, Phase, StatusTx};
use crate::metrics::Metrics;
use crate::server::{self as http_server, ServerState, WebhookHandler, WebhookOutcome};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    /// The state directory could not be created.
    #[error("failed to create state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reconcile task panicked.
    #[error("reconcile task failed: {0}")]
    Task(String),
    /// Another daemon serves the same state directory (its control socket answers).
    #[error("{0}")]
    Control(#[source] crate::control::BindError),
}

/// Options from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Apply even without a bootstrap record (`--no-bootstrap`: the cluster was set up by other means).
    pub no_bootstrap: bool,
}

/// How often the bootstrap record is read again while the host is not bootstrapped.
const BOOTSTRAP_RECHECK: Duration = Duration::from_secs(10);

/// Run the daemon until `shutdown` completes; each message on `reloads` re-reads `config.file` (SIGHUP).
///
/// Flow: serve HTTP → decide whether we may apply (bootstrap record, leader lease) → start the
/// source triggers → run the reconcile state machine. Shutdown: STOPPING=1, stop the reconciler
/// (a fetch or render in flight is killed; an apply finishes the objects in flight and writes
/// state), then stop the server.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    mut reloads: mpsc::Receiver<()>,
    options: Options,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| Error::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::with_version(crate::VERSION));
    let (status, status_rx) = StatusTx::new();
    let (trigger_tx, trigger_rx) = mpsc::channel::<Trigger>(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    status.update(|st| {
        st.drift_mode = Some(drift_mode_word(config.reconcile.drift_mode).into());
    });

    // HTTP server.
    let webhook = Arc::new(WebhookAdapter {
        inner: RwLock::new(GitWebhook::new(
            config.server.webhook_secret.clone(),
            trigger_tx.clone(),
        )),
        tx: trigger_tx.clone(),
    });
    let server_state =
        Arc::new(ServerState::new(metrics.clone(), status_rx).with_webhook(webhook.clone()));
    let mut server_stop = stop_rx.clone();
    let server_task = tokio::spawn(http_server::serve(
        listener,
        server_state.clone(),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));

    // May we apply? A bootstrap record (read again until it appears) and leadership.
    let kube = Arc::new(KubeAccess::new(config.kubeconfig.clone()));
    let (bootstrap_tx, bootstrap_rx) = watch::channel(false);
    let bootstrap_task = tokio::spawn(watch_bootstrap(
        config.state_dir.clone(),
        options.no_bootstrap,
        metrics.clone(),
        status.clone(),
        bootstrap_tx,
        stop_rx.clone(),
    ));
    let (leader_tx, leader_rx) = watch::channel(config.leader_election.is_none());
    let leader_task = config.leader_election.clone().map(|le| {
        let (k, stop) = (kube.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut stop = stop;
            // Retry until the API server answers (the daemon may start before it).
            loop {
                match k.client().await {
                    Ok(client) => {
                        let api = kube::Api::namespaced(client, &le.namespace);
                        leader::run(api, le, leader::identity(), leader_tx, stop).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.message, "leader election: no API client yet; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    });
    let (active_tx, active_rx) = watch::channel(false);
    tokio::spawn(gate(
        bootstrap_rx,
        leader_rx,
        config.leader_election.is_some(),
        active_tx,
        metrics.clone(),
        status.clone(),
    ));

    // Source triggers.
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let mut source_triggers = SourceTriggers::start(&config, &trigger_tx, &status);

    // Operator controls: notifications, the control socket (suspend, resume, reconcile, history) and
    // the history the loop writes.
    let cluster_label = Path::new(&config.source.cluster).file_stem().map_or_else(
        || "pailot".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let notifier =
        crate::notification::Notifier::spawn(config.notifications.clone(), cluster_label);
    metrics.watch_notifications(notifier.clone());
    let (controls, manual_rx, warning) =
        crate::control::Controls::start(&config.state_dir, notifier.clone());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let control_task = start_control_socket(&config.state_dir, &controls, stop_rx.clone())?;
    let loop_controls = reconcile::Controls {
        manual: Arc::default(),
        suspension: controls.suspension(),
    };
    tokio::spawn(forward_manual_calls(
        manual_rx,
        loop_controls.manual.clone(),
        trigger_tx.clone(),
        active_rx.clone(),
    ));
    tokio::spawn(follow_suspension(
        controls.suspension(),
        metrics.clone(),
        status.clone(),
    ));
    let history_tx = start_history(&config.state_dir, config.history_limit, status.clone());
    tokio::spawn(watch_certificates(
        config.host_root.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));

    // The reconciler.
    let (settings_tx, settings_rx) = watch::channel(config.reconcile.clone());
    let heartbeat = Arc::new(Heartbeat::default());
    heartbeat.beat();
    let reconciler = Reconciler {
        source: GitStage {
            config: config_rx.clone(),
        },
        renderer: RepoRenderer {
            config: config_rx.clone(),
        },
        applier: KubeApplier::new(kube.clone(), config_rx.clone(), trigger_tx.clone()),
        metrics: metrics.clone(),
        status: status.clone(),
        settings: settings_rx,
        active: active_rx,
        state_dir: Some(config.state_dir.clone()),
        heartbeat: heartbeat.clone(),
        on_first_reconcile: std::sync::Mutex::new(Some(Box::new(|outcome: Outcome| {
            let _ = crate::systemd::ready_with_status(&format!(
                "first reconcile: {}",
                outcome.as_str()
            ));
        }))),
        controls: loop_controls,
        notifier,
        history: history_tx,
    };
    let reconcile_task = tokio::spawn(reconciler.run(trigger_rx, stop_rx.clone()));

    // systemd: STATUS= on each phase, freed memory handed back once idle, and the watchdog.
    let systemd_task = tokio::spawn(follow_phases(status.clone(), stop_rx.clone()));
    let stall_limit = stall_limit(&config);
    let watchdog_task = crate::systemd::watchdog_interval().map(|interval| {
        let (status, heartbeat, mut stop) = (status.clone(), heartbeat.clone(), stop_rx.clone());
        let loop_alive = reconcile_task_alive(&reconcile_task);
        tokio::spawn(async move {
            loop {
                if watchdog_may_ping(&status, &heartbeat, &loop_alive, stall_limit) {
                    let _ = crate::systemd::watchdog();
                } else {
                    tracing::error!(
                        stalled_for_s = heartbeat.age().as_secs(),
                        "the reconcile loop makes no progress: not feeding the systemd watchdog"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    });

    // Main wait: shutdown, or reloads.
    tokio::pin!(shutdown);
    let mut current = config;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reloads.recv() => {
                match Config::load(&current.file) {
                    Ok(new) => {
                        if let Some(field) = current.restart_only_change(&new) {
                            tracing::warn!(field, "changed in the config file; takes effect after a restart");
                        }
                        webhook.set_secret(new.server.webhook_secret.clone());
                        if source_triggers.key != SourceTriggers::key(&new) {
                            source_triggers = SourceTriggers::start(&new, &trigger_tx, &status);
                        }
                        status.update(|st| st.drift_mode = Some(drift_mode_word(new.reconcile.drift_mode).into()));
                        settings_tx.send_replace(new.reconcile.clone());
                        config_tx.send_replace(Arc::new(new.clone()));
                        current = new;
                        tracing::info!(file = %current.file.display(), "configuration reloaded");
                        let _ = trigger_tx.try_send(Trigger::Reload);
                    }
                    Err(e) => tracing::error!(error = %e, "new configuration refused; the old one keeps running"),
                }
            }
        }
    }

    tracing::info!("shutting down: stopping the stage in flight");
    let _ = crate::systemd::stopping();
    let _ = stop_tx.send(true);
    let state = reconcile_task
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
    tracing::info!(
        revision = state.last_applied_revision.as_deref().unwrap_or("-"),
        "state written"
    );
    drop(source_triggers);
    if let Some(t) = control_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    systemd_task.abort();
    bootstrap_task.abort();
    if let Some(t) = watchdog_task {
        t.abort();
    }
    if let Some(t) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    match server_task.await {
        Ok(r) => r.map_err(Error::Server),
        Err(e) => Err(Error::Task(e.to_string())),
    }
}

/// Serve the control socket in the state directory (mode 0660, group `pailot`). Another daemon on the
/// same state directory is an error; any other failure only costs the controls (logged).
fn start_control_socket(
    state_dir: &Path,
    controls: &crate::control::Controls,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let path = crate::control::socket_path(state_dir);
    match crate::control::bind(&path, Some(crate::control::CONTROL_GROUP)) {
        Ok(listener) => {
            if let Some(w) = &listener.warning {
                tracing::warn!("{w}");
            }
            tracing::info!(socket = %path.display(), "control socket: pailot reconcile|suspend|resume|history");
            Ok(Some(tokio::spawn(crate::control::serve(
                listener,
                Arc::new(controls.clone()),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))))
        }
        Err(e @ crate::control::BindError::InUse { .. }) => Err(Error::Control(e)),
        Err(e) => {
            tracing::error!(error = %e, "no control socket: pailot reconcile/suspend/resume cannot reach this daemon");
            Ok(None)
        }
    }
}

/// Hand each `pailot reconcile` to the loop: kept until the reconcile that answers it ends, and a
/// `Trigger::Manual` for the loop (refused at once when this daemon may not apply).
async fn forward_manual_calls(
    mut calls: mpsc::Receiver<crate::control::ManualReconcile>,
    pending: Arc<std::sync::Mutex<Vec<crate::control::ManualReconcile>>>,
    triggers: mpsc::Sender<Trigger>,
    active: watch::Receiver<bool>,
) {
    while let Some(call) = calls.recv().await {
        if !*active.borrow() {
            call.refuse("this daemon is not applying (no bootstrap record, or not the leader)");
            continue;
        }
        tracing::info!(by = %call.peer, correct_drift = call.correct_drift, "reconcile asked for");
        pending.lock().unwrap_or_else(|e| e.into_inner()).push(call);
        let _ = triggers.try_send(Trigger::Manual);
    }
}

/// Keep `/status` and `pailot_suspended` in step with the suspension.
async fn follow_suspension(
    mut suspension: watch::Receiver<Option<crate::suspension::Suspension>>,
    metrics: Arc<Metrics>,
    status: StatusTx,
) {
    loop {
        let s = suspension.borrow_and_update().clone();
        metrics.set_suspended(s.is_some());
        status.update(|st| st.suspended = s);
        if suspension.changed().await.is_err() {
            return;
        }
    }
}

/// Open the history in the state directory and return where the loop sends its entries; a writer
/// task appends them (fsync'd, off the runtime's threads). `None` (history off) when it cannot open.
fn start_history(
    state_dir: &Path,
    limit: usize,
    status: StatusTx,
) -> Option<mpsc::Sender<crate::history::Entry>> {
    let (history, warnings) = match crate::history::History::open(state_dir, limit) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "no reconcile history: cannot open it");
            return None;
        }
    };
    for w in warnings {
        tracing::warn!("history: {w}");
    }
    if let Ok(read) = crate::history::read(state_dir, 1) {
        status.update(|st| st.latest_history = read.entries.last().cloned());
    }
    let (tx, mut rx) = mpsc::channel::<crate::history::Entry>(64);
    let history = Arc::new(std::sync::Mutex::new(history));
    tokio::spawn(async move {
        while let Some(entry) = rx.recv().await {
            let h = history.clone();
            let written = tokio::task::spawn_blocking(move || {
                h.lock().unwrap_or_else(|e| e.into_inner()).append(&entry)
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, "reconcile not recorded in the history");
            }
        }
    });
    Some(tx)
}

/// How often the control-plane certificates are read again.
const CERTIFICATE_RECHECK: Duration = Duration::from_secs(3600);

/// Export the control-plane certificates' expiry (read at start and every hour).
async fn watch_certificates(
    root: std::path::PathBuf,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let r = root.clone();
        match tokio::task::spawn_blocking(move || crate::bootstrap::pki::certificate_expiries(&r))
            .await
        {
            Ok(Ok(certs)) => metrics.set_certificate_expiries(&certs),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the control-plane certificates"),
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_RECHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

fn drift_mode_word(m: DriftMode) -> &'static str {
    match m {
        DriftMode::Correct => "correct",
        DriftMode::Warn => "warn",
    }
}

/// How long the loop may go without progress before the watchdog stops being fed: longer than any
/// bounded step (a helper's time limit, a chart's health wait), plus slack.
fn stall_limit(c: &Config) -> Duration {
    c.helpers.time.max(c.reconcile.timeout) + Duration::from_secs(60)
}

/// A flag that turns false when the reconcile task ends (a panic included).
fn reconcile_task_alive<T>(
    task: &tokio::task::JoinHandle<T>,
) -> Arc<std::sync::atomic::AtomicBool> {
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let abort = task.abort_handle();
    let flag = alive.clone();
    tokio::spawn(async move {
        while !abort.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    alive
}

/// Feed the watchdog only while the loop runs and either waits (idle, backoff: bounded timers and
/// triggers) or made progress within `stall_limit`.
fn watchdog_may_ping(
    status: &StatusTx,
    heartbeat: &Heartbeat,
    loop_alive: &std::sync::atomic::AtomicBool,
    stall_limit: Duration,
) -> bool {
    if !loop_alive.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let waiting = status.get().phase.is_none_or(Phase::is_waiting);
    waiting || heartbeat.age() < stall_limit
}

/// How long the daemon must have been idle, with no status change, before free heap pages are handed
/// back: the work that follows a reconcile or drift check (history, notifications, watches, dropping the
/// plan) frees memory after the phase turns idle, and a trim before it keeps those pages.
const TRIM_AFTER_IDLE: Duration = Duration::from_millis(250);

/// STATUS= for systemd on each phase change, and a `malloc_trim` once a reconcile or drift check has
/// settled (idle, and no status change for [`TRIM_AFTER_IDLE`]).
async fn follow_phases(status: StatusTx, mut stop: watch::Receiver<bool>) {
    let mut rx = status.subscribe();
    let mut last = None;
    loop {
        let phase = rx.borrow_and_update().phase;
        if phase != last
            && let Some(p) = phase
        {
            let _ = crate::systemd::status(p.as_str());
        }
        // Any change while idle (a reconcile that just ended, a drift check's figures) re-arms the trim.
        let trim_at = (phase == Some(Phase::Idle) && last.is_some())
            .then(|| tokio::time::Instant::now() + TRIM_AFTER_IDLE);
        last = phase;
        let trim = async {
            match trim_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
            _ = trim => {
                memory::release_free_memory();
                // Wait for the next change before trimming again.
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

/// What the bootstrap record says, as `/status` and the metrics show it: each missing item as
/// `<step>: <detail>` (the step word is the metric's `item` label; `record` when there is none).
pub fn bootstrap_status(state_dir: &Path, no_bootstrap: bool) -> BootstrapStatus {
    use crate::bootstrap::BootstrapState as B;
    if no_bootstrap {
        return BootstrapStatus {
            complete: true,
            ..Default::default()
        };
    }
    match crate::bootstrap::bootstrap_state(state_dir) {
        B::Complete { warnings } => BootstrapStatus {
            complete: true,
            missing: Vec::new(),
            warnings,
        },
        B::Incomplete { missing, warnings } => BootstrapStatus {
            complete: false,
            missing: missing
                .iter()
                .map(|m| format!("{}: {}", m.step.as_str(), m.detail))
                .collect(),
            warnings,
        },
        B::NotRun => BootstrapStatus {
            complete: false,
            missing: vec![format!(
                "record: no bootstrap record in {} (run `pailot bootstrap`, or start the daemon with --no-bootstrap)",
                state_dir.display()
            )],
            warnings: Vec::new(),
        },
        B::Invalid { message } => BootstrapStatus {
            complete: false,
            missing: vec![format!("record: {message}")],
            warnings: Vec::new(),
        },
    }
}

/// Read the bootstrap record until the host may be reconciled (a record exists, complete or not);
/// keep metrics and `/status` in step with it.
async fn watch_bootstrap(
    state_dir: std::path::PathBuf,
    no_bootstrap: bool,
    metrics: Arc<Metrics>,
    status: StatusTx,
    ready: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        let b = bootstrap_status(&state_dir, no_bootstrap);
        let has_record = no_bootstrap || !b.missing.iter().any(|m| m.starts_with("record:"));
        metrics.set_bootstrap(&b);
        if !has_record && !warned {
            warned = true;
            tracing::warn!(state_dir = %state_dir.display(), "no bootstrap record: serving metrics only, not applying until `pailot bootstrap` writes one (or pass --no-bootstrap)");
        }
        status.update(|st| st.bootstrap = Some(b));
        ready.send_if_modified(|v| std::mem::replace(v, has_record) != has_record);
        tokio::select! {
            _ = tokio::time::sleep(BOOTSTRAP_RECHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Active = bootstrapped and leader (or no leader election); kept in metrics and `/status`.
async fn gate(
    mut bootstrap: watch::Receiver<bool>,
    mut leader: watch::Receiver<bool>,
    election: bool,
    active: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    status: StatusTx,
) {
    loop {
        let (b, l) = (*bootstrap.borrow_and_update(), *leader.borrow_and_update());
        metrics.set_leader(l);
        if election {
            status.update(|st| st.leader = Some(l));
        }
        active.send_if_modified(|v| std::mem::replace(v, b && l) != (b && l));
        tokio::select! {
            r = bootstrap.changed() => if r.is_err() { return },
            r = leader.changed(), if election => if r.is_err() {
                // The election task ended (shutdown): stop applying.
                active.send_replace(false);
                return;
            },
        }
    }
}

/// The source's triggers: an inotify watch on a local repository's refs (unless `source.watch: off`) and
/// the poll timer. Rebuilt on reload when the repository, `watch` or the poll settings change.
struct SourceTriggers {
    key: SourceKey,
    _watch: Option<source::watch::RefWatch>,
    poll: tokio::task::JoinHandle<()>,
}

/// What the triggers depend on: the watched directory (if any), the poll interval and jitter.
type SourceKey = (
    config::SourceWatch,
    config::RepoLocation,
    Duration,
    u64, // jitter bits
);

impl SourceTriggers {
    fn key(c: &Config) -> SourceKey {
        (
            c.source.watch,
            c.source.location.clone(),
            c.source.poll_interval,
            c.source.poll_jitter.to_bits(),
        )
    }

    fn start(c: &Config, tx: &mpsc::Sender<Trigger>, status: &StatusTx) -> Self {
        let (mode, watch) = match (c.source.watch, &c.source.location) {
            (config::SourceWatch::Off, _) => ("off", None),
            (config::SourceWatch::Auto, config::RepoLocation::Remote(_)) => ("remote", None),
            (config::SourceWatch::Auto, config::RepoLocation::Local(_)) => {
                match GitSource::new(c.source.clone(), &c.state_dir).local_git_dir() {
                    Some(git_dir) => match source::watch::watch_refs(&git_dir, tx.clone()) {
                        Ok(w) => ("refs", Some(w)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch the local repository; polling only");
                            ("failed", None)
                        }
                    },
                    None => {
                        tracing::warn!(url = %c.source.url, "not a git repository (yet); polling only");
                        ("failed", None)
                    }
                }
            }
        };
        let url = crate::redact::url_without_credentials(&c.source.url);
        tracing::info!(
            url = %url,
            watch = mode,
            poll_interval_s = c.source.poll_interval.as_secs_f64(),
            poll_jitter = c.source.poll_jitter,
            "source triggers"
        );
        let poll = tokio::spawn(source::watch::poll(
            c.source.poll_interval,
            c.source.poll_jitter,
            tx.clone(),
        ));
        let interval = c.source.poll_interval.as_secs_f64();
        status.update(|st| {
            let src = st.source.get_or_insert_with(Default::default);
            src.url = url;
            src.watch = mode.to_string();
            src.poll_interval_seconds = interval;
        });
        SourceTriggers {
            key: Self::key(c),
            _watch: watch,
            poll,
        }
    }
}

impl Drop for SourceTriggers {
    fn drop(&mut self) {
        self.poll.abort();
    }
}

/// The webhook handler the HTTP server calls; the secret can be replaced on reload.
struct WebhookAdapter {
    inner: RwLock<GitWebhook>,
    tx: mpsc::Sender<Trigger>,
}

impl WebhookAdapter {
    fn set_secret(&self, secret: Option<Secret>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) =
            GitWebhook::new(secret, self.tx.clone());
    }
}

impl WebhookHandler for WebhookAdapter {
    fn handle(&self, headers: &hyper::HeaderMap, body: &[u8]) -> WebhookOutcome {
        match self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .handle_push(headers, body)
        {
            Verdict::Accepted(provider) => {
                tracing::info!(?provider, "webhook accepted: fetching");
                WebhookOutcome::Accepted
            }
            Verdict::Ping(provider) => {
                tracing::info!(?provider, "webhook ping answered (no fetch)");
                WebhookOutcome::Ping
            }
            Verdict::NotPush(provider, event) => {
                tracing::info!(?provider, event = %event, "webhook event is not a push: ignored");
                WebhookOutcome::BadRequest
            }
            Verdict::Unauthorized(e) => {
                tracing::warn!(error = %e, "webhook refused");
                WebhookOutcome::Unauthorized
            }
        }
    }
}
