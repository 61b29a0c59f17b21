//! POSTs a [`Delivery`] over HTTP/1.1: plain for `http://`, rustls with the system's CA store for `https://`.
//!
//! Each delivery builds its own client and drops it afterwards: notifications are rare, and an
//! idle daemon then keeps no connection pool and no parsed CA bundle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;

use super::payload::Delivery;

/// The most of an error answer kept for the log.
const ERROR_BODY_BYTES: usize = 300;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Connection refused or reset, timeout, TLS trouble, 429 or 5xx: worth another attempt.
    #[error("{0}")]
    Transient(String),
    /// Any other answer (401 bad token, 404 unknown repository, 422 invalid status...): not retried.
    #[error("{0}")]
    Permanent(String),
}

/// Sends deliveries; the dispatcher's only way out (tests put a recorder in its place).
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        delivery: &Delivery,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// The real transport.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

impl Transport for Http {
    async fn send(&self, delivery: &Delivery, timeout: Duration) -> Result<(), SendError> {
        let https = delivery.url.starts_with("https://");
        let attempt = async {
            if https {
                post(https_connector()?, delivery).await
            } else {
                post(HttpConnector::new(), delivery).await
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient(format!(
                "no answer within {}",
                crate::duration::format(timeout)
            ))),
        }
    }
}

fn https_connector() -> Result<hyper_rustls::HttpsConnector<HttpConnector>, SendError> {
    use hyper_rustls::ConfigBuilderExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Permanent(format!("TLS setup: {e}")))?
        .with_native_roots()
        .map_err(|e| SendError::Permanent(format!("TLS setup: {e}")))?
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build())
}

async fn post<C>(connector: C, d: &Delivery) -> Result<(), SendError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let client: Client<C, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut req = Request::post(&d.url);
    for (name, value) in &d.headers {
        req = req.header(*name, value);
    }
    let req = req
        .body(Full::new(Bytes::from(d.body.clone())))
        // The URL came from the configuration; the error text could echo it, so it is not kept.
        .map_err(|_| SendError::Permanent("the sink's URL is not a valid request target".into()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| SendError::Transient(describe_client_error(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(ERROR_BODY_BYTES)
        .collect();
    let msg = if text.is_empty() {
        format!("answered {status}")
    } else {
        format!("answered {status}: {text}")
    };
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Transient(msg))
    } else {
        Err(SendError::Permanent(msg))
    }
}

/// A client error without the URL (which may hold a token): the innermost cause's text.
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if e.is_connect() {
        format!("cannot connect: {text}")
    } else {
        format!("request failed: {text}")
    }
}
