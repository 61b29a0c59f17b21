//! The GitOps daemon: source triggers, the reconcile loop, drift, leader election and systemd, wired together.
//!
//! `run(config, listener, shutdown, reloads, options)` is the whole daemon (mini-redis shape): the caller
//! binds the listener and owns the signals, so tests pass `127.0.0.1:0` and their own futures.

pub mod config;
pub mod drift;
pub mod helper;
pub mod leader;
pub mod memory;
pub mod reconcile;
pub mod source;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OnceCell, mpsc, watch};

use self::config::{Config, DriftMode, Secret};
use self::reconcile::{
    Applier, ApplyFailure, ApplyOutcome, ApplySummary, Desired, DriftRecord, Phase, Reason,
    ReconcileStatus, Reconciler, Renderer, SharedStatus, Source, Stage, StageError, Telemetry,
    Trigger,
};
use self::source::git::{self as git, GitSource, Revision};
use self::source::webhook::{GitWebhook, Verdict};
use crate::apply::{self, Action, ApplyReport, Server};
use crate::inventory::{GroupKind, Inventory};
use crate::manifest::ObjectId;
use crate::metrics::{self, Metrics};
use crate::server::{
    self as http_server, ServerState, StatusSnapshot, WebhookHandler, WebhookOutcome,
};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    /// The state directory could not be created.
    #[error("failed to create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reconcile task panicked.
    #[error("reconcile task failed: {0}")]
    Task(String),
}

/// Options from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Apply even without a bootstrap record (`--no-bootstrap`: the cluster was set up by other means).
    pub no_bootstrap: bool,
}

/// Run the daemon until `shutdown` completes; each message on `reloads` re-reads `config.file` (SIGHUP).
///
/// Flow: serve HTTP → decide whether we may apply (bootstrap record, leader lease) → start the
/// source triggers → run the reconcile state machine. Shutdown: STOPPING=1, stop the reconciler
/// (it finishes the stage in flight and writes state), then stop the server.
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
    let (trigger_tx, trigger_rx) = mpsc::channel::<Trigger>(16);
    let (stop_tx, stop_rx) = watch::channel(false);

    // HTTP server.
    let webhook = Arc::new(WebhookAdapter {
        inner: RwLock::new(GitWebhook::new(
            config.server.webhook_secret.clone(),
            trigger_tx.clone(),
        )),
        tx: trigger_tx.clone(),
    });
    let server_state = Arc::new(ServerState::new(metrics.clone()).with_webhook(webhook.clone()));
    let mut server_stop = stop_rx.clone();
    let server_task = tokio::spawn(http_server::serve(
        listener,
        server_state.clone(),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));

    // May we apply? Bootstrap record and leadership.
    let bootstrapped =
        options.no_bootstrap || crate::bootstrap::bootstrap_complete(&config.state_dir);
    metrics.set_bootstrap_complete(bootstrapped);
    if !bootstrapped {
        tracing::warn!(state_dir = %config.state_dir.display(), "no bootstrap record: serving metrics only, not applying (pass --no-bootstrap to override)");
        let _ = crate::systemd::ready_with_status("waiting for bootstrap");
    }
    let kube = Arc::new(KubeAccess::new(config.kubeconfig.clone()));
    let (active_tx, active_rx) = watch::channel(false);
    let mut leader_task = None;
    match &config.leader_election {
        Some(le) if bootstrapped => {
            let (leader_tx, mut leader_rx) = watch::channel(false);
            let (k, le, stop) = (kube.clone(), le.clone(), stop_rx.clone());
            leader_task = Some(tokio::spawn(async move {
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
            }));
            let m = metrics.clone();
            let st = server_state.clone();
            tokio::spawn(async move {
                loop {
                    let is = *leader_rx.borrow_and_update();
                    m.set_leader(is);
                    st.update_status(|s| s.leader = Some(is));
                    let _ = active_tx.send(is);
                    if leader_rx.changed().await.is_err() {
                        let _ = active_tx.send(false);
                        break;
                    }
                }
            });
        }
        _ => {
            metrics.set_leader(bootstrapped);
            let _ = active_tx.send(bootstrapped);
            // Keep the sender alive for the daemon's lifetime.
            tokio::spawn(async move {
                active_tx.closed().await;
            });
        }
    }

    // Source triggers.
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let source = GitStage::new(config_rx.clone());
    let mut source_triggers = SourceTriggers::start(&config, &trigger_tx);
    source_triggers.publish(&server_state);

    // The reconciler.
    let status = SharedStatus::default();
    let (settings_tx, settings_rx) = watch::channel(config.reconcile.clone());
    let renders = RecentRenders::default();
    let applier = KubeApplier {
        kube: kube.clone(),
        config: config_rx.clone(),
        triggers: trigger_tx.clone(),
        drift_watch: Mutex::new(None),
        stop: apply::Stop::from_watch(stop_rx.clone()),
        chart_ready: Mutex::new(None),
        renders: renders.clone(),
        applied: Mutex::new(None),
    };
    let publisher = Publisher {
        status: status.clone(),
        server: server_state.clone(),
        config: config_rx.clone(),
    };
    let trimmer = Arc::new(memory::Trimmer::default());
    let telemetry: Arc<dyn Telemetry> = Arc::new(MetricsTelemetry {
        metrics: metrics.clone(),
        publisher: publisher.clone(),
        trimmer: trimmer.clone(),
    });
    let reconciler = Reconciler {
        source,
        renderer: RepoRenderer {
            config: config_rx.clone(),
            renders,
        },
        applier,
        telemetry,
        status: status.clone(),
        settings: settings_rx,
        active: active_rx,
        state_dir: Some(config.state_dir.clone()),
        on_ready: Some(Box::new(|| {
            let _ = crate::systemd::ready_with_status("reconciled");
        })),
    };
    let reconcile_task = tokio::spawn(reconciler.run(trigger_rx, stop_rx.clone()));

    // Status publishing, handing freed memory back once a reconcile settled, and the systemd watchdog.
    let publish_task = {
        let p = publisher.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut last_phase = None;
            loop {
                let phase = p.publish();
                if trimmer.trim_if_settled(phase == Phase::Idle) {
                    tracing::debug!("returned free heap pages to the system");
                }
                if last_phase != Some(phase) {
                    let _ = crate::systemd::status(&format!("{phase:?}"));
                    last_phase = Some(phase);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    };
    if let Some(interval) = crate::systemd::watchdog_interval() {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let _ = crate::systemd::watchdog();
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => break,
                }
            }
        });
    }
    if !bootstrapped || config.leader_election.is_some() {
        // Nothing to wait for before serving: metrics are up.
        let _ = crate::systemd::ready();
    }

    // Main wait: shutdown, or reloads.
    tokio::pin!(shutdown);
    let mut current = config;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reloads.recv() => {
                match reload(&current) {
                    Ok(new) => {
                        if let Some(field) = current.restart_only_change(&new) {
                            tracing::warn!(field, "changed in the config file; takes effect after a restart");
                        }
                        webhook.set_secret(new.server.webhook_secret.clone());
                        if source_triggers.key != SourceTriggers::key(&new) {
                            source_triggers = SourceTriggers::start(&new, &trigger_tx);
                            source_triggers.publish(&server_state);
                        }
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

    tracing::info!("shutting down: finishing the stage in flight");
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
    publish_task.abort();
    if let Some(t) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    match server_task.await {
        Ok(r) => r.map_err(Error::Server),
        Err(e) => Err(Error::Task(e.to_string())),
    }
}

/// The source's triggers: an inotify watch on a local repository's refs (unless `source.watch: off`) and
/// the poll timer. Rebuilt on reload when the repository, `watch` or the poll settings change.
struct SourceTriggers {
    key: SourceKey,
    /// `refs`, `off`, `remote` or `failed` (see `server::SourceStatus::watch`).
    mode: &'static str,
    poll_interval: Duration,
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

    fn start(c: &Config, tx: &mpsc::Sender<Trigger>) -> Self {
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
        tracing::info!(
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
        SourceTriggers {
            key: Self::key(c),
            mode,
            poll_interval: c.source.poll_interval,
            _watch: watch,
            poll,
        }
    }

    fn publish(&self, server: &ServerState) {
        server.update_status(|s| {
            let src = s.source.get_or_insert_with(Default::default);
            src.watch = self.mode.to_string();
            src.poll_interval_seconds = self.poll_interval.as_secs_f64();
        });
    }
}

impl Drop for SourceTriggers {
    fn drop(&mut self) {
        self.poll.abort();
    }
}

/// Re-read `current.file`; an invalid file is refused (the caller keeps `current`).
pub fn reload(current: &Config) -> Result<Config, config::Error> {
    Config::load(&current.file)
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
            Verdict::Unauthorized(e) => {
                tracing::warn!(error = %e, "webhook refused");
                WebhookOutcome::Unauthorized
            }
        }
    }
}

/// Copies the reconciler's status into the server's `/status` snapshot.
#[derive(Clone)]
struct Publisher {
    status: SharedStatus,
    server: Arc<ServerState>,
    config: watch::Receiver<Arc<Config>>,
}

impl Publisher {
    fn publish(&self) -> Phase {
        let st = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let drift_mode = match self.config.borrow().reconcile.drift_mode {
            DriftMode::Correct => "correct",
            DriftMode::Warn => "warn",
        };
        let phase = st.phase;
        self.server.update_status(|s| snapshot(&st, drift_mode, s));
        phase
    }
}

/// Fill the server's snapshot from the reconciler's status.
fn snapshot(st: &ReconcileStatus, drift_mode: &str, s: &mut StatusSnapshot) {
    s.revision = st.revision.clone();
    s.phase = Some(
        match st.phase {
            Phase::Idle => "idle",
            Phase::Fetching => "fetching",
            Phase::Rendering => "rendering",
            Phase::Applying => "applying",
            Phase::WaitingHealthy => "waiting",
            Phase::Backoff => "backoff",
        }
        .to_string(),
    );
    s.drift_mode = Some(drift_mode.to_string());
    let source = s.source.get_or_insert_with(Default::default);
    source.triggers = st
        .triggers
        .iter()
        .map(|(t, n)| (t.as_str().to_string(), *n))
        .collect();
    s.next_wakeup = st.next_wakeup_in_s.map(|d| (state::unix_now() + d) as f64);
    s.errors.clear();
    if let Some(last) = &st.last {
        s.last_reconcile = Some(http_server::ReconcileStatus {
            result: last.result.clone(),
            trigger: last.trigger.map(|t| t.as_str().to_string()),
            revision: last.revision.clone(),
            started_at: Some(last.at as f64 - last.duration_ms as f64 / 1000.0),
            finished_at: Some(last.at as f64),
            duration_seconds: Some(last.duration_ms as f64 / 1000.0),
            message: last.error.as_ref().map(|e| e.to_string()),
        });
        if let Some(e) = &last.error {
            let mut se = match &e.input {
                Some(input) => http_server::StatusError::from_input(e.stage.as_str(), input),
                None => http_server::StatusError {
                    stage: e.stage.as_str().to_string(),
                    message: e.message.clone(),
                    ..Default::default()
                },
            };
            se.reason = Some(e.reason.as_str().to_string());
            s.errors.push(se);
        }
    }
    let mut drifted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &st.drift {
        drifted
            .entry(r.chart.as_str())
            .or_default()
            .insert(r.object.as_str());
    }
    // Charts of the applied revision; readiness is known only when the reconcile waited for health.
    let names: BTreeSet<&String> = st.charts.keys().chain(st.chart_objects.keys()).collect();
    s.charts = names
        .into_iter()
        .map(|name| {
            let ready = st.charts.get(name).copied();
            let c = http_server::ChartStatus {
                result: match ready {
                    Some(false) => "failed".into(),
                    _ => "applied".into(),
                },
                ready: ready.unwrap_or(false),
                objects: st.chart_objects.get(name).copied().unwrap_or(0),
                drifted: drifted.get(name.as_str()).map_or(0, |s| s.len() as u64),
                message: None,
            };
            (name.clone(), c)
        })
        .collect();
    let at = st.drift_checked_at.map(|t| t as f64);
    s.drift = st
        .drift
        .iter()
        .map(|r| http_server::DriftRecord {
            chart: r.chart.clone(),
            object: r.object.clone(),
            pointer: r.pointer.clone(),
            manager: r.manager.clone(),
            provenance: r.provenance.clone(),
            action: if drift_mode == "correct" {
                "corrected".into()
            } else {
                "reported".into()
            },
            detected_at: at,
        })
        .collect();
}

/// Metrics behind the reconciler's `Telemetry`, plus a status publish after each reconcile.
struct MetricsTelemetry {
    metrics: Arc<Metrics>,
    publisher: Publisher,
    /// Told when a reconcile or drift check ends (the publish loop trims once idle).
    trimmer: Arc<memory::Trimmer>,
}

fn metrics_stage(s: Stage) -> metrics::Stage {
    match s {
        Stage::Fetch => metrics::Stage::Fetch,
        Stage::Verify => metrics::Stage::Verify,
        Stage::Render => metrics::Stage::Render,
        Stage::Apply => metrics::Stage::Apply,
        Stage::Wait => metrics::Stage::Wait,
        Stage::Drift => metrics::Stage::Drift,
    }
}

fn metrics_reason(r: Reason) -> metrics::FailureReason {
    use metrics::FailureReason as F;
    match r {
        Reason::SourceUnreachable => F::SourceUnreachable,
        Reason::RefNotFound | Reason::InvalidInput => F::InvalidInput,
        Reason::UnsignedCommit | Reason::UntrustedSignature => F::Untrusted,
        Reason::ApiUnreachable => F::ApiUnreachable,
        Reason::Rejected => F::Rejected,
        Reason::HealthTimeout => F::Timeout,
        Reason::PruneBlocked | Reason::Interrupted | Reason::Internal => F::Other,
    }
}

impl Telemetry for MetricsTelemetry {
    fn record_reconcile(&self, result: &str, duration: Duration) {
        let r = if result == "success" {
            metrics::ReconcileResult::Success
        } else {
            metrics::ReconcileResult::Failure
        };
        self.metrics.record_reconcile(r, duration);
        self.publisher.publish();
        self.trimmer.settled();
    }
    fn record_failure(&self, stage: Stage, reason: Reason) {
        self.metrics
            .record_failure(metrics_stage(stage), metrics_reason(reason));
    }
    fn set_revision(&self, revision: &str) {
        self.metrics.set_revision(revision);
    }
    fn record_apply(&self, action: &str, n: usize) {
        let a = match action {
            "created" => metrics::ApplyAction::Created,
            "configured" => metrics::ApplyAction::Configured,
            "unchanged" => metrics::ApplyAction::Unchanged,
            "deleted" => metrics::ApplyAction::Deleted,
            _ => metrics::ApplyAction::Skipped,
        };
        self.metrics.record_apply(a, n as u64);
    }
    fn set_inventory(&self, n: usize) {
        self.metrics.set_inventory(n as u64);
    }
    fn set_chart_ready(&self, chart: &str, ready: bool) {
        self.metrics.set_chart_ready(chart, ready);
    }
    fn set_drifted(&self, chart: &str, n: usize) {
        self.metrics.set_drifted(chart, n as u64);
        self.publisher.publish();
        self.trimmer.settled();
    }
    fn inc_drift(&self, chart: &str) {
        self.metrics.inc_drift(chart);
    }
    fn record_fetch(&self, result: &str, duration: Duration) {
        let r = if result == "success" {
            metrics::FetchResult::Success
        } else {
            metrics::FetchResult::Failure
        };
        self.metrics.record_fetch(r, duration);
    }
    fn last_success_now(&self) {
        self.metrics.last_success_now();
    }
}

/// The git source, reading its settings from the current configuration at each fetch.
struct GitStage {
    config: watch::Receiver<Arc<Config>>,
}

impl GitStage {
    fn new(config: watch::Receiver<Arc<Config>>) -> Self {
        GitStage { config }
    }
    fn current(&self) -> GitSource {
        let c = self.config.borrow();
        GitSource::new(c.source.clone(), &c.state_dir)
    }
}

impl Source for GitStage {
    async fn fetch(&self) -> Result<Revision, StageError> {
        self.current().sync().await.map_err(|e| {
            let (stage, reason) = match &e {
                git::Error::Fetch { .. } => (Stage::Fetch, Reason::SourceUnreachable),
                git::Error::RefNotFound { .. } => (Stage::Fetch, Reason::RefNotFound),
                git::Error::Checkout { .. } => (Stage::Fetch, Reason::Internal),
                git::Error::Verify(v) => match v {
                    source::verify::Error::Unsigned { .. } => {
                        (Stage::Verify, Reason::UnsignedCommit)
                    }
                    source::verify::Error::Tool { .. } => (Stage::Verify, Reason::Internal),
                    _ => (Stage::Verify, Reason::UntrustedSignature),
                },
            };
            StageError::new(stage, reason, e.to_string())
        })
    }
}

/// Renders a checked-out revision with `crate::render` (in a helper process, see `helper`), without field provenance.
///
/// Provenance (where each field's value came from) is only read for drift records, which are rare;
/// keeping it for every object between reconciles cost more memory than the objects themselves.
/// `KubeApplier::drift` renders the applied revision again, with provenance, when it finds drift.
struct RepoRenderer {
    config: watch::Receiver<Arc<Config>>,
    renders: RecentRenders,
}

/// The render requests of the last few revisions rendered, so that the applied one can be rendered again.
#[derive(Clone, Default)]
struct RecentRenders(Arc<Mutex<std::collections::VecDeque<crate::render::RenderRequest>>>);

impl RecentRenders {
    /// How many requests to remember (a render is followed by the apply of the same revision).
    const KEEP: usize = 4;

    fn remember(&self, req: crate::render::RenderRequest) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|r| r.revision != req.revision);
        q.push_back(req);
        while q.len() > Self::KEEP {
            q.pop_front();
        }
    }

    fn get(&self, revision: &str) -> Option<crate::render::RenderRequest> {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .rev()
            .find(|r| r.revision.as_deref() == Some(revision))
            .cloned()
    }
}

impl Renderer for RepoRenderer {
    async fn render(&self, revision: &Revision) -> Result<Desired, StageError> {
        let (cluster_file, overlays, age_keys) = {
            let c = self.config.borrow();
            (
                PathBuf::from(&c.source.cluster),
                c.source.overlays.clone(),
                c.decryption.age_keys(),
            )
        };
        let req = crate::render::RenderRequest {
            repo_root: revision.root.clone(),
            cluster_file,
            overlays,
            revision: Some(revision.commit.clone()),
            age_keys,
        };
        self.renders.remember(req.clone());
        match helper::render(&req).await {
            Ok(desired) => Ok(desired),
            Err(helper::RenderFailure::Input(mut e)) => {
                // Name files relative to the repository, not the per-commit checkout directory.
                if let Ok(rel) = e.file.strip_prefix(&revision.root) {
                    e.file = rel.to_path_buf();
                }
                Err(StageError::input(Stage::Render, e))
            }
            Err(helper::RenderFailure::Internal(m)) => Err(StageError::new(
                Stage::Render,
                Reason::Internal,
                format!("render failed: {m}"),
            )),
        }
    }
}

/// A lazily connected API client and discovery cache (the daemon starts without the API server).
struct KubeAccess {
    kubeconfig: Option<PathBuf>,
    server: OnceCell<Server>,
}

impl KubeAccess {
    fn new(kubeconfig: Option<PathBuf>) -> Self {
        KubeAccess {
            kubeconfig,
            server: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<kube::Client, StageError> {
        let unreachable = |m: String| StageError::new(Stage::Apply, Reason::ApiUnreachable, m);
        let cfg = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| unreachable(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| unreachable(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| unreachable(format!("no kubeconfig: {e}")))?,
        };
        kube::Client::try_from(cfg).map_err(|e| unreachable(e.to_string()))
    }

    async fn server(&self) -> Result<&Server, StageError> {
        self.server
            .get_or_try_init(|| async {
                let client = self.client().await?;
                Server::new(client).await.map_err(|e| {
                    StageError::new(Stage::Apply, Reason::ApiUnreachable, e.to_string())
                })
            })
            .await
    }
}

/// The apply engine (`crate::apply`) behind the reconciler's `Applier`.
struct KubeApplier {
    kube: Arc<KubeAccess>,
    config: watch::Receiver<Arc<Config>>,
    triggers: mpsc::Sender<Trigger>,
    /// The drift watch and the kinds it covers; restarted when the kinds change.
    drift_watch: Mutex<Option<(BTreeSet<GroupKind>, tokio::task::JoinHandle<()>)>>,
    /// Shutdown: set on SIGTERM/SIGINT; the engine stops between objects.
    stop: apply::Stop,
    /// Readiness per chart from the last apply (all `wait_healthy` needs of its report).
    chart_ready: Mutex<Option<BTreeMap<String, bool>>>,
    /// Render requests of recent revisions (shared with `RepoRenderer`).
    renders: RecentRenders,
    /// How the last applied revision was rendered (to render it again with provenance for drift records).
    applied: Mutex<Option<crate::render::RenderRequest>>,
}

/// After a stop request, how long the engine may take to finish the objects in flight (normally
/// milliseconds: one SSA call each) before it is dropped; only a hung API call reaches it.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl KubeApplier {
    fn apply_config(&self, dry_run: bool) -> apply::Config {
        let c = self.config.borrow();
        apply::Config {
            // The daemon is the owner of what it renders: take fields back from `kubectl scale` & co.
            force_conflicts: true,
            prune: c.reconcile.prune && !dry_run,
            wait: c.reconcile.wait && !dry_run,
            timeout: c.reconcile.timeout,
            dry_run,
            prune_limits: apply::prune::Config {
                max_objects: c.reconcile.mass_prune_threshold,
                ..Default::default()
            },
            stop: self.stop.clone(),
            ..Default::default()
        }
    }

    fn ensure_drift_watch(&self, server: &Server, desired: &Desired) {
        let kinds = drift::group_kinds(desired);
        let mut guard = self.drift_watch.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_some_and(|(k, t)| *k == kinds && !t.is_finished())
        {
            return;
        }
        if let Some((_, t)) = guard.take() {
            t.abort();
        }
        let inv = Inventory::for_cluster(&desired.cluster, &desired.namespace);
        let task = tokio::spawn(drift::watch(
            server.clone(),
            kinds.clone(),
            inv.member_selector(),
            self.triggers.clone(),
            Duration::from_millis(500),
        ));
        *guard = Some((kinds, task));
    }
}

impl Drop for KubeApplier {
    fn drop(&mut self) {
        if let Some((_, t)) = self
            .drift_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

/// Map an apply report's errors to one stage error.
fn report_error(report: &ApplyReport) -> StageError {
    let first = report.errors.first().cloned().unwrap_or_default();
    let msg = if report.errors.len() > 1 {
        format!("{first} (and {} more)", report.errors.len() - 1)
    } else {
        first
    };
    let lower = msg.to_ascii_lowercase();
    let reason = if report.transient_failure() {
        // The API server or the network failed (e.g. stopped mid-apply): retry as is.
        Reason::ApiUnreachable
    } else if lower.contains("not healthy after") || lower.contains("unhealthy") {
        Reason::HealthTimeout
    } else if lower.contains("connect")
        || lower.contains("timed out")
        || lower.contains("service unavailable")
    {
        Reason::ApiUnreachable
    } else if lower.contains("prune") {
        Reason::PruneBlocked
    } else {
        Reason::Rejected
    };
    let stage = if reason == Reason::HealthTimeout {
        Stage::Wait
    } else {
        Stage::Apply
    };
    StageError::new(stage, reason, msg)
}

fn engine_error(e: apply::Error) -> StageError {
    let reason = match &e {
        apply::Error::Plan(_) => Reason::InvalidInput,
        apply::Error::Inventory(_) => Reason::Rejected,
        apply::Error::Prune(_) => Reason::PruneBlocked,
        apply::Error::Server { source, .. } if source.is_transient() => Reason::ApiUnreachable,
        apply::Error::Server { source, .. } => match source {
            apply::ssa::Error::Discovery(_) => Reason::ApiUnreachable,
            apply::ssa::Error::Api {
                source: kube::Error::Api(_),
                ..
            } => Reason::Rejected,
            apply::ssa::Error::Api { .. } => Reason::ApiUnreachable,
            apply::ssa::Error::UnknownKind { .. } | apply::ssa::Error::Conflict { .. } => {
                Reason::Rejected
            }
            apply::ssa::Error::DeleteTimeout { .. } => Reason::HealthTimeout,
        },
    };
    StageError::new(Stage::Apply, reason, e.to_string())
}

impl Applier for KubeApplier {
    async fn apply(
        &self,
        desired: &Desired,
        revision: &str,
        mut stop: watch::Receiver<bool>,
    ) -> Result<ApplyOutcome, ApplyFailure> {
        let server = self.kube.server().await?;
        let inv = Inventory::for_cluster(&desired.cluster, &desired.namespace);
        let mut cfg = self.apply_config(false);
        cfg.stop = apply::Stop::from_watch(stop.clone());
        let progress = apply::progress::Progress::quiet();
        let work = run_engine(server, desired, &inv, &cfg, &progress);
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            _ = stopped(&mut stop) => {
                tracing::info!(revision, "stop requested during apply; the objects in flight finish, no other starts");
                match tokio::time::timeout(STOP_GRACE, &mut work).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(revision, grace_s = STOP_GRACE.as_secs(), "the apply did not stop in time (an API call hangs); dropped");
                        return Ok(ApplyOutcome::Stopped { inventory: None });
                    }
                }
            }
        };
        let report = result.map_err(engine_error)?;
        if report.stopped {
            tracing::info!(
                revision,
                applied = report.objects.len(),
                not_applied = report.not_applied,
                "apply stopped"
            );
            return Ok(ApplyOutcome::Stopped {
                inventory: report.members.clone(),
            });
        }
        if !report.ok() {
            return Err(ApplyFailure {
                error: report_error(&report),
                inventory: report.members.clone(),
            });
        }
        self.ensure_drift_watch(server, desired);
        let count = |a: Action| report.counts.get(&a).copied().unwrap_or(0);
        let summary = ApplySummary {
            created: count(Action::Created),
            configured: count(Action::Configured),
            unchanged: count(Action::Unchanged),
            deleted: count(Action::Deleted),
            skipped: count(Action::Skipped),
            inventory: report.members.clone().unwrap_or_else(|| {
                report
                    .objects
                    .iter()
                    .filter(|o| o.action != Action::Deleted && o.action != Action::Skipped)
                    .map(|o| o.id.clone())
                    .collect()
            }),
        };
        // Keep only what `wait_healthy` and drift records need, not the 600-object report.
        *self.chart_ready.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(chart_readiness(&report));
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = self.renders.get(revision);
        Ok(ApplyOutcome::Applied(summary))
    }

    async fn wait_healthy(
        &self,
        _desired: &Desired,
        _timeout: Duration,
    ) -> Result<BTreeMap<String, bool>, StageError> {
        // The engine waits per chart along the dependency graph during `apply` (config.wait);
        // here we only read what it found.
        let guard = self.chart_ready.lock().unwrap_or_else(|e| e.into_inner());
        Ok(guard.clone().unwrap_or_default())
    }

    async fn drift(&self, desired: &Desired) -> Result<Vec<DriftRecord>, StageError> {
        let server = self.kube.server().await?;
        let inv = Inventory::for_cluster(&desired.cluster, &desired.namespace);
        let cfg = self.apply_config(true);
        let progress = apply::progress::Progress::quiet();
        let mut report = run_engine(server, desired, &inv, &cfg, &progress)
            .await
            .map_err(|e| StageError {
                stage: Stage::Drift,
                ..engine_error(e)
            })?;
        // Fields computed from decrypted values never reach records, logs or /status.
        crate::mask::mask_report(&mut report, &desired.set.provenance.secrets);
        let records = drift::records(&report, desired);
        if records.is_empty() || !desired.set.provenance.objects.is_empty() {
            return Ok(records);
        }
        // Rendered without provenance (RepoRenderer): render the applied revision again, with it.
        let req = self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fields = drift::provenance_wanted(&report);
        let lines = match req {
            Some(req) => helper::provenance(&req, fields.clone()).await,
            None => Err("no render of the applied revision is known".into()),
        };
        match lines {
            Ok(lines) => {
                let known: std::collections::HashMap<(ObjectId, String), Option<String>> =
                    fields.into_iter().zip(lines).collect();
                Ok(drift::records_with(&report, |id, pointer| {
                    known
                        .get(&(id.clone(), pointer.to_string()))
                        .cloned()
                        .flatten()
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "drift records without provenance: cannot render the applied revision again");
                Ok(records)
            }
        }
    }
}

/// Readiness per chart from an apply report.
fn chart_readiness(report: &ApplyReport) -> BTreeMap<String, bool> {
    report
        .charts
        .iter()
        .map(|c| {
            let ready = matches!(
                c.state,
                apply::progress::ChartState::Healthy | apply::progress::ChartState::Applied
            );
            (c.name.clone(), ready)
        })
        .collect()
}

/// Completes once `stop` is true (never, if its sender is gone while false).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Run the apply engine; boxed so its future is checked for `Send` with concrete lifetimes.
fn run_engine<'a>(
    server: &'a Server,
    desired: &'a Desired,
    inv: &'a Inventory,
    cfg: &'a apply::Config,
    progress: &'a apply::progress::Progress,
) -> std::pin::Pin<Box<dyn Future<Output = Result<ApplyReport, apply::Error>> + Send + 'a>> {
    Box::pin(apply::apply(server, &desired.set, inv, cfg, progress))
}

/// The state directory's bootstrap record decides whether this daemon may apply.
pub fn may_apply(state_dir: &Path, no_bootstrap: bool) -> bool {
    no_bootstrap || crate::bootstrap::bootstrap_complete(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ObjectReport;
    use crate::manifest::ObjectId;

    fn failed(reason: &str, transient: bool) -> ApplyReport {
        let id = ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("n".into()),
            name: "c".into(),
        };
        ApplyReport {
            objects: vec![ObjectReport {
                object: id.to_string(),
                id,
                chart: "web".into(),
                stage: "workloads",
                action: Action::Failed,
                reason: Some(reason.into()),
                changes: Vec::new(),
                transient,
            }],
            errors: vec![reason.into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_transient_object_failure_is_retried_whatever_its_message_says() {
        // Seen when the API server stopped mid-apply: a pooled connection fails to send; nothing in the
        // message says "connect", and it must not be taken for a rejection (which waits for a new commit).
        let msg = "stage workloads: ConfigMap/n/c: apply failed: ServiceError: client error (SendRequest)";
        assert_eq!(
            report_error(&failed(msg, true)).reason,
            Reason::ApiUnreachable
        );
        let invalid =
            "stage workloads: ConfigMap/n/c: apply failed: ApiError: ConfigMap is invalid (422)";
        assert_eq!(
            report_error(&failed(invalid, false)).reason,
            Reason::Rejected
        );
    }
}
