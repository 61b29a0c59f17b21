//! What the process does when an allocation fails under its memory limit: exit at once with a known code and a one-line message, instead of Rust's abort.
//!
//! The render helper runs under `RLIMIT_AS`; a template that grows a string 40 times must end it
//! as "memory limit exceeded" (a typed exit code its parent reads), not as a crash that looks like a
//! bug. The binary's allocator (`src/alloc.rs`) calls [`exit_if_set`] when an allocation fails.

use std::sync::atomic::{AtomicI32, Ordering};

/// Exit code of a daemon helper that ran out of memory under its limit.
pub const EXIT_HELPER_OUT_OF_MEMORY: i32 = 86;

static EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// From now on, a failed allocation exits the process with `code` (0: Rust's default, an abort).
pub fn set_exit_code(code: i32) {
    EXIT_CODE.store(code, Ordering::Relaxed);
}

/// Called by the allocator when an allocation of `size` bytes failed: exit with the configured code,
/// if any, after one line on stderr. Allocates nothing.
pub fn exit_if_set(size: usize) {
    let code = EXIT_CODE.load(Ordering::Relaxed);
    if code == 0 {
        return;
    }
    let mut buf = [0u8; 128];
    let msg = format_message(&mut buf, size);
    // SAFETY: write(2) and _exit(2) on a stack buffer; nothing here allocates or unwinds.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(code);
    }
}

/// `pailot: memory limit exceeded (an allocation of N bytes failed)\n` into `buf`, without allocating.
fn format_message(buf: &mut [u8; 128], size: usize) -> &[u8] {
    let head = b"pailot: memory limit exceeded (an allocation of ";
    let tail = b" bytes failed)\n";
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [&head[..], &digits[i..], &tail[..]] {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_names_the_size() {
        let mut buf = [0u8; 128];
        assert_eq!(
            super::format_message(&mut buf, 4_831_838_208),
            b"pailot: memory limit exceeded (an allocation of 4831838208 bytes failed)\n"
        );
        let mut buf = [0u8; 128];
        assert!(super::format_message(&mut buf, 0).ends_with(b"of 0 bytes failed)\n"));
    }
}
