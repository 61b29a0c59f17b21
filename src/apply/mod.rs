//! Applies a RenderedSet to the cluster: plan, staged server-side apply of what changed, health, prune, inventory.
//!
//! Flow: `Plan::new` (cycles fail here, before any call) → read the ApplySet parent and write it with the union of
//! old and new group kinds → cluster definitions (CRDs, Namespaces, cluster RBAC) → wait for CRDs Established and
//! re-run discovery → `*Class` kinds → charts along the `dependsOn` graph (at most `Config::concurrency` at once; with
//! `wait`, a chart starts once its dependencies are healthy) → prune → parent rewritten with what is left.
//! Each object: GET live; absent: apply; present: SSA dry-run, compare normalized, apply only when different.
//!
//! Stopping: `Config::stop` is checked before each object, chart, stage and deletion. Once it is set, objects
//! already in flight finish, nothing new starts, health waits are abandoned, prune is skipped, and `apply`
//! returns a report with `stopped: true` (not an error).

pub mod diff;
pub mod health;
pub mod order;
pub mod plan;
pub mod progress;
pub mod prune;
pub mod ssa;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::FIELD_MANAGER;
use crate::inventory::{self, GroupKind, Inventory};
use crate::manifest::{ObjectId, RenderedSet};
use diff::FieldChange;
use health::Health;
use order::Stage;
use plan::{Plan, PlannedObject};
use progress::{ChartState, Progress};
pub use ssa::Server;

/// What stops an apply before or between charts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is invalid (a dependency cycle); nothing was applied.
    #[error("plan: {0}")]
    Plan(#[from] plan::Error),
    /// The ApplySet parent belongs to someone else.
    #[error("inventory: {0}")]
    Inventory(#[from] inventory::Error),
    /// A call failed in a stage, for an object rendered from `template`.
    #[error("stage {stage}: {source}{}", template.as_ref().map(|t| format!(" (rendered from {t})")).unwrap_or_default())]
    Server {
        stage: &'static str,
        template: Option<String>,
        #[source]
        source: ssa::Error,
    },
    /// The prune was refused.
    #[error("prune: {0}")]
    Prune(#[from] prune::Error),
}

fn server_err(stage: &'static str) -> impl Fn(ssa::Error) -> Error {
    move |source| Error::Server {
        stage,
        template: None,
        source,
    }
}

/// A cooperative stop request for an apply (SIGTERM in the daemon, Ctrl-C in `pailot apply`).
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
struct Halt<'a> {
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

    fn halted(&self) -> bool {
        self.stop.requested() || self.transient.load(Ordering::Relaxed)
    }

    /// Why, for a chart that did not start or finish.
    fn why(&self) -> (ChartState, &'static str) {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
    pub stage: &'static str,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Field differences (diff only; Secret values masked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// A failure of the API server or the network (retry later), not of the object.
    #[serde(skip)]
    pub transient: bool,
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
    /// Every failure, each naming the object or chart.
    pub errors: Vec<String>,
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
        self.errors.is_empty()
    }

    /// True when an object failed because of the API server or the network (worth retrying as is).
    pub fn transient_failure(&self) -> bool {
        self.objects
            .iter()
            .any(|o| o.action == Action::Failed && o.transient)
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

    fn push(&mut self, o: ObjectReport) {
        *self.counts.entry(o.action).or_default() += 1;
        self.objects.push(o);
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Desired group kinds and namespaces of the applied objects.
fn desired_scope(plan: &Plan) -> (BTreeSet<GroupKind>, BTreeSet<String>) {
    let mut gks = BTreeSet::new();
    let mut nss = BTreeSet::new();
    for o in plan.applied_objects() {
        gks.insert(GroupKind {
            group: o.id.group.clone(),
            kind: o.id.kind.clone(),
        });
        if let Some(ns) = &o.id.namespace {
            nss.insert(ns.clone());
        }
    }
    (gks, nss)
}

fn parent_id(inv: &Inventory) -> ObjectId {
    ObjectId {
        group: String::new(),
        version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(inv.namespace.clone()),
        name: inv.name.clone(),
    }
}

/// Apply (or, with `config.dry_run`, diff) `set` to the cluster behind `server`.
pub async fn apply(
    server: &Server,
    set: &RenderedSet,
    inv: &Inventory,
    config: &Config,
    progress: &Progress,
) -> Result<ApplyReport, Error> {
    let mut plan = Plan::new(set)?;
    let id = inv.id();
    for o in plan
        .cluster_definitions
        .iter_mut()
        .chain(plan.classes.iter_mut())
    {
        prepare(&mut o.object, &id, &o.chart);
    }
    for c in plan.charts.iter_mut() {
        for o in c.objects.iter_mut() {
            prepare(&mut o.object, &id, &o.chart);
        }
    }
    let mut report = ApplyReport {
        inventory: format!("Secret/{}/{}", inv.namespace, inv.name),
        applyset_id: id.clone(),
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
            stop_chart(c, progress, &mut report, "not started: stop requested");
        }
        return Ok(report);
    }

    // Inventory parent: check ownership, then record the union before touching members (KEP-3659).
    let pid = parent_id(inv);
    let live_parent = server.get(&pid).await.map_err(server_err("inventory"))?;
    let (old_gks, old_nss) = match &live_parent {
        Some(p) => {
            inv.check_parent(p)?;
            inventory::recorded(p)
        }
        None => (BTreeSet::new(), BTreeSet::from([inv.namespace.clone()])),
    };
    let (new_gks, new_nss) = desired_scope(&plan);
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
            .map_err(server_err("inventory"))?;
    }
    // The members as they are now: one LIST per kind and namespace saves a GET per object (the no-op re-apply of
    // a large render is mostly this), and is the prune's candidate list.
    let members = if live_parent.is_some() {
        list_members(server, inv, &old_gks, &union_nss)
            .await
            .map_err(server_err("inventory"))?
    } else {
        Vec::new()
    };
    let live: BTreeMap<ObjectId, Value> = members
        .iter()
        .map(|m| (m.id.clone(), m.object.clone()))
        .collect();

    for o in &plan.skipped {
        report.push(ObjectReport {
            object: o.id.to_string(),
            id: o.id.clone(),
            chart: o.chart.clone(),
            stage: Stage::of(&o.id).name(),
            action: Action::Skipped,
            reason: Some("static pod: written by bootstrap, never applied through the API".into()),
            changes: Vec::new(),
            transient: false,
        });
    }

    // Stage 1: cluster definitions; then CRDs Established and fresh discovery.
    let halt = Halt::new(&config.stop);
    let defs = apply_group(
        server,
        &plan.cluster_definitions,
        config,
        &live,
        Stage::ClusterDefinitions,
        &halt,
    )
    .await;
    let mut fatal = collect(&mut report, defs);
    let crds: Vec<&PlannedObject> = plan
        .cluster_definitions
        .iter()
        .filter(|o| order::is_crd(&o.id))
        .collect();
    if fatal.is_none() && !crds.is_empty() && !config.stop.requested() {
        if !config.dry_run {
            for crd in &crds {
                let one = [*crd];
                let waited = tokio::select! {
                    r = wait_healthy(server, &one, Duration::from_secs(60)) => r,
                    _ = config.stop.wait() => break,
                };
                if let Err(e) = waited {
                    fatal = Some(format!("stage {}: {e}", Stage::ClusterDefinitions.name()));
                    break;
                }
            }
        }
        if !config.stop.requested() {
            server
                .refresh()
                .await
                .map_err(server_err("cluster-definitions"))?;
        }
    }
    // Stage 2: classes.
    if fatal.is_none() {
        let classes =
            apply_group(server, &plan.classes, config, &live, Stage::Classes, &halt).await;
        fatal = collect(&mut report, classes);
    }
    if let Some(e) = fatal {
        report.errors.push(e);
        for c in &plan.charts {
            progress.set(&c.name, ChartState::Blocked, "an earlier stage failed");
            report.charts.push(chart_report(
                c,
                ChartState::Blocked,
                None,
                None,
                None,
                Some("an earlier stage failed".into()),
            ));
        }
        report.members = member_ids(&report, &members, &BTreeSet::new());
        return Ok(report);
    }

    // Stage 3: charts along the dependency graph (none starts once a stop is requested).
    run_charts(server, &plan, config, &live, progress, &mut report, &halt).await;

    // Prune (skipped after a stop: the next apply does it).
    let mut remaining_gks = union_gks.clone();
    let mut remaining_nss = union_nss.clone();
    let mut gone = BTreeSet::new();
    if config.prune && report.ok() && !config.stop.requested() {
        let desired: BTreeSet<ObjectId> = plan.all_objects().map(|o| o.id.clone()).collect();
        let pp = prune::plan(&id, &desired, &members, &config.prune_limits)?;
        report.prune_disabled = pp.disabled.clone();
        for (oid, why) in &pp.keep {
            report.push(ObjectReport {
                object: oid.to_string(),
                id: oid.clone(),
                chart: chart_of(&members, oid),
                stage: "prune",
                action: Action::Skipped,
                reason: Some(why.clone()),
                changes: Vec::new(),
                transient: false,
            });
        }
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
            let (action, reason, transient) = match result {
                Ok(()) => {
                    gone.insert(oid.clone());
                    (Action::Deleted, None, false)
                }
                Err(e) => {
                    report.errors.push(format!("stage prune: {e}"));
                    (Action::Failed, Some(e.to_string()), e.is_transient())
                }
            };
            report.push(ObjectReport {
                object: oid.to_string(),
                id: oid.clone(),
                chart: chart_of(&members, oid),
                stage: "prune",
                action,
                reason,
                changes: Vec::new(),
                transient,
            });
        }
        // Forget only confirmed deletions: keep the kinds/namespaces of everything still there.
        remaining_gks = new_gks.clone();
        remaining_nss = new_nss.clone();
        remaining_nss.insert(inv.namespace.clone());
        for m in members.iter().filter(|m| !gone.contains(&m.id)) {
            remaining_gks.insert(GroupKind {
                group: m.id.group.clone(),
                kind: m.id.kind.clone(),
            });
            if let Some(ns) = &m.id.namespace {
                remaining_nss.insert(ns.clone());
            }
        }
    }
    report.members = member_ids(&report, &members, &gone);
    if config.stop.requested() {
        // The parent keeps the union written above: it covers every member, old and new.
        report.stopped = true;
        return Ok(report);
    }
    if !config.dry_run && (remaining_gks != union_gks || remaining_nss != union_nss) {
        server
            .apply(
                &pid,
                &inv.parent_object(&remaining_gks, &remaining_nss),
                false,
                true,
            )
            .await
            .map_err(server_err("inventory"))?;
    }
    Ok(report)
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
            Action::Failed => o.transient && o.stage != "prune",
            Action::Deleted | Action::Skipped => false,
        };
        if written {
            ids.insert(o.id.clone());
        }
    }
    Some(ids.into_iter().collect())
}

/// Report a chart that a stop request kept from starting (or from being awaited).
fn stop_chart(c: &plan::ChartPlan, progress: &Progress, report: &mut ApplyReport, why: &str) {
    progress.set(&c.name, ChartState::Stopped, why);
    report.charts.push(chart_report(
        c,
        ChartState::Stopped,
        None,
        None,
        None,
        Some(why.to_string()),
    ));
}

/// Label an object as a member of the ApplySet and stamp the hash of what is applied.
fn prepare(object: &mut Value, applyset_id: &str, chart: &str) {
    inventory::label_member(object, applyset_id, chart);
    let hash = diff::desired_hash(object);
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(ann) = ann.as_object_mut() {
            ann.insert(diff::DESIRED_HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
}

/// The object pailot last applied is live unchanged: same desired hash, and every field it sets still has
/// its value (drift on a field pailot sets fails the second test).
fn unchanged_fast(desired: &Value, live: &Value) -> bool {
    let key = diff::DESIRED_HASH_ANNOTATION;
    desired["metadata"]["annotations"][key].is_string()
        && desired["metadata"]["annotations"][key] == live["metadata"]["annotations"][key]
        && diff::is_subset(desired, live)
}

fn chart_of(members: &[prune::Member], id: &ObjectId) -> String {
    members
        .iter()
        .find(|m| &m.id == id)
        .and_then(|m| m.metadata["labels"][inventory::CHART_LABEL].as_str())
        .unwrap_or("")
        .to_string()
}

fn chart_report(
    c: &plan::ChartPlan,
    state: ChartState,
    started: Option<u128>,
    finished: Option<u128>,
    healthy: Option<u128>,
    message: Option<String>,
) -> ChartReport {
    ChartReport {
        name: c.name.clone(),
        depends_on: c.depends_on.clone(),
        state,
        started_ms: started,
        finished_ms: finished,
        healthy_ms: healthy,
        message,
    }
}

/// Move object results into the report; the first error, if any.
fn collect(report: &mut ApplyReport, results: GroupResult) -> Option<String> {
    let mut first = None;
    report.not_applied += results.not_started;
    for r in results.reports {
        if r.action == Action::Failed {
            let msg = r.reason.clone().unwrap_or_default();
            report.errors.push(msg.clone());
            first.get_or_insert(msg);
        }
        report.push(r);
    }
    first
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

/// What one group of objects came to: one report per object started, and how many a stop kept from starting.
struct GroupResult {
    reports: Vec<ObjectReport>,
    not_started: usize,
}

/// Apply one group of objects: rank by rank, objects of a rank concurrently; one report per object.
/// Once a stop is requested no further object starts (those in flight finish).
async fn apply_group(
    server: &Server,
    objects: &[PlannedObject],
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    stage: Stage,
    halt: &Halt<'_>,
) -> GroupResult {
    let mut out = Vec::new();
    let mut not_started = 0;
    let mut i = 0;
    while i < objects.len() {
        if halt.halted() {
            not_started += objects.len() - i;
            break;
        }
        let rank = order::kind_rank(&objects[i].id.kind);
        let mut j = i;
        while j < objects.len()
            && (stage != Stage::Workloads || order::kind_rank(&objects[j].id.kind) == rank)
        {
            j += 1;
        }
        // In the definitions stage, CRDs and Namespaces go before cluster RBAC: keep them sequential by kind.
        if stage == Stage::ClusterDefinitions {
            j = i + 1;
            while j < objects.len() && objects[j].id.kind == objects[i].id.kind {
                j += 1;
            }
        }
        // Futures built up front (not in a stream closure) keep the whole apply future `Send`.
        let futures: Vec<_> = objects[i..j]
            .iter()
            .map(|o| apply_object(server, o, config, live.get(&o.id), stage, halt))
            .collect();
        let results: Vec<Option<ObjectReport>> = futures::stream::iter(futures)
            .buffered(config.object_concurrency.max(1))
            .collect()
            .await;
        for r in results {
            match r {
                Some(r) => out.push(r),
                None => not_started += 1,
            }
        }
        i = j;
    }
    GroupResult {
        reports: out,
        not_started,
    }
}

/// GET live, dry-run SSA, compare; apply for real only when different. `None`: not started (halted).
async fn apply_object(
    server: &Server,
    o: &PlannedObject,
    config: &Config,
    listed: Option<&Value>,
    stage: Stage,
    halt: &Halt<'_>,
) -> Option<ObjectReport> {
    if halt.halted() {
        return None;
    }
    let r = apply_started_object(server, o, config, listed, stage).await;
    if r.transient {
        halt.transient.store(true, Ordering::Relaxed);
    }
    Some(r)
}

async fn apply_started_object(
    server: &Server,
    o: &PlannedObject,
    config: &Config,
    listed: Option<&Value>,
    stage: Stage,
) -> ObjectReport {
    let mut r = ObjectReport {
        object: o.id.to_string(),
        id: o.id.clone(),
        chart: o.chart.clone(),
        stage: stage.name(),
        action: Action::Failed,
        reason: None,
        changes: Vec::new(),
        transient: false,
    };
    let fail = |r: &mut ObjectReport, e: ssa::Error| {
        r.transient = e.is_transient();
        r.reason = Some(format!(
            "stage {}: {e} (rendered from {})",
            stage.name(),
            o.template
        ));
    };
    if config.dry_run && !server.knows(&o.id) {
        // A custom resource whose CRD is part of this apply: the API server cannot dry-run it yet.
        r.action = Action::Created;
        r.reason = Some(format!(
            "{} {} is not served yet (its CRD is created by this apply)",
            o.id.api_version(),
            o.id.kind
        ));
        return r;
    }
    let fetched = match listed {
        Some(l) => Ok(Some(l.clone())),
        None => server.get(&o.id).await,
    };
    let live = match fetched {
        Ok(l) => l,
        Err(e) => {
            fail(&mut r, e);
            return r;
        }
    };
    // Absent: nothing to compare, so no dry run; apply it.
    if live.is_none() && !config.dry_run {
        r.action = Action::Created;
        if let Err(e) = server
            .apply(&o.id, &o.object, false, config.force_conflicts)
            .await
        {
            r.action = Action::Failed;
            fail(&mut r, e);
        }
        return r;
    }
    if let Some(l) = &live
        && unchanged_fast(&o.object, l)
    {
        r.action = Action::Unchanged;
        return r;
    }
    // A diff always dry-runs with force so it can show the result; the owners of contested fields are listed.
    let force = config.force_conflicts || config.dry_run;
    let dry = match server.apply(&o.id, &o.object, true, force).await {
        Ok(d) => d,
        Err(ssa::Error::Api {
            source: kube::Error::Api(s),
            ..
        }) if config.dry_run && live.is_none() && s.code == 404 => {
            // Its namespace is created by this apply: nothing to dry-run against yet.
            r.action = Action::Created;
            r.reason = Some(format!(
                "namespace {} is created by this apply",
                o.id.namespace.as_deref().unwrap_or("")
            ));
            return r;
        }
        Err(e) => {
            fail(&mut r, e);
            return r;
        }
    };
    // A controller may have written the object between our read and the dry run (the Deployment controller's
    // revision annotation right after a create): on a difference, read and dry-run once more before calling it
    // changed.
    let (live, dry) = match &live {
        Some(l) if diff::normalize(l) != diff::normalize(&dry) => {
            match (
                server.get(&o.id).await,
                server.apply(&o.id, &o.object, true, force).await,
            ) {
                (Ok(Some(l2)), Ok(d2)) => (Some(l2), d2),
                _ => (live, dry),
            }
        }
        _ => (live, dry),
    };
    match &live {
        Some(l) if diff::normalize(l) == diff::normalize(&dry) => {
            r.action = Action::Unchanged;
            return r;
        }
        Some(l) => {
            r.action = Action::Configured;
            if config.dry_run {
                r.changes = diff::field_changes(l, &dry, FIELD_MANAGER);
            }
        }
        None => r.action = Action::Created,
    }
    if !config.dry_run
        && let Err(e) = server
            .apply(&o.id, &o.object, false, config.force_conflicts)
            .await
    {
        r.action = Action::Failed;
        fail(&mut r, e);
    }
    r
}

/// Charts along the DAG with bounded concurrency; fills chart reports.
async fn run_charts(
    server: &Server,
    plan: &Plan,
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    progress: &Progress,
    report: &mut ApplyReport,
    halt: &Halt<'_>,
) {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        Pending,
        Running,
        Done,
        Failed,
        Stopped,
    }
    let mut state: BTreeMap<&str, S> = plan
        .charts
        .iter()
        .map(|c| (c.name.as_str(), S::Pending))
        .collect();
    let mut chart_reports: BTreeMap<String, ChartReport> = BTreeMap::new();
    let report_mx = Mutex::new(std::mem::take(report));
    let mut running = FuturesUnordered::new();
    loop {
        // Block charts whose dependencies failed; start ready ones.
        for c in &plan.charts {
            if state[c.name.as_str()] != S::Pending {
                continue;
            }
            if let Some(bad) = c
                .depends_on
                .iter()
                .find(|d| state.get(d.as_str()) == Some(&S::Failed))
            {
                let msg = format!("not applied: dependency {bad:?} failed");
                state.insert(&c.name, S::Failed);
                progress.set(&c.name, ChartState::Blocked, &msg);
                chart_reports.insert(
                    c.name.clone(),
                    chart_report(c, ChartState::Blocked, None, None, None, Some(msg)),
                );
                continue;
            }
            let ready = c
                .depends_on
                .iter()
                .all(|d| state.get(d.as_str()).is_none_or(|s| *s == S::Done));
            if ready && running.len() < config.concurrency.max(1) && !halt.halted() {
                state.insert(&c.name, S::Running);
                let report_mx = &report_mx;
                running.push(async move {
                    let started = now_ms();
                    progress.set(
                        &c.name,
                        ChartState::Applying,
                        &format!("{} objects", c.objects.len()),
                    );
                    let results =
                        apply_group(server, &c.objects, config, live, Stage::Workloads, halt).await;
                    let not_started = results.not_started;
                    let err = collect(&mut report_mx.lock().expect("report lock"), results);
                    let finished = now_ms();
                    if let Some(e) = err {
                        progress.set(&c.name, ChartState::Failed, &e);
                        return (
                            c,
                            chart_report(
                                c,
                                ChartState::Failed,
                                Some(started),
                                Some(finished),
                                None,
                                Some(e),
                            ),
                        );
                    }
                    if not_started > 0 {
                        let (state, why) = halt.why();
                        let msg = format!(
                            "{not_started} of {} objects not applied: {why}",
                            c.objects.len()
                        );
                        progress.set(&c.name, state, &msg);
                        return (
                            c,
                            chart_report(c, state, Some(started), Some(finished), None, Some(msg)),
                        );
                    }
                    if !config.wait || config.dry_run {
                        progress.set(&c.name, ChartState::Applied, "");
                        return (
                            c,
                            chart_report(
                                c,
                                ChartState::Applied,
                                Some(started),
                                Some(finished),
                                None,
                                None,
                            ),
                        );
                    }
                    progress.set(&c.name, ChartState::WaitingHealthy, "");
                    let objs: Vec<&PlannedObject> = plan
                        .applied_objects()
                        .filter(|o| o.chart == c.name)
                        .collect();
                    let waited = tokio::select! {
                        r = wait_healthy(server, &objs, config.timeout) => Some(r),
                        _ = config.stop.wait() => None,
                    };
                    match waited {
                        None => {
                            let msg = "applied; health not awaited: stop requested";
                            progress.set(&c.name, ChartState::Stopped, msg);
                            (
                                c,
                                chart_report(
                                    c,
                                    ChartState::Stopped,
                                    Some(started),
                                    Some(finished),
                                    None,
                                    Some(msg.into()),
                                ),
                            )
                        }
                        Some(Ok(())) => {
                            progress.set(&c.name, ChartState::Healthy, "");
                            (
                                c,
                                chart_report(
                                    c,
                                    ChartState::Healthy,
                                    Some(started),
                                    Some(finished),
                                    Some(now_ms()),
                                    None,
                                ),
                            )
                        }
                        Some(Err(e)) => {
                            let msg = format!("chart {}: {e}", c.name);
                            progress.set(&c.name, ChartState::Failed, &e);
                            (
                                c,
                                chart_report(
                                    c,
                                    ChartState::Failed,
                                    Some(started),
                                    Some(finished),
                                    None,
                                    Some(msg),
                                ),
                            )
                        }
                    }
                });
            }
        }
        let Some((c, cr)) = running.next().await else {
            break;
        };
        let failed = cr.state == ChartState::Failed;
        let s = match cr.state {
            ChartState::Failed | ChartState::Blocked => S::Failed,
            ChartState::Stopped => S::Stopped,
            _ => S::Done,
        };
        state.insert(&c.name, s);
        if failed && let Some(m) = &cr.message {
            let mut r = report_mx.lock().expect("report lock");
            if !r.errors.contains(m) {
                r.errors.push(m.clone());
            }
        }
        chart_reports.insert(c.name.clone(), cr);
    }
    drop(running);
    *report = report_mx.into_inner().expect("report lock");
    for c in &plan.charts {
        if let Some(cr) = chart_reports.remove(&c.name) {
            report.charts.push(cr);
        } else if state[c.name.as_str()] == S::Pending {
            // Never started: only a halt leaves a chart pending.
            report.not_applied += c.objects.len();
            let (state, why) = halt.why();
            let why = format!("not started: {why}");
            progress.set(&c.name, state, &why);
            report
                .charts
                .push(chart_report(c, state, None, None, None, Some(why)));
        }
    }
}

/// Poll until every object is healthy; on timeout or failure, name each unhealthy object and why
/// (for workloads, the problems of their pods, e.g. the scheduler's "Insufficient memory").
pub async fn wait_healthy(
    server: &Server,
    objects: &[&PlannedObject],
    timeout: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut problems = Vec::new();
        let mut failed = false;
        for o in objects {
            let live = match server.get(&o.id).await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    problems.push((o, Value::Null, "not found".to_string()));
                    continue;
                }
                Err(e) => {
                    problems.push((o, Value::Null, e.to_string()));
                    continue;
                }
            };
            match health::assess(&live) {
                Health::Current => {}
                Health::InProgress(why) => problems.push((o, live, why)),
                Health::Failed(why) => {
                    failed = true;
                    problems.push((o, live, why));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        if failed || start.elapsed() >= timeout {
            let mut lines = Vec::new();
            for (o, live, why) in problems {
                let mut line = format!("{}: {why}", o.id);
                if health::has_pods(&o.id.kind)
                    && let (Some(sel), Some(ns)) = (health::pod_selector(&live), &o.id.namespace)
                {
                    let pod_gk = GroupKind {
                        group: String::new(),
                        kind: "Pod".into(),
                    };
                    if let Ok(pods) = server
                        .list(&pod_gk, &sel, &BTreeSet::from([ns.clone()]))
                        .await
                    {
                        for p in pods {
                            if let Some(problem) = health::pod_problem(&p) {
                                line.push_str(&format!(
                                    "; pod {} {problem}",
                                    p["metadata"]["name"].as_str().unwrap_or("?")
                                ));
                            }
                        }
                    }
                }
                lines.push(line);
            }
            let head = if failed {
                "unhealthy".to_string()
            } else {
                format!("not healthy after {} s", timeout.as_secs())
            };
            return Err(format!("{head}: {}", lines.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The engine's futures must be `Send` so the daemon can spawn them.
#[allow(dead_code)]
fn assert_send(
    server: &Server,
    set: &RenderedSet,
    inv: &Inventory,
    config: &Config,
    progress: &Progress,
) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&apply(server, set, inv, config, progress));
    is_send(&uninstall(
        server,
        set,
        inv,
        None,
        false,
        Duration::ZERO,
        progress,
    ));
}

/// What `uninstall` did.
#[derive(Clone, Debug, Serialize, Default)]
pub struct UninstallReport {
    pub deleted: Vec<String>,
    pub kept: Vec<String>,
    pub errors: Vec<String>,
    /// True when the ApplySet parent was deleted too (nothing left in it).
    pub parent_deleted: bool,
}

/// Delete the inventory's members (only those of `only_chart` when given), charts in reverse dependency order,
/// waiting for each chart's deletions; protected kinds stay unless `allow_protected`.
pub async fn uninstall(
    server: &Server,
    set: &RenderedSet,
    inv: &Inventory,
    only_chart: Option<&str>,
    allow_protected: bool,
    timeout: Duration,
    progress: &Progress,
) -> Result<UninstallReport, Error> {
    let plan = Plan::new(set)?;
    let pid = parent_id(inv);
    let mut out = UninstallReport::default();
    let Some(parent) = server.get(&pid).await.map_err(server_err("uninstall"))? else {
        return Ok(out);
    };
    inv.check_parent(&parent)?;
    let (gks, nss) = inventory::recorded(&parent);
    let members = list_members(server, inv, &gks, &nss)
        .await
        .map_err(server_err("uninstall"))?;
    let chart_label = |m: &prune::Member| {
        m.metadata["labels"][inventory::CHART_LABEL]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // Unknown charts first (nothing depends on them), then the plan's charts in reverse order.
    let known: Vec<String> = plan.charts.iter().map(|c| c.name.clone()).collect();
    let mut order: Vec<String> = members
        .iter()
        .map(chart_label)
        .filter(|c| !known.contains(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    order.extend(known.into_iter().rev());
    if let Some(only) = only_chart {
        order.retain(|c| c == only);
    }
    for chart in &order {
        let mine: Vec<&prune::Member> = members
            .iter()
            .filter(|m| &chart_label(m) == chart)
            .collect();
        if mine.is_empty() {
            continue;
        }
        progress.set(chart, ChartState::Applying, "deleting");
        let mut deleted = Vec::new();
        for m in mine {
            if prune::is_protected(&m.id)
                && !allow_protected
                && m.metadata["annotations"][prune::PRUNE_ANNOTATION].as_str() != Some("allow")
            {
                out.kept.push(m.id.to_string());
                continue;
            }
            match server.delete(&m.id).await {
                Ok(()) => deleted.push(&m.id),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        for id in deleted {
            match server.wait_deleted(id, timeout).await {
                Ok(()) => out.deleted.push(id.to_string()),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        progress.set(
            chart,
            if out.errors.is_empty() {
                ChartState::Healthy
            } else {
                ChartState::Failed
            },
            "deleted",
        );
    }
    if only_chart.is_none() && out.errors.is_empty() && out.kept.is_empty() {
        server.delete(&pid).await.map_err(server_err("uninstall"))?;
        out.parent_deleted = true;
    }
    Ok(out)
}
