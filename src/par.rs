//! Scoped data parallelism for the CPU-bound batch steps of a render (loading charts,
//! rendering them, emitting YAML). Results keep the input order, so output and the first
//! error reported are the same as a sequential run's.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Worker threads for batch steps: the CPUs available, at most 8; `PAILOT_THREADS=N` overrides
/// (1 = sequential).
pub fn workers() -> usize {
    if let Some(n) = std::env::var("PAILOT_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.max(1);
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// `items.iter().map(f).collect()`, spread over [`workers`] threads (items are taken one at a
/// time, so uneven items balance out).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = workers().min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            match h.join() {
                Ok(part) => all.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_runs_every_item_once() {
        let items: Vec<usize> = (0..1000).collect();
        let out = super::map(&items, |&i| i * 2);
        assert_eq!(out, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        assert!(super::map(&Vec::<u8>::new(), |&b| b).is_empty());
    }
}
