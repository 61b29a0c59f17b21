//! The reconcile loop: the only place that chains fetch → render → apply → wait healthy, as an explicit state machine.
//!
//! ```text
//!            trigger (coalesced)                      ok                 ok               ok (or wait off)
//!   Idle ───────────────────────▶ Fetching ─────▶ Rendering ─────▶ Applying ─────▶ WaitingHealthy ─────▶ Idle
//!    ▲  ▲ drift (correct): re-apply ────────────────────────────────────┘ ▲                                │
//!    │  └── same commit as applied / as refused ◀── Fetching              │                                │
//!    │                                                                    │                                │
//!    └──── terminal failure (await a new commit) ◀── any stage ── transient failure ──▶ Backoff ──(timer)──┘─▶ Fetching
//! ```
//!
//! Every stage error is a `StageError`: one bounded `Reason` (a metrics label), one log line, and
//! the next wake-up (`Next::Requeue` with exponential backoff, or `Next::AwaitChange`). Failure
//! bookkeeping happens once, in `Reconciler::fail`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{DriftMode, ReconcileConfig};
use super::source::git::Revision;
use super::state::{PersistedState, unix_now};
use crate::diag::InputError;
use crate::manifest::{ObjectId, RenderedObject, RenderedSet};

/// Why a reconcile was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// Daemon start (forces a re-apply of the current revision: an earlier run may have stopped mid-apply).
    Startup,
    /// A ref of the local repository changed.
    Watch,
    /// The poll timer fired.
    Poll,
    /// An authenticated push webhook.
    Webhook,
    /// SIGHUP reloaded the configuration (forces a re-render and re-apply).
    Reload,
    /// A watched inventory object changed, or the drift sweep timer fired (check for drift).
    Drift,
    /// The backoff timer after a transient failure (never sent by a source).
    Retry,
    /// This daemon became active (leadership won; a trigger that arrived while inactive).
    Activated,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "watch",
            Trigger::Poll => "poll",
            Trigger::Webhook => "webhook",
            Trigger::Reload => "reload",
            Trigger::Drift => "drift",
            Trigger::Retry => "retry",
            Trigger::Activated => "activated",
        }
    }
}

/// A pipeline stage (the `stage` metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Fetch,
    Verify,
    Render,
    Apply,
    Wait,
    Drift,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Verify => "verify",
            Stage::Render => "render",
            Stage::Apply => "apply",
            Stage::Wait => "wait",
            Stage::Drift => "drift",
        }
    }
}

/// The bounded reason of a failure (the `reason` metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The git remote could not be reached.
    SourceUnreachable,
    /// The configured branch/tag/commit does not exist.
    RefNotFound,
    /// Verification is on and the commit is not signed.
    UnsignedCommit,
    /// Verification is on and the signature is not from an allowed signer.
    UntrustedSignature,
    /// A chart, overlay, cluster file or patch is invalid (the error names file and place).
    InvalidInput,
    /// The Kubernetes API could not be reached or timed out.
    ApiUnreachable,
    /// The API refused an object (validation, admission, conflict).
    Rejected,
    /// Pruning was refused (mass-prune threshold, empty render).
    PruneBlocked,
    /// Charts did not become healthy within the timeout.
    HealthTimeout,
    /// Shutdown interrupted the stage.
    Interrupted,
    /// Anything else (local I/O, a bug).
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SourceUnreachable => "source_unreachable",
            Reason::RefNotFound => "ref_not_found",
            Reason::UnsignedCommit => "unsigned_commit",
            Reason::UntrustedSignature => "untrusted_signature",
            Reason::InvalidInput => "invalid_input",
            Reason::ApiUnreachable => "api_unreachable",
            Reason::Rejected => "rejected",
            Reason::PruneBlocked => "prune_blocked",
            Reason::HealthTimeout => "health_timeout",
            Reason::Interrupted => "interrupted",
            Reason::Internal => "internal",
        }
    }

    /// Retry later (transient) or wait for a new commit (terminal): decided here and nowhere else.
    pub fn next(self) -> Next {
        match self {
            Reason::SourceUnreachable
            | Reason::ApiUnreachable
            | Reason::HealthTimeout
            | Reason::Internal
            | Reason::Interrupted => Next::Requeue,
            Reason::RefNotFound
            | Reason::UnsignedCommit
            | Reason::UntrustedSignature
            | Reason::InvalidInput
            | Reason::Rejected
            | Reason::PruneBlocked => Next::AwaitChange,
        }
    }
}

/// What happens after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Next {
    /// Try again after an exponential backoff.
    Requeue,
    /// Keep the last applied revision running; try again when the ref moves (or on SIGHUP).
    AwaitChange,
}

/// A failure of one stage, tagged once where it happens and handled once in `Reconciler::fail`.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{} failed ({}): {message}", stage.as_str(), reason.as_str())]
pub struct StageError {
    pub stage: Stage,
    pub reason: Reason,
    /// One line, no secret values.
    pub message: String,
    /// The input error (file, line/column, place, object) when the user's input is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<InputError>,
}

impl StageError {
    pub fn new(stage: Stage, reason: Reason, message: impl Into<String>) -> Self {
        StageError {
            stage,
            reason,
            message: message.into(),
            input: None,
        }
    }
    /// A render failure caused by the user's input.
    pub fn input(stage: Stage, err: InputError) -> Self {
        StageError {
            stage,
            reason: Reason::InvalidInput,
            message: err.to_string(),
            input: Some(err),
        }
    }
}

/// Counts of one apply (the ChangeSet vocabulary) and the resulting inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplySummary {
    pub created: usize,
    pub configured: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub skipped: usize,
    /// Objects now in the inventory.
    pub inventory: Vec<ObjectId>,
}

/// How an apply ended, when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Everything applied (and pruned): the revision is applied.
    Applied(ApplySummary),
    /// A stop request ended the apply between objects: the revision is NOT applied. `inventory`: every
    /// object that is (or may be) in the ApplySet now; `None` when the applier could not tell.
    Stopped { inventory: Option<Vec<ObjectId>> },
}

/// A failed apply, with the ApplySet's members when the applier knows them (what it wrote before failing).
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyFailure {
    pub error: StageError,
    pub inventory: Option<Vec<ObjectId>>,
}

impl From<StageError> for ApplyFailure {
    fn from(error: StageError) -> Self {
        ApplyFailure {
            error,
            inventory: None,
        }
    }
}

/// One field that differs from the desired state.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftRecord {
    /// `Kind/namespace/name`.
    pub object: String,
    pub chart: String,
    /// JSON pointer of the field.
    pub pointer: String,
    pub desired: serde_json::Value,
    /// Live value (`null` when the field is missing).
    pub live: serde_json::Value,
    /// Field manager that owns the live value, when it is not pailot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// Where the desired value came from (template, values key, overlay op).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// What one render produced: the objects, and the ApplySet inventory they belong to.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub set: RenderedSet,
    /// Cluster name (names the ApplySet parent `applyset-<cluster>`).
    pub cluster: String,
    /// Namespace of the ApplySet parent.
    pub namespace: String,
}

/// The last applied set as the daemon keeps it between reconciles: each object as compact JSON
/// (about a third of the memory of its `Value` tree), thawed for a drift check. Field provenance
/// is not kept (the daemon renders without it and re-renders for drift records).
#[derive(Debug)]
struct FrozenDesired {
    objects: Vec<(ObjectId, String, String, Box<[u8]>)>,
    charts: Vec<crate::manifest::ChartInfo>,
    cluster: String,
    namespace: String,
    /// Fields computed from decrypted values: drift records mask them.
    secrets: crate::mask::SecretFields,
}

impl FrozenDesired {
    fn freeze(d: &Desired) -> Self {
        FrozenDesired {
            objects: d
                .set
                .objects
                .iter()
                .map(|(id, ro)| {
                    let json = serde_json::to_vec(&ro.object).unwrap_or_default();
                    (
                        id.clone(),
                        ro.chart.clone(),
                        ro.template.clone(),
                        json.into(),
                    )
                })
                .collect(),
            charts: d.set.charts.clone(),
            cluster: d.cluster.clone(),
            namespace: d.namespace.clone(),
            secrets: d.set.provenance.secrets.clone(),
        }
    }

    fn thaw(&self) -> Desired {
        let objects = self
            .objects
            .iter()
            .map(|(id, chart, template, json)| {
                let object = serde_json::from_slice(json).unwrap_or(serde_json::Value::Null);
                (
                    id.clone(),
                    RenderedObject {
                        chart: chart.clone(),
                        template: template.clone(),
                        object,
                    },
                )
            })
            .collect();
        Desired {
            set: RenderedSet {
                objects,
                charts: self.charts.clone(),
                provenance: crate::provenance::Provenance {
                    objects: Default::default(),
                    secrets: self.secrets.clone(),
                },
            },
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// Produces revisions (the git source in production).
pub trait Source: Send + Sync + 'static {
    fn fetch(&self) -> impl Future<Output = Result<Revision, StageError>> + Send;
}

/// Turns a checked-out revision into a RenderedSet.
pub trait Renderer: Send + Sync + 'static {
    fn render(
        &self,
        revision: &Revision,
    ) -> impl Future<Output = Result<Desired, StageError>> + Send;
}

/// Applies a RenderedSet to the cluster and inspects it.
pub trait Applier: Send + Sync + 'static {
    /// Apply `set` (plan, SSA, prune); once `stop` is true, let the objects in flight finish, start no
    /// other, and return `ApplyOutcome::Stopped`.
    fn apply(
        &self,
        desired: &Desired,
        revision: &str,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = Result<ApplyOutcome, ApplyFailure>> + Send;
    /// Wait until every chart is healthy or `timeout` passes; returns readiness per chart.
    fn wait_healthy(
        &self,
        desired: &Desired,
        timeout: Duration,
    ) -> impl Future<Output = Result<BTreeMap<String, bool>, StageError>> + Send;
    /// Compare the live objects with `set`, field by field.
    fn drift(
        &self,
        desired: &Desired,
    ) -> impl Future<Output = Result<Vec<DriftRecord>, StageError>> + Send;
}

/// Where the reconciler reports numbers (implemented by `crate::metrics::Metrics`; no-ops by default).
pub trait Telemetry: Send + Sync + 'static {
    fn record_reconcile(&self, _result: &str, _duration: Duration) {}
    fn record_failure(&self, _stage: Stage, _reason: Reason) {}
    fn set_revision(&self, _revision: &str) {}
    fn record_apply(&self, _action: &str, _n: usize) {}
    fn set_inventory(&self, _n: usize) {}
    fn set_chart_ready(&self, _chart: &str, _ready: bool) {}
    fn set_drifted(&self, _chart: &str, _n: usize) {}
    fn inc_drift(&self, _chart: &str) {}
    fn record_fetch(&self, _result: &str, _duration: Duration) {}
    fn last_success_now(&self) {}
}

/// Telemetry that records nothing.
pub struct NoTelemetry;
impl Telemetry for NoTelemetry {}

/// The loop's current state, as shown in `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Waiting for a trigger (or for leadership / bootstrap).
    #[default]
    Idle,
    /// Fetching and verifying the ref.
    Fetching,
    /// Rendering charts + overlays of the fetched revision.
    Rendering,
    /// Applying the RenderedSet (plan, SSA, prune).
    Applying,
    /// Waiting for charts to become healthy.
    WaitingHealthy,
    /// Waiting before retrying a transient failure.
    Backoff,
}

/// Result of the last reconcile, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastResult {
    /// `success`, `failure`, or `stopped` (shutdown during the apply; the revision was not applied).
    pub result: String,
    /// What started this reconcile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    pub revision: Option<String>,
    /// Unix time it finished.
    pub at: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StageError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
}

/// What `/status` shows about the reconciler.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStatus {
    pub phase: Phase,
    /// Revision currently applied.
    pub revision: Option<String>,
    /// Revision last fetched.
    pub fetched_revision: Option<String>,
    pub last: Option<LastResult>,
    pub summary: Option<ApplySummary>,
    /// Readiness per chart after the last apply.
    pub charts: BTreeMap<String, bool>,
    /// Objects rendered per chart in the applied revision.
    pub chart_objects: BTreeMap<String, u64>,
    /// Fields found drifted in the last check.
    pub drift: Vec<DriftRecord>,
    /// Unix time of the last drift check.
    pub drift_checked_at: Option<u64>,
    /// Seconds until the next scheduled wake-up (backoff or drift sweep).
    pub next_wakeup_in_s: Option<u64>,
    /// Consecutive transient failures.
    pub backoff_attempt: u32,
    /// False while waiting for leadership or a bootstrap record.
    pub active: bool,
    /// True after the first successful reconcile (drives `/readyz` and READY=1).
    pub ready: bool,
    /// Triggers received, by kind (`watch`, `poll`, `webhook`, `drift`, `reload`), coalesced ones included.
    pub triggers: BTreeMap<Trigger, u64>,
}

/// Shared, lock-protected status (the HTTP server reads it).
pub type SharedStatus = Arc<Mutex<ReconcileStatus>>;

/// First retry delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s, … capped at 5 min.
pub fn backoff_delay(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// The states of the loop, with the data each one carries.
enum State {
    /// Waiting for a trigger; `pending` remembers one that arrived while inactive.
    Idle,
    /// `force`: apply even if the revision is already applied (startup, reload, backoff retry).
    Fetching {
        force: bool,
        trigger: Trigger,
    },
    Rendering {
        revision: Revision,
    },
    Applying {
        revision: String,
        set: Arc<Desired>,
        started: Instant,
        drift_fix: bool,
    },
    WaitingHealthy {
        revision: String,
        set: Arc<Desired>,
        summary: ApplySummary,
        started: Instant,
    },
    Backoff {
        until: Instant,
    },
    Stopped,
}

/// What the reconciler needs, apart from its inputs: state directory, status, telemetry, events.
pub struct Reconciler<S, R, A> {
    pub source: S,
    pub renderer: R,
    pub applier: A,
    pub telemetry: Arc<dyn Telemetry>,
    pub status: SharedStatus,
    /// Reconcile settings; replaced on SIGHUP.
    pub settings: watch::Receiver<ReconcileConfig>,
    /// `true` while this daemon may apply (leader and bootstrapped).
    pub active: watch::Receiver<bool>,
    /// Where `state.json` lives; `None` in tests that do not persist.
    pub state_dir: Option<std::path::PathBuf>,
    /// Called after the first successful reconcile (systemd READY=1).
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
}

/// Bookkeeping that outlives a single pass through the states.
struct Memory {
    persisted: PersistedState,
    last_set: Option<(String, Arc<FrozenDesired>)>,
    attempt: u32,
    pending: bool,
    /// `active` as last seen (a change to true forces a reconcile; a repeated true does not).
    was_active: bool,
    /// The gate's sender was dropped (stop polling it).
    gate_gone: bool,
    next_drift: Instant,
    cycle_start: Instant,
    /// What started the current reconcile.
    cycle_trigger: Trigger,
}

impl<S: Source, R: Renderer, A: Applier> Reconciler<S, R, A> {
    /// Run until `stop` becomes true; returns the persisted state as last written.
    ///
    /// Flow: start in `Fetching { force: true }` (finish whatever a previous run left), then follow
    /// the state machine above. Caveat: a stop request lets the current stage finish (the applier
    /// stops after the object in flight), writes `state.json`, and returns.
    pub async fn run(
        mut self,
        mut triggers: mpsc::Receiver<Trigger>,
        mut stop: watch::Receiver<bool>,
    ) -> PersistedState {
        let persisted = match &self.state_dir {
            Some(dir) => PersistedState::load(dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring unreadable state file");
                PersistedState::default()
            }),
            None => PersistedState::default(),
        };
        {
            let mut st = self.status.lock().unwrap();
            st.revision = persisted.last_applied_revision.clone();
        }
        let drift_interval = self.settings.borrow().drift_interval;
        let mut mem = Memory {
            persisted,
            last_set: None,
            attempt: 0,
            pending: false,
            was_active: *self.active.borrow_and_update(),
            gate_gone: false,
            next_drift: Instant::now() + drift_interval,
            cycle_start: Instant::now(),
            cycle_trigger: Trigger::Startup,
        };
        let mut state = State::Fetching {
            force: true,
            trigger: Trigger::Startup,
        };
        loop {
            if *stop.borrow() && !matches!(state, State::Stopped) {
                state = State::Stopped;
            }
            self.set_phase(&state, &mem);
            state = match state {
                State::Stopped => break,
                State::Idle => self.idle(&mut mem, &mut triggers, &mut stop).await,
                State::Fetching { force, trigger } => self.fetching(&mut mem, force, trigger).await,
                State::Rendering { revision } => self.rendering(&mut mem, revision).await,
                State::Applying {
                    revision,
                    set,
                    started,
                    drift_fix,
                } => {
                    self.applying(&mut mem, revision, set, started, drift_fix, stop.clone())
                        .await
                }
                State::WaitingHealthy {
                    revision,
                    set,
                    summary,
                    started,
                } => {
                    self.waiting_healthy(&mut mem, revision, set, summary, started)
                        .await
                }
                State::Backoff { until } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => State::Fetching { force: true, trigger: Trigger::Retry },
                        _ = stop.changed() => State::Stopped,
                    }
                }
            };
        }
        self.persist(&mut mem);
        mem.persisted
    }

    fn set_phase(&self, state: &State, mem: &Memory) {
        let phase = match state {
            State::Idle | State::Stopped => Phase::Idle,
            State::Fetching { .. } => Phase::Fetching,
            State::Rendering { .. } => Phase::Rendering,
            State::Applying { .. } => Phase::Applying,
            State::WaitingHealthy { .. } => Phase::WaitingHealthy,
            State::Backoff { .. } => Phase::Backoff,
        };
        let now = Instant::now();
        let wake = match state {
            State::Backoff { until } => Some(*until),
            State::Idle => Some(mem.next_drift),
            _ => None,
        };
        let mut st = self.status.lock().unwrap();
        st.phase = phase;
        st.backoff_attempt = mem.attempt;
        st.next_wakeup_in_s = wake.map(|w| w.saturating_duration_since(now).as_secs());
        st.active = *self.active.borrow();
    }

    /// Idle: wait for a trigger, the drift sweep timer, a change of `active`, or stop.
    async fn idle(
        &mut self,
        mem: &mut Memory,
        triggers: &mut mpsc::Receiver<Trigger>,
        stop: &mut watch::Receiver<bool>,
    ) -> State {
        if mem.pending && *self.active.borrow() {
            mem.pending = false;
            return State::Fetching {
                force: true,
                trigger: Trigger::Activated,
            };
        }
        tokio::select! {
            biased;
            _ = stop.changed() => State::Stopped,
            changed = self.active.changed(), if !mem.gate_gone => {
                if changed.is_err() {
                    // The gate's owner is gone: the last value stays; keep serving triggers.
                    mem.gate_gone = true;
                    return State::Idle;
                }
                let now = *self.active.borrow_and_update();
                let became_active = now && !mem.was_active;
                mem.was_active = now;
                if became_active {
                    mem.pending = false;
                    State::Fetching { force: true, trigger: Trigger::Activated }
                } else {
                    State::Idle
                }
            }
            first = triggers.recv() => {
                let Some(first) = first else { return State::Stopped };
                // Coalesce everything already queued into one reconcile; it is named after the first
                // trigger that is not a drift check.
                let mut force = first == Trigger::Reload || first == Trigger::Startup;
                let mut only_drift = first == Trigger::Drift;
                let mut cause = first;
                self.count_trigger(first);
                while let Ok(t) = triggers.try_recv() {
                    self.count_trigger(t);
                    force |= t == Trigger::Reload || t == Trigger::Startup;
                    only_drift &= t == Trigger::Drift;
                    if cause == Trigger::Drift {
                        cause = t;
                    }
                }
                if !*self.active.borrow() {
                    mem.pending = true;
                    return State::Idle;
                }
                if only_drift { self.check_drift(mem).await } else { State::Fetching { force, trigger: cause } }
            }
            _ = tokio::time::sleep_until(mem.next_drift) => {
                if *self.active.borrow() { self.check_drift(mem).await } else {
                    mem.next_drift = Instant::now() + self.settings.borrow().drift_interval;
                    State::Idle
                }
            }
        }
    }

    fn count_trigger(&self, t: Trigger) {
        *self.status.lock().unwrap().triggers.entry(t).or_default() += 1;
    }

    /// Compare the live objects with the last applied set; correct or report.
    async fn check_drift(&mut self, mem: &mut Memory) -> State {
        let (interval, mode) = {
            let s = self.settings.borrow();
            (s.drift_interval, s.drift_mode)
        };
        mem.next_drift = Instant::now() + interval;
        let Some((revision, frozen)) = mem.last_set.clone() else {
            return State::Idle;
        };
        let set = Arc::new(frozen.thaw());
        let records = match self.applier.drift(&set).await {
            Ok(r) => r,
            Err(e) => {
                self.telemetry.record_failure(e.stage, e.reason);
                tracing::warn!(
                    stage = e.stage.as_str(),
                    reason = e.reason.as_str(),
                    "drift check failed: {}",
                    e.message
                );
                return State::Idle;
            }
        };
        let mut per_chart: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for c in &set.set.charts {
            per_chart.entry(c.name.as_str()).or_default();
        }
        for r in &records {
            per_chart
                .entry(r.chart.as_str())
                .or_default()
                .insert(r.object.as_str());
            tracing::warn!(
                object = %r.object, chart = %r.chart, pointer = %r.pointer,
                desired = %r.desired, live = %r.live,
                manager = r.manager.as_deref().unwrap_or("-"),
                provenance = r.provenance.as_deref().unwrap_or("-"),
                mode = if mode == DriftMode::Correct { "correct" } else { "warn" },
                "drift"
            );
        }
        for (chart, objects) in &per_chart {
            self.telemetry.set_drifted(chart, objects.len());
            for _ in objects {
                self.telemetry.inc_drift(chart);
            }
        }
        let drifted = !records.is_empty();
        {
            let mut st = self.status.lock().unwrap();
            st.drift = records;
            st.drift_checked_at = Some(unix_now());
        }
        if drifted && mode == DriftMode::Correct {
            mem.cycle_start = Instant::now();
            mem.cycle_trigger = Trigger::Drift;
            State::Applying {
                revision,
                set,
                started: Instant::now(),
                drift_fix: true,
            }
        } else {
            State::Idle
        }
    }

    async fn fetching(&mut self, mem: &mut Memory, force: bool, trigger: Trigger) -> State {
        if !*self.active.borrow() {
            mem.pending = true;
            return State::Idle;
        }
        mem.cycle_start = Instant::now();
        mem.cycle_trigger = trigger;
        let started = Instant::now();
        let result = self.source.fetch().await;
        self.telemetry.record_fetch(
            if result.is_ok() { "success" } else { "failure" },
            started.elapsed(),
        );
        let revision = match result {
            Ok(r) => r,
            Err(e) => return self.fail(mem, None, e),
        };
        self.status.lock().unwrap().fetched_revision = Some(revision.commit.clone());
        let commit = Some(&revision.commit);
        if !force && mem.persisted.last_applied_revision.as_ref() == commit {
            mem.attempt = 0;
            return State::Idle;
        }
        if !force && mem.persisted.last_failed_revision.as_ref() == commit {
            // Refused for a terminal reason already: wait for the ref to move.
            return State::Idle;
        }
        State::Rendering { revision }
    }

    async fn rendering(&mut self, mem: &mut Memory, revision: Revision) -> State {
        match self.renderer.render(&revision).await {
            Ok(set) => {
                mem.persisted.last_good_revision = Some(revision.commit.clone());
                State::Applying {
                    revision: revision.commit,
                    set: Arc::new(set),
                    started: mem.cycle_start,
                    drift_fix: false,
                }
            }
            Err(e) => self.fail(mem, Some(revision.commit), e),
        }
    }

    async fn applying(
        &mut self,
        mem: &mut Memory,
        revision: String,
        set: Arc<Desired>,
        started: Instant,
        drift_fix: bool,
        stop: watch::Receiver<bool>,
    ) -> State {
        match self.applier.apply(&set, &revision, stop).await {
            Ok(ApplyOutcome::Stopped { inventory }) => {
                // Not applied in full: the applied revision stays where it was (the next start re-applies
                // this one), but the inventory copy lists everything that may now exist, so nothing is orphaned.
                let inventory = inventory.unwrap_or_else(|| {
                    let mut all: std::collections::BTreeSet<ObjectId> =
                        mem.persisted.inventory.iter().cloned().collect();
                    all.extend(set.set.objects.keys().cloned());
                    all.into_iter().collect()
                });
                tracing::info!(
                    revision = %revision,
                    kept = mem.persisted.last_applied_revision.as_deref().unwrap_or("-"),
                    inventory = inventory.len(),
                    "apply stopped between objects; the revision is not marked applied"
                );
                mem.persisted.inventory = inventory;
                self.persist(mem);
                self.status.lock().unwrap().last = Some(LastResult {
                    result: "stopped".into(),
                    trigger: Some(mem.cycle_trigger),
                    revision: Some(revision),
                    at: unix_now(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    error: None,
                    next: None,
                });
                State::Stopped
            }
            Err(ApplyFailure { error, inventory }) => {
                if let Some(inventory) = inventory
                    && inventory != mem.persisted.inventory
                {
                    // What the failed apply wrote before failing is in the ApplySet: keep the copy in step.
                    mem.persisted.inventory = inventory;
                    self.persist(mem);
                }
                self.fail(mem, Some(revision), error)
            }
            Ok(ApplyOutcome::Applied(summary)) => {
                for (action, n) in [
                    ("created", summary.created),
                    ("configured", summary.configured),
                    ("unchanged", summary.unchanged),
                    ("deleted", summary.deleted),
                    ("skipped", summary.skipped),
                ] {
                    self.telemetry.record_apply(action, n);
                }
                self.telemetry.set_inventory(summary.inventory.len());
                mem.persisted.last_applied_revision = Some(revision.clone());
                mem.persisted.last_failed_revision = None;
                mem.persisted.inventory = summary.inventory.clone();
                mem.last_set = Some((revision.clone(), Arc::new(FrozenDesired::freeze(&set))));
                self.persist(mem);
                {
                    let mut st = self.status.lock().unwrap();
                    st.revision = Some(revision.clone());
                    st.summary = Some(summary.clone());
                    if drift_fix {
                        st.drift.clear();
                    }
                }
                self.telemetry.set_revision(&revision);
                State::WaitingHealthy {
                    revision,
                    set,
                    summary,
                    started,
                }
            }
        }
    }

    async fn waiting_healthy(
        &mut self,
        mem: &mut Memory,
        revision: String,
        set: Arc<Desired>,
        summary: ApplySummary,
        started: Instant,
    ) -> State {
        let (wait, timeout) = {
            let s = self.settings.borrow();
            (s.wait, s.timeout)
        };
        let charts = if wait {
            match self.applier.wait_healthy(&set, timeout).await {
                Ok(c) => c,
                Err(e) => return self.fail(mem, Some(revision), e),
            }
        } else {
            BTreeMap::new()
        };
        for (chart, ready) in &charts {
            self.telemetry.set_chart_ready(chart, *ready);
        }
        let duration = started.elapsed();
        self.telemetry.record_reconcile("success", duration);
        self.telemetry.last_success_now();
        mem.attempt = 0;
        tracing::info!(
            revision = %revision, created = summary.created, configured = summary.configured,
            unchanged = summary.unchanged, deleted = summary.deleted, duration_ms = duration.as_millis() as u64,
            "reconciled"
        );
        let first_ready = {
            let mut chart_objects: BTreeMap<String, u64> = BTreeMap::new();
            for o in set.set.objects.values() {
                *chart_objects.entry(o.chart.clone()).or_default() += 1;
            }
            let mut st = self.status.lock().unwrap();
            st.charts = charts;
            st.chart_objects = chart_objects;
            st.last = Some(LastResult {
                result: "success".into(),
                trigger: Some(mem.cycle_trigger),
                revision: Some(revision),
                at: unix_now(),
                duration_ms: duration.as_millis() as u64,
                error: None,
                next: None,
            });
            let first = !st.ready;
            st.ready = true;
            first
        };
        if first_ready {
            if let Some(f) = self.on_ready.take() {
                f();
            }
        }
        State::Idle
    }

    /// The one place a failure is handled: metrics, one log line, status, and the next wake-up.
    fn fail(&mut self, mem: &mut Memory, revision: Option<String>, err: StageError) -> State {
        let duration = mem.cycle_start.elapsed();
        let next = if err.reason == Reason::Interrupted {
            Next::Requeue
        } else {
            err.reason.next()
        };
        self.telemetry.record_failure(err.stage, err.reason);
        self.telemetry.record_reconcile("failure", duration);
        tracing::error!(
            stage = err.stage.as_str(), reason = err.reason.as_str(),
            revision = revision.as_deref().unwrap_or("-"),
            kept = mem.persisted.last_applied_revision.as_deref().unwrap_or("-"),
            next = ?next, "reconcile failed: {}", err.message
        );
        {
            let mut st = self.status.lock().unwrap();
            st.last = Some(LastResult {
                result: "failure".into(),
                trigger: Some(mem.cycle_trigger),
                revision: revision.clone(),
                at: unix_now(),
                duration_ms: duration.as_millis() as u64,
                error: Some(err),
                next: Some(next),
            });
        }
        match next {
            Next::Requeue => {
                mem.attempt = mem.attempt.saturating_add(1);
                State::Backoff {
                    until: Instant::now() + backoff_delay(mem.attempt),
                }
            }
            Next::AwaitChange => {
                mem.attempt = 0;
                if revision.is_some() {
                    mem.persisted.last_failed_revision = revision;
                    self.persist(mem);
                }
                State::Idle
            }
        }
    }

    fn persist(&self, mem: &mut Memory) {
        if let Some(dir) = &self.state_dir {
            if let Err(e) = mem.persisted.save(dir) {
                tracing::error!(error = %e, "failed to write state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_set_thaws_to_the_same_objects_and_charts() {
        let mut set = RenderedSet::default();
        for (name, v) in [
            ("a", serde_json::json!({"x": [1, 2.5, "s"], "y": null})),
            ("b", serde_json::json!({})),
        ] {
            let obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "ns"}, "data": v});
            set.objects.insert(
                ObjectId::of(&obj).unwrap(),
                RenderedObject {
                    chart: "c".into(),
                    template: "charts/c/templates/t.yaml".into(),
                    object: obj,
                },
            );
        }
        let d = Desired {
            set,
            cluster: "k".into(),
            namespace: "kube-system".into(),
        };
        let back = FrozenDesired::freeze(&d).thaw();
        assert_eq!(back.set.objects, d.set.objects);
        assert_eq!(back.set.charts, d.set.charts);
        assert_eq!((back.cluster, back.namespace), (d.cluster, d.namespace));
    }
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scripted source: each fetch pops the next result (the last one repeats).
    #[derive(Clone, Default)]
    struct FakeSource(
        Arc<Mutex<VecDeque<Result<&'static str, StageError>>>>,
        Arc<AtomicUsize>,
    );
    impl FakeSource {
        fn new(script: Vec<Result<&'static str, StageError>>) -> Self {
            FakeSource(Arc::new(Mutex::new(script.into())), Arc::default())
        }
        fn push(&self, r: Result<&'static str, StageError>) {
            self.0.lock().unwrap().push_back(r);
        }
        fn fetches(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
    }
    impl Source for FakeSource {
        async fn fetch(&self) -> Result<Revision, StageError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let mut q = self.0.lock().unwrap();
            let r = if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().unwrap().clone()
            };
            r.map(|c| Revision {
                commit: c.to_string(),
                checkout: c.into(),
                root: c.into(),
                summary: String::new(),
                signer: None,
            })
        }
    }

    /// Renders commit names starting with "bad" as an input error.
    struct FakeRenderer;
    impl Renderer for FakeRenderer {
        async fn render(&self, revision: &Revision) -> Result<Desired, StageError> {
            if revision.commit.starts_with("bad") {
                return Err(StageError::input(
                    Stage::Render,
                    InputError::new("charts/web/templates/web.yaml", "invalid YAML").at(3, 7),
                ));
            }
            Ok(Desired::default())
        }
    }

    #[derive(Clone, Default)]
    struct FakeApplier {
        applied: Arc<Mutex<Vec<String>>>,
        fail_next: Arc<Mutex<VecDeque<StageError>>>,
        drift: Arc<Mutex<Vec<DriftRecord>>>,
        /// Simulated apply duration.
        delay: Duration,
    }
    /// The object a fake apply of `revision` writes (a stopped one writes `<revision>-partial`).
    fn object_of(revision: &str) -> ObjectId {
        ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: revision.to_string(),
        }
    }
    impl Applier for FakeApplier {
        async fn apply(
            &self,
            _set: &Desired,
            revision: &str,
            mut stop: watch::Receiver<bool>,
        ) -> Result<ApplyOutcome, ApplyFailure> {
            tokio::select! {
                _ = tokio::time::sleep(self.delay) => {}
                Ok(_) = stop.wait_for(|s| *s) => {
                    return Ok(ApplyOutcome::Stopped {
                        inventory: Some(vec![object_of(&format!("{revision}-partial"))]),
                    });
                }
            }
            if let Some(e) = self.fail_next.lock().unwrap().pop_front() {
                return Err(e.into());
            }
            self.applied.lock().unwrap().push(revision.to_string());
            Ok(ApplyOutcome::Applied(ApplySummary {
                created: 1,
                inventory: vec![object_of(revision)],
                ..Default::default()
            }))
        }
        async fn wait_healthy(
            &self,
            _set: &Desired,
            _t: Duration,
        ) -> Result<BTreeMap<String, bool>, StageError> {
            Ok(BTreeMap::from([("web".to_string(), true)]))
        }
        async fn drift(&self, _set: &Desired) -> Result<Vec<DriftRecord>, StageError> {
            Ok(std::mem::take(&mut *self.drift.lock().unwrap()))
        }
    }

    #[derive(Default)]
    struct CountingTelemetry(Mutex<Vec<String>>);
    impl Telemetry for CountingTelemetry {
        fn record_failure(&self, stage: Stage, reason: Reason) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}/{}", stage.as_str(), reason.as_str()));
        }
    }

    struct Harness {
        source: FakeSource,
        applier: FakeApplier,
        telemetry: Arc<CountingTelemetry>,
        status: SharedStatus,
        triggers: mpsc::Sender<Trigger>,
        stop: watch::Sender<bool>,
        active: watch::Sender<bool>,
        settings: watch::Sender<ReconcileConfig>,
        task: tokio::task::JoinHandle<PersistedState>,
    }

    fn start(source: FakeSource, applier: FakeApplier, active: bool) -> Harness {
        let telemetry = Arc::new(CountingTelemetry::default());
        let status = SharedStatus::default();
        let (ttx, trx) = mpsc::channel(16);
        let (stx, srx) = watch::channel(false);
        let (atx, arx) = watch::channel(active);
        let (cfg_tx, cfg_rx) = watch::channel(ReconcileConfig {
            drift_interval: Duration::from_secs(60),
            ..Default::default()
        });
        let r = Reconciler {
            source: source.clone(),
            renderer: FakeRenderer,
            applier: applier.clone(),
            telemetry: telemetry.clone(),
            status: status.clone(),
            settings: cfg_rx,
            active: arx,
            state_dir: None,
            on_ready: None,
        };
        let task = tokio::spawn(r.run(trx, srx));
        Harness {
            source,
            applier,
            telemetry,
            status,
            triggers: ttx,
            stop: stx,
            active: atx,
            settings: cfg_tx,
            task,
        }
    }

    impl Harness {
        fn applied(&self) -> Vec<String> {
            self.applier.applied.lock().unwrap().clone()
        }
        async fn settle(&self) {
            // Let the loop run to its next wait point (paused time auto-advances only when idle).
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
        async fn finish(self) -> PersistedState {
            self.stop.send(true).unwrap();
            self.task.await.unwrap()
        }
    }

    fn api_down() -> StageError {
        StageError::new(Stage::Apply, Reason::ApiUnreachable, "connection refused")
    }

    #[tokio::test(start_paused = true)]
    async fn startup_applies_then_unchanged_commit_is_not_reapplied() {
        let h = start(
            FakeSource::new(vec![Ok("c1")]),
            FakeApplier::default(),
            true,
        );
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1"]);
        h.triggers.send(Trigger::Poll).await.unwrap();
        h.settle().await;
        assert_eq!(
            h.applied(),
            vec!["c1"],
            "same commit must not be re-applied"
        );
        assert_eq!(h.source.fetches(), 2);
        assert!(h.status.lock().unwrap().ready);
        let state = h.finish().await;
        assert_eq!(state.last_applied_revision.as_deref(), Some("c1"));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_reconcile_coalesce_into_one() {
        let applier = FakeApplier {
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let h = start(FakeSource::new(vec![Ok("c1"), Ok("c2")]), applier, true);
        h.settle().await;
        // Applying c1 takes 5 s; three triggers arrive meanwhile.
        for t in [Trigger::Watch, Trigger::Webhook, Trigger::Poll] {
            h.triggers.send(t).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(h.applied(), vec!["c1", "c2"]);
        assert_eq!(h.source.fetches(), 2, "three queued triggers → one fetch");
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failure_backs_off_exponentially_then_recovers() {
        let applier = FakeApplier::default();
        for _ in 0..3 {
            applier.fail_next.lock().unwrap().push_back(api_down());
        }
        let start_at = Instant::now();
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        assert!(h.applied().is_empty());
        assert_eq!(h.status.lock().unwrap().phase, Phase::Backoff);
        // Retries at +1 s, +2 s, +4 s: success at 7 s, not before.
        tokio::time::sleep(Duration::from_millis(6900)).await;
        assert!(h.applied().is_empty(), "retried too early");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.applied(), vec!["c1"]);
        assert!(start_at.elapsed() >= Duration::from_secs(7));
        assert_eq!(h.telemetry.0.lock().unwrap().len(), 3);
        assert_eq!(h.status.lock().unwrap().backoff_attempt, 0);
        h.finish().await;
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(4), Duration::from_secs(8));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn render_error_keeps_last_revision_and_waits_for_next_commit() {
        let source = FakeSource::new(vec![Ok("c1"), Ok("bad2")]);
        let h = start(source, FakeApplier::default(), true);
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        {
            let st = h.status.lock().unwrap();
            assert_eq!(
                st.revision.as_deref(),
                Some("c1"),
                "previous revision stays applied"
            );
            let last = st.last.as_ref().unwrap();
            let err = last.error.as_ref().unwrap();
            assert_eq!(
                (err.stage, err.reason),
                (Stage::Render, Reason::InvalidInput)
            );
            assert_eq!(err.input.as_ref().unwrap().line, Some(3));
            assert_eq!(last.next, Some(Next::AwaitChange));
            assert_eq!(st.phase, Phase::Idle, "no backoff for terminal errors");
        }
        // Polls of the same bad commit do not retry (no storm) — one failure recorded.
        for _ in 0..5 {
            h.triggers.send(Trigger::Poll).await.unwrap();
            h.settle().await;
        }
        assert_eq!(
            h.telemetry.0.lock().unwrap().as_slice(),
            ["render/invalid_input"]
        );
        // The next good commit recovers.
        h.source.push(Ok("c3"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c3"]);
        let state = h.finish().await;
        assert_eq!(state.last_failed_revision, None);
    }

    #[tokio::test(start_paused = true)]
    async fn drift_correct_reapplies_and_warn_only_reports() {
        let applier = FakeApplier::default();
        let record = DriftRecord {
            object: "Deployment/default/web".into(),
            chart: "web".into(),
            pointer: "/spec/replicas".into(),
            desired: 1.into(),
            live: 3.into(),
            manager: Some("kubectl".into()),
            provenance: None,
        };
        let h = start(FakeSource::new(vec![Ok("c1")]), applier.clone(), true);
        h.settle().await;
        applier.drift.lock().unwrap().push(record.clone());
        h.triggers.send(Trigger::Drift).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"], "correct mode re-applies");
        assert_eq!(h.source.fetches(), 1, "a drift check does not fetch");

        h.settings.send_modify(|s| s.drift_mode = DriftMode::Warn);
        applier.drift.lock().unwrap().push(record.clone());
        // The periodic sweep (60 s) finds it without a trigger.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(h.applied().len(), 2, "warn mode does not apply");
        assert_eq!(h.status.lock().unwrap().drift, vec![record]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn inactive_daemon_does_not_apply_until_activated() {
        let h = start(
            FakeSource::new(vec![Ok("c1")]),
            FakeApplier::default(),
            false,
        );
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert!(h.applied().is_empty());
        assert_eq!(h.source.fetches(), 0);
        h.active.send(true).unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1"]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_active_gate_does_not_force_a_second_apply() {
        // Regression: the gate's sender set `true` before the loop first looked at it; `changed()`
        // then fired once and forced a re-render of an already refused commit.
        let (atx, _) = watch::channel(false);
        let h = start(
            FakeSource::new(vec![Ok("bad1")]),
            FakeApplier::default(),
            false,
        );
        drop(atx);
        h.active.send(true).unwrap();
        h.settle().await;
        h.active.send(true).unwrap();
        h.settle().await;
        assert_eq!(
            h.telemetry.0.lock().unwrap().as_slice(),
            ["render/invalid_input"]
        );
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reload_forces_reapply_of_the_same_commit() {
        let h = start(
            FakeSource::new(vec![Ok("c1")]),
            FakeApplier::default(),
            true,
        );
        h.settle().await;
        h.triggers.send(Trigger::Reload).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_an_apply_keeps_the_revision_and_records_what_was_written() {
        let applier = FakeApplier {
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let h = start(FakeSource::new(vec![Ok("c1"), Ok("c2")]), applier, true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(h.applied(), vec!["c1"]);
        h.triggers.send(Trigger::Watch).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.status.lock().unwrap().phase, Phase::Applying);
        let stop_at = Instant::now();
        let (status, telemetry) = (h.status.clone(), h.telemetry.clone());
        let state = h.finish().await;
        assert!(
            stop_at.elapsed() < Duration::from_secs(1),
            "did not wait for the apply"
        );
        assert_eq!(
            state.last_applied_revision.as_deref(),
            Some("c1"),
            "a partly applied revision is not marked applied"
        );
        assert_eq!(state.inventory, vec![object_of("c2-partial")]);
        assert_eq!(state.last_failed_revision, None);
        let last = status.lock().unwrap().last.clone().unwrap();
        assert_eq!(
            (last.result.as_str(), last.revision.as_deref()),
            ("stopped", Some("c2"))
        );
        assert_eq!(last.trigger, Some(Trigger::Watch));
        assert!(
            telemetry.0.lock().unwrap().is_empty(),
            "a stop is not a failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_reconcile_names_its_trigger_and_triggers_are_counted() {
        let h = start(
            FakeSource::new(vec![Ok("c1"), Ok("c2")]),
            FakeApplier::default(),
            true,
        );
        h.settle().await;
        assert_eq!(
            h.status.lock().unwrap().last.as_ref().unwrap().trigger,
            Some(Trigger::Startup)
        );
        // A drift check queued with a poll: the reconcile is the poll's.
        h.triggers.send(Trigger::Drift).await.unwrap();
        h.triggers.send(Trigger::Poll).await.unwrap();
        h.settle().await;
        let st = h.status.lock().unwrap().clone();
        assert_eq!(st.last.as_ref().unwrap().revision.as_deref(), Some("c2"));
        assert_eq!(st.last.as_ref().unwrap().trigger, Some(Trigger::Poll));
        assert_eq!(
            st.triggers,
            BTreeMap::from([(Trigger::Poll, 1), (Trigger::Drift, 1)])
        );
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_backoff_returns_promptly() {
        let applier = FakeApplier::default();
        applier.fail_next.lock().unwrap().push_back(api_down());
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        assert_eq!(h.status.lock().unwrap().phase, Phase::Backoff);
        let state = h.finish().await;
        assert_eq!(state.last_applied_revision, None);
    }
}
