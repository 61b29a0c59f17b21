//! Applies a Plan to the cluster: the ApplySet parent, staged server-side apply of what changed, health, prune.
//!
//! Flow (one function per step, `apply` chains them): open the inventory (check the parent is ours,
//! write it with the union of old and new group kinds, list the members) → cluster definitions
//! (CRDs, Namespaces, cluster RBAC), then CRDs Established and discovery refreshed → `*Class` kinds →
//! charts along the `dependsOn` graph (at most `Config::concurrency` at once; with `wait`, a chart
//! starts once its dependencies are healthy) → prune → close the inventory (the parent rewritten with
//! what is left). Each object: GET live (or the listed copy); absent: apply; present: SSA dry-run,
//! compare normalized, apply only when different.
//!
//! Failures are typed where they happen ([`FailureKind`]); the report carries them as [`Failure`]s
//! with readable text (API error bodies summarised, Secret values redacted). What a failure means
//! for a reconcile (retry or wait for a new commit) is decided in `crate::failure`, not here.
//!
//! Stopping: `Config::stop` is checked before each object, chart, stage and deletion. Once it is set,
//! objects already in flight finish, nothing new starts, health waits are abandoned, prune is skipped,
//! and `apply` returns a report with `stopped: true` (not an error).

pub mod charts;
pub mod diff;
pub mod health;
pub mod object;
pub mod plan;
pub mod progress;
pub mod prune;
pub mod ssa;
pub mod uninstall;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::inventory::{self, GroupKind, Inventory};
use crate::manifest::ObjectId;
use crate::order::{self, Stage};
use plan::{Plan, PlannedObject};
use progress::{ChartState, Progress};
pub use ssa::Server;
pub use uninstall::{UninstallReport, uninstall};

/// What stops an apply before or between steps (as opposed to a [`Failure`] of one object or chart).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ApplySet parent belongs to someone else.
    #[error("inventory: {0}")]
    Inventory(#[from] inventory::Error),
    /// A call failed in a step that cannot go on without it (the inventory, discovery).
    #[error("{step}: {source}")]
    Server {
        step: Step,
        #[source]
        source: ssa::Error,
    },
}

impl Error {
    /// The kind of failure, for the reason word of a reconcile.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Inventory(_) => FailureKind::Rejected,
            Error::Server { source, .. } => source.kind(),
        }
    }

    /// The step it happened in.
    pub fn step(&self) -> Step {
        match self {
            Error::Inventory(_) => Step::Inventory,
            Error::Server { step, .. } => *step,
        }
    }
}

fn server_err(step: Step) -> impl Fn(ssa::Error) -> Error {
    move |source| Error::Server { step, source }
}

/// A step of an apply (where a failure happened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Reading or writing the ApplySet parent, listing its members.
    Inventory,
    /// CRDs, Namespaces, cluster RBAC (and waiting for CRDs to be Established).
    ClusterDefinitions,
    /// `*Class` kinds.
    Classes,
    /// Chart objects.
    Workloads,
    /// Waiting for a chart to become healthy.
    Health,
    /// Deleting members that left the render.
    Prune,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Inventory => "inventory",
            Step::ClusterDefinitions => "cluster-definitions",
            Step::Classes => "classes",
            Step::Workloads => "workloads",
            Step::Health => "health",
            Step::Prune => "prune",
        }
    }
}

impl From<Stage> for Step {
    fn from(s: Stage) -> Self {
        match s {
            Stage::ClusterDefinitions => Step::ClusterDefinitions,
            Stage::Classes => Step::Classes,
            Stage::Workloads => Step::Workloads,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of failure happened, decided where it happened (from the API's status code, not its text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The API server or the network failed (connection, timeout, 429, 5xx): the object is not at fault.
    Unreachable,
    /// The API server refused the object (4xx, or a 500 "failed to create typed patch": a schema mismatch).
    Rejected,
    /// Another field manager owns fields pailot sets (without `--force-conflicts`).
    Conflict,
    /// The kind is not served (its CRD is missing).
    UnknownKind,
    /// A chart's objects reported a failure (a failed condition, a crash-looping pod).
    Unhealthy,
    /// A chart's objects were not healthy before the timeout.
    HealthTimeout,
    /// A deletion was not confirmed in time (a finalizer holds it).
    DeleteTimeout,
    /// The prune was refused as a whole (mass-prune threshold).
    PruneRefused,
    /// Anything else (a response the client could not read, a request it could not build).
    Internal,
}

impl FailureKind {
    /// True when the API server or the network is at fault: the remaining objects would fail the same way.
    pub fn is_transient(self) -> bool {
        self == FailureKind::Unreachable
    }
}

/// One failure in an apply, with readable text naming the object or chart.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub step: Step,
    pub kind: FailureKind,
    /// `Kind/namespace/name`, when one object failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The chart concerned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// What happened (no secret values).
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// A cooperative stop request for an apply (SIGTERM in the daemon, a newer commit, Ctrl-C in `pailot apply`).
///
/// The default never stops. The apply checks it between objects and stages; objects in flight finish.
#[derive(Clone, Debug, Default)]
pub struct Stop(Option<watch::Receiver<bool>>);

impl Stop {
    /// A stop that is never requested.
    pub fn never() -> Self {
        Stop(None)
    }

    /// Requested once `rx` holds `true`.
    pub fn from_watch(rx: watch::Receiver<bool>) -> Self {
        Stop(Some(rx))
    }

    /// A stop and the sender that requests it (`send(true)`).
    pub fn channel() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(Some(rx)))
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Completes once a stop is requested (never, for `Stop::never()` or when the sender is gone unset).
    pub async fn wait(&self) {
        let Some(rx) = &self.0 else {
            return std::future::pending().await;
        };
        let mut rx = rx.clone();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Why no further object starts: a stop request, or a transient failure (the API server or the network
/// failed: the remaining objects would fail the same way, so the apply ends and the caller retries it whole).
pub(crate) struct Halt<'a> {
    stop: &'a Stop,
    transient: AtomicBool,
}

impl<'a> Halt<'a> {
    fn new(stop: &'a Stop) -> Self {
        Halt {
            stop,
            transient: AtomicBool::new(false),
        }
    }

    pub(crate) fn halted(&self) -> bool {
        self.stop.requested() || self.transient.load(Ordering::Relaxed)
    }

    pub(crate) fn transient_failure(&self) {
        self.transient.store(true, Ordering::Relaxed);
    }

    /// Why, for a chart that did not start or finish.
    pub(crate) fn why(&self) -> (ChartState, &'static str) {
        if self.stop.requested() {
            (ChartState::Stopped, "stop requested")
        } else {
            (
                ChartState::Blocked,
                "the API server is unreachable (an object failed for a transient reason)",
            )
        }
    }
}

/// How to apply.
#[derive(Clone, Debug)]
pub struct Config {
    /// Take over fields owned by other managers.
    pub force_conflicts: bool,
    /// Delete inventory members that are no longer rendered.
    pub prune: bool,
    /// Wait for each chart to be healthy (dependents wait for it too).
    pub wait: bool,
    /// Per-chart health timeout.
    pub timeout: Duration,
    /// Charts applied at once.
    pub concurrency: usize,
    /// Objects applied at once within one kind rank of one chart.
    pub object_concurrency: usize,
    /// Only compute: SSA dry-runs, no writes (`pailot diff`).
    pub dry_run: bool,
    pub prune_limits: prune::Config,
    /// Stop between objects when requested.
    pub stop: Stop,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            force_conflicts: false,
            prune: false,
            wait: false,
            timeout: Duration::from_secs(300),
            concurrency: 4,
            object_concurrency: 16,
            dry_run: false,
            prune_limits: prune::Config::default(),
            stop: Stop::never(),
        }
    }
}

/// What happened to one object (Flux's ChangeSet vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    Skipped,
    Failed,
}

impl Action {
    /// Every action, in report order.
    pub const ALL: [Action; 6] = [
        Action::Created,
        Action::Configured,
        Action::Unchanged,
        Action::Deleted,
        Action::Skipped,
        Action::Failed,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        }
    }
}

/// One object in the report.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    /// `Kind/namespace/name`.
    pub object: String,
    #[serde(skip)]
    pub id: ObjectId,
    pub chart: String,
    pub step: Step,
    pub action: Action,
    /// Why it was skipped, created without a dry run, or failed (no secret values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kind of failure, for `action: failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Field differences (diff only; Secret values masked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<diff::FieldChange>,
}

impl ObjectReport {
    fn new(o: &PlannedObject, step: Step, action: Action) -> Self {
        ObjectReport {
            object: o.id.to_string(),
            id: o.id.clone(),
            chart: o.chart.clone(),
            step,
            action,
            reason: None,
            failure: None,
            changes: Vec::new(),
        }
    }

    /// A failure of an API server or the network, not of the object.
    pub fn transient(&self) -> bool {
        self.failure.is_some_and(FailureKind::is_transient)
    }
}

/// One chart in the report, with the times it started and became healthy (ms since the Unix epoch).
#[derive(Clone, Debug, Serialize)]
pub struct ChartReport {
    pub name: String,
    pub depends_on: Vec<String>,
    pub state: ChartState,
    pub started_ms: Option<u128>,
    pub finished_ms: Option<u128>,
    pub healthy_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The outcome of one apply (or diff).
#[derive(Clone, Debug, Serialize, Default)]
pub struct ApplyReport {
    /// `Secret/<namespace>/<name>` of the ApplySet parent.
    pub inventory: String,
    pub applyset_id: String,
    pub dry_run: bool,
    pub objects: Vec<ObjectReport>,
    pub charts: Vec<ChartReport>,
    /// Objects that were (or, in a diff, would be) pruned.
    pub prunes: Vec<String>,
    /// Why prune was off, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_disabled: Option<String>,
    /// Every failure, each naming the object or chart, typed.
    pub failures: Vec<Failure>,
    pub counts: BTreeMap<Action, usize>,
    /// A stop request ended the apply early: objects not yet started were not applied, prune was skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// Planned objects not applied because of the stop.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_applied: usize,
    /// Every object that is (or may be) a member of the ApplySet after this apply: the members found before
    /// it, less confirmed deletions, plus what was applied (and what failed for a transient reason, since the
    /// server may have written it). `None` when not known (dry run, or stopped before the members were listed).
    #[serde(skip)]
    pub members: Option<Vec<ObjectId>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ApplyReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// True when an object failed because of the API server or the network (worth retrying as is).
    pub fn transient_failure(&self) -> bool {
        self.failures.iter().any(|f| f.kind.is_transient())
    }

    /// True when something was (or would be) created, configured or deleted.
    pub fn changed(&self) -> bool {
        self.objects.iter().any(|o| {
            matches!(
                o.action,
                Action::Created | Action::Configured | Action::Deleted
            )
        })
    }

    /// Charts whose state is a failure (failed, or blocked by a failed dependency).
    pub fn failed_charts(&self) -> Vec<String> {
        let mut out: BTreeSet<String> = self
            .charts
            .iter()
            .filter(|c| matches!(c.state, ChartState::Failed | ChartState::Blocked))
            .map(|c| c.name.clone())
            .collect();
        out.extend(self.failures.iter().filter_map(|f| f.chart.clone()));
        out.into_iter().collect()
    }

    fn push(&mut self, o: ObjectReport) {
        *self.counts.entry(o.action).or_default() += 1;
        if o.action == Action::Failed {
            self.failures.push(Failure {
                step: o.step,
                kind: o.failure.unwrap_or(FailureKind::Internal),
                object: Some(o.object.clone()),
                chart: Some(o.chart.clone()).filter(|c| !c.is_empty()),
                message: o.reason.clone().unwrap_or_default(),
            });
        }
        self.objects.push(o);
    }

    /// Record a chart-level failure (health) unless an object failure already said it.
    fn push_chart_failure(&mut self, chart: &str, kind: FailureKind, message: String) {
        if self
            .failures
            .iter()
            .any(|f| f.chart.as_deref() == Some(chart) && f.step != Step::Health)
        {
            return;
        }
        self.failures.push(Failure {
            step: Step::Health,
            kind,
            object: None,
            chart: Some(chart.to_string()),
            message,
        });
    }
}

/// The ApplySet as `apply` found and left it before touching members.
struct Scope {
    /// Group kinds and namespaces the parent recorded before this apply.
    old_gks: BTreeSet<GroupKind>,
    /// What the plan applies.
    new_gks: BTreeSet<GroupKind>,
    new_nss: BTreeSet<String>,
    /// Old ∪ new: what the parent records while members are written.
    union_gks: BTreeSet<GroupKind>,
    union_nss: BTreeSet<String>,
    /// The live members (one LIST per kind and namespace): the prune's candidates, and the live
    /// copies that save a GET per object on a no-op re-apply.
    members: Vec<prune::Member>,
}

impl Scope {
    fn live(&self) -> BTreeMap<ObjectId, Value> {
        self.members
            .iter()
            .map(|m| (m.id.clone(), m.object.clone()))
            .collect()
    }
}

/// Apply (or, with `config.dry_run`, diff) `plan` to the cluster behind `server`, as members of `inv`.
pub async fn apply(
    server: &Server,
    plan: &Plan,
    inv: &Inventory,
    config: &Config,
    progress: &Progress,
) -> Result<ApplyReport, Error> {
    let mut report = ApplyReport {
        inventory: inv.parent_name(),
        applyset_id: inv.id(),
        dry_run: config.dry_run,
        ..Default::default()
    };
    for c in &plan.charts {
        progress.set(&c.name, ChartState::Waiting, "");
    }
    if config.stop.requested() {
        // Nothing written yet; the inventory is as it was.
        report.stopped = true;
        report.not_applied = plan.applied_objects().count();
        for c in &plan.charts {
            charts::stop_chart(c, progress, &mut report, "not started: stop requested");
        }
        return Ok(report);
    }
    let scope = open_inventory(server, plan, inv, config).await?;
    for o in &plan.skipped {
        let mut r = ObjectReport::new(o, Stage::of(&o.id).into(), Action::Skipped);
        r.reason = Some("static pod: written by bootstrap, never applied through the API".into());
        report.push(r);
    }
    let live = scope.live();
    let halt = Halt::new(&config.stop);
    apply_cluster_wide(server, plan, config, &live, &halt, &mut report).await?;
    if !report.ok() {
        for c in &plan.charts {
            let why = "not applied: an earlier stage failed";
            progress.set(&c.name, ChartState::Blocked, why);
            report.charts.push(charts::chart_report(
                c,
                ChartState::Blocked,
                Default::default(),
                Some(why.into()),
            ));
        }
        report.members = member_ids(&report, &scope.members, &BTreeSet::new());
        return Ok(report);
    }
    charts::run(server, plan, config, &live, progress, &mut report, &halt).await;
    let pruned = prune_members(server, plan, inv, &scope, config, &mut report).await?;
    let gone = pruned.clone().unwrap_or_default();
    report.members = member_ids(&report, &scope.members, &gone);
    if config.stop.requested() {
        // The parent keeps the union written by `open_inventory`: it covers every member, old and new.
        report.stopped = true;
        return Ok(report);
    }
    close_inventory(server, inv, &scope, pruned.as_ref(), config).await?;
    Ok(report)
}

/// Check that the parent is ours, record the union of old and new kinds before touching members
/// (KEP-3659), and list the members as they are now.
async fn open_inventory(
    server: &Server,
    plan: &Plan,
    inv: &Inventory,
    config: &Config,
) -> Result<Scope, Error> {
    let err = server_err(Step::Inventory);
    let pid = inv.parent_id();
    let live_parent = server.get(&pid).await.map_err(&err)?;
    let (old_gks, old_nss) = match &live_parent {
        Some(p) => {
            inv.check_parent(p)?;
            inventory::recorded(p)
        }
        None => (BTreeSet::new(), BTreeSet::from([inv.namespace.clone()])),
    };
    let (new_gks, new_nss) = plan.scope();
    let union_gks: BTreeSet<GroupKind> = old_gks.union(&new_gks).cloned().collect();
    let union_nss: BTreeSet<String> = old_nss.union(&new_nss).cloned().collect();
    if !config.dry_run {
        server
            .apply(
                &pid,
                &inv.parent_object(&union_gks, &union_nss),
                false,
                true,
            )
            .await
            .map_err(&err)?;
    }
    let members = if live_parent.is_some() {
        list_members(server, inv, &old_gks, &union_nss)
            .await
            .map_err(&err)?
    } else {
        Vec::new()
    };
    Ok(Scope {
        old_gks,
        new_gks,
        new_nss,
        union_gks,
        union_nss,
        members,
    })
}

/// Stages 1 and 2: cluster definitions (then CRDs Established and discovery refreshed), then classes.
/// Object failures land in `report`; a failed CRD wait is a failure of the definitions step.
async fn apply_cluster_wide(
    server: &Server,
    plan: &Plan,
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    halt: &Halt<'_>,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let defs = object::apply_group(
        server,
        &plan.cluster_definitions,
        config,
        live,
        Stage::ClusterDefinitions,
        halt,
    )
    .await;
    collect(report, defs);
    let crds: Vec<&PlannedObject> = plan
        .cluster_definitions
        .iter()
        .filter(|o| order::is_crd(&o.id))
        .collect();
    if report.ok() && !crds.is_empty() && !config.stop.requested() {
        if !config.dry_run {
            for crd in &crds {
                let one = [*crd];
                let waited = tokio::select! {
                    r = charts::wait_healthy(server, &one, Duration::from_secs(60)) => r,
                    _ = config.stop.wait() => break,
                };
                if let Err(e) = waited {
                    report.failures.push(Failure {
                        step: Step::ClusterDefinitions,
                        kind: e.kind(),
                        object: Some(crd.id.to_string()),
                        chart: Some(crd.chart.clone()),
                        message: e.to_string(),
                    });
                    break;
                }
            }
        }
        if !config.stop.requested() {
            server
                .refresh()
                .await
                .map_err(server_err(Step::ClusterDefinitions))?;
        }
    }
    if report.ok() {
        let classes =
            object::apply_group(server, &plan.classes, config, live, Stage::Classes, halt).await;
        collect(report, classes);
    }
    Ok(())
}

/// Delete the members that left the render (skipped after a stop, a failure, or with `prune` off).
/// Returns the confirmed deletions, or `None` when no prune ran.
async fn prune_members(
    server: &Server,
    plan: &Plan,
    inv: &Inventory,
    scope: &Scope,
    config: &Config,
    report: &mut ApplyReport,
) -> Result<Option<BTreeSet<ObjectId>>, Error> {
    if !config.prune || !report.ok() || config.stop.requested() {
        return Ok(None);
    }
    let desired: BTreeSet<ObjectId> = plan.all_objects().map(|o| o.id.clone()).collect();
    let pp = match prune::plan(&inv.id(), &desired, &scope.members, &config.prune_limits) {
        Ok(pp) => pp,
        Err(refused) => {
            // Nothing is deleted; the members stay members (and stay recorded in the parent).
            report.failures.push(Failure {
                step: Step::Prune,
                kind: FailureKind::PruneRefused,
                object: None,
                chart: None,
                message: refused.to_string(),
            });
            return Ok(None);
        }
    };
    report.prune_disabled = pp.disabled.clone();
    let chart_of = |id: &ObjectId| prune::chart_of(&scope.members, id);
    for (oid, why) in &pp.keep {
        report.push(ObjectReport {
            object: oid.to_string(),
            id: oid.clone(),
            chart: chart_of(oid),
            step: Step::Prune,
            action: Action::Skipped,
            reason: Some(why.clone()),
            failure: None,
            changes: Vec::new(),
        });
    }
    let mut gone = BTreeSet::new();
    for oid in &pp.delete {
        if config.stop.requested() {
            break;
        }
        report.prunes.push(oid.to_string());
        let result = if config.dry_run {
            Ok(())
        } else {
            match server.delete(oid).await {
                Ok(()) => {
                    let wait =
                        server.wait_deleted(oid, config.timeout.min(Duration::from_secs(120)));
                    tokio::select! {
                        r = wait => r,
                        // Deletion requested but not confirmed: it stays a member until the next prune.
                        _ = config.stop.wait() => break,
                    }
                }
                Err(e) => Err(e),
            }
        };
        let mut r = ObjectReport {
            object: oid.to_string(),
            id: oid.clone(),
            chart: chart_of(oid),
            step: Step::Prune,
            action: Action::Deleted,
            reason: None,
            failure: None,
            changes: Vec::new(),
        };
        match result {
            Ok(()) => {
                gone.insert(oid.clone());
            }
            Err(e) => {
                r.action = Action::Failed;
                r.failure = Some(e.kind());
                r.reason = Some(e.to_string());
            }
        }
        report.push(r);
    }
    Ok(Some(gone))
}

/// Rewrite the parent with the kinds and namespaces still holding members (after a prune, only
/// confirmed deletions are forgotten; without one, the union stays).
async fn close_inventory(
    server: &Server,
    inv: &Inventory,
    scope: &Scope,
    gone: Option<&BTreeSet<ObjectId>>,
    config: &Config,
) -> Result<(), Error> {
    let Some(gone) = gone else {
        return Ok(());
    };
    let mut gks = scope.new_gks.clone();
    let mut nss = scope.new_nss.clone();
    nss.insert(inv.namespace.clone());
    for m in scope.members.iter().filter(|m| !gone.contains(&m.id)) {
        gks.insert(GroupKind::of(&m.id));
        if let Some(ns) = &m.id.namespace {
            nss.insert(ns.clone());
        }
    }
    // Kinds recorded before but not listed (not served any more) are kept: their members are unknown.
    for gk in &scope.old_gks {
        if server.resolve_group_kind(gk).is_none() {
            gks.insert(gk.clone());
        }
    }
    if config.dry_run || (gks == scope.union_gks && nss == scope.union_nss) {
        return Ok(());
    }
    server
        .apply(
            &inv.parent_id(),
            &inv.parent_object(&gks, &nss),
            false,
            true,
        )
        .await
        .map_err(server_err(Step::Inventory))?;
    Ok(())
}

/// What the ApplySet holds after this apply (see [`ApplyReport::members`]); `None` for a dry run.
fn member_ids(
    report: &ApplyReport,
    members: &[prune::Member],
    gone: &BTreeSet<ObjectId>,
) -> Option<Vec<ObjectId>> {
    if report.dry_run {
        return None;
    }
    let mut ids: BTreeSet<ObjectId> = members
        .iter()
        .filter(|m| !gone.contains(&m.id))
        .map(|m| m.id.clone())
        .collect();
    for o in &report.objects {
        let written = match o.action {
            Action::Created | Action::Configured | Action::Unchanged => true,
            Action::Failed => o.transient() && o.step != Step::Prune,
            Action::Deleted | Action::Skipped => false,
        };
        if written {
            ids.insert(o.id.clone());
        }
    }
    Some(ids.into_iter().collect())
}

/// Move a group's object results into the report.
fn collect(report: &mut ApplyReport, results: object::GroupResult) {
    report.not_applied += results.not_started;
    for r in results.reports {
        report.push(r);
    }
}

/// Every live member of the ApplySet (objects labelled part-of our id) in the recorded kinds and namespaces.
pub async fn list_members(
    server: &Server,
    inv: &Inventory,
    gks: &BTreeSet<GroupKind>,
    nss: &BTreeSet<String>,
) -> Result<Vec<prune::Member>, ssa::Error> {
    let selector = inv.member_selector();
    let mut out = Vec::new();
    for gk in gks {
        for obj in server.list(gk, &selector, nss).await? {
            let Ok(id) = ObjectId::of(&obj) else { continue };
            out.push(prune::Member {
                id,
                metadata: obj["metadata"].clone(),
                object: obj,
            });
        }
    }
    Ok(out)
}

/// The engine's futures must be `Send` so the daemon can spawn them.
#[allow(dead_code)]
fn assert_send(
    server: &Server,
    plan: &Plan,
    inv: &Inventory,
    config: &Config,
    progress: &Progress,
) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&apply(server, plan, inv, config, progress));
    is_send(&uninstall(
        server,
        plan,
        inv,
        None,
        false,
        Duration::ZERO,
        progress,
    ));
}

/// Where the inventory was found by [`locate_inventory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// At the place the rule gives (`Inventory::of`).
    Here,
    /// In a place an earlier version used; it is used where it is, so nothing is duplicated.
    Adopted { from: String },
    /// Nowhere: nothing was applied by pailot for this cluster (or it was uninstalled).
    Nowhere,
}

/// The inventory of `cluster`, and where its parent was found.
#[derive(Clone, Debug)]
pub struct Located {
    pub inventory: Inventory,
    pub found: Found,
}

/// Find the inventory of `cluster`: the parent at the place the rule gives, else one that an earlier version
/// left in a legacy namespace (adopted in place), else the rule's place (to be created by the first apply).
pub async fn locate_inventory(
    server: &Server,
    cluster: &crate::cluster::Cluster,
) -> Result<Located, Error> {
    let err = server_err(Step::Inventory);
    let rule = Inventory::of(cluster);
    if server.get(&rule.parent_id()).await.map_err(&err)?.is_some() {
        return Ok(Located {
            inventory: rule,
            found: Found::Here,
        });
    }
    for ns in inventory::LEGACY_NAMESPACES {
        if ns == rule.namespace {
            continue;
        }
        let candidate = Inventory::for_cluster(&cluster.name, ns);
        if let Some(p) = server.get(&candidate.parent_id()).await.map_err(&err)?
            && candidate.check_parent(&p).is_ok()
        {
            return Ok(Located {
                inventory: candidate,
                found: Found::Adopted {
                    from: ns.to_string(),
                },
            });
        }
    }
    Ok(Located {
        inventory: rule,
        found: Found::Nowhere,
    })
}
