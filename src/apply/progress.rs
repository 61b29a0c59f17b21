//! A per-chart progress view on a terminal (waiting / applying / healthy / failed), drawn with indicatif; silent otherwise.
//!
//! One line per chart, in the order the engine first reports them (the plan's dependency order):
//! a spinner and the time spent while a chart is applying or waiting for health, a mark once it
//! is done. The table is one indicatif bar with a multi-line message: indicatif decides whether
//! to draw at all (a terminal, `TERM` not `dumb`), caps redraws at 4 a second, moves the cursor,
//! counts wrapped lines and keeps the view inside the screen, so a long note or more charts than
//! rows never scroll it apart. (The hand-drawn view this replaces left 578 stray lines for 22
//! charts in a 15-row terminal, and wrote more bytes: measurements in docs/apply.md, "Progress".)
//! One bar rather than one per chart: indicatif formats a bar only when that bar itself wins a
//! rate-limited redraw, so with many bars some lines would show stale states.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

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

    /// The mark in front of the chart: a spinner frame while it is busy.
    fn mark(self, busy_for: Duration) -> &'static str {
        match self {
            ChartState::Waiting => "·",
            ChartState::Applying | ChartState::WaitingHealthy => {
                SPINNER[(busy_for.as_millis() / TICK.as_millis()) as usize % SPINNER.len()]
            }
            ChartState::Applied | ChartState::Healthy => "✓",
            ChartState::Failed => "✗",
            ChartState::Blocked | ChartState::Stopped => "-",
        }
    }

    fn busy(self) -> bool {
        matches!(self, ChartState::Applying | ChartState::WaitingHealthy)
    }
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// How often the spinners and clocks move.
const TICK: Duration = Duration::from_millis(500);
/// The most redraws a second (each redraws every line).
const REDRAWS_PER_SECOND: u8 = 2;
/// The longest note kept (the line is cut to the terminal's width as well).
const NOTE_CHARS: usize = 100;

/// The view. `Progress::quiet()` and a `for_terminal()` without a terminal draw nothing.
pub struct Progress {
    view: Option<View>,
    /// Told every chart state change (the daemon keeps `/status` live with it).
    observer: Option<Observer>,
}

/// Told every chart state change.
pub type Observer = Box<dyn Fn(&str, ChartState, &str) + Send + Sync>;

struct View {
    bar: ProgressBar,
    /// The bar's draw target (with its cursor-moving mode).
    multi: MultiProgress,
    table: Arc<Mutex<Table>>,
    /// Dropping it stops the ticker thread.
    _ticker: Option<std::sync::mpsc::Sender<()>>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
}

struct Row {
    chart: String,
    state: ChartState,
    note: String,
    /// When the chart became busy (its clock starts there).
    since: Instant,
}

impl Table {
    fn any_busy(&self) -> bool {
        self.rows.iter().any(|r| r.state.busy())
    }

    /// Every chart has reached a final state.
    fn all_done(&self) -> bool {
        self.rows
            .iter()
            .all(|r| !r.state.busy() && r.state != ChartState::Waiting)
    }

    /// The lines, each cut to `width` columns when it is known.
    fn render(&self, now: Instant, width: Option<usize>) -> String {
        let name_width = self
            .rows
            .iter()
            .map(|r| r.chart.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let busy_for = now.saturating_duration_since(r.since);
            let clock = if r.state.busy() {
                format!("{:>4}", format!("{}s", busy_for.as_secs()))
            } else {
                "    ".to_string()
            };
            let line = format!(
                "  {} {:<name_width$}  {clock}  {:<18} {}",
                r.state.mark(busy_for),
                r.chart,
                r.state.word(),
                r.note
            );
            let line = line.trim_end();
            match width {
                Some(w) if line.chars().count() > w => out.extend(line.chars().take(w)),
                _ => out.push_str(line),
            }
            if i + 1 < self.rows.len() {
                out.push('\n');
            }
        }
        out
    }
}

impl Progress {
    /// Shown only when stdout and stderr are terminals (drawn on stderr so stdout stays clean).
    pub fn for_terminal() -> Self {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Progress::drawn_to(ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_SECOND))
        } else {
            Progress::quiet()
        }
    }

    /// Never shows anything.
    pub fn quiet() -> Self {
        Progress {
            view: None,
            observer: None,
        }
    }

    /// Draws nothing; tells `observer` every change.
    pub fn observed(observer: Observer) -> Self {
        Progress {
            view: None,
            observer: Some(observer),
        }
    }

    /// Draw to `target`.
    pub fn drawn_to(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        // Overwrite the previous frame in place instead of clearing it first: fewer bytes, no flicker.
        multi.set_move_cursor(true);
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{msg}").expect("progress template"));
        let table: Arc<Mutex<Table>> = Arc::default();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (ticked, ticked_bar) = (table.clone(), bar.clone());
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(TICK)
                {
                    let Ok(t) = ticked.lock() else { return };
                    if t.any_busy() {
                        ticked_bar.set_message(t.render(Instant::now(), terminal_width()));
                    }
                }
            })
            .ok()
            .map(|_| stop);
        Progress {
            view: Some(View {
                bar,
                multi,
                table,
                _ticker: ticker,
            }),
            observer: None,
        }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.view.is_some()
    }

    /// Record a chart's state (and a short note) and show it.
    pub fn set(&self, chart: &str, state: ChartState, note: &str) {
        if let Some(o) = &self.observer {
            o(chart, state, note);
        }
        let Some(view) = &self.view else { return };
        let Ok(mut t) = view.table.lock() else { return };
        let now = Instant::now();
        let note: String = note.chars().take(NOTE_CHARS).collect();
        match t.index.get(chart).copied() {
            Some(i) => {
                let row = &mut t.rows[i];
                if state.busy() && !row.state.busy() {
                    row.since = now;
                }
                row.state = state;
                row.note = note;
            }
            None => {
                let i = t.rows.len();
                t.rows.push(Row {
                    chart: chart.to_string(),
                    state,
                    note,
                    since: now,
                });
                t.index.insert(chart.to_string(), i);
            }
        }
        let done = t.all_done();
        if !done && view.bar.is_finished() {
            // A chart is busy again (prune deletes after the applies): the view goes on.
            view.bar.reset();
        }
        view.bar.set_message(t.render(now, terminal_width()));
        if done {
            // The final frame, drawn now (past the rate limit) while the engine still owns the
            // terminal: the caller prints its report below it.
            view.bar.abandon();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Never draw here: the caller may have printed below the view since (a report), and a
        // redraw would move up over it. A view left busy (an error path) keeps its last frame.
        if let Some(view) = &self.view
            && !view.bar.is_finished()
        {
            view.multi.set_draw_target(ProgressDrawTarget::hidden());
        }
    }
}

/// Columns of the terminal on stderr, when it is one.
fn terminal_width() -> Option<usize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize struct we own; a failure leaves it zeroed.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_first_report_order_and_cut_to_the_width() {
        let p = Progress::drawn_to(ProgressDrawTarget::hidden());
        p.set("zookeeper", ChartState::Waiting, "");
        p.set("cluster-configuration", ChartState::Applying, "7 objects");
        p.set(
            "zookeeper",
            ChartState::WaitingHealthy,
            "0/1 pods available",
        );
        p.set("cluster-configuration", ChartState::Healthy, "");
        let view = p.view.as_ref().unwrap();
        let t = view.table.lock().unwrap();
        let text = t.render(Instant::now(), None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            SPINNER
                .iter()
                .any(|s| lines[0].starts_with(&format!("  {s} zookeeper "))),
            "a busy chart spins, in first-report order: {text}"
        );
        assert!(
            lines[0].contains("0s  waiting for health 0/1 pods available"),
            "{text}"
        );
        assert_eq!(
            lines[1].trim_end(),
            "  ✓ cluster-configuration        healthy"
        );
        let cut = t.render(Instant::now(), Some(20));
        assert!(cut.lines().all(|l| l.chars().count() <= 20), "{cut}");
    }

    #[test]
    fn quiet_shows_nothing() {
        let p = Progress::quiet();
        p.set("a", ChartState::Applying, "x");
        assert!(!p.is_shown());
    }
}
