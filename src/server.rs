//! HTTP server of the daemon (hyper 1, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /hooks/git`.
//!
//! The caller binds the listener (so tests can use `127.0.0.1:0`) and passes a shutdown future;
//! on shutdown the listener closes and open connections get a few seconds to finish.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use crate::daemon::status::Status;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// Largest request body accepted (webhook payloads); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Connections served at once, so a flood of clients can neither exhaust the daemon's file descriptors
/// (reconciling needs them) nor its memory. When all are taken, a new connection replaces the oldest one
/// that is not in the middle of a request (one still sending its headers, or idle between requests);
/// only when every connection is handling a request is the new one closed at once. A flood of slow or
/// idle clients therefore cannot lock out `/healthz`: a prober's request is read within a millisecond of
/// its connect, long before the flood has replaced it.
pub const MAX_CONNECTIONS: usize = 256;
/// How long the accept loop waits for an evicted connection to release its place.
const EVICTION_WAIT: Duration = Duration::from_millis(200);
/// Request bodies (webhooks) read at once; a request beyond it is answered 503 at once, so slow
/// senders hold a few connections for at most [`BODY_READ_TIMEOUT`] and the rest stay free for
/// `/healthz`, `/metrics` and `/status`.
pub const MAX_BODY_READS: usize = 8;
/// Time a client has to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection (keep-alive included); a scraper simply reconnects.
pub const CONNECTION_MAX_AGE: Duration = Duration::from_secs(60);
/// How long open connections may take to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send the request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module (the server itself reports I/O errors as `io::Error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status snapshot could not be serialised.
    #[error("cannot serialise status: {0}")]
    Status(#[from] serde_json::Error),
    /// Metrics could not be encoded.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::Error),
}

/// What a webhook handler decided about one `POST /hooks/git`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Signature valid; a fetch was triggered (202).
    Accepted,
    /// A ping (sent when the webhook is created): 200, nothing triggered.
    Ping,
    /// Missing or wrong signature/token (401); nothing was triggered.
    Unauthorized,
    /// The payload is not a push event this daemon understands (400).
    BadRequest,
}

/// Checks and acts on git webhooks (GitHub `X-Hub-Signature-256`, Gitea, GitLab token). Implemented by the daemon.
pub trait WebhookHandler: Send + Sync {
    /// Decide about one request; `body` is at most [`MAX_BODY_BYTES`] long. Must not block for long.
    fn handle(&self, headers: &HeaderMap, body: &[u8]) -> WebhookOutcome;
}

/// One connection being served, as the accept loop sees it when every place is taken.
#[derive(Default)]
struct Slot {
    /// A request is being handled (its headers were read, its response is not yet made).
    busy: AtomicBool,
    /// Closes the connection.
    evict: Notify,
}

/// A place for a new connection when all are taken: close the oldest connection that is not handling a
/// request and take its place; `None` when every connection is busy with a request.
async fn evict_oldest_waiting(state: &ServerState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    {
        let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
        let id = *slots
            .iter()
            .find(|(_, s)| !s.busy.load(Ordering::Relaxed))?
            .0;
        let slot = slots.remove(&id)?;
        slot.evict.notify_one();
    }
    tokio::time::timeout(EVICTION_WAIT, state.connections.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Result of the last reconcile, as shown by `/status`.
/// What the HTTP server reads: the metrics, the daemon's status (the one model, through a watch), and
/// the webhook handler.
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    status: watch::Receiver<Status>,
    webhook: Option<Arc<dyn WebhookHandler>>,
    /// Connections being served (see [`MAX_CONNECTIONS`]).
    connections: Arc<Semaphore>,
    /// The connections being served, oldest first, for eviction when all places are taken.
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next_slot: AtomicU64,
    /// Request bodies being read (see [`MAX_BODY_READS`]).
    body_reads: Arc<Semaphore>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("ready", &self.is_ready())
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerState {
    pub fn new(metrics: Arc<Metrics>, status: watch::Receiver<Status>) -> Self {
        ServerState {
            metrics,
            status,
            webhook: None,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            slots: Mutex::new(BTreeMap::new()),
            next_slot: AtomicU64::new(0),
            body_reads: Arc::new(Semaphore::new(MAX_BODY_READS)),
        }
    }

    pub fn with_webhook(mut self, handler: Arc<dyn WebhookHandler>) -> Self {
        self.webhook = Some(handler);
        self
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// True after the first successful reconcile.
    pub fn is_ready(&self) -> bool {
        self.status.borrow().ready
    }
}

/// Serve HTTP on `listener` until `shutdown` completes, then close the listener and give open
/// connections [`SHUTDOWN_GRACE`] to finish. Accept errors (e.g. out of file descriptors) are
/// logged and retried after a short pause, never fatal.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let permit = match state.connections.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match evict_oldest_waiting(&state).await {
                        Some(p) => p,
                        None => {
                            // Every connection is handling a request: close at once (the descriptor is
                            // freed now, not when the client gives up).
                            drop(stream);
                            tracing::debug!(max = MAX_CONNECTIONS, "HTTP connection refused: too many busy");
                            continue;
                        }
                    },
                };
                let slot = Arc::new(Slot::default());
                let id = state.next_slot.fetch_add(1, Ordering::Relaxed);
                state
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, slot.clone());
                let st = state.clone();
                let busy = slot.clone();
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let st = st.clone();
                        let busy = busy.clone();
                        async move {
                            busy.busy.store(true, Ordering::Relaxed);
                            let response = route(&st, req).await;
                            busy.busy.store(false, Ordering::Relaxed);
                            Ok::<_, Infallible>(response)
                        }
                    }),
                );
                let conn = graceful.watch(conn);
                let st = state.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        served = tokio::time::timeout(CONNECTION_MAX_AGE, conn) => match served {
                            Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
                            Err(_) => tracing::debug!("HTTP connection closed: older than its maximum age"),
                            Ok(Ok(())) => {}
                        },
                        _ = slot.evict.notified() => {
                            tracing::debug!("HTTP connection closed: all places taken, and it was the oldest waiting for a request");
                        }
                    }
                    st.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// True when the client asked for OpenMetrics or expressed no preference.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    match headers.get(ACCEPT).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(a) => {
            a.contains("application/openmetrics-text")
                || !(a.contains("text/plain") || a.contains("application/vnd.google.protobuf"))
        }
    }
}

async fn route(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get_like = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" if get_like => metrics_response(state, req.headers()),
        "/healthz" if get_like => text(StatusCode::OK, "ok\n"),
        "/readyz" if get_like => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no successful reconcile yet\n",
                )
            }
        }
        "/status" if get_like => match serde_json::to_vec_pretty(&state.status()) {
            Ok(mut body) => {
                body.push(b'\n');
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}\n", Error::Status(e)),
            ),
        },
        "/metrics" | "/healthz" | "/readyz" | "/status" => method_not_allowed("GET, HEAD"),
        "/hooks/git" if *req.method() == Method::POST => webhook(state, req).await,
        "/hooks/git" => method_not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn metrics_response(state: &ServerState, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let (body, ctype) = if wants_openmetrics(headers) {
        (state.metrics.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            state.metrics.encode_prometheus_text(),
            PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    match body {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", Error::Metrics(e)),
        ),
    }
}

async fn webhook(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(handler) = state.webhook.clone() else {
        return text(StatusCode::NOT_FOUND, "no webhook configured\n");
    };
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY_BYTES} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let Ok(_reading) = state.body_reads.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many webhook requests in progress; retry\n",
        );
    };
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    );
    let body = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "cannot read body\n"),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not sent in time\n"),
    };
    match handler.handle(&parts.headers, &body) {
        WebhookOutcome::Accepted => text(StatusCode::ACCEPTED, "accepted\n"),
        WebhookOutcome::Ping => text(StatusCode::OK, "pong (no fetch: a ping is not a push)\n"),
        WebhookOutcome::Unauthorized => text(StatusCode::UNAUTHORIZED, "unauthorized\n"),
        WebhookOutcome::BadRequest => text(StatusCode::BAD_REQUEST, "bad request\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(wants_openmetrics(&h));
        h.insert(ACCEPT, HeaderValue::from_static("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
            ),
        );
        assert!(wants_openmetrics(&h));
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert!(wants_openmetrics(&h));
    }

    #[test]
    fn readiness_follows_the_status() {
        let (tx, rx) = crate::daemon::status::StatusTx::new();
        let st = ServerState::new(Arc::new(Metrics::new()), rx);
        assert!(!st.is_ready());
        tx.update(|s| s.ready = true);
        assert!(st.is_ready());
    }
}
