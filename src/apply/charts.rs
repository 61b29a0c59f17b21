//! Charts along the `dependsOn` graph: at most `Config::concurrency` at once, each applied then (with `wait`) awaited healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;

use super::health::{self, Health};
use super::object;
use super::plan::{ChartPlan, Plan, PlannedObject};
use super::progress::{ChartState, Progress};
use super::{ApplyReport, ChartReport, Config, FailureKind, Halt, Server};
use crate::clock::unix_now_ms;
use crate::inventory::GroupKind;
use crate::manifest::ObjectId;
use crate::order::Stage;

/// When a chart started, finished its objects and became healthy (ms since the Unix epoch).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Times {
    started: Option<u128>,
    finished: Option<u128>,
    healthy: Option<u128>,
}

pub(crate) fn chart_report(
    c: &ChartPlan,
    state: ChartState,
    times: Times,
    message: Option<String>,
) -> ChartReport {
    ChartReport {
        name: c.name.clone(),
        depends_on: c.depends_on.clone(),
        state,
        started_ms: times.started,
        finished_ms: times.finished,
        healthy_ms: times.healthy,
        message,
    }
}

/// Report a chart that a stop request kept from starting (or from being awaited).
pub(crate) fn stop_chart(c: &ChartPlan, progress: &Progress, report: &mut ApplyReport, why: &str) {
    progress.set(&c.name, ChartState::Stopped, why);
    report.charts.push(chart_report(
        c,
        ChartState::Stopped,
        Times::default(),
        Some(why.to_string()),
    ));
}

/// Where a chart is in the scheduler.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Pending,
    Running,
    Done,
    Failed,
    Stopped,
}

/// Charts along the DAG with bounded concurrency; fills chart reports (and chart failures) into `report`.
pub(crate) async fn run(
    server: &Server,
    plan: &Plan,
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    progress: &Progress,
    report: &mut ApplyReport,
    halt: &Halt<'_>,
) {
    let mut slots: BTreeMap<&str, Slot> = plan
        .charts
        .iter()
        .map(|c| (c.name.as_str(), Slot::Pending))
        .collect();
    let mut chart_reports: BTreeMap<String, ChartReport> = BTreeMap::new();
    let shared = Mutex::new(std::mem::take(report));
    let mut running = FuturesUnordered::new();
    loop {
        for c in &plan.charts {
            if slots[c.name.as_str()] != Slot::Pending {
                continue;
            }
            if let Some(bad) = c
                .depends_on
                .iter()
                .find(|d| slots.get(d.as_str()) == Some(&Slot::Failed))
            {
                let msg = format!("not applied: dependency {bad:?} failed");
                slots.insert(&c.name, Slot::Failed);
                progress.set(&c.name, ChartState::Blocked, &msg);
                chart_reports.insert(
                    c.name.clone(),
                    chart_report(c, ChartState::Blocked, Times::default(), Some(msg)),
                );
                continue;
            }
            let ready = c
                .depends_on
                .iter()
                .all(|d| slots.get(d.as_str()).is_none_or(|s| *s == Slot::Done));
            if ready && running.len() < config.concurrency.max(1) && !halt.halted() {
                slots.insert(&c.name, Slot::Running);
                running.push(run_chart(
                    server, plan, c, config, live, progress, &shared, halt,
                ));
            }
        }
        let Some((c, cr)) = running.next().await else {
            break;
        };
        let slot = match cr.state {
            ChartState::Failed | ChartState::Blocked => Slot::Failed,
            ChartState::Stopped => Slot::Stopped,
            _ => Slot::Done,
        };
        slots.insert(&c.name, slot);
        chart_reports.insert(c.name.clone(), cr);
    }
    drop(running);
    *report = shared.into_inner().expect("report lock");
    for c in &plan.charts {
        if let Some(cr) = chart_reports.remove(&c.name) {
            report.charts.push(cr);
        } else if slots[c.name.as_str()] == Slot::Pending {
            // Never started: only a halt leaves a chart pending.
            report.not_applied += c.objects.len();
            let (state, why) = halt.why();
            let why = format!("not started: {why}");
            progress.set(&c.name, state, &why);
            report
                .charts
                .push(chart_report(c, state, Times::default(), Some(why)));
        }
    }
}

/// One chart: its objects, then (with `wait`) its health.
#[allow(clippy::too_many_arguments)]
async fn run_chart<'a>(
    server: &Server,
    plan: &Plan,
    c: &'a ChartPlan,
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    progress: &Progress,
    shared: &Mutex<ApplyReport>,
    halt: &Halt<'_>,
) -> (&'a ChartPlan, ChartReport) {
    let mut times = Times {
        started: Some(unix_now_ms()),
        ..Default::default()
    };
    progress.set(
        &c.name,
        ChartState::Applying,
        &format!("{} objects", c.objects.len()),
    );
    let results =
        object::apply_group(server, &c.objects, config, live, Stage::Workloads, halt).await;
    let not_started = results.not_started;
    let first_error = {
        let mut r = shared.lock().expect("report lock");
        let before = r.failures.len();
        super::collect(&mut r, results);
        r.failures.get(before).map(|f| f.message.clone())
    };
    times.finished = Some(unix_now_ms());
    let done = |state: ChartState, times: Times, msg: Option<String>| {
        progress.set(&c.name, state, msg.as_deref().unwrap_or(""));
        (c, chart_report(c, state, times, msg))
    };
    if let Some(e) = first_error {
        return done(ChartState::Failed, times, Some(e));
    }
    if not_started > 0 {
        let (state, why) = halt.why();
        let msg = format!(
            "{not_started} of {} objects not applied: {why}",
            c.objects.len()
        );
        return done(state, times, Some(msg));
    }
    if !config.wait || config.dry_run {
        return done(ChartState::Applied, times, None);
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
        None => done(
            ChartState::Stopped,
            times,
            Some("applied; health not awaited: stop requested".into()),
        ),
        Some(Ok(())) => {
            times.healthy = Some(unix_now_ms());
            done(ChartState::Healthy, times, None)
        }
        Some(Err(e)) => {
            let msg = format!("chart {}: {e}", c.name);
            shared
                .lock()
                .expect("report lock")
                .push_chart_failure(&c.name, e.kind(), msg.clone());
            done(ChartState::Failed, times, Some(msg))
        }
    }
}

/// Why objects are not healthy: each unhealthy object and why, and whether the time ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", if *timed_out { format!("not healthy after {} s", timeout.as_secs()) } else { "unhealthy".to_string() }, problems.join("; "))]
pub struct HealthError {
    /// False when an object reported a failure (it will not converge without a change).
    pub timed_out: bool,
    pub timeout: Duration,
    /// `Kind/ns/name: why` (with the problems of its pods, e.g. the scheduler's "Insufficient memory").
    pub problems: Vec<String>,
}

impl HealthError {
    pub fn kind(&self) -> FailureKind {
        if self.timed_out {
            FailureKind::HealthTimeout
        } else {
            FailureKind::Unhealthy
        }
    }
}

/// Poll until every object is healthy; on timeout or failure, name each unhealthy object and why.
pub async fn wait_healthy(
    server: &Server,
    objects: &[&PlannedObject],
    timeout: Duration,
) -> Result<(), HealthError> {
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
                lines.push(describe_problem(server, o, &live, &why).await);
            }
            return Err(HealthError {
                timed_out: !failed,
                timeout,
                problems: lines,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `Kind/ns/name: why`, plus the problems of its pods for workloads.
async fn describe_problem(server: &Server, o: &PlannedObject, live: &Value, why: &str) -> String {
    let mut line = format!("{}: {why}", o.id);
    if health::has_pods(&o.id.kind)
        && let (Some(sel), Some(ns)) = (health::pod_selector(live), &o.id.namespace)
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
    line
}
