//! Each provider's request for an event: the generic JSON webhook (HMAC-signed), a Slack message, commit statuses.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use super::config::{GitHost, Sink, Target};
use super::event::{Event, EventKind, Severity, short};

/// The header carrying the webhook body's HMAC (the format of Flux's `generic-hmac` provider).
pub const SIGNATURE_HEADER: &str = "X-Signature";
/// GitHub limits a status description to 140 characters.
const GITHUB_DESCRIPTION_CHARS: usize = 140;
/// Gitea and GitLab take longer descriptions; keep them readable.
const DESCRIPTION_CHARS: usize = 255;
/// Failure reasons that say the infrastructure failed, not the commit (GitHub/Gitea state `error`).
const INFRASTRUCTURE_REASONS: [&str; 4] = [
    "api_unreachable",
    "source_unreachable",
    "internal",
    "interrupted",
];

/// One HTTP POST, ready to send. The URL and headers may hold secrets: never log them.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish_non_exhaustive()
    }
}

/// The generic webhook's JSON body (documented in docs/daemon.md).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody<'a> {
    kind: EventKind,
    severity: Severity,
    /// RFC 3339, UTC.
    time: String,
    cluster: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    charts: &'a [String],
    message: &'a str,
    reporting_controller: &'static str,
    version: &'static str,
}

/// `sha256=<hex HMAC-SHA256 of body under key>`: the `X-Signature` value.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn user_agent() -> String {
    format!("pailot/{}", crate::VERSION)
}

/// The request `sink` makes for `event`, or `None` when it has nothing to say (a commit status
/// needs a full commit id).
pub fn build(sink: &Sink, event: &Event, cluster: &str) -> Option<Delivery> {
    match &sink.target {
        Target::Webhook { url, hmac_key } => {
            let body = serde_json::to_vec(&WebhookBody {
                kind: event.kind,
                severity: event.kind.severity(),
                time: crate::clock::rfc3339_unix(event.time as i64),
                cluster,
                revision: event.revision.as_deref(),
                subject: event.subject.as_deref(),
                stage: event.stage.as_deref(),
                reason: event.reason.as_deref(),
                charts: &event.charts,
                message: &event.message,
                reporting_controller: "pailot",
                version: crate::VERSION,
            })
            .expect("webhook body serializes");
            let mut headers = vec![
                ("content-type", "application/json".to_string()),
                ("user-agent", user_agent()),
            ];
            if let Some(key) = hmac_key {
                headers.push((SIGNATURE_HEADER, signature(key.expose(), &body)));
            }
            Some(Delivery {
                url: url.expose_str().to_string(),
                headers,
                body,
            })
        }
        Target::Slack {
            url,
            channel,
            username,
        } => Some(Delivery {
            url: url.expose_str().to_string(),
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("user-agent", user_agent()),
            ],
            body: serde_json::to_vec(&slack_message(event, cluster, channel, username))
                .expect("slack message serializes"),
        }),
        Target::CommitStatus {
            host,
            api,
            repository,
            token,
            context,
            target_url,
        } => {
            let sha = event.revision.as_deref().filter(|r| is_full_commit_id(r))?;
            let context = context
                .clone()
                .unwrap_or_else(|| format!("pailot/{cluster}"));
            let failed_infra = event
                .reason
                .as_deref()
                .is_some_and(|r| INFRASTRUCTURE_REASONS.contains(&r));
            let description = description(event);
            let (url, auth, body) = match host {
                GitHost::Github | GitHost::Gitea => {
                    let state = match event.kind {
                        EventKind::ReconcileSucceeded => "success",
                        _ if failed_infra => "error",
                        _ => "failure",
                    };
                    let limit = if *host == GitHost::Github {
                        GITHUB_DESCRIPTION_CHARS
                    } else {
                        DESCRIPTION_CHARS
                    };
                    let mut body = json!({
                        "state": state,
                        "description": cut(&description, limit),
                        "context": context,
                    });
                    if let Some(t) = target_url {
                        body["target_url"] = json!(t);
                    }
                    if *host == GitHost::Github {
                        (
                            format!("{api}/repos/{repository}/statuses/{sha}"),
                            ("authorization", format!("Bearer {}", token.expose_str())),
                            body,
                        )
                    } else {
                        (
                            format!("{api}/api/v1/repos/{repository}/statuses/{sha}"),
                            ("authorization", format!("token {}", token.expose_str())),
                            body,
                        )
                    }
                }
                GitHost::Gitlab => {
                    let state = match event.kind {
                        EventKind::ReconcileSucceeded => "success",
                        _ => "failed",
                    };
                    let mut body = json!({
                        "state": state,
                        "name": context,
                        "description": cut(&description, DESCRIPTION_CHARS),
                    });
                    if let Some(t) = target_url {
                        body["target_url"] = json!(t);
                    }
                    (
                        format!(
                            "{api}/api/v4/projects/{}/statuses/{sha}",
                            percent_encode(repository)
                        ),
                        ("private-token", token.expose_str().to_string()),
                        body,
                    )
                }
            };
            let mut headers = vec![
                ("content-type", "application/json".to_string()),
                ("user-agent", user_agent()),
                auth,
            ];
            if *host == GitHost::Github {
                headers.push(("accept", "application/vnd.github+json".into()));
                headers.push(("x-github-api-version", "2022-11-28".into()));
            }
            Some(Delivery {
                url,
                headers,
                body: serde_json::to_vec(&body).expect("status serializes"),
            })
        }
    }
}

/// What a commit status says: the outcome, and for a failure the stage, reason and message.
fn description(event: &Event) -> String {
    match event.kind {
        EventKind::ReconcileSucceeded => {
            if event.message.is_empty() {
                "applied by pailot".into()
            } else {
                event.message.clone()
            }
        }
        _ => {
            let place: Vec<&str> = [event.stage.as_deref(), event.reason.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            if place.is_empty() {
                event.message.clone()
            } else {
                format!("{}: {}", place.join("/"), event.message)
            }
        }
    }
}

/// A Slack incoming-webhook message: `text` (what notifications and clients without
/// attachments show) and one attachment with the details, coloured by severity.
fn slack_message(
    event: &Event,
    cluster: &str,
    channel: &Option<String>,
    username: &Option<String>,
) -> serde_json::Value {
    let color = match event.kind.severity() {
        Severity::Info => "good",
        Severity::Warning => "warning",
        Severity::Error => "danger",
    };
    let text = format!(
        "{}: {}",
        slack_escape(&event.headline(cluster)),
        slack_escape(&event.message)
    );
    let mut fields =
        vec![json!({"title": "Cluster", "value": slack_escape(cluster), "short": true})];
    if let Some(r) = &event.revision {
        fields.push(json!({"title": "Revision", "value": short(r), "short": true}));
    }
    if let Some(s) = &event.stage {
        fields.push(json!({"title": "Stage", "value": slack_escape(s), "short": true}));
    }
    if let Some(r) = &event.reason {
        fields.push(json!({"title": "Reason", "value": slack_escape(r), "short": true}));
    }
    if let Some(s) = &event.subject {
        fields.push(json!({"title": "Commit", "value": slack_escape(s), "short": false}));
    }
    if !event.charts.is_empty() {
        fields.push(json!({"title": "Charts", "value": slack_escape(&event.charts.join(", ")), "short": false}));
    }
    let mut msg = json!({
        "text": text,
        "attachments": [{
            "color": color,
            "fallback": text,
            "title": event.kind.title(),
            "text": slack_escape(&event.message),
            "fields": fields,
            "footer": format!("pailot {}", crate::VERSION),
            "ts": event.time,
        }],
    });
    if let Some(c) = channel {
        msg["channel"] = json!(c);
    }
    if let Some(u) = username {
        msg["username"] = json!(u);
    }
    msg
}

/// Slack's three control characters in message text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn is_full_commit_id(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut c: String = s.chars().take(max - 1).collect();
    c.push('…');
    c
}

/// Everything but RFC 3986 unreserved characters percent-encoded (GitLab's `group%2Fproject`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(
            percent_encode("group/sub group/p"),
            "group%2Fsub%20group%2Fp"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(slack_escape("<a & b>"), "&lt;a &amp; b&gt;");
        assert!(is_full_commit_id(&"a".repeat(40)));
        assert!(!is_full_commit_id("abc123"));
    }
}
