//! Bounds on the work one render may do — wall clock, memory, template fuel, `extends` depth,
//! input file and rendered output sizes — shared by the offline commands and the daemon's helpers.
//!
//! A repository is input from whoever can push to it, so a render must end, and end with a
//! message naming what went over, whatever a template or a file holds. Two kinds of bound:
//!
//! - Engine bounds, checked where the work happens and reported as an [`InputError`] (exit 2,
//!   `invalid_input` in the daemon) naming the chart, template, overlay or file:
//!   [`Limits::template_fuel`] (minijinja's fuel: instructions and the data a template creates),
//!   [`Limits::extends_depth`], [`Limits::input_file`] and [`Limits::rendered_output`].
//! - Process bounds, for what no engine counter sees (a pathological schema, a huge stream of
//!   small documents, a bug): [`Limits::wall_clock`] and [`Limits::memory`]. The CLI enforces them
//!   around its render with [`Limits::enforce`]: a watchdog thread, and [`heap`] accounting in the
//!   binary's allocator. A daemon helper is bounded by its parent instead (`helpers.timeout`: killed;
//!   `helpers.memory`: `RLIMIT_AS`, `crate::oom`), and keeps the engine bounds.
//!
//! Why heap accounting rather than `RLIMIT_AS`/`RLIMIT_DATA` alone (measured, `strace`): the
//! batch commands allocate with mimalloc, which maps a 1 GiB arena `PROT_READ|PROT_WRITE,
//! MAP_NORESERVE` at its first allocation. Both limits count that mapping in full, so a 1 GiB
//! limit refused the render's first thread stack (`EAGAIN`) while the arena let the heap grow to
//! 700 MiB under a 256 MiB limit. The allocator therefore counts live heap bytes itself (batched
//! per thread, one atomic add per MiB) and refuses the allocation that would pass the limit;
//! the process then prints which limit it hit and exits with code 2 (`src/alloc.rs`) instead of
//! Rust's abort. The daemon's helpers allocate with glibc malloc (one arena), so a kernel limit is
//! accurate there and also covers C code (libgit2) that the Rust allocator never sees.
//!
//! Defaults (60 s, 1 GiB, fuel 5 million, depth 32, 16 MiB, 64 MiB) are far above what the
//! project's own repository needs (docs/limits.md has the measurements) and can be changed with
//! the `PAILOT_LIMIT_*` environment variables ([`Limits::from_env`]; the daemon's helpers inherit
//! the daemon's environment).

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::InputError;

/// The bounds one render runs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Wall-clock time a render may take (`PAILOT_LIMIT_WALL_CLOCK`, default 60 s).
    pub wall_clock: Duration,
    /// Bytes of memory (`RLIMIT_DATA`) the rendering process may hold (`PAILOT_LIMIT_MEMORY`, default 1 GiB).
    pub memory: u64,
    /// minijinja fuel per template render: about one per instruction and per 64 bytes of data the
    /// template creates (`PAILOT_LIMIT_TEMPLATE_FUEL`, default 5,000,000).
    pub template_fuel: u64,
    /// Longest chain of overlay `extends` (`PAILOT_LIMIT_EXTENDS_DEPTH`, default 32).
    pub extends_depth: usize,
    /// Bytes of one input file: Chart.yaml, values, schema, template, `files/` file, overlay,
    /// patch file, cluster file (`PAILOT_LIMIT_INPUT_FILE`, default 16 MiB).
    pub input_file: u64,
    /// Bytes of one template's rendered output (`PAILOT_LIMIT_RENDERED_OUTPUT`, default 64 MiB).
    pub rendered_output: u64,
}

const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_clock: Duration::from_secs(60),
            memory: 1024 * MIB,
            template_fuel: 5_000_000,
            extends_depth: 32,
            input_file: 16 * MIB,
            rendered_output: 64 * MIB,
        }
    }
}

/// The limits as written in a configuration file or the environment: every field optional,
/// durations like `60s`, sizes as Kubernetes quantities (`1Gi`, `512Mi`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLimits {
    /// Wall-clock time one render may take, e.g. `60s` (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock: Option<String>,
    /// Memory the rendering process may hold, e.g. `1Gi` (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// minijinja fuel per template render (default 5000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_fuel: Option<u64>,
    /// Longest chain of overlay `extends` (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends_depth: Option<usize>,
    /// Size of one input file, e.g. `16Mi` (default `16Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file: Option<String>,
    /// Size of one template's rendered output, e.g. `64Mi` (default `64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_output: Option<String>,
}

/// A limit written wrongly: which one (its config key or environment variable) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct LimitsError {
    /// `wallClock`, `PAILOT_LIMIT_MEMORY`...
    pub key: String,
    pub message: String,
}

/// Environment variables read by [`Limits::from_env`], with their [`RawLimits`] keys.
pub const ENV_VARS: [(&str, &str); 6] = [
    ("PAILOT_LIMIT_WALL_CLOCK", "wallClock"),
    ("PAILOT_LIMIT_MEMORY", "memory"),
    ("PAILOT_LIMIT_TEMPLATE_FUEL", "templateFuel"),
    ("PAILOT_LIMIT_EXTENDS_DEPTH", "extendsDepth"),
    ("PAILOT_LIMIT_INPUT_FILE", "inputFile"),
    ("PAILOT_LIMIT_RENDERED_OUTPUT", "renderedOutput"),
];

/// Parse `text` as a size: a Kubernetes quantity (`1Gi`, `512Mi`, `1000000`).
fn size(key: &str, text: &str) -> Result<u64, LimitsError> {
    crate::quantity::parse_memory(text).map_err(|e| LimitsError {
        key: key.into(),
        message: e.to_string(),
    })
}

impl RawLimits {
    /// The `PAILOT_LIMIT_*` variables of this process (unset ones stay `None`).
    pub fn from_env() -> Result<RawLimits, LimitsError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<RawLimits, LimitsError> {
        let number = |var: &str| -> Result<Option<u64>, LimitsError> {
            get(var)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| LimitsError {
                        key: var.into(),
                        message: format!("{v:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        Ok(RawLimits {
            wall_clock: get(ENV_VARS[0].0),
            memory: get(ENV_VARS[1].0),
            template_fuel: number(ENV_VARS[2].0)?,
            extends_depth: number(ENV_VARS[3].0)?.map(|n| n as usize),
            input_file: get(ENV_VARS[4].0),
            rendered_output: get(ENV_VARS[5].0),
        })
    }
}

impl Limits {
    /// Validate `raw` over the defaults; `names` gives the name each field is shown under
    /// (config keys or environment variables), in [`ENV_VARS`] order.
    fn from_raw_named(raw: &RawLimits, names: [&str; 6]) -> Result<Limits, LimitsError> {
        let mut l = Limits::default();
        let positive = |key: &str, n: u64| {
            if n == 0 {
                Err(LimitsError {
                    key: key.into(),
                    message: "must be greater than 0".into(),
                })
            } else {
                Ok(n)
            }
        };
        if let Some(t) = &raw.wall_clock {
            l.wall_clock = crate::duration::parse(t).map_err(|message| LimitsError {
                key: names[0].into(),
                message,
            })?;
            if l.wall_clock.is_zero() {
                positive(names[0], 0)?;
            }
        }
        if let Some(t) = &raw.memory {
            l.memory = positive(names[1], size(names[1], t)?)?;
            // Below this, the process cannot start its threads; a typo, not a policy.
            if l.memory < 32 * MIB {
                return Err(LimitsError {
                    key: names[1].into(),
                    message: format!("{t:?} is below the 32Mi pailot needs to run"),
                });
            }
        }
        if let Some(n) = raw.template_fuel {
            l.template_fuel = positive(names[2], n)?;
        }
        if let Some(n) = raw.extends_depth {
            l.extends_depth = positive(names[3], n as u64)? as usize;
        }
        if let Some(t) = &raw.input_file {
            l.input_file = positive(names[4], size(names[4], t)?)?;
        }
        if let Some(t) = &raw.rendered_output {
            l.rendered_output = positive(names[5], size(names[5], t)?)?;
        }
        Ok(l)
    }

    /// Validate configuration-file limits (errors name the camelCase key, e.g. `wallClock`).
    pub fn from_raw(raw: &RawLimits) -> Result<Limits, LimitsError> {
        Self::from_raw_named(raw, ENV_VARS.map(|(_, key)| key))
    }

    /// The defaults, overridden by the `PAILOT_LIMIT_*` environment variables.
    pub fn from_env() -> Result<Limits, LimitsError> {
        Self::from_raw_named(&RawLimits::from_env()?, ENV_VARS.map(|(var, _)| var))
    }

    /// Make these the limits of this process's renders from now on (the CLI installs the
    /// environment's at start; a daemon helper installs those of its request). Until a call,
    /// [`Limits::current`] is the defaults. Each call keeps one small allocation for the life
    /// of the process, so that [`Limits::current`] can hand out `&'static` without locking.
    pub fn install(self) -> &'static Limits {
        let leaked: &'static Limits = Box::leak(Box::new(self));
        INSTALLED.store(
            leaked as *const Limits as *mut Limits,
            std::sync::atomic::Ordering::Release,
        );
        leaked
    }

    /// The limits in force in this process: the last installed, or the defaults.
    pub fn current() -> &'static Limits {
        let p = INSTALLED.load(std::sync::atomic::Ordering::Acquire);
        if p.is_null() {
            static DEFAULT: OnceLock<Limits> = OnceLock::new();
            DEFAULT.get_or_init(Limits::default)
        } else {
            // SAFETY: non-null pointers stored in INSTALLED come from `Box::leak` and are never freed.
            unsafe { &*p }
        }
    }

    /// For an offline command: bound the work until the guard drops. A watchdog thread ends the
    /// process with exit code 2 and a message when [`Limits::wall_clock`] passes, and the heap is
    /// capped at [`Limits::memory`] (lifted on drop, so a command that goes on to talk to a
    /// cluster is not bounded by its render's limits). `command` names the command in messages
    /// (`pailot render`).
    pub fn enforce(&self, command: &'static str) -> Bounds {
        COMMAND.get_or_init(|| command);
        heap::set_limit(self.memory);
        let (stop, stopped) = mpsc::channel::<()>();
        let wall = self.wall_clock;
        let spawned = std::thread::Builder::new()
            .name("pailot-watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wall) {
                    let doing = ACTIVITY.lock().map(|a| a.clone()).unwrap_or_default();
                    let doing = if doing.is_empty() {
                        String::new()
                    } else {
                        format!(" while {doing}")
                    };
                    eprintln!(
                        "error: {command} exceeded its wall-clock limit of {}{doing} \
                         (PAILOT_LIMIT_WALL_CLOCK changes it)",
                        show_duration(wall)
                    );
                    // The other threads may hold locks or be mid-render: end without unwinding.
                    // SAFETY: `_exit` ends the process; nothing runs after it.
                    unsafe { libc::_exit(2) };
                }
            });
        Bounds {
            stop: spawned.is_ok().then_some(stop),
        }
    }
}

/// While alive, the command's render is bounded (see [`Limits::enforce`]).
#[must_use = "the bounds end when this guard drops"]
pub struct Bounds {
    stop: Option<mpsc::Sender<()>>,
}

impl Drop for Bounds {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        heap::set_limit(0);
    }
}

/// Live heap bytes, counted by the binary's allocator (`src/alloc.rs`) while a limit is set.
///
/// Each thread adds its allocations and frees to a thread-local balance and moves it to the
/// shared count once it reaches ±1 MiB, so the hot path is a thread-local add; the count may lag
/// the truth by 1 MiB per thread. Blocks allocated before the limit was set are not counted
/// (their frees make the count slightly low, never high).
pub mod heap {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

    static LIMIT: AtomicUsize = AtomicUsize::new(0);
    static IN_USE: AtomicIsize = AtomicIsize::new(0);
    const BATCH: isize = 1 << 20;

    thread_local! {
        static PENDING: Cell<isize> = const { Cell::new(0) };
    }

    /// Cap the counted heap at `bytes` (0: no cap, no counting).
    pub fn set_limit(bytes: u64) {
        LIMIT.store(usize::try_from(bytes).unwrap_or(usize::MAX), Relaxed);
    }

    /// The cap in force (0: none).
    pub fn limit() -> usize {
        LIMIT.load(Relaxed)
    }

    /// Before the heap grows by `size` bytes: whether it may (false: over the cap).
    #[inline]
    pub fn grow(size: usize) -> bool {
        let limit = LIMIT.load(Relaxed);
        if limit == 0 {
            return true;
        }
        let size = isize::try_from(size).unwrap_or(isize::MAX);
        PENDING.with(|p| {
            let v = p.get().saturating_add(size);
            if v < BATCH {
                p.set(v);
                return true;
            }
            p.set(0);
            let total = IN_USE.fetch_add(v, Relaxed).saturating_add(v);
            usize::try_from(total).map_or(true, |t| t <= limit)
        })
    }

    /// After the heap shrank by `size` bytes.
    #[inline]
    pub fn shrink(size: usize) {
        if LIMIT.load(Relaxed) == 0 {
            return;
        }
        let size = isize::try_from(size).unwrap_or(isize::MAX);
        PENDING.with(|p| {
            let v = p.get().saturating_sub(size);
            if v > -BATCH {
                p.set(v);
            } else {
                p.set(0);
                IN_USE.fetch_add(v, Relaxed);
            }
        });
    }
}

static INSTALLED: std::sync::atomic::AtomicPtr<Limits> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
/// What the render is doing now, for the watchdog's message.
static ACTIVITY: Mutex<String> = Mutex::new(String::new());
static COMMAND: OnceLock<&'static str> = OnceLock::new();

/// Note what the render is doing (`rendering charts/x/templates/y.yaml`), for the wall-clock message.
pub fn set_activity(doing: std::fmt::Arguments<'_>) {
    if let Ok(mut a) = ACTIVITY.lock() {
        use std::fmt::Write as _;
        a.clear();
        let _ = a.write_fmt(doing);
    }
}

/// Called by the binary's allocator when an allocation is refused while a memory limit is in
/// force: print which limit was hit and exit with code 2. Must not allocate.
pub fn memory_exhausted(requested: usize) -> ! {
    let limit = heap::limit() as u64;
    let mut buf = [0u8; 256];
    let mut w = StackWriter {
        buf: &mut buf,
        len: 0,
    };
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "error: {} exceeded its memory limit of {} MiB (an allocation of {} bytes was refused; \
         PAILOT_LIMIT_MEMORY changes it)",
        COMMAND.get().copied().unwrap_or("pailot"),
        limit / MIB,
        requested
    );
    let len = w.len;
    // SAFETY: write(2) from a stack buffer, then _exit(2): no allocation, no unwinding.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(2)
    }
}

struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for StackWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// An input error for a limit hit while reading or rendering `file`.
pub fn exceeded(
    file: impl Into<std::path::PathBuf>,
    what: std::fmt::Arguments<'_>,
    var: &str,
) -> InputError {
    InputError::new(file, format!("{what} ({var} changes the limit)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Limits, LimitsError> {
        let raw = RawLimits::from_lookup(|k| {
            pairs
                .iter()
                .find(|(var, _)| *var == k)
                .map(|(_, v)| v.to_string())
        })?;
        Limits::from_raw_named(&raw, ENV_VARS.map(|(var, _)| var))
    }

    #[test]
    fn environment_overrides_defaults() {
        assert_eq!(env(&[]).unwrap(), Limits::default());
        let l = env(&[
            ("PAILOT_LIMIT_WALL_CLOCK", "2m"),
            ("PAILOT_LIMIT_MEMORY", "256Mi"),
            ("PAILOT_LIMIT_TEMPLATE_FUEL", "1000"),
            ("PAILOT_LIMIT_EXTENDS_DEPTH", "4"),
            ("PAILOT_LIMIT_INPUT_FILE", "1Mi"),
            ("PAILOT_LIMIT_RENDERED_OUTPUT", "2Mi"),
        ])
        .unwrap();
        assert_eq!(l.wall_clock, Duration::from_secs(120));
        assert_eq!(l.memory, 256 * MIB);
        assert_eq!(l.template_fuel, 1000);
        assert_eq!(l.extends_depth, 4);
        assert_eq!((l.input_file, l.rendered_output), (MIB, 2 * MIB));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("PAILOT_LIMIT_WALL_CLOCK", "soon"),
            ("PAILOT_LIMIT_WALL_CLOCK", "0s"),
            ("PAILOT_LIMIT_MEMORY", "1GiB"),
            ("PAILOT_LIMIT_MEMORY", "1Mi"),
            ("PAILOT_LIMIT_TEMPLATE_FUEL", "-1"),
            ("PAILOT_LIMIT_EXTENDS_DEPTH", "0"),
            ("PAILOT_LIMIT_INPUT_FILE", "lots"),
        ] {
            let e = env(&[(var, value)]).unwrap_err();
            assert_eq!(e.key, var, "{value}: {e}");
        }
        let e = Limits::from_raw(&RawLimits {
            memory: Some("-1Gi".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "memory");
    }
}
