//! Keeping the daemon's resident memory small: one malloc arena, and free pages handed back once a reconcile settles.
//!
//! glibc gives every thread that allocates concurrently its own arena (up to 8 × cores); a 600-object
//! reconcile spread over the runtime's workers and blocking threads then leaves several arenas each
//! holding tens of MiB of freed-but-kept memory. One arena and a `malloc_trim(0)` after each
//! reconcile or drift check keep the resident set close to what is really in use
//! (`BENCHMARKS.md`, daemon section). Elsewhere (musl, other allocators) these are no-ops.

use std::sync::atomic::{AtomicBool, Ordering};

/// Arenas the daemon's allocator may use. The daemon is I/O-bound (fetch and render run in helper
/// processes, see `helper`; apply waits on the API server), so one arena costs no measurable
/// latency (`BENCHMARKS.md`).
pub const ARENAS: i32 = 1;

/// Limit glibc's malloc to `ARENAS` arenas. Call first thing, before any thread exists.
///
/// An explicit `MALLOC_ARENA_MAX` in the environment wins (for experiments).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tunables; it is called before other threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Give free heap pages back to the kernel (`malloc_trim(0)`: also the free pages inside the heap, not only its top).
///
/// Takes the arena lock for a few milliseconds; call it when nothing is allocating heavily.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Remembers that a reconcile or drift check finished, so that the next idle moment trims once.
#[derive(Debug, Default)]
pub struct Trimmer {
    pending: AtomicBool,
}

impl Trimmer {
    /// Work that allocated a lot has finished.
    pub fn settled(&self) {
        self.pending.store(true, Ordering::Relaxed);
    }

    /// Trim if something settled since the last call; `idle` says the reconcile loop is idle now.
    /// Returns whether it trimmed.
    pub fn trim_if_settled(&self, idle: bool) -> bool {
        if idle && self.pending.swap(false, Ordering::Relaxed) {
            release_free_memory();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_settled_reconcile_and_only_when_idle() {
        let t = Trimmer::default();
        assert!(!t.trim_if_settled(true), "nothing settled yet");
        t.settled();
        assert!(!t.trim_if_settled(false), "busy: wait for idle");
        assert!(t.trim_if_settled(true));
        assert!(!t.trim_if_settled(true), "already trimmed");
        t.settled();
        t.settled();
        assert!(t.trim_if_settled(true));
        assert!(!t.trim_if_settled(true));
    }
}
