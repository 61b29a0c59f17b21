//! A per-chart progress view on a terminal (waiting / applying / healthy / failed); silent otherwise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// Where a chart is in the apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChartState {
    Waiting,
    Applying,
    /// Applied, health not awaited (`apply` without `--wait`).
    Applied,
    WaitingHealthy,
    Healthy,
    Failed,
    /// Not started because a dependency failed.
    Blocked,
    /// Not started, not finished or not awaited because a stop was requested.
    Stopped,
}

impl ChartState {
    pub fn word(self) -> &'static str {
        match self {
            ChartState::Waiting => "waiting",
            ChartState::Applying => "applying",
            ChartState::Applied => "applied",
            ChartState::WaitingHealthy => "waiting for health",
            ChartState::Healthy => "healthy",
            ChartState::Failed => "failed",
            ChartState::Blocked => "blocked",
            ChartState::Stopped => "stopped",
        }
    }
}

/// Each chart's state and note, and how many lines were drawn last time.
type Drawn = (BTreeMap<String, (ChartState, String)>, usize);

/// Told every chart state change (the daemon keeps `/status` live with it).
pub type Observer = Box<dyn Fn(&str, ChartState, &str) + Send + Sync>;

/// The view; redraws the chart table in place on a terminal, and tells an observer.
pub struct Progress {
    enabled: bool,
    state: Mutex<Drawn>,
    observer: Option<Observer>,
}

impl Progress {
    /// Shown only when stdout is a terminal (and drawn on stderr so stdout stays clean).
    pub fn for_terminal() -> Self {
        Progress {
            enabled: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            state: Mutex::new((BTreeMap::new(), 0)),
            observer: None,
        }
    }

    /// Never shows anything.
    pub fn quiet() -> Self {
        Progress {
            enabled: false,
            state: Mutex::new((BTreeMap::new(), 0)),
            observer: None,
        }
    }

    /// Draws nothing; tells `observer` every change.
    pub fn observed(observer: Observer) -> Self {
        Progress {
            observer: Some(observer),
            ..Progress::quiet()
        }
    }

    /// Record a chart's state (and a short note) and redraw.
    pub fn set(&self, chart: &str, state: ChartState, note: &str) {
        if let Some(o) = &self.observer {
            o(chart, state, note);
        }
        let mut guard = self.state.lock().expect("progress lock");
        guard.0.insert(chart.to_string(), (state, note.to_string()));
        if !self.enabled {
            return;
        }
        let width = guard.0.keys().map(String::len).max().unwrap_or(0);
        let mut err = std::io::stderr().lock();
        if guard.1 > 0 {
            let _ = write!(err, "\x1b[{}A", guard.1);
        }
        for (name, (s, note)) in &guard.0 {
            let note: String = note.chars().take(100).collect();
            let _ = writeln!(err, "\x1b[2K  {name:<width$}  {:<18} {note}", s.word());
        }
        guard.1 = guard.0.len();
        let _ = err.flush();
    }
}
