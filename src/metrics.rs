//! Prometheus metrics of the daemon (ARCHITECTURE.md §6): a typed `Metrics` handle over one registry, bounded labels only.
//!
//! Counters are registered without the `_total` suffix (the encoders add it). Every label value
//! comes from a small enum or from a chart name; chart names come from the repository and are
//! additionally capped at [`MAX_CHART_LABELS`] distinct values (the rest share `_other`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::apply::Action;
use crate::failure::{Failure, Reason, Stage};

/// Most distinct `chart` label values kept; further charts are counted under `_other`.
pub const MAX_CHART_LABELS: usize = 512;
/// Content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text exposition (what `promtool check metrics` reads).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of `pailot_reconcile_duration_seconds`: 10 ms … 30 min.
const RECONCILE_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0,
];
/// Buckets of `pailot_source_fetch_duration_seconds`: 5 ms … 5 min.
const FETCH_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not be encoded (a formatter error; not expected in practice).
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Outcome of one reconcile (`pailot_reconcile_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconcileResult {
    Success,
    Failure,
}

impl ReconcileResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Failure => "failure",
        }
    }
}

/// Outcome of one source fetch (`pailot_source_fetch_duration_seconds{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FetchResult {
    Success,
    Failure,
}

impl FetchResult {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Success => "success",
            FetchResult::Failure => "failure",
        }
    }
}

/// Why a prune was not done (`pailot_prune_blocked_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PruneBlockedReason {
    /// More objects would be deleted than the mass-prune threshold allows.
    MassPruneThreshold,
}

impl PruneBlockedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PruneBlockedReason::MassPruneThreshold => "mass_prune_threshold",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    stage: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailingLabels {
    stage: &'static str,
    reason: &'static str,
    chart: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChartLabels {
    chart: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert: String,
}

/// Scrape-time collector of the notifier's counters: `pailot_notifications_total{sink,result}`, one
/// series per configured sink and result (`sent`, `failed`, `dropped`, `deduplicated`), plus
/// `sink="(queue)"` for events dropped before any sink saw them.
#[derive(Debug)]
struct NotificationCollector(std::sync::Arc<Mutex<Option<crate::notification::Notifier>>>);

impl Collector for NotificationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(notifier) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        if !notifier.enabled() {
            return Ok(());
        }
        let stats = notifier.stats();
        let family = Family::<SinkResultLabels, Counter>::default();
        let put = |sink: &str, result: &'static str, n: u64| {
            family
                .get_or_create(&SinkResultLabels {
                    sink: sink.to_string(),
                    result,
                })
                .inc_by(n);
        };
        put("(queue)", "dropped", stats.queue_dropped);
        for s in &stats.sinks {
            put(&s.name, "sent", s.sent);
            put(&s.name, "failed", s.failed);
            put(&s.name, "dropped", s.dropped);
            put(&s.name, "deduplicated", s.deduplicated);
        }
        let metric = encoder.encode_descriptor(
            "pailot_notifications",
            "Notifications and commit statuses, by sink and result.",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkResultLabels {
    sink: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    item: String,
}

/// Most `pailot_bootstrap_missing` series at once.
const MAX_BOOTSTRAP_ITEMS: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

fn fetch_histogram() -> Histogram {
    Histogram::new(FETCH_BUCKETS)
}

/// Scrape-time collector of the daemon's resident memory (`pailot_process_resident_memory_bytes`).
#[derive(Debug)]
struct ProcessCollector;

/// Resident set size of this process in bytes, from `/proc/self/status` (`VmRSS`, exact in kB).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = resident_memory_bytes() {
            let gauge = ConstGauge::new(rss as i64);
            let metric = encoder.encode_descriptor(
                "pailot_process_resident_memory_bytes",
                "Resident memory of the pailot process, read at scrape time.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The daemon's metrics: cheap to share (`Arc<Metrics>`), every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    failures_total: Family<FailureLabels, Counter>,
    reconcile_failing: Family<FailingLabels, Gauge>,
    last_success: F64Gauge,
    revision_info: Family<RevisionLabels, Gauge>,
    fetch_duration: Family<ResultLabels, Histogram, fn() -> Histogram>,
    apply_objects_total: Family<ActionLabels, Counter>,
    inventory_objects: Gauge,
    drifted_objects: Family<ChartLabels, Gauge>,
    drift_detected_total: Family<ChartLabels, Counter>,
    chart_ready: Family<ChartLabels, Gauge>,
    prune_blocked_total: Family<ReasonLabels, Counter>,
    rollbacks_total: Counter,
    bootstrap_complete: Gauge,
    bootstrap_missing: Family<ItemLabels, Gauge>,
    suspended: Gauge,
    certificate_expiry: Family<CertLabels, Gauge>,
    /// The notifier whose counters `pailot_notifications_total` shows (set once the daemon has one).
    notifications: std::sync::Arc<Mutex<Option<crate::notification::Notifier>>>,
    leader: Gauge,
    /// Serialises the "one live series" updates (revision, failing).
    single_series: Mutex<()>,
    /// Chart label values seen so far (bounded by [`MAX_CHART_LABELS`]).
    charts: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with the whole catalogue registered; `pailot_build_info` carries this build's version.
    pub fn new() -> Self {
        Metrics::with_version(crate::VERSION)
    }

    /// Like [`Metrics::new`] with an explicit version label.
    pub fn with_version(version: &str) -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        registry.register(
            "pailot_reconcile",
            "Reconciles finished, by result.",
            reconcile_total.clone(),
        );
        let reconcile_duration = reconcile_histogram();
        registry.register(
            "pailot_reconcile_duration_seconds",
            "Duration of whole reconciles (fetch to healthy).",
            reconcile_duration.clone(),
        );
        let failures_total = Family::<FailureLabels, Counter>::default();
        registry.register(
            "pailot_reconcile_failures",
            "Reconcile failures, by stage and reason.",
            failures_total.clone(),
        );
        let reconcile_failing = Family::<FailingLabels, Gauge>::default();
        registry.register(
            "pailot_reconcile_failing",
            "1 while the latest reconcile failed (one series: its stage, reason and chart); absent after a success.",
            reconcile_failing.clone(),
        );
        let last_success = F64Gauge::default();
        registry.register(
            "pailot_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile (0 before the first).",
            last_success.clone(),
        );
        let start_time = F64Gauge::default();
        start_time.set(crate::clock::unix_now_f64());
        registry.register(
            "pailot_start_time_seconds",
            "Unix time the daemon started.",
            start_time.clone(),
        );
        let revision_info = Family::<RevisionLabels, Gauge>::default();
        registry.register(
            "pailot_source_revision_info",
            "The revision (git commit) last applied; one series with value 1.",
            revision_info.clone(),
        );
        let fetch_duration =
            Family::<ResultLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                fetch_histogram as fn() -> Histogram,
            );
        registry.register(
            "pailot_source_fetch_duration_seconds",
            "Duration of source fetches, by result.",
            fetch_duration.clone(),
        );
        let apply_objects_total = Family::<ActionLabels, Counter>::default();
        registry.register(
            "pailot_apply_objects",
            "Objects handled by apply, by action.",
            apply_objects_total.clone(),
        );
        let inventory_objects = Gauge::default();
        registry.register(
            "pailot_inventory_objects",
            "Objects in the inventory (what pailot manages).",
            inventory_objects.clone(),
        );
        let drifted_objects = Family::<ChartLabels, Gauge>::default();
        registry.register(
            "pailot_drifted_objects",
            "Managed objects whose live state differs from the render, by chart.",
            drifted_objects.clone(),
        );
        let drift_detected_total = Family::<ChartLabels, Counter>::default();
        registry.register(
            "pailot_drift_detected",
            "Drift detections (objects found drifted), by chart.",
            drift_detected_total.clone(),
        );
        let chart_ready = Family::<ChartLabels, Gauge>::default();
        registry.register(
            "pailot_chart_ready",
            "1 when every object of the chart is healthy.",
            chart_ready.clone(),
        );
        let prune_blocked_total = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "pailot_prune_blocked",
            "Prunes refused, by reason.",
            prune_blocked_total.clone(),
        );
        let rollbacks_total = Counter::default();
        registry.register(
            "pailot_rollbacks",
            "Automatic rollbacks to the last healthy revision after a health failure (reconcile.rollback: onHealthFailure).",
            rollbacks_total.clone(),
        );
        let bootstrap_complete = Gauge::default();
        registry.register(
            "pailot_bootstrap_complete",
            "1 when the host bootstrap (control plane, mirrors, node labels) is complete.",
            bootstrap_complete.clone(),
        );
        let bootstrap_missing = Family::<ItemLabels, Gauge>::default();
        registry.register(
            "pailot_bootstrap_missing",
            "1 for each thing the host bootstrap is missing (item: record, mirror <registry>, …); absent when complete.",
            bootstrap_missing.clone(),
        );
        let suspended = Gauge::default();
        registry.register(
            "pailot_suspended",
            "1 while applying and drift correction are suspended (`pailot suspend`).",
            suspended.clone(),
        );
        let certificate_expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "pailot_certificate_expiry_timestamp_seconds",
            "notAfter of each control-plane certificate bootstrap wrote (cert: kubeadm file stem or kubeconfig name); 0 when unreadable.",
            certificate_expiry.clone(),
        );
        let notifications: std::sync::Arc<Mutex<Option<crate::notification::Notifier>>> =
            std::sync::Arc::default();
        registry.register_collector(Box::new(NotificationCollector(notifications.clone())));
        let leader = Gauge::default();
        registry.register(
            "pailot_leader",
            "1 when this daemon holds the leader lease (or runs alone).",
            leader.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: version.to_string(),
            })
            .set(1);
        registry.register(
            "pailot_build_info",
            "Build of the daemon; value 1.",
            build_info,
        );
        registry.register_collector(Box::new(ProcessCollector));
        // Series that alerts take increase() of exist from the start at 0, so a first event counts.
        for result in [ReconcileResult::Success, ReconcileResult::Failure] {
            let _ = reconcile_total.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        for result in [FetchResult::Success, FetchResult::Failure] {
            let _ = fetch_duration.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        for action in Action::ALL {
            let _ = apply_objects_total.get_or_create(&ActionLabels {
                action: action.word(),
            });
        }
        let _ = prune_blocked_total.get_or_create(&ReasonLabels {
            reason: PruneBlockedReason::MassPruneThreshold.as_str(),
        });
        Metrics {
            registry,
            reconcile_total,
            reconcile_duration,
            failures_total,
            reconcile_failing,
            last_success,
            revision_info,
            fetch_duration,
            apply_objects_total,
            inventory_objects,
            drifted_objects,
            drift_detected_total,
            chart_ready,
            prune_blocked_total,
            rollbacks_total,
            bootstrap_complete,
            bootstrap_missing,
            suspended,
            certificate_expiry,
            notifications,
            leader,
            single_series: Mutex::new(()),
            charts: Mutex::new(HashSet::new()),
        }
    }

    /// The bounded label value for a chart name.
    fn chart_label(&self, chart: &str) -> String {
        let mut seen = self.charts.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(chart) {
            return chart.to_string();
        }
        if seen.len() >= MAX_CHART_LABELS {
            return "_other".to_string();
        }
        seen.insert(chart.to_string());
        chart.to_string()
    }

    /// One reconcile finished: counts it, observes its duration; a success also stamps
    /// `pailot_last_success_timestamp_seconds` and clears `pailot_reconcile_failing`.
    pub fn record_reconcile(&self, result: ReconcileResult, duration: Duration) {
        self.reconcile_total
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
        if result == ReconcileResult::Success {
            self.last_success_now();
            let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
            self.reconcile_failing.clear();
        }
    }

    /// A reconcile failed: counts it by stage and reason, and makes `pailot_reconcile_failing` hold one
    /// series per failing chart (one with `chart=""` when the failure is not about charts) until the
    /// next success or failure.
    pub fn record_failure(&self, f: &Failure) {
        self.failures_total
            .get_or_create(&FailureLabels {
                stage: f.stage.as_str(),
                reason: f.reason.as_str(),
            })
            .inc();
        self.set_failing(f);
    }

    /// Make `f` the failing state without counting it again (a drift check that fails while a
    /// reconcile failure is reported only counts).
    pub fn set_failing(&self, f: &Failure) {
        let charts: Vec<String> = if f.charts.is_empty() {
            vec![String::new()]
        } else {
            f.charts.iter().map(|c| self.chart_label(c)).collect()
        };
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        self.reconcile_failing.clear();
        for chart in charts {
            self.reconcile_failing
                .get_or_create(&FailingLabels {
                    stage: f.stage.as_str(),
                    reason: f.reason.as_str(),
                    chart,
                })
                .set(1);
        }
    }

    /// Count a failure that does not change the reconcile's state (a failed drift check).
    pub fn count_failure(&self, stage: Stage, reason: Reason) {
        self.failures_total
            .get_or_create(&FailureLabels {
                stage: stage.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// One automatic rollback.
    pub fn inc_rollbacks(&self) {
        self.rollbacks_total.inc();
    }

    /// The daemon confirmed that the cluster matches git without applying anything (a fetch found the
    /// applied commit, a drift check found no drift): stamp the last success and clear the failing
    /// series, without counting a reconcile.
    pub fn converged(&self) {
        self.last_success_now();
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        self.reconcile_failing.clear();
    }

    /// Stamp `pailot_last_success_timestamp_seconds` with the current time.
    fn last_success_now(&self) {
        self.last_success.set(crate::clock::unix_now_f64());
    }

    /// Unix time of the last successful reconcile, `None` before the first (the unit tests read it).
    #[cfg(test)]
    fn last_success(&self) -> Option<f64> {
        let t = self.last_success.get();
        (t > 0.0).then_some(t)
    }

    /// The applied revision; `pailot_source_revision_info` keeps exactly one live series.
    pub fn set_revision(&self, revision: &str) {
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        self.revision_info.clear();
        self.revision_info
            .get_or_create(&RevisionLabels {
                revision: revision.to_string(),
            })
            .set(1);
    }

    /// Objects of `chart` currently drifted. Also creates the chart's drift counter at 0, so the
    /// first detection shows up in `increase()`.
    pub fn set_drifted(&self, chart: &str, n: u64) {
        let l = ChartLabels {
            chart: self.chart_label(chart),
        };
        let _ = self.drift_detected_total.get_or_create(&l);
        self.drifted_objects.get_or_create(&l).set(n as i64);
    }

    /// One drift detection in `chart`.
    pub fn inc_drift(&self, chart: &str) {
        self.drift_detected_total
            .get_or_create(&ChartLabels {
                chart: self.chart_label(chart),
            })
            .inc();
    }

    /// Objects in the inventory.
    pub fn set_inventory(&self, n: u64) {
        self.inventory_objects.set(n as i64);
    }

    /// Objects handled by one apply, by action.
    pub fn record_apply(&self, counts: &std::collections::BTreeMap<Action, usize>) {
        for (action, n) in counts {
            self.apply_objects_total
                .get_or_create(&ActionLabels {
                    action: action.word(),
                })
                .inc_by(*n as u64);
        }
    }

    /// Readiness of every chart of the latest render: each gets a series (and a drift counter from 0);
    /// the series of charts no longer rendered are removed, so a removed chart does not stay "ready".
    pub fn set_charts(&self, ready: &std::collections::BTreeMap<String, bool>) {
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        let keep: HashSet<String> = ready.keys().map(|c| self.chart_label(c)).collect();
        let mut seen = self.charts.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = seen
            .iter()
            .filter(|c| !keep.contains(*c))
            .cloned()
            .collect();
        for chart in gone {
            let l = ChartLabels {
                chart: chart.clone(),
            };
            self.chart_ready.remove(&l);
            self.drifted_objects.remove(&l);
            self.drift_detected_total.remove(&l);
            seen.remove(&chart);
        }
        drop(seen);
        for (chart, ok) in ready {
            let l = ChartLabels {
                chart: self.chart_label(chart),
            };
            let _ = self.drift_detected_total.get_or_create(&l);
            self.chart_ready.get_or_create(&l).set(i64::from(*ok));
        }
    }

    /// One prune refused for `reason`.
    pub fn inc_prune_blocked(&self, reason: PruneBlockedReason) {
        self.prune_blocked_total
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// What the bootstrap record says: `pailot_bootstrap_complete`, and one
    /// `pailot_bootstrap_missing{item}` series per missing item (the word before the first `:` of each
    /// line, e.g. `record`, `mirror docker.io`), so the alert can say what is missing.
    pub fn set_bootstrap(&self, b: &crate::daemon::status::BootstrapStatus) {
        self.bootstrap_complete.set(i64::from(b.complete));
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        self.bootstrap_missing.clear();
        for line in b.missing.iter().take(MAX_BOOTSTRAP_ITEMS) {
            let item = line.split(':').next().unwrap_or(line).trim().to_string();
            self.bootstrap_missing
                .get_or_create(&ItemLabels { item })
                .set(1);
        }
    }

    /// Whether applying and correcting are suspended.
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended.set(i64::from(suspended));
    }

    /// The expiry of every certificate found (the series of certificates no longer found go).
    pub fn set_certificate_expiries(&self, certs: &[crate::bootstrap::pki::CertExpiry]) {
        let _g = self.single_series.lock().unwrap_or_else(|e| e.into_inner());
        self.certificate_expiry.clear();
        for c in certs {
            self.certificate_expiry
                .get_or_create(&CertLabels {
                    cert: c.cert.clone(),
                })
                .set(c.not_after_unix);
        }
    }

    /// Count what `notifier` sends from now on (`pailot_notifications_total`).
    pub fn watch_notifications(&self, notifier: crate::notification::Notifier) {
        *self.notifications.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Whether this daemon is the leader (or runs without leader election).
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// One source fetch finished.
    pub fn record_fetch(&self, result: FetchResult, duration: Duration) {
        self.fetch_duration
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .observe(duration.as_secs_f64());
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> Result<String, Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The classic Prometheus text exposition (version 0.0.4).
    pub fn encode_prometheus_text(&self) -> Result<String, Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        if !out.ends_with('\n') && !out.is_empty() {
            writeln!(out)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
    }

    #[test]
    fn counters_get_total_suffix_once_and_catalogue_is_complete() {
        let m = Metrics::with_version("1.2.3");
        m.record_reconcile(ReconcileResult::Success, Duration::from_millis(20));
        m.record_failure(&Failure::new(Stage::Render, Reason::InvalidInput, "x"));
        m.record_apply(&BTreeMap::from([(Action::Created, 3)]));
        m.inc_drift("grafana");
        m.inc_prune_blocked(PruneBlockedReason::MassPruneThreshold);
        m.record_fetch(FetchResult::Success, Duration::from_millis(7));
        m.set_revision("abc");
        m.set_inventory(12);
        m.set_drifted("grafana", 2);
        m.set_charts(&BTreeMap::from([("grafana".to_string(), true)]));
        m.inc_rollbacks();
        let t = m.encode_openmetrics().unwrap();
        assert!(t.ends_with("# EOF\n"), "{t}");
        for name in [
            "pailot_reconcile_total{result=\"success\"}",
            "pailot_reconcile_failures_total{stage=\"render\",reason=\"invalid_input\"}",
            "pailot_apply_objects_total{action=\"created\"}",
            "pailot_apply_objects_total{action=\"failed\"}",
            "pailot_drift_detected_total{chart=\"grafana\"}",
            "pailot_prune_blocked_total{reason=\"mass_prune_threshold\"}",
            "pailot_source_revision_info{revision=\"abc\"}",
            "pailot_inventory_objects",
            "pailot_drifted_objects{chart=\"grafana\"}",
            "pailot_chart_ready{chart=\"grafana\"}",
            "pailot_rollbacks_total",
            "pailot_build_info{version=\"1.2.3\"}",
            "pailot_bootstrap_complete",
            "pailot_leader",
            "pailot_reconcile_duration_seconds_count",
            "pailot_source_fetch_duration_seconds_count{result=\"success\"}",
        ] {
            assert!(sample(&t, name).is_some(), "missing {name} in\n{t}");
        }
        assert!(!t.contains("_total_total"), "{t}");
        assert_eq!(
            sample(&t, "pailot_apply_objects_total{action=\"created\"}"),
            Some("3")
        );
        assert_eq!(sample(&t, "pailot_inventory_objects"), Some("12"));
        let rss: u64 = sample(&t, "pailot_process_resident_memory_bytes")
            .expect("rss")
            .parse()
            .unwrap();
        assert!(rss > 1024 * 1024, "rss {rss}");
    }

    #[test]
    fn revision_info_keeps_one_live_series() {
        let m = Metrics::new();
        m.set_revision("aaaa");
        m.set_revision("bbbb");
        let t = m.encode_openmetrics().unwrap();
        let n = t
            .lines()
            .filter(|l| l.starts_with("pailot_source_revision_info{"))
            .count();
        assert_eq!(n, 1, "{t}");
    }

    #[test]
    fn failing_names_every_failing_chart_and_a_success_clears_it() {
        let m = Metrics::new();
        assert_eq!(m.last_success(), None);
        m.record_failure(
            &Failure::new(Stage::Wait, Reason::Unhealthy, "x")
                .with_charts(["zookeeper".to_string(), "grafana".to_string()]),
        );
        let t = m.encode_openmetrics().unwrap();
        for chart in ["zookeeper", "grafana"] {
            assert!(
                t.contains(&format!(
                    "pailot_reconcile_failing{{stage=\"wait\",reason=\"unhealthy\",chart=\"{chart}\"}} 1"
                )),
                "{t}"
            );
        }
        m.record_failure(&Failure::new(Stage::Apply, Reason::ApiUnreachable, "y"));
        let t = m.encode_openmetrics().unwrap();
        let failing: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("pailot_reconcile_failing{"))
            .collect();
        assert_eq!(
            failing,
            ["pailot_reconcile_failing{stage=\"apply\",reason=\"api_unreachable\",chart=\"\"} 1"]
        );
        m.record_reconcile(ReconcileResult::Success, Duration::from_secs(1));
        let t = m.encode_openmetrics().unwrap();
        assert!(!t.contains("pailot_reconcile_failing{"), "{t}");
        assert!(m.last_success().unwrap() > 1.6e9);
    }

    #[test]
    fn a_chart_that_left_the_render_loses_its_series() {
        let m = Metrics::new();
        m.set_charts(&BTreeMap::from([
            ("pylon".to_string(), true),
            ("grafana".to_string(), false),
        ]));
        let t = m.encode_openmetrics().unwrap();
        assert_eq!(
            sample(&t, "pailot_drift_detected_total{chart=\"pylon\"}"),
            Some("0"),
            "{t}"
        );
        m.set_charts(&BTreeMap::from([("grafana".to_string(), true)]));
        let t = m.encode_openmetrics().unwrap();
        assert!(!t.contains("chart=\"pylon\""), "{t}");
        assert_eq!(
            sample(&t, "pailot_chart_ready{chart=\"grafana\"}"),
            Some("1")
        );
    }

    #[test]
    fn chart_labels_are_capped() {
        let m = Metrics::new();
        let many: BTreeMap<String, bool> = (0..(MAX_CHART_LABELS + 5))
            .map(|i| (format!("c{i:04}"), true))
            .collect();
        m.set_charts(&many);
        let t = m.encode_openmetrics().unwrap();
        let n = t
            .lines()
            .filter(|l| l.starts_with("pailot_chart_ready{"))
            .count();
        assert_eq!(n, MAX_CHART_LABELS + 1, "capped plus _other");
        assert!(t.contains("pailot_chart_ready{chart=\"_other\"} 1"));
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.record_apply(&BTreeMap::from([(Action::Deleted, 1)]));
        let t = m.encode_prometheus_text().unwrap();
        assert!(
            t.contains("# TYPE pailot_apply_objects_total counter"),
            "{t}"
        );
        assert!(
            t.contains("pailot_apply_objects_total{action=\"deleted\"} 1"),
            "{t}"
        );
        assert!(!t.contains("# EOF"));
    }
}
