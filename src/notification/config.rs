//! The `notifications:` section of the daemon configuration, as written ([`RawConfig`]) and validated once ([`Config`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EventKind;
use crate::diag::InputError;
use crate::duration::parse as parse_duration;

/// `notifications:` as written in the daemon configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    /// Where events go.
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// Events waiting to be dispatched; more are dropped (and counted), the daemon never waits (default 64).
    #[serde(default)]
    pub queue: Option<usize>,
    /// An event identical to the last one of its kind sent to a sink within this window is not sent
    /// again (default `10m`).
    #[serde(default)]
    pub dedup_window: Option<String>,
    /// Per HTTP attempt (default `10s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Further attempts after a failed one (connection error, timeout, 429, 5xx), 1 s, 2 s, 4 s … apart (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// At most `events` deliveries per `per` to each sink; more wait in the sink's queue (default 10 per `1m`).
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

/// `rateLimit:`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRateLimit {
    pub events: u32,
    /// A duration (`1m`).
    pub per: String,
}

/// One sink as written.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSink {
    /// Names the sink in logs and metrics (default: its type, then `-2`, `-3` … for repeats).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// `webhook`, `slack`: the URL to POST to (prefer `urlFile`: webhook URLs often hold a token).
    /// `gitea`, `gitlab`: the server's base URL (`https://gitea.example.com`).
    /// `github`: the API base URL (default `https://api.github.com`; GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default)]
    pub url: Option<String>,
    /// `webhook`, `slack`: a file holding the URL (read once, never logged).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// `webhook`: a file holding the HMAC-SHA256 key; each request then carries `X-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `github`, `gitea`, `gitlab`: a file holding the API token (read once, never logged).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `github`, `gitea`: `owner/repo`.
    #[serde(default)]
    pub repository: Option<String>,
    /// `gitlab`: the project's numeric id or its path (`group/project`).
    #[serde(default)]
    pub project: Option<String>,
    /// Commit statuses: the status name (default `pailot/<cluster>`).
    #[serde(default)]
    pub context: Option<String>,
    /// Commit statuses: the link shown with the status (e.g. a Grafana dashboard).
    #[serde(default)]
    pub target_url: Option<String>,
    /// `slack`: the channel (only for webhooks that allow overriding it).
    #[serde(default)]
    pub channel: Option<String>,
    /// `slack`: the sender name shown.
    #[serde(default)]
    pub username: Option<String>,
    /// Which events this sink gets (default: all; commit-status sinks only ever get
    /// `reconcileSucceeded`, `reconcileFailed` and `pruneBlocked`).
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
}

/// Where events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A JSON POST of the event, optionally HMAC-signed (`X-Signature`, as Flux's `generic-hmac`).
    Webhook,
    /// A Slack-compatible incoming-webhook message (Slack, Mattermost, Rocket.Chat).
    Slack,
    /// A commit status on GitHub (`POST /repos/{owner}/{repo}/statuses/{sha}`).
    Github,
    /// A commit status on Gitea or Forgejo (`POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`).
    Gitea,
    /// A commit status on GitLab (`POST /api/v4/projects/{id}/statuses/{sha}`).
    Gitlab,
}

impl SinkKind {
    pub fn word(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Github => "github",
            SinkKind::Gitea => "gitea",
            SinkKind::Gitlab => "gitlab",
        }
    }

    /// Commit-status sinks report only on revisions.
    pub fn is_commit_status(self) -> bool {
        matches!(self, SinkKind::Github | SinkKind::Gitea | SinkKind::Gitlab)
    }
}

pub use crate::secret::Secret;

/// A validated sink: its target and credentials resolved, nothing left to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sink {
    pub name: String,
    pub target: Target,
    pub events: BTreeSet<EventKind>,
}

/// Where and how a sink delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Webhook {
        url: Secret,
        hmac_key: Option<Secret>,
    },
    Slack {
        url: Secret,
        channel: Option<String>,
        username: Option<String>,
    },
    CommitStatus {
        host: GitHost,
        /// API base URL without a trailing slash.
        api: String,
        /// `owner/repo`, or GitLab's project id or path (percent-encoded when sent).
        repository: String,
        token: Secret,
        context: Option<String>,
        target_url: Option<String>,
    },
}

/// The git hosts whose commit status API pailot speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitHost {
    Github,
    Gitea,
    Gitlab,
}

impl Sink {
    pub fn kind(&self) -> SinkKind {
        match &self.target {
            Target::Webhook { .. } => SinkKind::Webhook,
            Target::Slack { .. } => SinkKind::Slack,
            Target::CommitStatus { host, .. } => match host {
                GitHost::Github => SinkKind::Github,
                GitHost::Gitea => SinkKind::Gitea,
                GitHost::Gitlab => SinkKind::Gitlab,
            },
        }
    }
}

/// The validated `notifications:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub sinks: Vec<Sink>,
    pub queue: usize,
    pub dedup_window: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// Deliveries per `rate_per` for each sink.
    pub rate_events: u32,
    pub rate_per: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sinks: Vec::new(),
            queue: 64,
            dedup_window: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            retries: 3,
            rate_events: 10,
            rate_per: Duration::from_secs(60),
        }
    }
}

const COMMIT_STATUS_EVENTS: [EventKind; 3] = [
    EventKind::ReconcileSucceeded,
    EventKind::ReconcileFailed,
    EventKind::PruneBlocked,
];

impl RawConfig {
    /// Validate: durations parsed, files read (relative paths against `base`, the configuration
    /// file's directory), URLs checked. Errors name `file` and the field (`notifications.sinks[1].tokenFile`);
    /// `place` is the section's own place in the file (`notifications`).
    pub fn validate(&self, file: &Path, base: &Path, place: &str) -> Result<Config, InputError> {
        let err = |at: String, msg: String| InputError::new(file, msg).place(at);
        let d = Config::default();
        let dur = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| err(format!("{place}.{key}"), m)),
        };
        let queue = self.queue.unwrap_or(d.queue);
        if !(1..=10_000).contains(&queue) {
            return Err(err(
                format!("{place}.queue"),
                format!("{queue} is not between 1 and 10000"),
            ));
        }
        let dedup_window = dur("dedupWindow", &self.dedup_window, d.dedup_window)?;
        let timeout = dur("timeout", &self.timeout, d.timeout)?;
        if timeout < Duration::from_millis(100) {
            return Err(err(
                format!("{place}.timeout"),
                "must be at least 100ms".into(),
            ));
        }
        let retries = self.retries.unwrap_or(d.retries);
        if retries > 10 {
            return Err(err(
                format!("{place}.retries"),
                format!("{retries} is more than 10"),
            ));
        }
        let (rate_events, rate_per) = match &self.rate_limit {
            None => (d.rate_events, d.rate_per),
            Some(r) => {
                let per =
                    parse_duration(&r.per).map_err(|m| err(format!("{place}.rateLimit.per"), m))?;
                if r.events == 0 || per.is_zero() {
                    return Err(err(
                        format!("{place}.rateLimit"),
                        "events and per must be more than zero".into(),
                    ));
                }
                (r.events, per)
            }
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let read_secret = |at: String, p: &Path| -> Result<Secret, InputError> {
            Secret::read_file(&resolve(p)).map_err(|e| err(at, e.to_string()))
        };
        let mut sinks: Vec<Sink> = Vec::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let at = |key: &str| format!("{place}.sinks[{i}].{key}");
            let here = format!("{place}.sinks[{i}]");
            let unused = |key: &str, set: bool| -> Result<(), InputError> {
                if set {
                    Err(err(
                        at(key),
                        format!("not used by a {} sink", s.kind.word()),
                    ))
                } else {
                    Ok(())
                }
            };
            let url_of = |s: &RawSink| -> Result<Secret, InputError> {
                match (&s.url, &s.url_file) {
                    (Some(_), Some(_)) => {
                        Err(err(here.clone(), "set url or urlFile, not both".into()))
                    }
                    (None, None) => Err(err(
                        here.clone(),
                        format!("a {} sink needs url or urlFile", s.kind.word()),
                    )),
                    (Some(u), None) => {
                        check_url(u).map_err(|m| err(at("url"), m))?;
                        Ok(Secret::new(u.as_bytes().to_vec()))
                    }
                    (None, Some(f)) => {
                        let u = read_secret(at("urlFile"), f)?;
                        // Never echo the URL: it is the secret.
                        check_url(u.expose_str()).map_err(|_| {
                            err(
                                at("urlFile"),
                                "the file does not hold an http:// or https:// URL".into(),
                            )
                        })?;
                        Ok(u)
                    }
                }
            };
            let target = match s.kind {
                SinkKind::Webhook => {
                    for (k, set) in [
                        ("tokenFile", s.token_file.is_some()),
                        ("repository", s.repository.is_some()),
                        ("project", s.project.is_some()),
                        ("context", s.context.is_some()),
                        ("targetUrl", s.target_url.is_some()),
                        ("channel", s.channel.is_some()),
                        ("username", s.username.is_some()),
                    ] {
                        unused(k, set)?;
                    }
                    Target::Webhook {
                        url: url_of(s)?,
                        hmac_key: s
                            .secret_file
                            .as_deref()
                            .map(|f| read_secret(at("secretFile"), f))
                            .transpose()?,
                    }
                }
                SinkKind::Slack => {
                    for (k, set) in [
                        ("secretFile", s.secret_file.is_some()),
                        ("tokenFile", s.token_file.is_some()),
                        ("repository", s.repository.is_some()),
                        ("project", s.project.is_some()),
                        ("context", s.context.is_some()),
                        ("targetUrl", s.target_url.is_some()),
                    ] {
                        unused(k, set)?;
                    }
                    Target::Slack {
                        url: url_of(s)?,
                        channel: s.channel.clone(),
                        username: s.username.clone(),
                    }
                }
                SinkKind::Github | SinkKind::Gitea | SinkKind::Gitlab => {
                    for (k, set) in [
                        ("urlFile", s.url_file.is_some()),
                        ("secretFile", s.secret_file.is_some()),
                        ("channel", s.channel.is_some()),
                        ("username", s.username.is_some()),
                    ] {
                        unused(k, set)?;
                    }
                    let host = match s.kind {
                        SinkKind::Github => GitHost::Github,
                        SinkKind::Gitea => GitHost::Gitea,
                        _ => GitHost::Gitlab,
                    };
                    let api = match (&s.url, host) {
                        (None, GitHost::Github) => "https://api.github.com".to_string(),
                        (None, _) => {
                            return Err(err(
                                at("url"),
                                format!("a {} sink needs the server's url", s.kind.word()),
                            ));
                        }
                        (Some(u), _) => {
                            check_url(u).map_err(|m| err(at("url"), m))?;
                            u.trim_end_matches('/').to_string()
                        }
                    };
                    let repository = match host {
                        GitHost::Gitlab => {
                            unused("repository", s.repository.is_some())?;
                            let p = s.project.clone().ok_or_else(|| {
                                err(
                                    at("project"),
                                    "a gitlab sink needs project (id or group/project)".into(),
                                )
                            })?;
                            if p.trim().is_empty() {
                                return Err(err(at("project"), "is empty".into()));
                            }
                            p
                        }
                        _ => {
                            unused("project", s.project.is_some())?;
                            let r = s.repository.clone().ok_or_else(|| {
                                err(
                                    at("repository"),
                                    format!(
                                        "a {} sink needs repository (owner/repo)",
                                        s.kind.word()
                                    ),
                                )
                            })?;
                            let parts: Vec<&str> = r.split('/').collect();
                            let ok_part = |p: &str| {
                                !p.is_empty()
                                    && p.chars()
                                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                            };
                            if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) {
                                return Err(err(
                                    at("repository"),
                                    format!("{r:?} is not owner/repo"),
                                ));
                            }
                            r
                        }
                    };
                    let token_file = s.token_file.as_deref().ok_or_else(|| {
                        err(
                            at("tokenFile"),
                            format!("a {} sink needs tokenFile", s.kind.word()),
                        )
                    })?;
                    if let Some(t) = &s.target_url {
                        check_url(t).map_err(|m| err(at("targetUrl"), m))?;
                    }
                    Target::CommitStatus {
                        host,
                        api,
                        repository,
                        token: read_secret(at("tokenFile"), token_file)?,
                        context: s.context.clone(),
                        target_url: s.target_url.clone(),
                    }
                }
            };
            let all: BTreeSet<EventKind> = if s.kind.is_commit_status() {
                COMMIT_STATUS_EVENTS.into_iter().collect()
            } else {
                EventKind::ALL.into_iter().collect()
            };
            let events = match &s.events {
                None => all,
                Some(list) => {
                    if let Some(bad) = list.iter().find(|k| !all.contains(k)) {
                        return Err(err(
                            at("events"),
                            format!(
                                "a {} sink cannot report {} (it reports {})",
                                s.kind.word(),
                                bad.word(),
                                all.iter().map(|k| k.word()).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    list.iter().copied().collect()
                }
            };
            let name = match &s.name {
                Some(n) => {
                    if n.is_empty()
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        return Err(err(
                            at("name"),
                            format!("{n:?}: use letters, digits, '-', '_' and '.'"),
                        ));
                    }
                    n.clone()
                }
                None => {
                    let base = s.kind.word();
                    let taken = sinks.iter().filter(|x| x.kind() == s.kind).count();
                    if taken == 0 {
                        base.to_string()
                    } else {
                        format!("{base}-{}", taken + 1)
                    }
                }
            };
            if sinks.iter().any(|x| x.name == name) {
                return Err(err(at("name"), format!("two sinks are named {name:?}")));
            }
            sinks.push(Sink {
                name,
                target,
                events,
            });
        }
        Ok(Config {
            sinks,
            queue,
            dedup_window,
            timeout,
            retries,
            rate_events,
            rate_per,
        })
    }
}

/// An http:// or https:// URL with a host.
fn check_url(u: &str) -> Result<(), String> {
    let uri: hyper::Uri = u.parse().map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{u:?}: only http:// and https:// URLs")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, dir: &Path) -> Result<Config, InputError> {
        let raw: RawConfig = serde_saphyr::from_str(yaml).unwrap();
        raw.validate(&dir.join("pailot.yaml"), dir, "notifications")
    }

    #[test]
    fn a_full_section_validates_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac"), "key\n").unwrap();
        std::fs::write(
            dir.path().join("slack-url"),
            "https://hooks.slack.com/services/T/B/X\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("token"), "ghp_x\n").unwrap();
        let c = parse(
            "sinks:
  - {type: webhook, url: 'http://127.0.0.1:9/hook', secretFile: hmac, events: [reconcileFailed]}
  - {type: slack, urlFile: slack-url, channel: '#ops'}
  - {type: github, repository: acme/deploy, tokenFile: token}
  - {type: gitea, url: 'https://gitea.example.com/', repository: acme/deploy, tokenFile: token}
  - {type: gitlab, url: 'https://gitlab.example.com', project: acme/deploy, tokenFile: token}
  - {type: webhook, url: 'https://example.com/2'}
rateLimit: {events: 2, per: 30s}
",
            dir.path(),
        )
        .unwrap();
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["webhook", "slack", "github", "gitea", "gitlab", "webhook-2"]
        );
        assert_eq!((c.rate_events, c.rate_per), (2, Duration::from_secs(30)));
        assert_eq!(c.dedup_window, Duration::from_secs(600));
        assert_eq!(
            c.sinks[0].events,
            BTreeSet::from([EventKind::ReconcileFailed])
        );
        assert_eq!(
            c.sinks[2].events.len(),
            3,
            "commit statuses: reconcile results and prune"
        );
        let Target::CommitStatus { api, .. } = &c.sinks[3].target else {
            panic!()
        };
        assert_eq!(api, "https://gitea.example.com");
        let Target::CommitStatus { api, .. } = &c.sinks[2].target else {
            panic!()
        };
        assert_eq!(api, "https://api.github.com");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("ghp_x") && !dbg.contains("hooks.slack.com"),
            "{dbg}"
        );
    }

    #[test]
    fn mistakes_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        std::fs::write(dir.path().join("bad-url"), "not a url with-secret-123").unwrap();
        let cases = [
            (
                "sinks: [{type: slack}]",
                "notifications.sinks[0]",
                "needs url or urlFile",
            ),
            (
                "sinks: [{type: github, tokenFile: token}]",
                "notifications.sinks[0].repository",
                "needs repository",
            ),
            (
                "sinks: [{type: github, repository: acme, tokenFile: token}]",
                "notifications.sinks[0].repository",
                "not owner/repo",
            ),
            (
                "sinks: [{type: gitlab, url: 'https://g', tokenFile: token}]",
                "notifications.sinks[0].project",
                "needs project",
            ),
            (
                "sinks: [{type: gitea, repository: a/b, tokenFile: token}]",
                "notifications.sinks[0].url",
                "needs the server's url",
            ),
            (
                "sinks: [{type: github, repository: a/b, tokenFile: missing}]",
                "notifications.sinks[0].tokenFile",
                "failed to read",
            ),
            (
                "sinks: [{type: webhook, url: 'ftp://x'}]",
                "notifications.sinks[0].url",
                "only http",
            ),
            (
                "sinks: [{type: webhook, url: 'http://x', tokenFile: token}]",
                "notifications.sinks[0].tokenFile",
                "not used by a webhook sink",
            ),
            (
                "sinks: [{type: github, repository: a/b, tokenFile: token, events: [driftCorrected]}]",
                "notifications.sinks[0].events",
                "cannot report driftCorrected",
            ),
            (
                "sinks: [{type: webhook, urlFile: bad-url}]",
                "notifications.sinks[0].urlFile",
                "does not hold",
            ),
            (
                "sinks: [{name: a, type: webhook, url: 'http://x'}, {name: a, type: webhook, url: 'http://y'}]",
                "notifications.sinks[1].name",
                "two sinks",
            ),
            (
                "dedupWindow: soon",
                "notifications.dedupWindow",
                "not a duration",
            ),
            (
                "rateLimit: {events: 0, per: 1m}",
                "notifications.rateLimit",
                "more than zero",
            ),
            ("queue: 0", "notifications.queue", "between 1 and 10000"),
        ];
        for (yaml, place, msg) in cases {
            let e = parse(yaml, dir.path()).unwrap_err();
            assert_eq!(e.place.as_deref(), Some(place), "{yaml}: {e}");
            assert!(e.message.contains(msg), "{yaml}: {e}");
            assert!(!e.to_string().contains("with-secret-123"), "{e}");
        }
    }
}
