//! Notifications and commit statuses: events out to webhooks, Slack and git hosts, without ever blocking the daemon.
//!
//! Flow: the daemon calls [`Notifier::notify`] (never waits: a full queue drops the event and
//! counts it) → one dispatcher task filters each event per sink (its `events:`), drops one identical
//! to the last of its topic sent to that sink within `dedupWindow`, and hands it to the sink's own
//! queue → one task per sink waits for its rate limit, builds the provider's request
//! ([`payload::build`]) and sends it, retrying transient failures (1 s, 2 s, 4 s … up to `retries`).
//!
//! Guarantees: `notify` is a `try_send`; a sink that hangs or fails holds up only its own queue
//! (bounded, overflow dropped and counted); secrets (URLs from files, HMAC keys, tokens) appear in
//! no log line, error or `Debug` output. Counters per sink: [`Notifier::stats`].

pub mod config;
pub mod event;
pub mod http;
pub mod payload;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use config::{Config, RawConfig, Sink, SinkKind};
pub use event::{Event, EventKind, Severity};
use http::{SendError, Transport};

/// Events a sink may have waiting (behind its rate limit or a slow endpoint) before new ones are dropped.
const SINK_QUEUE: usize = 16;
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Counters of one sink since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub name: String,
    pub kind: Option<SinkKind>,
    /// Delivered (a 2xx answer).
    pub sent: u64,
    /// Given up: a permanent error, or transient ones past the retries.
    pub failed: u64,
    /// Not attempted: the sink's queue was full.
    pub dropped: u64,
    /// Not sent: identical to the last event of its topic within the dedup window.
    pub deduplicated: u64,
}

/// Counters of the whole notifier: what each sink did, and what the shared queue dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events dropped before any sink saw them (the dispatch queue was full).
    pub queue_dropped: u64,
    pub sinks: Vec<SinkStats>,
}

#[derive(Default)]
struct SinkCounters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    deduplicated: AtomicU64,
}

struct Counters {
    queue_dropped: AtomicU64,
    sinks: Vec<(String, SinkKind, SinkCounters)>,
}

/// The daemon's handle: cheap to clone, `notify` never blocks. Dropping every handle ends the tasks
/// once their queues are empty.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Event>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("sinks", &self.counters.sinks.len())
            .finish()
    }
}

impl Notifier {
    /// A notifier without sinks: `notify` does nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            tx: None,
            counters: Arc::new(Counters {
                queue_dropped: AtomicU64::new(0),
                sinks: Vec::new(),
            }),
        }
    }

    /// Start the dispatcher and one task per sink (on the current tokio runtime). `cluster` names
    /// this deployment in every message and is the default commit-status context (`pailot/<cluster>`).
    pub fn spawn(config: Config, cluster: impl Into<String>) -> Notifier {
        Notifier::spawn_with(config, cluster, http::Http)
    }

    /// [`Notifier::spawn`] with another transport (tests record deliveries instead of sending them).
    pub fn spawn_with<T: Transport>(
        config: Config,
        cluster: impl Into<String>,
        transport: T,
    ) -> Notifier {
        if config.sinks.is_empty() {
            return Notifier::disabled();
        }
        let cluster: Arc<str> = cluster.into().into();
        let transport = Arc::new(transport);
        let counters = Arc::new(Counters {
            queue_dropped: AtomicU64::new(0),
            sinks: config
                .sinks
                .iter()
                .map(|s| (s.name.clone(), s.kind(), SinkCounters::default()))
                .collect(),
        });
        let mut routes = Vec::new();
        for (i, sink) in config.sinks.iter().enumerate() {
            let (tx, rx) = mpsc::channel(SINK_QUEUE);
            routes.push((sink.events.clone(), tx));
            tokio::spawn(deliver(
                i,
                sink.clone(),
                cluster.clone(),
                rx,
                transport.clone(),
                counters.clone(),
                config.clone(),
            ));
        }
        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(dispatch(rx, routes, counters.clone(), config.dedup_window));
        Notifier {
            tx: Some(tx),
            counters,
        }
    }

    /// Hand an event over; returns at once. A full queue drops it (counted in [`Stats::queue_dropped`]).
    pub fn notify(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether any sink is configured.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Counters since start, per sink in configuration order.
    pub fn stats(&self) -> Stats {
        Stats {
            queue_dropped: self.counters.queue_dropped.load(Ordering::Relaxed),
            sinks: self
                .counters
                .sinks
                .iter()
                .map(|(name, kind, c)| SinkStats {
                    name: name.clone(),
                    kind: Some(*kind),
                    sent: c.sent.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    deduplicated: c.deduplicated.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Everything but the time: two events with the same fingerprint say the same thing.
fn fingerprint(e: &Event) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut same = e.clone();
    same.time = 0;
    same.hash(&mut h);
    h.finish()
}

type Route = (std::collections::BTreeSet<EventKind>, mpsc::Sender<Event>);

/// Fan events out to the sinks that want them, minus recent duplicates.
async fn dispatch(
    mut rx: mpsc::Receiver<Event>,
    routes: Vec<Route>,
    counters: Arc<Counters>,
    dedup_window: Duration,
) {
    // (sink, topic) → (fingerprint, when it was last passed on)
    let mut last: HashMap<(usize, u8), (u64, Instant)> = HashMap::new();
    while let Some(event) = rx.recv().await {
        let fp = fingerprint(&event);
        let now = Instant::now();
        for (i, (events, tx)) in routes.iter().enumerate() {
            if !events.contains(&event.kind) {
                continue;
            }
            let c = &counters.sinks[i].2;
            let key = (i, event.kind.topic());
            if let Some((f, at)) = last.get(&key)
                && *f == fp
                && now.duration_since(*at) < dedup_window
            {
                c.deduplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            last.insert(key, (fp, now));
            if tx.try_send(event.clone()).is_err() {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sink = %counters.sinks[i].0,
                    event = event.kind.word(),
                    "notification dropped: the sink's queue is full (endpoint slow or down)"
                );
            }
        }
    }
}

/// At most `capacity` takes per `per`, refilled continuously.
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_token: Duration,
    at: Instant,
}

impl TokenBucket {
    fn new(events: u32, per: Duration) -> Self {
        let capacity = f64::from(events.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_token: per.div_f64(capacity),
            at: Instant::now(),
        }
    }

    /// Wait until a token is free, then take it.
    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            let refill = now.duration_since(self.at).as_secs_f64() / self.per_token.as_secs_f64();
            self.tokens = (self.tokens + refill).min(self.capacity);
            self.at = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            tokio::time::sleep(self.per_token.mul_f64(1.0 - self.tokens)).await;
        }
    }
}

/// One sink's task: rate limit, build, send, retry.
async fn deliver<T: Transport>(
    index: usize,
    sink: Sink,
    cluster: Arc<str>,
    mut rx: mpsc::Receiver<Event>,
    transport: Arc<T>,
    counters: Arc<Counters>,
    config: Config,
) {
    let c = &counters.sinks[index].2;
    let mut bucket = TokenBucket::new(config.rate_events, config.rate_per);
    while let Some(event) = rx.recv().await {
        let Some(delivery) = payload::build(&sink, &event, &cluster) else {
            tracing::debug!(sink = %sink.name, event = event.kind.word(), "nothing to send (no full commit id)");
            continue;
        };
        bucket.take().await;
        let mut attempt = 0u32;
        loop {
            match transport.send(&delivery, config.timeout).await {
                Ok(()) => {
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(sink = %sink.name, event = event.kind.word(), "notification sent");
                    break;
                }
                Err(SendError::Transient(why)) if attempt < config.retries => {
                    let pause = Duration::from_secs(1 << attempt.min(6)).min(MAX_BACKOFF);
                    tracing::info!(
                        sink = %sink.name,
                        event = event.kind.word(),
                        error = %why,
                        retry_in = ?pause,
                        "notification failed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        sink = %sink.name,
                        kind = sink.kind().word(),
                        event = event.kind.word(),
                        attempts = attempt + 1,
                        error = %e,
                        "notification not delivered"
                    );
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
