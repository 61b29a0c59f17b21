//! systemd integration: `sd_notify` messages (READY, STATUS, WATCHDOG, STOPPING) and the watchdog interval.
//!
//! Every helper is a no-op when `NOTIFY_SOCKET` is unset (pailot run by hand, or under a unit that is not
//! `Type=notify`), so callers never need to check. Errors sending to a set socket are returned, and the
//! daemon logs them once; they never stop the reconciler.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket named by `NOTIFY_SOCKET` refused the datagram.
    #[error("failed to notify systemd ({state}) through NOTIFY_SOCKET")]
    Notify {
        state: &'static str,
        #[source]
        source: io::Error,
    },
}

fn send(state: &'static str, msg: &[NotifyState<'_>]) -> Result<(), Error> {
    sd_notify::notify(msg).map_err(|source| Error::Notify { state, source })
}

/// True when pailot runs under a service manager that listens for notifications.
pub fn notify_socket_set() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// `READY=1`: start-up finished (the daemon sends it after its first reconcile).
pub fn ready() -> Result<(), Error> {
    send("READY", &[NotifyState::Ready])
}

/// `READY=1` together with a `STATUS=` line.
pub fn ready_with_status(status: &str) -> Result<(), Error> {
    send("READY", &[NotifyState::Ready, NotifyState::Status(status)])
}

/// `STATUS=<text>`: one line shown by `systemctl status`. Never put a secret in it.
pub fn status(text: &str) -> Result<(), Error> {
    // A newline would end the STATUS field and start a bogus assignment.
    let line = text.replace(['\n', '\r'], " ");
    send("STATUS", &[NotifyState::Status(&line)])
}

/// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`].
pub fn watchdog() -> Result<(), Error> {
    send("WATCHDOG", &[NotifyState::Watchdog])
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> Result<(), Error> {
    send("STOPPING", &[NotifyState::Stopping])
}

/// How often to send `WATCHDOG=1`: half of `WatchdogSec=` (as sd_watchdog_enabled(3) advises), or
/// `None` when the unit has no watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_no_ops_without_notify_socket() {
        // The unit-test process never has NOTIFY_SOCKET set (cargo does not pass one).
        if notify_socket_set() {
            return;
        }
        ready().unwrap();
        status("line one\nline two").unwrap();
        watchdog().unwrap();
        stopping().unwrap();
    }
}
