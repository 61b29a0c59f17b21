//! The daemon's status, one model: written by the reconcile loop (and the leader, source and bootstrap tasks) through a `tokio::sync::watch`, read by `/status`, `pailot status`, systemd's STATUS= line and the watchdog.
//!
//! Nothing copies it on a timer: a writer calls [`StatusTx::update`], readers borrow the latest
//! value. The JSON form is the `/status` document; `pailot status` deserializes the same type.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::diag::InputError;
use crate::failure::{Failure, Next, Reason, Stage};

/// Where the loop is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Waiting for a trigger (or for leadership / bootstrap).
    #[default]
    Idle,
    /// Fetching and verifying the ref.
    Fetching,
    /// Rendering charts + overlays of the fetched revision.
    Rendering,
    /// Applying (plan, SSA, prune).
    Applying,
    /// Applied; waiting for charts to become healthy.
    Waiting,
    /// Waiting before retrying a transient failure (a new commit ends it).
    Backoff,
    /// Applying and correcting are suspended (`pailot suspend`); watching and reporting go on.
    Suspended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Fetching => "fetching",
            Phase::Rendering => "rendering",
            Phase::Applying => "applying",
            Phase::Waiting => "waiting",
            Phase::Backoff => "backoff",
            Phase::Suspended => "suspended",
        }
    }

    /// Phases in which the loop waits on a bounded timer or a trigger (always alive, so the watchdog is fed).
    pub fn is_waiting(self) -> bool {
        matches!(self, Phase::Idle | Phase::Backoff | Phase::Suspended)
    }
}

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Success,
    Failure,
    /// Shutdown during the apply: the revision was not applied (the next start re-applies it).
    Stopped,
    /// A newer commit arrived during the apply or its health wait, which was abandoned for it.
    Superseded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Stopped => "stopped",
            Outcome::Superseded => "superseded",
        }
    }
}

/// What the latest reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LastReconcile {
    /// `success`, `failure`, `stopped`, `superseded`.
    pub result: String,
    /// What started it: `startup`, `watch`, `poll`, `webhook`, `drift`, `reload`, `retry`, `manual`…
    pub trigger: Option<String>,
    /// The revision it tried (for a failure: the failed one; the applied one is `revision` at the top).
    pub revision: Option<String>,
    /// First line of its commit message.
    pub subject: Option<String>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub duration_seconds: Option<f64>,
    /// For a failure: the stage and reason words, and what happens next.
    pub stage: Option<Stage>,
    pub reason: Option<Reason>,
    pub next: Option<Next>,
    /// One line, no secret values.
    pub message: Option<String>,
    /// After a failure with `reconcile.rollback: onHealthFailure`: the revision re-applied.
    pub rolled_back_to: Option<String>,
}

/// One chart of the latest render, as the latest reconcile left it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChartStatus {
    /// `applied`, `healthy`, `waiting`, `failed`, `blocked`, `pending` (not reached), `stopped`.
    pub result: String,
    /// True when the chart's objects were healthy at the end of the latest reconcile.
    pub ready: bool,
    /// Objects rendered for it.
    pub objects: u64,
    /// Objects found drifted by the last drift check.
    pub drifted: u64,
    /// Why it failed or is blocked.
    pub message: Option<String>,
}

/// One drifted field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DriftRecord {
    pub chart: String,
    /// `Kind/namespace/name`.
    pub object: String,
    /// JSON pointer of the field (empty when the object is missing).
    pub pointer: String,
    /// Field manager that owns the live value, when it is not pailot.
    pub manager: Option<String>,
    /// Where the desired value came from (template, values key, overlay op); `unknown` when a render
    /// cannot say.
    pub provenance: Option<String>,
    /// `corrected` or `reported` (warn mode, or suspended).
    pub action: String,
    pub detected_at: Option<f64>,
}

/// An error with its place, when the repository's content is at fault (file, line, pointer, object).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusError {
    pub reason: Option<String>,
    pub stage: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub place: Option<String>,
    pub pointer: Option<String>,
    pub object: Option<String>,
}

impl StatusError {
    /// The error of a failure (with the input error's place, when there is one).
    pub fn of(f: &Failure) -> Self {
        let mut e = match &f.input {
            Some(input) => Self::from_input(f.stage.as_str(), input),
            None => StatusError {
                stage: f.stage.as_str().to_string(),
                message: f.message.clone(),
                ..Default::default()
            },
        };
        e.reason = Some(f.reason.as_str().to_string());
        e
    }

    pub fn from_input(stage: &str, e: &InputError) -> Self {
        StatusError {
            reason: None,
            stage: stage.to_string(),
            message: e.message.clone(),
            file: Some(e.file.display().to_string()),
            line: e.line,
            column: e.column,
            place: e.place.clone(),
            pointer: e.pointer.clone(),
            object: e.object.clone(),
        }
    }
}

/// The git source, as the daemon watches it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourceStatus {
    /// The repository URL without credentials.
    pub url: String,
    /// `refs` (inotify on a local repository), `off`, `remote` (polled), `failed`.
    pub watch: String,
    pub poll_interval_seconds: f64,
    /// Triggers received, by kind (coalesced ones included).
    pub triggers: BTreeMap<String, u64>,
    /// Revision last fetched.
    pub fetched_revision: Option<String>,
}

/// What the host bootstrap left (from its record in the state directory).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BootstrapStatus {
    pub complete: bool,
    /// What is missing (no record at all, a step that failed), one line each: `<step>: <detail>`.
    pub missing: Vec<String>,
    /// What bootstrap warned about without failing (an unreachable registry mirror).
    pub warnings: Vec<String>,
}

/// The whole `/status` document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    /// Revision applied in the cluster (the last successful apply).
    pub revision: Option<String>,
    /// Revision last refused or failed (until a newer one applies).
    pub failed_revision: Option<String>,
    pub phase: Option<Phase>,
    /// Unix time the phase began.
    pub phase_since: Option<f64>,
    /// `None` without leader election.
    pub leader: Option<bool>,
    /// False while waiting for leadership or a bootstrap record.
    pub active: bool,
    /// True after the first successful reconcile (`/readyz`, READY=1).
    pub ready: bool,
    pub drift_mode: Option<String>,
    pub last_reconcile: Option<LastReconcile>,
    pub charts: BTreeMap<String, ChartStatus>,
    pub drift: Vec<DriftRecord>,
    /// Unix time of the last drift check.
    pub drift_checked_at: Option<f64>,
    /// Unix time of the next scheduled wake-up (backoff, drift sweep).
    pub next_wakeup: Option<f64>,
    /// Consecutive transient failures.
    pub backoff_attempt: u32,
    /// The latest failure with its place; empty after a success.
    pub errors: Vec<StatusError>,
    pub source: Option<SourceStatus>,
    pub bootstrap: Option<BootstrapStatus>,
    /// The suspension in force (`pailot suspend`), if any.
    pub suspended: Option<crate::suspension::Suspension>,
    /// The latest entry of the reconcile history (`pailot history` has the others).
    pub latest_history: Option<crate::history::Entry>,
    /// The latest failure to write the state directory, if it still fails.
    pub state_error: Option<String>,
}

/// The writers' handle: cheap to clone, every update wakes the readers.
#[derive(Clone)]
pub struct StatusTx(Arc<watch::Sender<Status>>);

impl StatusTx {
    /// A new status and its first reader.
    pub fn new() -> (StatusTx, watch::Receiver<Status>) {
        let (tx, rx) = watch::channel(Status::default());
        (StatusTx(Arc::new(tx)), rx)
    }

    /// Change the status in place.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.0.send_modify(f);
    }

    /// A copy of the current status.
    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// Another reader.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }
}

impl Default for StatusTx {
    fn default() -> Self {
        StatusTx::new().0
    }
}
