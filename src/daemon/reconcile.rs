//! The reconcile loop: the only place that chains fetch → render → plan → apply (with health), as an explicit state machine.
//!
//! ```text
//!            trigger (coalesced)                ok                 ok (not empty, fits)       ok
//!   Idle ───────────────────────▶ Fetching ─────────▶ Rendering ───────────────────▶ Applying ─────▶ Idle
//!    ▲  ▲ drift (correct): re-apply the applied plan ──────────────────────────────────▶ │
//!    │  └── same commit as applied / as refused ◀── Fetching                            │ newer commit
//!    │                                                                                   ▼ (supersedes)
//!    │                                                 Rendering(newer) ◀────── stop the apply, health wait
//!    └──── terminal failure (await a new commit) ◀── any stage ── transient failure ──▶ Backoff ──(timer)──▶ Fetching
//!                                                                         newer commit ──▶ Rendering
//! ```
//!
//! Every stage result is typed: `Revision`, `Rendered`, a `Plan` the loop builds itself, the engine's
//! `ApplyReport`, and on failure a [`Failure`] (stage, reason word, message) made where it happened.
//! Failure bookkeeping happens once, in `Reconciler::fail`: metrics, one log line, `/status`, and the
//! next step, which `Reason::next` decides (retry with backoff, or wait for a new commit). Status goes
//! out through [`StatusTx`] as it changes; nothing polls it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{DriftMode, ReconcileConfig, Rollback};
use super::source::git::Revision;
use super::state::PersistedState;
use super::status::{self, LastReconcile, Outcome, Phase, StatusError, StatusTx};
use crate::apply::plan::Plan;
use crate::apply::progress::{ChartState, Progress};
use crate::apply::{ApplyReport, Stop};
use crate::clock::unix_now_f64;
use crate::cluster::Cluster;
use crate::control::ManualReconcile;
use crate::failure::{Failure, Next, Reason, Stage};
use crate::history;
use crate::inventory::Inventory;
use crate::manifest::ObjectId;
use crate::metrics::{FetchResult, Metrics, PruneBlockedReason, ReconcileResult};
use crate::notification::{Event, EventKind, Notifier};
use crate::render::Rendered;
use crate::suspension::Suspension;

/// Why a reconcile was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
    /// `pailot reconcile` through the control socket.
    Manual,
    /// `pailot resume`, or a `--for` suspension ran out.
    Resume,
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
            Trigger::Manual => "manual",
            Trigger::Resume => "resume",
        }
    }

    /// Triggers that may carry a new revision (worth a fetch while an apply or a backoff is under way).
    pub fn may_carry_a_revision(self) -> bool {
        matches!(
            self,
            Trigger::Watch | Trigger::Poll | Trigger::Webhook | Trigger::Manual
        )
    }
}

/// One field that differs from the applied revision (values masked for Secrets; logged, not shown in `/status`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftRecord {
    /// `Kind/namespace/name`.
    pub object: String,
    pub chart: String,
    /// JSON pointer of the field (empty when the object is missing).
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

/// Produces revisions (the git source in production).
pub trait Source: Send + Sync + 'static {
    /// Fetch and check out the ref; the checkouts of `pinned` commits are kept.
    fn fetch(&self, pinned: &[String]) -> impl Future<Output = Result<Revision, Failure>> + Send;
}

/// Turns a checked-out revision into a rendered set (in a bounded helper process in production).
pub trait Renderer: Send + Sync + 'static {
    fn render(&self, revision: &Revision)
    -> impl Future<Output = Result<Rendered, Failure>> + Send;
    /// Where each `(object, pointer)` of `revision`'s render got its value (a render with provenance).
    fn provenance(
        &self,
        revision: &Revision,
        fields: Vec<(ObjectId, String)>,
    ) -> impl Future<Output = Result<Vec<Option<String>>, Failure>> + Send;
}

/// Applies plans to the cluster and compares it with them.
pub trait Applier: Send + Sync + 'static {
    /// The inventory of `cluster` (found where the rule puts it, or adopted where an earlier version left it).
    fn inventory(
        &self,
        cluster: &Cluster,
    ) -> impl Future<Output = Result<Inventory, Failure>> + Send;
    /// Apply `plan` (SSA, prune, health per chart). Once `stop` is requested, the objects in flight
    /// finish, nothing new starts, and the report says `stopped`. `Err`: nothing could be done at all.
    fn apply(
        &self,
        plan: &Plan,
        inventory: &Inventory,
        stop: Stop,
        progress: &Progress,
    ) -> impl Future<Output = Result<ApplyReport, Failure>> + Send;
    /// Dry-run `plan` against the live objects (the drift check).
    fn drift(
        &self,
        plan: &Plan,
        inventory: &Inventory,
    ) -> impl Future<Output = Result<ApplyReport, Failure>> + Send;
}

/// First retry delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s, … capped at 5 min.
pub fn backoff_delay(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// The time of the loop's latest progress (a state change, a chart's state change, a trigger handled),
/// for the systemd watchdog: a loop that stops making progress stops feeding it.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Milliseconds since `epoch`.
    at_ms: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl Heartbeat {
    fn epoch(&self) -> std::time::Instant {
        *self.epoch.get_or_init(std::time::Instant::now)
    }

    /// Progress now.
    pub fn beat(&self) {
        let ms = self.epoch().elapsed().as_millis() as u64;
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the latest progress.
    pub fn age(&self) -> Duration {
        let now = self.epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.at_ms.load(Ordering::Relaxed)))
    }
}

/// A plan kept between reconciles: each object as compact JSON (about a third of the memory of its
/// `Value` tree), thawed for a drift check or a rollback.
#[derive(Debug)]
struct FrozenPlan {
    /// Identity, chart, template, JSON.
    objects: Vec<(ObjectId, String, String, Box<[u8]>)>,
    /// The render's charts, in dependency order.
    charts: Vec<crate::manifest::ChartInfo>,
}

impl FrozenPlan {
    fn freeze(plan: &Plan, charts: &[crate::manifest::ChartInfo]) -> Self {
        FrozenPlan {
            objects: plan
                .all_objects()
                .map(|o| {
                    let json = serde_json::to_vec(&o.object).unwrap_or_default();
                    (
                        o.id.clone(),
                        o.chart.clone(),
                        o.template.clone(),
                        json.into(),
                    )
                })
                .collect(),
            charts: charts.to_vec(),
        }
    }

    fn thaw(&self) -> Plan {
        Plan::from_objects(
            self.objects.iter().map(|(id, chart, template, json)| {
                crate::apply::plan::PlannedObject {
                    id: id.clone(),
                    chart: chart.clone(),
                    template: template.clone(),
                    object: serde_json::from_slice(json).unwrap_or(serde_json::Value::Null),
                }
            }),
            &self.charts,
        )
    }
}

/// A revision as applied: what a drift check compares against, and what a rollback re-applies.
#[derive(Debug)]
struct Applied {
    revision: Revision,
    plan: FrozenPlan,
    inventory: Inventory,
    /// Fields whose value was decrypted from a sops file (masked in drift records and logs).
    secrets: Arc<crate::mask::SecretFields>,
}

/// What one apply is for.
#[derive(Debug)]
enum ApplyKind {
    /// A fetched commit.
    Commit,
    /// The applied revision again, after drift was found (correct mode).
    DriftFix,
    /// The last healthy revision again, after `failed` (a health failure) with `rollback: onHealthFailure`.
    Rollback { failed: Failure, from: String },
}

/// One apply to do.
struct ApplyJob {
    revision: Revision,
    plan: Arc<Plan>,
    charts: Vec<crate::manifest::ChartInfo>,
    inventory: Inventory,
    kind: ApplyKind,
    secrets: Arc<crate::mask::SecretFields>,
}

/// What ends a render before it finishes.
enum Interruption {
    Newer(Revision),
    Reload,
}

/// The states of the loop, with the data each one carries.
enum State {
    /// Waiting for a trigger.
    Idle,
    /// `force`: apply even if the revision is already applied (startup, reload, backoff retry).
    Fetching {
        force: bool,
        trigger: Trigger,
    },
    Rendering {
        revision: Revision,
    },
    Applying(ApplyJob),
    Backoff {
        until: Instant,
    },
    Stopped,
}

/// Told how the first reconcile ended (systemd READY=1).
pub type FirstReconcileHook = Box<dyn FnOnce(Outcome) + Send>;

/// What the reconciler needs, apart from its inputs: state directory, status, metrics.
pub struct Reconciler<S, R, A> {
    pub source: S,
    pub renderer: R,
    pub applier: A,
    pub metrics: Arc<Metrics>,
    pub status: StatusTx,
    /// Reconcile settings; replaced on SIGHUP.
    pub settings: watch::Receiver<ReconcileConfig>,
    /// `true` while this daemon may apply (leader and bootstrapped).
    pub active: watch::Receiver<bool>,
    /// Where `state.json` lives; `None` in tests that do not persist.
    pub state_dir: Option<PathBuf>,
    /// Fed at every step of progress (the watchdog reads it).
    pub heartbeat: Arc<Heartbeat>,
    /// Called once, after the first reconcile ends (success or not): systemd READY=1.
    pub on_first_reconcile: std::sync::Mutex<Option<FirstReconcileHook>>,
    /// Operator controls: manual reconciles waiting for an answer, and the suspension in force.
    pub controls: Controls,
    /// Where reconcile results go out (webhooks, Slack, commit statuses).
    pub notifier: Notifier,
    /// Where each finished reconcile is recorded (`pailot history`); `None` in tests that do not keep one.
    pub history: Option<mpsc::Sender<history::Entry>>,
}

/// What operators control while the loop runs (`pailot reconcile|suspend|resume`).
#[derive(Clone)]
pub struct Controls {
    /// `pailot reconcile` calls not answered yet; each is answered with the entry of the next
    /// reconcile that ends.
    pub manual: Arc<std::sync::Mutex<Vec<ManualReconcile>>>,
    /// The suspension in force (`None`: applying and correcting).
    pub suspension: watch::Receiver<Option<Suspension>>,
}

/// For the loop's unit tests: controls nobody uses.
#[cfg(test)]
impl Default for Controls {
    fn default() -> Self {
        let (tx, suspension) = watch::channel(None);
        // Nobody suspends: keep the sender so the receiver never reports a closed channel.
        std::mem::forget(tx);
        Controls {
            manual: Arc::default(),
            suspension,
        }
    }
}

/// The reconcile in progress: what started it, and when.
#[derive(Clone, Debug)]
struct Cycle {
    start: Instant,
    started_at: f64,
    trigger: Trigger,
    /// The revision it is about, once known.
    revision: Option<Revision>,
    /// Objects per chart and action, once an apply reported.
    charts: BTreeMap<String, history::ActionCounts>,
    /// Drifted objects a drift fix puts back.
    drift_corrections: u32,
}

impl Cycle {
    fn new(trigger: Trigger) -> Self {
        Cycle {
            start: Instant::now(),
            started_at: unix_now_f64(),
            trigger,
            revision: None,
            charts: BTreeMap::new(),
            drift_corrections: 0,
        }
    }
}

/// Bookkeeping that outlives a single pass through the states.
struct Memory {
    persisted: PersistedState,
    /// The revision applied last (drift checks compare against it).
    applied: Option<Arc<Applied>>,
    /// The last revision whose charts all became healthy (a rollback re-applies it).
    healthy: Option<Arc<Applied>>,
    attempt: u32,
    pending: bool,
    /// `active` as last seen (a change to true forces a reconcile; a repeated true does not).
    was_active: bool,
    /// The loop's own receiver of `active` (its seen-version tracks what the loop has handled).
    gate: watch::Receiver<bool>,
    /// The gate's sender was dropped (stop polling it).
    gate_gone: bool,
    next_drift: Instant,
    cycle: Cycle,
    /// A reload arrived during an apply: fetch with force once it is done.
    reload_pending: bool,
    /// A trigger that may carry a newer commit arrived while a render was ending, and its fetch was cut
    /// short by the render's end: fetch for it once the loop is idle (it would be lost otherwise).
    recheck_pending: Option<Trigger>,
    /// The first reconcile has ended.
    reported_first: bool,
    /// The loop's own receiver of the suspension (its seen-version tracks what the loop handled).
    suspension: watch::Receiver<Option<Suspension>>,
    /// Correct drift once, even in warn mode (`pailot reconcile --correct-drift`).
    correct_drift_once: bool,
}

impl<S: Source, R: Renderer, A: Applier> Reconciler<S, R, A> {
    /// Run until `stop` becomes true; returns the persisted state as last written.
    ///
    /// Flow: start in `Fetching { force: true }` (finish whatever a previous run left), then follow
    /// the state machine above. Caveat: a stop request ends a fetch or render at once (the helper is
    /// killed), lets an apply finish the objects in flight, writes `state.json`, and returns.
    pub async fn run(
        self,
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
        self.status.update(|st| {
            st.revision = persisted.last_applied_revision.clone();
            st.failed_revision = persisted.last_failed_revision.clone();
        });
        let drift_interval = self.settings.borrow().drift_interval;
        let mut gate = self.active.clone();
        let was_active = *gate.borrow_and_update();
        let mut mem = Memory {
            persisted,
            applied: None,
            healthy: None,
            attempt: 0,
            pending: false,
            was_active,
            gate,
            gate_gone: false,
            next_drift: Instant::now() + drift_interval,
            cycle: Cycle::new(Trigger::Startup),
            reload_pending: false,
            recheck_pending: None,
            reported_first: false,
            suspension: self.controls.suspension.clone(),
            correct_drift_once: false,
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
                State::Fetching { force, trigger } => {
                    tokio::select! {
                        s = self.fetching(&mut mem, force, trigger) => s,
                        _ = stopped(&mut stop) => State::Stopped,
                    }
                }
                State::Rendering { revision } => {
                    // A render is bounded by the helper's limits; a newer commit or a reload ends it
                    // sooner (dropping the render kills its helper).
                    let pinned = Self::pinned(&mem);
                    let refused = mem.persisted.last_failed_revision.clone();
                    let current = revision.commit.clone();
                    let mut checking = None;
                    let interrupt =
                        self.interruption(&mut triggers, &current, refused, pinned, &mut checking);
                    let rendered = self.rendering(&mut mem, revision);
                    let next = tokio::select! {
                        s = rendered => Ok(s),
                        i = interrupt => Err(i),
                        _ = stopped(&mut stop) => Ok(State::Stopped),
                    };
                    if next.is_ok()
                        && let Some(t) = checking
                    {
                        // The render ended while a trigger's fetch was in flight: that fetch is gone
                        // with the interruption future, so the trigger is served once idle.
                        mem.recheck_pending = Some(t);
                    }
                    match next {
                        Ok(s) => s,
                        Err(Interruption::Newer(rev)) => {
                            tracing::info!(rendering = %current, newer = %rev.commit, "a newer commit arrived: the render stops for it");
                            self.finish(&mut mem, Outcome::Superseded, None);
                            mem.cycle = Cycle::new(mem.cycle.trigger);
                            State::Rendering { revision: rev }
                        }
                        Err(Interruption::Reload) => State::Fetching {
                            force: true,
                            trigger: Trigger::Reload,
                        },
                    }
                }
                State::Applying(job) => {
                    self.applying(&mut mem, job, &mut triggers, &mut stop).await
                }
                State::Backoff { until } => {
                    self.backoff(&mut mem, until, &mut triggers, &mut stop)
                        .await
                }
            };
        }
        self.persist(&mut mem);
        mem.persisted
    }

    fn set_phase(&self, state: &State, mem: &Memory) {
        self.heartbeat.beat();
        let suspended = self.suspended();
        let phase = match state {
            State::Idle if suspended => Phase::Suspended,
            State::Idle | State::Stopped => Phase::Idle,
            State::Fetching { .. } => Phase::Fetching,
            State::Rendering { .. } => Phase::Rendering,
            State::Applying(_) => Phase::Applying,
            State::Backoff { .. } => Phase::Backoff,
        };
        let now = Instant::now();
        let wake = match state {
            State::Backoff { until } => Some(*until),
            State::Idle => Some(mem.next_drift),
            _ => None,
        };
        let active = *self.active.borrow();
        let attempt = mem.attempt;
        self.status.update(|st| {
            if st.phase != Some(phase) {
                st.phase = Some(phase);
                st.phase_since = Some(unix_now_f64());
            }
            st.backoff_attempt = attempt;
            st.next_wakeup = wake.map(|w| unix_now_f64() + (w - now.min(w)).as_secs_f64());
            st.active = active;
        });
    }

    /// Idle: wait for a trigger, the drift sweep timer, a change of `active`, or stop.
    async fn idle(
        &self,
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
        if mem.reload_pending {
            mem.reload_pending = false;
            return State::Fetching {
                force: true,
                trigger: Trigger::Reload,
            };
        }
        if let Some(trigger) = mem.recheck_pending.take()
            && !self.suspended()
        {
            return State::Fetching {
                force: false,
                trigger,
            };
        }
        tokio::select! {
            biased;
            _ = stop.changed() => State::Stopped,
            r = mem.suspension.changed() => {
                let resumed = r.is_ok() && mem.suspension.borrow_and_update().is_none();
                if resumed && *self.active.borrow() {
                    State::Fetching { force: true, trigger: Trigger::Resume }
                } else {
                    State::Idle
                }
            }
            changed = mem.gate.changed(), if !mem.gate_gone => {
                if changed.is_err() {
                    // The gate's owner is gone: the last value stays; keep serving triggers.
                    mem.gate_gone = true;
                    return State::Idle;
                }
                let now = *mem.gate.borrow_and_update();
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
                let forcing = |t: Trigger| matches!(t, Trigger::Reload | Trigger::Startup | Trigger::Manual);
                let mut force = forcing(first);
                let mut only_drift = first == Trigger::Drift;
                let mut cause = first;
                self.count_trigger(first);
                while let Ok(t) = triggers.try_recv() {
                    self.count_trigger(t);
                    force |= forcing(t);
                    only_drift &= t == Trigger::Drift;
                    if cause == Trigger::Drift {
                        cause = t;
                    }
                }
                if !*self.active.borrow() {
                    mem.pending = true;
                    return State::Idle;
                }
                if cause == Trigger::Manual && self.manual_wants_drift_correction() {
                    mem.correct_drift_once = true;
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
        self.heartbeat.beat();
        self.status.update(|st| {
            *st.source
                .get_or_insert_with(Default::default)
                .triggers
                .entry(t.as_str().to_string())
                .or_default() += 1;
        });
    }

    /// The commits whose checkouts must stay: the applied one (its provenance) and the healthy one.
    fn pinned(mem: &Memory) -> Vec<String> {
        [&mem.applied, &mem.healthy]
            .into_iter()
            .flatten()
            .map(|a| a.revision.commit.clone())
            .collect()
    }

    /// Fetch, counting the fetch metric.
    async fn fetch(&self, mem: &Memory) -> Result<Revision, Failure> {
        let started = Instant::now();
        let result = self.source.fetch(&Self::pinned(mem)).await;
        self.metrics.record_fetch(
            if result.is_ok() {
                FetchResult::Success
            } else {
                FetchResult::Failure
            },
            started.elapsed(),
        );
        if let Ok(r) = &result {
            let commit = r.commit.clone();
            self.status.update(|st| {
                st.source
                    .get_or_insert_with(Default::default)
                    .fetched_revision = Some(commit)
            });
        }
        result
    }

    async fn fetching(&self, mem: &mut Memory, force: bool, trigger: Trigger) -> State {
        if !*self.active.borrow() {
            mem.pending = true;
            return State::Idle;
        }
        mem.cycle = Cycle::new(trigger);
        let revision = match self.fetch(mem).await {
            Ok(r) => r,
            Err(e) => return self.fail(mem, e),
        };
        let commit = Some(&revision.commit);
        if self.suspended() {
            tracing::info!(revision = %revision.commit, "suspended: fetched, not applied");
            return State::Idle;
        }
        if mem.correct_drift_once && mem.persisted.last_applied_revision.as_ref() == commit {
            // `pailot reconcile --correct-drift`: the applied commit is current; correct its drift once.
            mem.cycle.revision = Some(revision);
            return self.check_drift(mem).await;
        }
        // A newer commit's apply puts every field back anyway: the request is served by it.
        mem.correct_drift_once = false;
        if !force && mem.persisted.last_applied_revision.as_ref() == commit {
            mem.attempt = 0;
            if mem.persisted.last_failed_revision.take().is_some() {
                // The refused commit was reverted: git's head runs again.
                self.persist(mem);
            }
            self.converged();
            return State::Idle;
        }
        if !force && mem.persisted.last_failed_revision.as_ref() == commit {
            // Refused for a terminal reason already: wait for the ref to move.
            return State::Idle;
        }
        State::Rendering { revision }
    }

    async fn rendering(&self, mem: &mut Memory, revision: Revision) -> State {
        mem.cycle.revision = Some(revision.clone());
        let mut rendered = match self.renderer.render(&revision).await {
            Ok(r) => r,
            Err(e) => return self.fail(mem, e),
        };
        if let Err(e) = self.gate(&rendered) {
            return self.fail(mem, e);
        }
        mem.persisted.last_good_revision = Some(revision.commit.clone());
        let inventory = match self.applier.inventory(&rendered.cluster).await {
            Ok(i) => i,
            Err(e) => return self.fail(mem, e),
        };
        let plan = match Plan::new(&rendered.set, &inventory) {
            Ok(p) => p,
            Err(e) => {
                return self.fail(
                    mem,
                    Failure::new(Stage::Plan, Reason::InvalidInput, e.to_string()),
                );
            }
        };
        // Every chart of the render starts out pending, with its object count.
        let mut objects: BTreeMap<String, u64> = BTreeMap::new();
        for o in rendered.set.objects.values() {
            *objects.entry(o.chart.clone()).or_default() += 1;
        }
        self.status.update(|st| {
            st.charts = rendered
                .set
                .charts
                .iter()
                .map(|c| {
                    let old = st.charts.get(&c.name);
                    (
                        c.name.clone(),
                        status::ChartStatus {
                            result: "pending".into(),
                            ready: false,
                            objects: objects.get(&c.name).copied().unwrap_or(0),
                            drifted: old.map_or(0, |o| o.drifted),
                            message: None,
                        },
                    )
                })
                .collect();
        });
        let secrets = Arc::new(std::mem::take(&mut rendered.set.provenance.secrets));
        State::Applying(ApplyJob {
            revision,
            plan: Arc::new(plan),
            charts: rendered.set.charts,
            inventory,
            kind: ApplyKind::Commit,
            secrets,
        })
    }

    /// What a render must pass before it may be applied: not empty (it would unmanage everything), and
    /// within the machines' capacity (unless allowed).
    fn gate(&self, rendered: &Rendered) -> Result<(), Failure> {
        if rendered.set.objects.is_empty() {
            return Err(Failure::new(
                Stage::Plan,
                Reason::EmptyRender,
                format!(
                    "the render of cluster {:?} holds no object (check its overlays and their chart selection); \
                     applying it would leave every object unmanaged",
                    rendered.cluster.name
                ),
            ));
        }
        if !self.settings.borrow().allow_over_budget {
            // A request that is not a quantity is the commit's fault, like any invalid input.
            let budget = crate::budget::compute(&rendered.cluster, &rendered.set)
                .map_err(|e| Failure::new(Stage::Plan, Reason::InvalidInput, e.to_string()))?;
            if let Some(over) = budget.over_summary(3) {
                return Err(Failure::new(
                    Stage::Plan,
                    Reason::OverBudget,
                    format!(
                        "the render does not fit the machines ({}); lower the requests in an overlay, or set reconcile.allowOverBudget",
                        over.replace('\n', "; ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Apply `job`; meanwhile, a trigger that carries a newer commit stops the apply (and its health
    /// wait) so the newer commit is rendered at once; SIGTERM stops it between objects.
    async fn applying(
        &self,
        mem: &mut Memory,
        job: ApplyJob,
        triggers: &mut mpsc::Receiver<Trigger>,
        stop: &mut watch::Receiver<bool>,
    ) -> State {
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress = self.progress();
        let supersedable = matches!(job.kind, ApplyKind::Commit | ApplyKind::DriftFix);
        let mut newer: Option<Revision> = None;
        let mut shutdown = false;
        let report = {
            let apply = self.applier.apply(
                &job.plan,
                &job.inventory,
                Stop::from_watch(stop_rx),
                &progress,
            );
            tokio::pin!(apply);
            let mut fetch: Option<std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>> = None;
            loop {
                tokio::select! {
                    r = &mut apply => break r,
                    _ = stopped(stop), if !shutdown => {
                        shutdown = true;
                        tracing::info!(revision = %job.revision.commit, "stop requested during apply; the objects in flight finish, no other starts");
                        let _ = stop_tx.send(true);
                    }
                    t = triggers.recv(), if fetch.is_none() && newer.is_none() && !shutdown => {
                        let Some(t) = t else { continue };
                        self.count_trigger(t);
                        if t == Trigger::Reload {
                            mem.reload_pending = true;
                        } else if t.may_carry_a_revision() && supersedable {
                            fetch = Some(Box::pin(self.fetch_pinned(Self::pinned(mem))));
                        }
                    }
                    r = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                        fetch = None;
                        if let Ok(rev) = r
                            && rev.commit != job.revision.commit
                            && mem.persisted.last_failed_revision.as_ref() != Some(&rev.commit)
                        {
                            tracing::info!(applying = %job.revision.commit, newer = %rev.commit, "a newer commit arrived: the apply and its health wait stop for it");
                            newer = Some(rev);
                            let _ = stop_tx.send(true);
                        }
                    }
                }
            }
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => return self.fail(mem, e),
        };
        if report.stopped {
            self.record_members(mem, &job, &report);
            return match newer {
                Some(rev) if !shutdown => {
                    self.finish(mem, Outcome::Superseded, None);
                    mem.attempt = 0;
                    State::Rendering { revision: rev }
                }
                _ => {
                    tracing::info!(
                        revision = %job.revision.commit,
                        kept = mem.persisted.last_applied_revision.as_deref().unwrap_or("-"),
                        "apply stopped between objects; the revision is not marked applied"
                    );
                    self.finish(mem, Outcome::Stopped, None);
                    State::Stopped
                }
            };
        }
        self.status.update(|st| {
            for c in &report.charts {
                let e = st.charts.entry(c.name.clone()).or_default();
                e.result = chart_result(c.state).into();
                e.ready = matches!(c.state, ChartState::Healthy | ChartState::Applied);
                e.message = c.message.clone();
            }
        });
        let ready: BTreeMap<String, bool> = job
            .charts
            .iter()
            .map(|c| {
                let ok = report.charts.iter().any(|r| {
                    r.name == c.name && matches!(r.state, ChartState::Healthy | ChartState::Applied)
                }) || !report.charts.iter().any(|r| r.name == c.name);
                (c.name.clone(), ok)
            })
            .collect();
        self.metrics.set_charts(&ready);
        self.metrics.record_apply(&report.counts);
        mem.cycle.charts = history::chart_counts(&report);
        self.record_members(mem, &job, &report);
        if let Some(failure) = Failure::from_report(&report) {
            if failure.reason == Reason::PruneBlocked {
                self.metrics
                    .inc_prune_blocked(PruneBlockedReason::MassPruneThreshold);
            }
            let failure = if failure.reason == Reason::PruneBlocked {
                Failure {
                    message: format!(
                        "{}; nothing was pruned (raise reconcile.massPruneThreshold, or delete them with `pailot apply --prune --allow-mass-prune` once `pailot diff` is checked)",
                        failure.message
                    ),
                    ..failure
                }
            } else {
                failure
            };
            return self.after_failed_apply(mem, job, failure);
        }
        self.applied(mem, job, &ready)
    }

    /// Completes when a trigger brings a commit newer than `current` (and not the refused one), or a
    /// reload arrives; other triggers are counted and dropped (the stage in flight covers them).
    ///
    /// `checking` holds the trigger whose fetch is in flight, so that a caller who drops this future
    /// (the render ended first) can serve that trigger later instead of losing it.
    async fn interruption(
        &self,
        triggers: &mut mpsc::Receiver<Trigger>,
        current: &str,
        refused: Option<String>,
        pinned: Vec<String>,
        checking: &mut Option<Trigger>,
    ) -> Interruption {
        loop {
            let Some(t) = triggers.recv().await else {
                return std::future::pending().await;
            };
            self.count_trigger(t);
            if t == Trigger::Reload {
                return Interruption::Reload;
            }
            if !t.may_carry_a_revision() {
                continue;
            }
            *checking = Some(t);
            let fetched = self.fetch_pinned(pinned.clone()).await;
            *checking = None;
            if let Ok(rev) = fetched
                && rev.commit != current
                && refused.as_ref() != Some(&rev.commit)
            {
                return Interruption::Newer(rev);
            }
        }
    }

    /// Fetch for the supersede check (the pins are computed before the apply starts).
    async fn fetch_pinned(&self, pinned: Vec<String>) -> Result<Revision, Failure> {
        let started = Instant::now();
        let r = self.source.fetch(&pinned).await;
        self.metrics.record_fetch(
            if r.is_ok() {
                FetchResult::Success
            } else {
                FetchResult::Failure
            },
            started.elapsed(),
        );
        r
    }

    /// Keep the state file's copy of the ApplySet members in step with what the apply wrote.
    fn record_members(&self, mem: &mut Memory, job: &ApplyJob, report: &ApplyReport) {
        let members = report.members.clone().unwrap_or_else(|| {
            // Not known (stopped before the members were listed): everything that may exist now.
            let mut all: BTreeSet<ObjectId> = mem.persisted.inventory.iter().cloned().collect();
            all.extend(job.plan.all_objects().map(|o| o.id.clone()));
            all.into_iter().collect()
        });
        self.metrics.set_inventory(members.len() as u64);
        if members != mem.persisted.inventory {
            mem.persisted.inventory = members;
            self.persist(mem);
        }
    }

    /// The apply of `job` failed: fail the reconcile, or roll back to the last healthy revision.
    fn after_failed_apply(&self, mem: &mut Memory, job: ApplyJob, failure: Failure) -> State {
        let rollback = self.settings.borrow().rollback == Rollback::OnHealthFailure;
        let target = mem.healthy.clone();
        match (&job.kind, target) {
            (ApplyKind::Commit, Some(h))
                if rollback
                    && failure.reason == Reason::Unhealthy
                    && h.revision.commit != job.revision.commit =>
            {
                tracing::warn!(failed = %job.revision.commit, to = %h.revision.commit, "health failure: rolling back to the last healthy revision");
                self.metrics.inc_rollbacks();
                // The failed commit is refused until the ref moves; its failure stays reported.
                self.report_failure(mem, &failure, Next::AwaitChange);
                mem.persisted.last_failed_revision = Some(job.revision.commit.clone());
                self.persist(mem);
                let plan = h.plan.thaw();
                State::Applying(ApplyJob {
                    revision: h.revision.clone(),
                    plan: Arc::new(plan),
                    charts: h.plan.charts.clone(),
                    inventory: h.inventory.clone(),
                    kind: ApplyKind::Rollback {
                        failed: failure,
                        from: job.revision.commit,
                    },
                    secrets: h.secrets.clone(),
                })
            }
            _ => self.fail(mem, failure),
        }
    }

    /// The apply of `job` succeeded (every chart applied, and healthy when waiting).
    fn applied(&self, mem: &mut Memory, job: ApplyJob, ready: &BTreeMap<String, bool>) -> State {
        let revision = job.revision.commit.clone();
        let applied = Arc::new(Applied {
            plan: FrozenPlan::freeze(&job.plan, &job.charts),
            revision: job.revision.clone(),
            inventory: job.inventory.clone(),
            secrets: job.secrets.clone(),
        });
        if ready.values().all(|r| *r) {
            mem.healthy = Some(applied.clone());
        }
        mem.applied = Some(applied);
        mem.persisted.last_applied_revision = Some(revision.clone());
        self.metrics.set_revision(&revision);
        mem.attempt = 0;
        let drift_fix = matches!(job.kind, ApplyKind::DriftFix);
        // A drift correction while a newer commit stays refused keeps that failure reported: the
        // cluster matches the last good revision, not git.
        let still_refused = drift_fix && mem.persisted.last_failed_revision.is_some();
        let rolled_back = match job.kind {
            ApplyKind::Rollback { failed, from } => Some((failed, from)),
            ApplyKind::Commit => {
                mem.persisted.last_failed_revision = None;
                None
            }
            ApplyKind::DriftFix => None,
        };
        if let Err(e) = self.try_persist(mem) {
            self.status
                .update(|st| st.revision = Some(revision.clone()));
            return self.fail(mem, e);
        }
        match rolled_back {
            Some((failed, from)) => {
                // Still failing (the commit from git is not running): keep reporting it.
                tracing::warn!(revision = %revision, failed = %from, "rolled back: the last healthy revision runs again; the failed commit is refused until the ref moves");
                self.status.update(|st| {
                    st.revision = Some(revision.clone());
                    st.failed_revision = Some(from.clone());
                    if let Some(last) = st.last_reconcile.as_mut() {
                        last.rolled_back_to = Some(revision.clone());
                    }
                });
                self.metrics.set_failing(&failed);
                State::Idle
            }
            None if still_refused => {
                tracing::info!(revision = %revision, refused = mem.persisted.last_failed_revision.as_deref().unwrap_or("-"), "drift corrected; the newer commit stays refused");
                self.status.update(|st| {
                    st.revision = Some(revision.clone());
                    st.drift.clear();
                });
                State::Idle
            }
            None => {
                let duration = mem.cycle.start.elapsed();
                self.metrics
                    .record_reconcile(ReconcileResult::Success, duration);
                tracing::info!(revision = %revision, trigger = mem.cycle.trigger.as_str(), duration_ms = duration.as_millis() as u64, "reconciled");
                self.status.update(|st| {
                    st.revision = Some(revision.clone());
                    st.failed_revision = None;
                    st.errors.clear();
                    st.ready = true;
                    if drift_fix {
                        st.drift.clear();
                    }
                });
                self.finish(mem, Outcome::Success, None);
                State::Idle
            }
        }
    }

    /// Backoff: wait for the timer; a trigger that carries a newer commit ends it at once.
    async fn backoff(
        &self,
        mem: &mut Memory,
        until: Instant,
        triggers: &mut mpsc::Receiver<Trigger>,
        stop: &mut watch::Receiver<bool>,
    ) -> State {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if self.suspended() {
                        return State::Idle;
                    }
                    return State::Fetching { force: true, trigger: Trigger::Retry };
                }
                _ = stopped(stop) => return State::Stopped,
                t = triggers.recv() => {
                    let Some(t) = t else { return State::Stopped };
                    self.count_trigger(t);
                    if t == Trigger::Reload || t == Trigger::Manual {
                        return State::Fetching { force: true, trigger: t };
                    }
                    if !t.may_carry_a_revision() {
                        continue;
                    }
                    let failed = mem.cycle.revision.as_ref().map(|r| r.commit.clone());
                    match self.fetch(mem).await {
                        Ok(rev) if Some(&rev.commit) != failed.as_ref()
                            && mem.persisted.last_applied_revision.as_ref() != Some(&rev.commit) => {
                            tracing::info!(newer = %rev.commit, "a newer commit arrived: backoff ended");
                            mem.attempt = 0;
                            mem.cycle = Cycle::new(t);
                            return State::Rendering { revision: rev };
                        }
                        Ok(_) if failed.is_none() => {
                            // The failure was the fetch itself, and it works now.
                            return State::Fetching { force: true, trigger: t };
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// A Progress whose chart states go into `/status` as they happen (and the phase to `waiting`
    /// once a chart waits for health).
    fn progress(&self) -> Progress {
        let status = self.status.clone();
        let heartbeat = self.heartbeat.clone();
        Progress::observed(Box::new(move |chart, state, note| {
            heartbeat.beat();
            status.update(|st| {
                let c = st.charts.entry(chart.to_string()).or_default();
                c.result = chart_result(state).into();
                c.ready = matches!(state, ChartState::Healthy | ChartState::Applied);
                c.message = (!note.is_empty()).then(|| note.to_string());
                if state == ChartState::WaitingHealthy && st.phase != Some(Phase::Waiting) {
                    st.phase = Some(Phase::Waiting);
                    st.phase_since = Some(unix_now_f64());
                }
            });
        }))
    }

    /// Compare the live objects with the applied revision; correct or report.
    async fn check_drift(&self, mem: &mut Memory) -> State {
        let (interval, mode) = {
            let s = self.settings.borrow();
            (s.drift_interval, s.drift_mode)
        };
        // Suspended: report only. `pailot reconcile --correct-drift`: correct once, even in warn mode.
        let mode = if self.suspended() {
            DriftMode::Warn
        } else if std::mem::take(&mut mem.correct_drift_once) {
            DriftMode::Correct
        } else {
            mode
        };
        mem.next_drift = Instant::now() + interval;
        let Some(applied) = mem.applied.clone() else {
            return State::Idle;
        };
        let plan = applied.plan.thaw();
        let mut report = match self.applier.drift(&plan, &applied.inventory).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count_failure(Stage::Drift, e.reason);
                tracing::warn!(
                    stage = "drift",
                    reason = e.reason.as_str(),
                    "drift check failed: {}",
                    e.message
                );
                return State::Idle;
            }
        };
        // Fields decrypted from sops files are masked before anything is recorded or logged.
        crate::mask::mask_report(&mut report, &applied.secrets);
        let mut records = super::drift::records(&report, &plan);
        let fields = super::drift::provenance_wanted(&records);
        if !fields.is_empty() {
            match self
                .renderer
                .provenance(&applied.revision, fields.clone())
                .await
            {
                Ok(lines) => {
                    let known: std::collections::HashMap<(String, String), Option<String>> = fields
                        .into_iter()
                        .map(|(id, p)| (id.to_string(), p))
                        .zip(lines)
                        .collect();
                    for r in &mut records {
                        if let Some(line) = known.get(&(r.object.clone(), r.pointer.clone())) {
                            r.provenance = Some(line.clone().unwrap_or_else(|| {
                                "unknown (the render cannot say where this value came from)".into()
                            }));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "drift records without provenance: cannot render the applied revision again")
                }
            }
        }
        let mut per_chart: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for c in &applied.plan.charts {
            per_chart.entry(c.name.clone()).or_default();
        }
        for r in &records {
            per_chart
                .entry(r.chart.clone())
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
            self.metrics.set_drifted(chart, objects.len() as u64);
            for _ in objects {
                self.metrics.inc_drift(chart);
            }
        }
        let drifted = !records.is_empty();
        let correct = drifted && mode == DriftMode::Correct;
        let at = unix_now_f64();
        let counts: BTreeMap<String, u64> = per_chart
            .iter()
            .map(|(c, o)| (c.clone(), o.len() as u64))
            .collect();
        self.status.update(|st| {
            st.drift = records
                .iter()
                .map(|r| status::DriftRecord {
                    chart: r.chart.clone(),
                    object: r.object.clone(),
                    pointer: r.pointer.clone(),
                    manager: r.manager.clone(),
                    provenance: r.provenance.clone(),
                    action: if correct { "corrected" } else { "reported" }.into(),
                    detected_at: Some(at),
                })
                .collect();
            st.drift_checked_at = Some(at);
            for (chart, n) in &counts {
                if let Some(c) = st.charts.get_mut(chart) {
                    c.drifted = *n;
                }
            }
        });
        if !correct {
            if !drifted && mem.persisted.last_failed_revision.is_none() && mem.attempt == 0 {
                self.converged();
            }
            return State::Idle;
        }
        let trigger = if mem.cycle.trigger == Trigger::Manual {
            Trigger::Manual
        } else {
            Trigger::Drift
        };
        mem.cycle = Cycle::new(trigger);
        mem.cycle.revision = Some(applied.revision.clone());
        mem.cycle.drift_corrections = counts.values().sum::<u64>() as u32;
        State::Applying(ApplyJob {
            revision: applied.revision.clone(),
            plan: Arc::new(plan),
            charts: applied.plan.charts.clone(),
            inventory: applied.inventory.clone(),
            kind: ApplyKind::DriftFix,
            secrets: applied.secrets.clone(),
        })
    }

    /// Git's head is what runs (a fetch found the applied commit, or a drift check found nothing to
    /// correct while no newer commit is refused): an earlier failure is over.
    fn converged(&self) {
        self.metrics.converged();
        self.status.update(|st| {
            st.errors.clear();
            st.failed_revision = None;
        });
    }

    /// Metrics, one log line and `/status` for `failure`, without deciding what comes next.
    fn report_failure(&self, mem: &mut Memory, f: &Failure, next: Next) {
        let duration = mem.cycle.start.elapsed();
        self.metrics.record_failure(f);
        self.metrics
            .record_reconcile(ReconcileResult::Failure, duration);
        let revision = mem.cycle.revision.as_ref().map(|r| r.commit.clone());
        tracing::error!(
            stage = f.stage.as_str(), reason = f.reason.as_str(),
            revision = revision.as_deref().unwrap_or("-"),
            kept = mem.persisted.last_applied_revision.as_deref().unwrap_or("-"),
            next = ?next, "reconcile failed: {}", f.message
        );
        let failed_charts: BTreeSet<&String> = f.charts.iter().collect();
        self.status.update(|st| {
            st.errors = vec![StatusError::of(f)];
            if revision.is_some() && revision != st.revision {
                st.failed_revision = revision.clone();
            }
            for (name, c) in st.charts.iter_mut() {
                if failed_charts.contains(name) {
                    c.ready = false;
                    if c.result != "blocked" {
                        c.result = "failed".into();
                    }
                    if c.message.is_none() {
                        c.message = Some(f.message.clone());
                    }
                }
            }
        });
        self.finish(mem, Outcome::Failure, Some((f, next)));
    }

    /// The one place a failure is handled: report it, then back off or wait for a new commit.
    fn fail(&self, mem: &mut Memory, f: Failure) -> State {
        let next = f.next();
        self.report_failure(mem, &f, next);
        match next {
            Next::Requeue => {
                mem.attempt = mem.attempt.saturating_add(1);
                State::Backoff {
                    until: Instant::now() + backoff_delay(mem.attempt),
                }
            }
            Next::AwaitChange => {
                mem.attempt = 0;
                if let Some(rev) = &mem.cycle.revision {
                    mem.persisted.last_failed_revision = Some(rev.commit.clone());
                    self.persist(mem);
                }
                State::Idle
            }
        }
    }

    /// Record how the current reconcile ended in `/status` (and tell systemd after the first one).
    fn finish(&self, mem: &mut Memory, outcome: Outcome, failure: Option<(&Failure, Next)>) {
        let cycle = &mem.cycle;
        let now = unix_now_f64();
        let last = LastReconcile {
            result: outcome.as_str().into(),
            trigger: Some(cycle.trigger.as_str().into()),
            revision: cycle.revision.as_ref().map(|r| r.commit.clone()),
            subject: cycle.revision.as_ref().map(|r| r.summary.clone()),
            started_at: Some(cycle.started_at),
            finished_at: Some(now),
            duration_seconds: Some(cycle.start.elapsed().as_secs_f64()),
            stage: failure.map(|(f, _)| f.stage),
            reason: failure.map(|(f, _)| f.reason),
            next: failure.map(|(_, n)| n),
            message: failure.map(|(f, _)| f.message.clone()),
            rolled_back_to: None,
        };
        self.status.update(|st| st.last_reconcile = Some(last));
        if outcome != Outcome::Superseded {
            self.record(mem, outcome, failure);
        }
        if !mem.reported_first && outcome != Outcome::Superseded {
            mem.reported_first = true;
            let first = self
                .on_first_reconcile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(f) = first {
                f(outcome);
            }
        }
    }

    /// Whether applying and correcting are suspended now.
    fn suspended(&self) -> bool {
        self.controls.suspension.borrow().is_some()
    }

    /// Whether a waiting `pailot reconcile` asked to correct drift.
    fn manual_wants_drift_correction(&self) -> bool {
        self.controls
            .manual
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|c| c.correct_drift)
    }

    /// The reconcile that just ended, into the history, to the `pailot reconcile` calls waiting for
    /// it, and out as a notification.
    fn record(&self, mem: &Memory, outcome: Outcome, failure: Option<(&Failure, Next)>) {
        let cycle = &mem.cycle;
        let entry = history::Entry {
            started_at: cycle.started_at as u64,
            duration_ms: cycle.start.elapsed().as_millis() as u64,
            trigger: cycle.trigger.as_str().to_string(),
            revision: cycle.revision.as_ref().map(|r| r.commit.clone()),
            subject: cycle.revision.as_ref().map(|r| r.summary.clone()),
            author: cycle
                .revision
                .as_ref()
                .map(|r| r.author.clone())
                .filter(|a| !a.is_empty()),
            result: outcome,
            stage: failure.map(|(f, _)| f.stage.as_str().to_string()),
            reason: failure.map(|(f, _)| f.reason.as_str().to_string()),
            message: failure.map(|(f, _)| f.message.clone()),
            charts: cycle.charts.clone(),
            drift_corrections: cycle.drift_corrections,
        };
        if let Some(h) = &self.history
            && h.try_send(entry.clone()).is_err()
        {
            tracing::warn!("history writer busy: this reconcile is not recorded");
        }
        let calls: Vec<ManualReconcile> = std::mem::take(
            &mut *self
                .controls
                .manual
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for call in calls {
            call.finish(&entry);
        }
        self.status
            .update(|st| st.latest_history = Some(entry.clone()));
        self.notify(&entry, failure.map(|(f, _)| f));
    }

    /// The notification of a finished reconcile: its result, a drift correction, a refused prune.
    fn notify(&self, entry: &history::Entry, failure: Option<&Failure>) {
        if !self.notifier.enabled() {
            return;
        }
        let now = crate::clock::unix_now();
        let changed: u32 = entry
            .charts
            .values()
            .map(|c| c.created + c.configured + c.deleted)
            .sum();
        let event = match (entry.result, failure) {
            (Outcome::Failure, Some(f)) => {
                let kind = if f.reason == Reason::PruneBlocked {
                    EventKind::PruneBlocked
                } else {
                    EventKind::ReconcileFailed
                };
                Event::new(kind, now, &f.message)
                    .stage(f.stage.as_str())
                    .reason(f.reason.as_str())
                    .charts(f.charts.clone())
            }
            (Outcome::Success, _) if entry.drift_corrections > 0 => Event::new(
                EventKind::DriftCorrected,
                now,
                format!("{} drifted object(s) put back", entry.drift_corrections),
            )
            .charts(entry.charts.keys().cloned()),
            (Outcome::Success, _) => Event::new(
                EventKind::ReconcileSucceeded,
                now,
                format!("applied: {changed} object(s) changed"),
            )
            .charts(
                entry
                    .charts
                    .iter()
                    .filter(|(_, c)| c.created + c.configured + c.deleted > 0)
                    .map(|(n, _)| n.clone()),
            ),
            _ => return,
        };
        let event = match (&entry.revision, &entry.subject) {
            (Some(r), Some(s)) => event.revision(r).subject(s),
            (Some(r), None) => event.revision(r),
            _ => event,
        };
        self.notifier.notify(event);
    }

    fn persist(&self, mem: &mut Memory) {
        if let Err(f) = self.try_persist(mem) {
            self.metrics.count_failure(f.stage, f.reason);
            tracing::error!(error = %f.message, "failed to write state");
        }
    }

    /// Write `state.json`; a failure is a `state`/`local_io` failure (shown in `/status` until it works).
    fn try_persist(&self, mem: &mut Memory) -> Result<(), Failure> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        match mem.persisted.save(dir) {
            Ok(()) => {
                self.status.update(|st| st.state_error = None);
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                self.status.update(|st| st.state_error = Some(text.clone()));
                Err(Failure::new(Stage::State, Reason::LocalIo, text))
            }
        }
    }
}

/// The `/status` word of a chart state.
fn chart_result(s: ChartState) -> &'static str {
    match s {
        ChartState::Waiting => "pending",
        ChartState::Applying => "applying",
        ChartState::Applied => "applied",
        ChartState::WaitingHealthy => "waiting",
        ChartState::Healthy => "healthy",
        ChartState::Failed => "failed",
        ChartState::Blocked => "blocked",
        ChartState::Stopped => "stopped",
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use serde_json::json;

    use super::*;
    use crate::apply::{Action, ChartReport, FailureKind, Step};
    use crate::diag::InputError;
    use crate::manifest::{ChartInfo, RenderedObject, RenderedSet};

    fn cluster() -> Cluster {
        serde_json::from_value(json!({"apiVersion": "pailot.dev/v1", "kind": "Cluster", "name": "t",
            "machines": [{"name": "n1", "address": "10.0.0.1", "roles": ["k8s-master", "pai-master", "pai-worker"],
                "capacity": {"memory": "16Gi", "cpu": "4"}}]}))
        .unwrap()
    }

    /// A render of commit `c`: one ConfigMap of chart `web` (`empty*`: nothing; `huge*`: a 40Gi pod).
    fn rendered(c: &str) -> Rendered {
        let mut set = RenderedSet::default();
        set.charts.push(ChartInfo {
            name: "web".into(),
            version: "0.1.0".into(),
            depends_on: vec![],
        });
        if !c.starts_with("empty") {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "web", "namespace": "default"}, "data": {"rev": c}});
            set.objects.insert(
                ObjectId::of(&obj).unwrap(),
                RenderedObject {
                    chart: "web".into(),
                    template: "charts/web/templates/cm.yaml".into(),
                    object: obj,
                },
            );
        }
        if c.starts_with("huge") {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "zk", "namespace": "default"},
                "spec": {"containers": [{"name": "zk", "image": "zk", "resources": {"requests": {"memory": "40Gi"}}}]}});
            set.objects.insert(
                ObjectId::of(&pod).unwrap(),
                RenderedObject {
                    chart: "web".into(),
                    template: "charts/web/templates/zk.yaml".into(),
                    object: pod,
                },
            );
        }
        Rendered {
            cluster: cluster(),
            set,
        }
    }

    /// A scripted source: each fetch pops the next result (the last one repeats).
    #[derive(Clone, Default)]
    struct FakeSource(
        Arc<Mutex<VecDeque<Result<&'static str, Failure>>>>,
        Arc<AtomicUsize>,
    );
    impl FakeSource {
        fn new(script: Vec<Result<&'static str, Failure>>) -> Self {
            FakeSource(Arc::new(Mutex::new(script.into())), Arc::default())
        }
        fn push(&self, r: Result<&'static str, Failure>) {
            self.0.lock().unwrap().push_back(r);
        }
        /// Make `r` the next (and repeating) answer.
        fn set(&self, r: Result<&'static str, Failure>) {
            let mut q = self.0.lock().unwrap();
            q.clear();
            q.push_back(r);
        }
        fn fetches(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
    }
    impl Source for FakeSource {
        async fn fetch(&self, _pinned: &[String]) -> Result<Revision, Failure> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let r = {
                let mut q = self.0.lock().unwrap();
                if q.len() > 1 {
                    q.pop_front().unwrap()
                } else {
                    q.front().unwrap().clone()
                }
            };
            if let Ok(c) = &r
                && c.starts_with("late")
            {
                // A slow remote.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            r.map(|c| Revision {
                commit: c.to_string(),
                checkout: c.into(),
                root: c.into(),
                summary: format!("commit {c}"),
                author: "A <a@x>".into(),
                signer: None,
            })
        }
    }

    /// Renders commits starting with "bad" as an input error.
    struct FakeRenderer;
    impl Renderer for FakeRenderer {
        async fn render(&self, revision: &Revision) -> Result<Rendered, Failure> {
            if revision.commit.starts_with("slow") {
                // A template that does too much work (bounded only by the helper's time limit).
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            if revision.commit.starts_with("badlate") {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if revision.commit.starts_with("bad") {
                return Err(Failure::input(
                    Stage::Render,
                    InputError::new("charts/web/templates/web.yaml", "invalid YAML").at(3, 7),
                ));
            }
            Ok(rendered(&revision.commit))
        }
        async fn provenance(
            &self,
            _r: &Revision,
            fields: Vec<(ObjectId, String)>,
        ) -> Result<Vec<Option<String>>, Failure> {
            Ok(fields.iter().map(|_| Some("values x".into())).collect())
        }
    }

    /// What a fake apply does: succeed, fail with a report failure, or stay unhealthy until stopped.
    #[derive(Clone, Debug)]
    enum Script {
        Fail(FailureKind),
        /// The health wait never ends (until a stop).
        Hang,
    }

    #[derive(Clone, Default)]
    struct FakeApplier {
        applied: Arc<Mutex<Vec<String>>>,
        script: Arc<Mutex<VecDeque<Script>>>,
        drift: Arc<Mutex<Vec<crate::apply::ObjectReport>>>,
        /// Simulated apply duration.
        delay: Duration,
    }
    impl FakeApplier {
        fn then(&self, s: Script) {
            self.script.lock().unwrap().push_back(s);
        }
    }
    fn rev_of(plan: &Plan) -> String {
        plan.all_objects()
            .find(|o| o.id.kind == "ConfigMap")
            .map(|o| o.object["data"]["rev"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
    impl Applier for FakeApplier {
        async fn inventory(&self, c: &Cluster) -> Result<Inventory, Failure> {
            Ok(Inventory::of(c))
        }
        async fn apply(
            &self,
            plan: &Plan,
            _inv: &Inventory,
            stop: Stop,
            _p: &Progress,
        ) -> Result<ApplyReport, Failure> {
            let rev = rev_of(plan);
            let step = self.script.lock().unwrap().pop_front();
            let stopped = ApplyReport {
                stopped: true,
                members: Some(vec![]),
                ..Default::default()
            };
            tokio::select! {
                _ = tokio::time::sleep(self.delay) => {}
                _ = stop.wait() => return Ok(stopped),
            }
            let mut report = ApplyReport {
                members: Some(plan.all_objects().map(|o| o.id.clone()).collect()),
                ..Default::default()
            };
            match step {
                Some(Script::Hang) => {
                    stop.wait().await;
                    return Ok(stopped);
                }
                Some(Script::Fail(kind)) => {
                    report.failures.push(crate::apply::Failure {
                        step: if matches!(kind, FailureKind::HealthTimeout) {
                            Step::Health
                        } else {
                            Step::Workloads
                        },
                        kind,
                        object: Some("ConfigMap/default/web".into()),
                        chart: Some("web".into()),
                        message: format!("{kind:?}"),
                    });
                    report.charts.push(ChartReport {
                        name: "web".into(),
                        depends_on: vec![],
                        state: ChartState::Failed,
                        started_ms: None,
                        finished_ms: None,
                        healthy_ms: None,
                        message: Some(format!("{kind:?}")),
                    });
                }
                None => {
                    self.applied.lock().unwrap().push(rev);
                    report.counts.insert(Action::Created, 1);
                    report.charts.push(ChartReport {
                        name: "web".into(),
                        depends_on: vec![],
                        state: ChartState::Healthy,
                        started_ms: None,
                        finished_ms: None,
                        healthy_ms: None,
                        message: None,
                    });
                }
            }
            Ok(report)
        }
        async fn drift(&self, _plan: &Plan, _inv: &Inventory) -> Result<ApplyReport, Failure> {
            Ok(ApplyReport {
                objects: std::mem::take(&mut *self.drift.lock().unwrap()),
                ..Default::default()
            })
        }
    }

    struct Harness {
        source: FakeSource,
        applier: FakeApplier,
        metrics: Arc<Metrics>,
        status: StatusTx,
        triggers: mpsc::Sender<Trigger>,
        stop: watch::Sender<bool>,
        active: watch::Sender<bool>,
        settings: watch::Sender<ReconcileConfig>,
        task: tokio::task::JoinHandle<PersistedState>,
    }

    fn start(source: FakeSource, applier: FakeApplier, active: bool) -> Harness {
        start_with(source, applier, active, ReconcileConfig::default())
    }

    fn start_with(
        source: FakeSource,
        applier: FakeApplier,
        active: bool,
        settings: ReconcileConfig,
    ) -> Harness {
        let metrics = Arc::new(Metrics::new());
        let (status, _) = StatusTx::new();
        let (ttx, trx) = mpsc::channel(16);
        let (stx, srx) = watch::channel(false);
        let (atx, arx) = watch::channel(active);
        let (cfg_tx, cfg_rx) = watch::channel(ReconcileConfig {
            drift_interval: Duration::from_secs(60),
            ..settings
        });
        let r = Reconciler {
            source: source.clone(),
            renderer: FakeRenderer,
            applier: applier.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            settings: cfg_rx,
            active: arx,
            state_dir: None,
            heartbeat: Arc::default(),
            on_first_reconcile: std::sync::Mutex::new(None),
            controls: Controls::default(),
            notifier: Notifier::disabled(),
            history: None,
        };
        let task = tokio::spawn(r.run(trx, srx));
        Harness {
            source,
            applier,
            metrics,
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
        fn st(&self) -> status::Status {
            self.status.get()
        }
        fn failures(&self) -> Vec<String> {
            let t = self.metrics.encode_openmetrics().unwrap();
            t.lines()
                .filter(|l| l.starts_with("pailot_reconcile_failures_total{") && !l.ends_with(" 0"))
                .map(|l| l.to_string())
                .collect()
        }
        fn failing(&self) -> Vec<String> {
            let t = self.metrics.encode_openmetrics().unwrap();
            t.lines()
                .filter(|l| l.starts_with("pailot_reconcile_failing{"))
                .map(|l| l.to_string())
                .collect()
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

    fn api_down() -> Script {
        Script::Fail(FailureKind::Unreachable)
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
        assert!(h.st().ready);
        let state = h.finish().await;
        assert_eq!(state.last_applied_revision.as_deref(), Some("c1"));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_an_apply_coalesce_into_one_reconcile_after_it() {
        let applier = FakeApplier {
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        // Applying c1 takes 5 s; a reload and drift checks arrive meanwhile: one forced reconcile after it.
        for t in [Trigger::Drift, Trigger::Reload, Trigger::Drift] {
            h.triggers.send(t).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(h.applied(), vec!["c1", "c1"]);
        assert_eq!(h.source.fetches(), 2);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_trigger_during_an_apply_without_a_newer_commit_changes_nothing() {
        let applier = FakeApplier {
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(h.applied(), vec!["c1"]);
        assert_eq!(h.st().last_reconcile.unwrap().result, "success");
        h.finish().await;
    }

    /// A commit pushed while a bad commit renders: its trigger's fetch is still in flight when the render
    /// fails (a fast refusal, a slow remote). That fetch dies with the render's interruption check; the
    /// trigger must still be served, or the fix waits for the next poll (an hour by default).
    #[tokio::test(start_paused = true)]
    async fn a_trigger_whose_fetch_outlives_a_failing_render_is_served_after_it() {
        let h = start(
            FakeSource::new(vec![Ok("c1")]),
            FakeApplier::default(),
            true,
        );
        h.settle().await;
        h.source.set(Ok("badlate2"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(h.st().phase, Some(Phase::Rendering));
        h.source.set(Ok("late3"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.applied(), vec!["c1", "late3"]);
        let st = h.st();
        assert_eq!(st.revision.as_deref(), Some("late3"));
        assert_eq!(st.last_reconcile.unwrap().result, "success");
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failure_backs_off_exponentially_then_recovers() {
        let applier = FakeApplier::default();
        for _ in 0..3 {
            applier.then(api_down());
        }
        let start_at = Instant::now();
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        assert!(h.applied().is_empty());
        assert_eq!(h.st().phase, Some(Phase::Backoff));
        // Retries at +1 s, +2 s, +4 s: success at 7 s, not before.
        tokio::time::sleep(Duration::from_millis(6900)).await;
        assert!(h.applied().is_empty(), "retried too early");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.applied(), vec!["c1"]);
        assert!(start_at.elapsed() >= Duration::from_secs(7));
        assert_eq!(
            h.failures(),
            vec!["pailot_reconcile_failures_total{stage=\"apply\",reason=\"api_unreachable\"} 3"]
        );
        assert!(
            h.failing().is_empty(),
            "a success clears the failing series"
        );
        assert_eq!(h.st().backoff_attempt, 0);
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
            let st = h.st();
            assert_eq!(
                st.revision.as_deref(),
                Some("c1"),
                "previous revision stays applied"
            );
            assert_eq!(st.failed_revision.as_deref(), Some("bad2"));
            let last = st.last_reconcile.as_ref().unwrap();
            assert_eq!(
                (last.stage, last.reason),
                (Some(Stage::Render), Some(Reason::InvalidInput))
            );
            assert_eq!(st.errors[0].line, Some(3));
            assert_eq!(last.next, Some(Next::AwaitChange));
            assert_eq!(
                st.phase,
                Some(Phase::Idle),
                "no backoff for terminal errors"
            );
        }
        // Polls of the same bad commit do not retry (no storm) — one failure recorded.
        for _ in 0..5 {
            h.triggers.send(Trigger::Poll).await.unwrap();
            h.settle().await;
        }
        assert_eq!(
            h.failures(),
            vec!["pailot_reconcile_failures_total{stage=\"render\",reason=\"invalid_input\"} 1"]
        );
        // The next good commit recovers.
        h.source.push(Ok("c3"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c3"]);
        assert_eq!(h.st().failed_revision, None);
        let state = h.finish().await;
        assert_eq!(state.last_failed_revision, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_render_is_refused_and_drift_on_the_applied_revision_is_still_corrected() {
        let applier = FakeApplier::default();
        let h = start(
            FakeSource::new(vec![Ok("c1"), Ok("empty2")]),
            applier.clone(),
            true,
        );
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        let st = h.st();
        assert_eq!(st.revision.as_deref(), Some("c1"));
        let last = st.last_reconcile.unwrap();
        assert_eq!(
            (last.stage, last.reason),
            (Some(Stage::Plan), Some(Reason::EmptyRender))
        );
        assert_eq!(h.applied(), vec!["c1"], "the empty render is never applied");
        // The applied revision's drift is still corrected.
        applier.drift.lock().unwrap().push(configured_replicas());
        h.triggers.send(Trigger::Drift).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"]);
        let state = h.finish().await;
        assert_eq!(state.last_applied_revision.as_deref(), Some("c1"));
        assert_eq!(state.last_failed_revision.as_deref(), Some("empty2"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_over_budget_render_is_refused_naming_the_machine_and_the_container() {
        let h = start(
            FakeSource::new(vec![Ok("c1"), Ok("huge2")]),
            FakeApplier::default(),
            true,
        );
        h.settle().await;
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        let last = h.st().last_reconcile.unwrap();
        assert_eq!(last.reason, Some(Reason::OverBudget));
        let msg = last.message.unwrap();
        assert!(
            msg.contains("machine n1") && msg.contains("Pod/default/zk zk 40.0 GiB"),
            "{msg}"
        );
        assert_eq!(h.applied(), vec!["c1"]);
        assert_eq!(
            h.failing(),
            vec!["pailot_reconcile_failing{stage=\"plan\",reason=\"over_budget\",chart=\"\"} 1"]
        );
        // Opting out applies it.
        h.settings.send_modify(|s| s.allow_over_budget = true);
        h.triggers.send(Trigger::Reload).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "huge2"]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_commit_ends_a_backoff_at_once() {
        let applier = FakeApplier::default();
        for _ in 0..10 {
            applier.then(api_down());
        }
        let h = start(FakeSource::new(vec![Ok("c1")]), applier.clone(), true);
        // Let the backoff grow past a minute.
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(h.st().backoff_attempt >= 6, "{}", h.st().backoff_attempt);
        applier.script.lock().unwrap().clear();
        h.source.set(Ok("c2"));
        let t = Instant::now();
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c2"]);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            t.elapsed()
        );
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_commit_ends_a_doomed_health_wait() {
        let applier = FakeApplier::default();
        applier.then(Script::Hang);
        let h = start(FakeSource::new(vec![Ok("c1")]), applier.clone(), true);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(h.applied().is_empty());
        h.source.set(Ok("c2"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c2"]);
        assert_eq!(h.st().revision.as_deref(), Some("c2"));
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_commit_ends_a_slow_render_at_once() {
        let h = start(
            FakeSource::new(vec![Ok("slow1")]),
            FakeApplier::default(),
            true,
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.st().phase, Some(Phase::Rendering));
        h.source.set(Ok("c2"));
        let t = Instant::now();
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c2"]);
        assert!(t.elapsed() < Duration::from_secs(1));
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_health_failure_is_reported_as_the_failed_revision_and_its_charts() {
        let applier = FakeApplier::default();
        let h = start(
            FakeSource::new(vec![Ok("c1"), Ok("c2")]),
            applier.clone(),
            true,
        );
        h.settle().await;
        applier.then(Script::Fail(FailureKind::HealthTimeout));
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        let st = h.st();
        assert_eq!(st.failed_revision.as_deref(), Some("c2"));
        let last = st.last_reconcile.clone().unwrap();
        assert_eq!(
            (last.stage, last.reason),
            (Some(Stage::Wait), Some(Reason::Unhealthy))
        );
        assert_eq!(last.revision.as_deref(), Some("c2"));
        let web = &st.charts["web"];
        assert_eq!((web.result.as_str(), web.ready), ("failed", false));
        assert_eq!(
            h.failing(),
            vec!["pailot_reconcile_failing{stage=\"wait\",reason=\"unhealthy\",chart=\"web\"} 1"]
        );
        let t = h.metrics.encode_openmetrics().unwrap();
        assert!(t.contains("pailot_chart_ready{chart=\"web\"} 0"), "{t}");
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_on_health_failure_reapplies_the_last_healthy_revision_and_keeps_reporting() {
        let applier = FakeApplier::default();
        let h = start_with(
            FakeSource::new(vec![Ok("c1"), Ok("c2")]),
            applier.clone(),
            true,
            ReconcileConfig {
                rollback: Rollback::OnHealthFailure,
                ..Default::default()
            },
        );
        h.settle().await;
        applier.then(Script::Fail(FailureKind::Unhealthy));
        h.triggers.send(Trigger::Watch).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"], "c1 re-applied");
        let st = h.st();
        assert_eq!(st.revision.as_deref(), Some("c1"));
        assert_eq!(st.failed_revision.as_deref(), Some("c2"));
        let last = st.last_reconcile.unwrap();
        assert_eq!(
            (last.result.as_str(), last.rolled_back_to.as_deref()),
            ("failure", Some("c1"))
        );
        assert_eq!(h.failing().len(), 1, "the failure stays reported");
        let t = h.metrics.encode_openmetrics().unwrap();
        assert!(t.contains("pailot_rollbacks_total 1"), "{t}");
        // c2 is not retried until the ref moves.
        h.triggers.send(Trigger::Poll).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_object_waits_for_a_new_commit_and_is_not_retried() {
        let applier = FakeApplier::default();
        applier.then(Script::Fail(FailureKind::Rejected));
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            h.failures(),
            vec!["pailot_reconcile_failures_total{stage=\"apply\",reason=\"rejected\"} 1"]
        );
        assert_eq!(h.st().phase, Some(Phase::Idle));
        h.finish().await;
    }

    fn configured_replicas() -> crate::apply::ObjectReport {
        let id = ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        };
        crate::apply::ObjectReport {
            object: id.to_string(),
            id,
            chart: "web".into(),
            step: Step::Workloads,
            action: Action::Configured,
            reason: None,
            failure: None,
            changes: vec![crate::apply::diff::FieldChange {
                path: "/data/rev".into(),
                live: Some(json!("x")),
                desired: Some(json!("c1")),
                other_managers: vec!["kubectl".into()],
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drift_correct_reapplies_and_warn_only_reports() {
        let applier = FakeApplier::default();
        let h = start(FakeSource::new(vec![Ok("c1")]), applier.clone(), true);
        h.settle().await;
        applier.drift.lock().unwrap().push(configured_replicas());
        h.triggers.send(Trigger::Drift).await.unwrap();
        h.settle().await;
        assert_eq!(h.applied(), vec!["c1", "c1"], "correct mode re-applies");
        assert_eq!(h.source.fetches(), 1, "a drift check does not fetch");

        h.settings.send_modify(|s| s.drift_mode = DriftMode::Warn);
        applier.drift.lock().unwrap().push(configured_replicas());
        // The periodic sweep (60 s) finds it without a trigger.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(h.applied().len(), 2, "warn mode does not apply");
        let drift = h.st().drift;
        assert_eq!(drift.len(), 1);
        assert_eq!(
            (
                drift[0].pointer.as_str(),
                drift[0].action.as_str(),
                drift[0].provenance.as_deref()
            ),
            ("/data/rev", "reported", Some("values x"))
        );
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
    async fn stop_during_an_apply_keeps_the_revision() {
        let applier = FakeApplier {
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let h = start(FakeSource::new(vec![Ok("c1"), Ok("c2")]), applier, true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(h.applied(), vec!["c1"]);
        h.source.set(Ok("c2"));
        h.triggers.send(Trigger::Watch).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.st().phase, Some(Phase::Applying));
        let stop_at = Instant::now();
        let (status, metrics) = (h.status.clone(), h.metrics.clone());
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
        assert_eq!(state.last_failed_revision, None);
        let last = status.get().last_reconcile.unwrap();
        assert_eq!(
            (last.result.as_str(), last.revision.as_deref()),
            ("stopped", Some("c2"))
        );
        assert_eq!(last.trigger.as_deref(), Some("watch"));
        assert!(
            !metrics
                .encode_openmetrics()
                .unwrap()
                .contains("pailot_reconcile_failing{"),
            "a stop is not a failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_backoff_returns_promptly() {
        let applier = FakeApplier::default();
        applier.then(api_down());
        let h = start(FakeSource::new(vec![Ok("c1")]), applier, true);
        h.settle().await;
        assert_eq!(h.st().phase, Some(Phase::Backoff));
        let state = h.finish().await;
        assert_eq!(state.last_applied_revision, None);
    }
}
