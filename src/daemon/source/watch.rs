//! Source triggers: an inotify watch on a local repository's refs, and jittered polling for remotes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use crate::daemon::reconcile::Trigger;

/// Why the filesystem watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// inotify refused the watch (e.g. the path vanished or the watch limit is reached).
    #[error("failed to watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Debounce window for ref changes: `git commit` writes several files in a burst.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A running watch; dropping it stops the watch.
pub struct RefWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Watch `git_dir`'s `HEAD`, `packed-refs` and `refs/` and send `Trigger::Watch` on each debounced change.
pub fn watch_refs(git_dir: &Path, tx: mpsc::Sender<Trigger>) -> Result<RefWatch, Error> {
    let dir = git_dir.to_path_buf();
    let refs = dir.join("refs");
    let filter_dir = dir.clone();
    let handler = move |res: DebounceEventResult| {
        let Ok(events) = res else { return };
        let relevant = events.iter().any(|ev| {
            matches!(
                ev.event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) && ev.event.paths.iter().any(|p| is_ref_path(&filter_dir, p))
        });
        if relevant {
            // A full channel already holds a pending trigger: coalesced.
            let _ = tx.try_send(Trigger::Watch);
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler).map_err(|source| Error::Watch {
        path: dir.clone(),
        source,
    })?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch {
            path: dir.clone(),
            source,
        })?;
    if refs.is_dir() {
        debouncer
            .watch(&refs, RecursiveMode::Recursive)
            .map_err(|source| Error::Watch { path: refs, source })?;
    }
    Ok(RefWatch {
        _debouncer: debouncer,
    })
}

/// True for `HEAD`, `packed-refs` and anything under `refs/` except lock files.
fn is_ref_path(git_dir: &Path, p: &Path) -> bool {
    let Ok(rel) = p.strip_prefix(git_dir) else {
        return false;
    };
    if rel.extension().is_some_and(|e| e == "lock") {
        return false;
    }
    rel == Path::new("HEAD") || rel == Path::new("packed-refs") || rel.starts_with("refs")
}

/// The delay before the next poll: `interval` plus up to `jitter × interval`, drawn at random.
pub fn next_poll_delay(interval: Duration, jitter: f64) -> Duration {
    let extra = if jitter > 0.0 {
        interval.mul_f64(jitter * rand::random::<f64>())
    } else {
        Duration::ZERO
    };
    interval + extra
}

/// Send `Trigger::Poll` every `interval` (+ jitter) until the receiver is gone.
pub async fn poll(interval: Duration, jitter: f64, tx: mpsc::Sender<Trigger>) {
    loop {
        tokio::time::sleep(next_poll_delay(interval, jitter)).await;
        if tx.is_closed() {
            return;
        }
        let _ = tx.try_send(Trigger::Poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refs_count() {
        let g = Path::new("/r/.git");
        assert!(is_ref_path(g, Path::new("/r/.git/refs/heads/main")));
        assert!(is_ref_path(g, Path::new("/r/.git/HEAD")));
        assert!(is_ref_path(g, Path::new("/r/.git/packed-refs")));
        assert!(!is_ref_path(g, Path::new("/r/.git/refs/heads/main.lock")));
        assert!(!is_ref_path(g, Path::new("/r/.git/index")));
        assert!(!is_ref_path(g, Path::new("/r/.git/objects/ab/cdef")));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let i = Duration::from_secs(60);
        for _ in 0..100 {
            let d = next_poll_delay(i, 0.1);
            assert!(d >= i && d <= i + Duration::from_secs(6), "{d:?}");
        }
        assert_eq!(next_poll_delay(i, 0.0), i);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_fires_once_per_interval() {
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(poll(Duration::from_secs(60), 0.0, tx));
        let start = tokio::time::Instant::now();
        assert_eq!(rx.recv().await, Some(Trigger::Poll));
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(rx.recv().await, Some(Trigger::Poll));
        assert_eq!(start.elapsed(), Duration::from_secs(120));
        task.abort();
    }
}
