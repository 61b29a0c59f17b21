//! The process's allocator, chosen per command: mimalloc for the batch commands (`render`,
//! `apply`, `budget`...), glibc's malloc for `pailot daemon` and its helpers.
//!
//! A render is allocation-bound (hundreds of thousands of small strings and maps): mimalloc takes
//! about a fifth of its CPU time off and most of its page faults (BENCHMARKS.md, render). The
//! long-running daemon's memory figures rest on glibc tuning instead (one arena, `malloc_trim`:
//! `daemon::memory`), and mimalloc measured worse there. The choice is made on the first
//! allocation, from `/proc/self/cmdline` read without allocating, and never changes, so every
//! block is freed by the allocator that gave it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// The global allocator of the `pailot` binary.
pub struct PerCommand;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

// Inlined into every allocation (one load and a compare): as a call it was 2.6 % of a render's
// instructions once pailot's crate became one code generation unit.
#[inline(always)]
fn mode() -> u8 {
    let m = MODE.load(Ordering::Acquire);
    if m != UNDECIDED {
        return m;
    }
    decide()
}

#[cold]
#[inline(never)]
fn decide() -> u8 {
    // Every thread that gets here computes the same answer.
    let m = if runs_daemon() { SYSTEM } else { MIMALLOC };
    MODE.store(m, Ordering::Release);
    m
}

/// Whether an argument is exactly `daemon` (`pailot daemon ...`, `pailot daemon --helper`).
/// Unknown (no /proc): the daemon's allocator, the conservative choice.
fn runs_daemon() -> bool {
    let mut buf = [0u8; 4096];
    // SAFETY: plain syscalls on a stack buffer; nothing here allocates.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return true;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return true;
    }
    buf[..n as usize]
        .split(|&b| b == 0)
        .skip(1)
        .any(|arg| arg == b"daemon")
}

/// While pailot's memory limit is in force (`pailot::limits::heap`), count the heap and refuse
/// the allocation that would pass it: the process then says which limit it hit and exits with
/// code 2, instead of growing until the kernel kills it or Rust aborts (exit 134, "memory
/// allocation failed"). A null from the allocator itself is reported the same way.
#[inline]
fn admit(size: usize) {
    if size >= COUNTED && !pailot::limits::heap::grow(size) {
        pailot::limits::memory_exhausted(size);
    }
}

/// Blocks smaller than this are not counted. A render makes hundreds of thousands of them (map
/// nodes, short strings), and counting each cost 3-4 % of a 3000-object render's instructions
/// (BENCHMARKS.md); their total is bounded by the other limits (template fuel, input file size,
/// the YAML reader's node and alias budgets), while what runs a heap away (a doubled string, a
/// growing list or buffer) is made of large blocks, which are counted.
const COUNTED: usize = 256;

#[inline]
fn release(size: usize) {
    if size >= COUNTED {
        pailot::limits::heap::shrink(size);
    }
}

/// A daemon helper runs under `RLIMIT_AS` and exits with its own code when the kernel refuses memory
/// (`pailot::oom`), so the daemon reads "exceeded helpers.memory" rather than a crash.
#[inline]
fn checked(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        pailot::oom::exit_if_set(size);
        if pailot::limits::heap::limit() > 0 {
            pailot::limits::memory_exhausted(size);
        }
    }
    p
}

// SAFETY: every call goes to the allocator `mode()` picked, which never changes after the first
// call, so a block is always freed or resized by the allocator that returned it.
unsafe impl GlobalAlloc for PerCommand {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        admit(layout.size());
        unsafe {
            checked(
                if mode() == MIMALLOC {
                    MiMalloc.alloc(layout)
                } else {
                    System.alloc(layout)
                },
                layout.size(),
            )
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        admit(layout.size());
        unsafe {
            checked(
                if mode() == MIMALLOC {
                    MiMalloc.alloc_zeroed(layout)
                } else {
                    System.alloc_zeroed(layout)
                },
                layout.size(),
            )
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        release(layout.size());
        unsafe {
            if mode() == MIMALLOC {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as freeing the old block and taking the new one (each counted only when large).
        let (old, new) = (layout.size(), new_size);
        if old >= COUNTED || new >= COUNTED {
            let counted = |s: usize| if s >= COUNTED { s } else { 0 };
            match counted(new).checked_sub(counted(old)) {
                Some(more) => {
                    if !pailot::limits::heap::grow(more) {
                        pailot::limits::memory_exhausted(more);
                    }
                }
                None => pailot::limits::heap::shrink(counted(old) - counted(new)),
            }
        }
        unsafe {
            checked(
                if mode() == MIMALLOC {
                    MiMalloc.realloc(ptr, layout, new_size)
                } else {
                    System.realloc(ptr, layout, new_size)
                },
                new_size,
            )
        }
    }
}

/// Which allocator this process uses (`mimalloc` or `system`), for tests and diagnostics.
pub fn name() -> &'static str {
    if mode() == MIMALLOC {
        "mimalloc"
    } else {
        "system"
    }
}
