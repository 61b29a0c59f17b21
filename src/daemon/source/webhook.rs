//! Git push webhooks (`POST /hooks/git`): GitHub/Gitea HMAC-SHA256 or GitLab token, checked in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::daemon::config::Secret;
use crate::daemon::reconcile::Trigger;

/// Why a webhook request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No signature or token header of a known provider.
    #[error("no signature header (X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)")]
    MissingSignature,
    /// A signature header that is not hex / not `sha256=`-prefixed.
    #[error("malformed {header} header")]
    Malformed { header: &'static str },
    /// The signature or token does not match the configured secret.
    #[error("{header} does not match the webhook secret")]
    Mismatch { header: &'static str },
    /// No webhook secret is configured, so every request is refused.
    #[error("no webhook secret configured")]
    NotConfigured,
}

/// The forge whose signature scheme authenticated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    Gitea,
    GitLab,
}

/// What the handler did with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated; a fetch was triggered (answer 202).
    Accepted(Provider),
    /// Authenticated ping (sent when a webhook is created); nothing triggered (answer 200).
    Ping(Provider),
    /// Authenticated, but an event other than a push (issues, releases…); nothing triggered (answer 400).
    NotPush(Provider, String),
    /// Not authenticated; nothing was triggered (answer 401).
    Unauthorized(Error),
}

/// Authenticates push webhooks and turns them into `Trigger::Webhook`.
pub struct GitWebhook {
    secret: Option<Secret>,
    tx: mpsc::Sender<Trigger>,
}

impl GitWebhook {
    pub fn new(secret: Option<Secret>, tx: mpsc::Sender<Trigger>) -> Self {
        GitWebhook { secret, tx }
    }

    /// Authenticate the request; on success trigger a fetch (coalesced with any pending trigger).
    pub fn handle_push(&self, headers: &hyper::http::HeaderMap, body: &[u8]) -> Verdict {
        let Some(secret) = &self.secret else {
            return Verdict::Unauthorized(Error::NotConfigured);
        };
        match authenticate(secret.expose(), headers, body) {
            Ok(provider) => match event(headers) {
                Some(e) if e.eq_ignore_ascii_case("ping") => Verdict::Ping(provider),
                Some(e) if !is_push(&e) => Verdict::NotPush(provider, e),
                _ => {
                    let _ = self.tx.try_send(Trigger::Webhook);
                    Verdict::Accepted(provider)
                }
            },
            Err(e) => Verdict::Unauthorized(e),
        }
    }
}

/// The event a forge says it sends (`X-GitHub-Event`, `X-Gitea-Event`, `X-Gitlab-Event`), if any.
fn event(headers: &hyper::http::HeaderMap) -> Option<String> {
    ["x-github-event", "x-gitea-event", "x-gitlab-event"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Push events of the three forges (GitLab names them `Push Hook` / `Tag Push Hook`).
fn is_push(event: &str) -> bool {
    matches!(
        event.to_ascii_lowercase().as_str(),
        "push" | "push hook" | "tag push hook" | "create"
    )
}

/// Check the request's signature or token against `secret`.
pub fn authenticate(
    secret: &[u8],
    headers: &hyper::http::HeaderMap,
    body: &[u8],
) -> Result<Provider, Error> {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    if let Some(v) = header("x-hub-signature-256") {
        const H: &str = "X-Hub-Signature-256";
        let hex_sig = v
            .strip_prefix(b"sha256=")
            .ok_or(Error::Malformed { header: H })?;
        let tag = hex::decode(hex_sig).map_err(|_| Error::Malformed { header: H })?;
        return verify_hmac(secret, body, &tag)
            .map(|_| Provider::GitHub)
            .map_err(|_| Error::Mismatch { header: H });
    }
    if let Some(v) = header("x-gitea-signature") {
        const H: &str = "X-Gitea-Signature";
        let tag = hex::decode(v).map_err(|_| Error::Malformed { header: H })?;
        return verify_hmac(secret, body, &tag)
            .map(|_| Provider::Gitea)
            .map_err(|_| Error::Mismatch { header: H });
    }
    if let Some(v) = header("x-gitlab-token") {
        return if constant_time_eq(v, secret) {
            Ok(Provider::GitLab)
        } else {
            Err(Error::Mismatch {
                header: "X-Gitlab-Token",
            })
        };
    }
    Err(Error::MissingSignature)
}

/// HMAC-SHA256 of `body` under `secret`, compared with `tag` in constant time (`Mac::verify_slice`).
fn verify_hmac(secret: &[u8], body: &[u8], tag: &[u8]) -> Result<(), ()> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| ())?;
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| ())
}

/// Byte equality whose running time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// `sha256=<hex>` signature GitHub would send for `body` (used by tests and `scripts/`).
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::http::HeaderMap {
        let mut h = hyper::http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_good_signature_triggers_bad_one_does_not() {
        let (tx, mut rx) = mpsc::channel(4);
        let hook = GitWebhook::new(Some(Secret::new(b"s3cret".to_vec())), tx);
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = github_signature(b"s3cret", body);
        let bad = github_signature(b"other", body);
        assert_eq!(
            hook.handle_push(&headers(&[("X-Hub-Signature-256", &bad)]), body),
            Verdict::Unauthorized(Error::Mismatch {
                header: "X-Hub-Signature-256"
            })
        );
        assert!(rx.try_recv().is_err(), "a bad signature must not trigger");
        assert_eq!(
            hook.handle_push(&headers(&[("X-Hub-Signature-256", &good)]), body),
            Verdict::Accepted(Provider::GitHub)
        );
        assert_eq!(rx.try_recv().unwrap(), Trigger::Webhook);
        // The signature covers the body: a changed body fails.
        assert!(matches!(
            hook.handle_push(&headers(&[("X-Hub-Signature-256", &good)]), b"{}"),
            Verdict::Unauthorized(_)
        ));
    }

    #[test]
    fn gitea_and_gitlab() {
        let body = b"{}";
        let sig = github_signature(b"k", body);
        let gitea = sig.strip_prefix("sha256=").unwrap();
        assert_eq!(
            authenticate(b"k", &headers(&[("X-Gitea-Signature", gitea)]), body),
            Ok(Provider::Gitea)
        );
        assert_eq!(
            authenticate(b"k", &headers(&[("X-Gitlab-Token", "k")]), body),
            Ok(Provider::GitLab)
        );
        assert!(authenticate(b"k", &headers(&[("X-Gitlab-Token", "kk")]), body).is_err());
        assert_eq!(
            authenticate(b"k", &headers(&[]), body),
            Err(Error::MissingSignature)
        );
        assert_eq!(
            authenticate(b"k", &headers(&[("X-Hub-Signature-256", "md5=00")]), body),
            Err(Error::Malformed {
                header: "X-Hub-Signature-256"
            })
        );
    }

    #[test]
    fn no_secret_refuses_everything() {
        let (tx, _rx) = mpsc::channel(1);
        let hook = GitWebhook::new(None, tx);
        assert_eq!(
            hook.handle_push(&headers(&[("X-Gitlab-Token", "")]), b""),
            Verdict::Unauthorized(Error::NotConfigured)
        );
    }
}
