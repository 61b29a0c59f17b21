//! HTTP server of the daemon (hyper 1, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /hooks/git`.
//!
//! The caller binds the listener (so tests can use `127.0.0.1:0`) and passes a shutdown future;
//! on shutdown the listener closes and open connections get a few seconds to finish.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
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
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// Largest request body accepted (webhook payloads); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long open connections may take to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send the request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Result of the last reconcile, as shown by `/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReconcileStatus {
    /// `success`, `failure`, or `stopped` (shutdown during the apply; the revision was not applied).
    pub result: String,
    /// What started it: `startup`, `watch`, `poll`, `webhook`, `reload`, `drift`, `retry` (backoff), `activated`.
    pub trigger: Option<String>,
    /// Revision the reconcile worked on.
    pub revision: Option<String>,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub finished_at: Option<f64>,
    pub duration_seconds: Option<f64>,
    /// One line about what happened (never a secret).
    pub message: Option<String>,
}

/// Last known state of one chart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChartStatus {
    /// `applied`, `failed`, `pending`, `skipped`.
    pub result: String,
    /// Every object of the chart is healthy.
    pub ready: bool,
    /// Objects rendered for the chart.
    pub objects: u64,
    /// Objects currently drifted.
    pub drifted: u64,
    pub message: Option<String>,
}

/// One drifted field of a managed object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DriftRecord {
    pub chart: String,
    /// `Kind/namespace/name` (or `Kind/name`).
    pub object: String,
    /// JSON pointer of the drifted field.
    pub pointer: String,
    /// Field manager that changed it, when known.
    pub manager: Option<String>,
    /// Where the desired value comes from (template, values key, overlay patch op).
    pub provenance: Option<String>,
    /// `corrected` or `reported`.
    pub action: String,
    /// Unix seconds.
    pub detected_at: Option<f64>,
}

/// An error of the last reconcile, with its place in the input when it is an input error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusError {
    /// Why (the `reason` label of `pailot_reconcile_failures_total`: `api_unreachable`, `invalid_input`, ...).
    pub reason: Option<String>,
    /// Reconcile stage (`fetch`, `render`, `apply`, ...).
    pub stage: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub place: Option<String>,
    pub pointer: Option<String>,
    pub object: Option<String>,
}

impl StatusError {
    /// An error of `stage` from an input error, keeping its file and position.
    pub fn from_input(stage: &str, e: &crate::diag::InputError) -> Self {
        StatusError {
            reason: None,
            stage: stage.to_string(),
            message: e.message.clone(),
            file: Some(e.file.display().to_string()),
            line: e.line,
            column: e.column,
            place: e.place.clone(),
            pointer: e.pointer.clone(),
            object: e.object.clone(),
        }
    }
}

/// What `/status` shows; the reconciler replaces or updates it through [`ServerState`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusSnapshot {
    /// Revision currently applied.
    pub revision: Option<String>,
    /// State of the reconcile loop (`idle`, `fetching`, `rendering`, `applying`, `waiting`, `backoff`).
    pub phase: Option<String>,
    /// Whether this daemon holds the leader lease (None without leader election).
    pub leader: Option<bool>,
    /// Drift mode: `correct` or `warn`.
    pub drift_mode: Option<String>,
    pub last_reconcile: Option<ReconcileStatus>,
    /// Per chart, by name.
    pub charts: BTreeMap<String, ChartStatus>,
    pub drift: Vec<DriftRecord>,
    /// Unix seconds of the next scheduled wake-up (poll or drift sweep).
    pub next_wakeup: Option<f64>,
    pub errors: Vec<StatusError>,
    /// How new commits are noticed.
    pub source: Option<SourceStatus>,
}

/// How the daemon notices new commits, and what triggered reconciles so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourceStatus {
    /// `refs`: an inotify watch on the local repository's refs (plus polling); `off`: polling only
    /// (`source.watch: off`); `remote`: polling only (a remote cannot be watched); `failed`: the watch
    /// could not start, polling only.
    pub watch: String,
    /// Poll interval in seconds (before jitter).
    pub poll_interval_seconds: f64,
    /// Triggers received since start, by kind (`watch`, `poll`, `webhook`, `drift`, `reload`).
    pub triggers: BTreeMap<String, u64>,
}

/// Everything the server reads: metrics, the status snapshot, readiness, the webhook handler.
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    status: RwLock<StatusSnapshot>,
    ready: AtomicBool,
    webhook: Option<Arc<dyn WebhookHandler>>,
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
    /// State without a webhook handler (`POST /hooks/git` answers 404).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ServerState {
            metrics,
            status: RwLock::new(StatusSnapshot::default()),
            ready: AtomicBool::new(false),
            webhook: None,
        }
    }

    /// Attach the webhook handler.
    pub fn with_webhook(mut self, handler: Arc<dyn WebhookHandler>) -> Self {
        self.webhook = Some(handler);
        self
    }

    /// Replace the status snapshot.
    pub fn set_status(&self, snapshot: StatusSnapshot) {
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// Change the status snapshot in place.
    pub fn update_status(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        f(&mut self.status.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the status snapshot.
    pub fn status(&self) -> StatusSnapshot {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Force readiness (e.g. a standby replica that serves metrics); a successful reconcile also makes the server ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ready after the first successful reconcile (or when forced with [`ServerState::set_ready`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) || self.metrics.last_success().is_some()
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
                let st = state.clone();
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(route(&st, req).await) }
                    }),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
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
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "cannot read body\n"),
    };
    match handler.handle(&parts.headers, &body) {
        WebhookOutcome::Accepted => text(StatusCode::ACCEPTED, "accepted\n"),
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
    fn status_error_keeps_input_position() {
        let e = crate::diag::InputError::new("charts/x/values.yaml", "bad")
            .at(3, 7)
            .pointer("/a");
        let s = StatusError::from_input("render", &e);
        assert_eq!(
            (s.line, s.column, s.pointer.as_deref()),
            (Some(3), Some(7), Some("/a"))
        );
        assert_eq!(s.file.as_deref(), Some("charts/x/values.yaml"));
    }

    #[test]
    fn readiness_follows_first_success() {
        let st = ServerState::new(Arc::new(Metrics::new()));
        assert!(!st.is_ready());
        st.metrics.record_reconcile(
            crate::metrics::ReconcileResult::Success,
            Duration::from_millis(1),
        );
        assert!(st.is_ready());
    }
}
