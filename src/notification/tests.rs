//! Each provider's request checked against its documented format on a loopback HTTP server; queueing,
//! dedup and rate limits with paused time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::time::Instant;

use super::http::{SendError, Transport};
use super::payload::Delivery;
use super::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request as the loopback server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

/// A loopback HTTP server that records each request and answers `status`.
struct Recorder {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(status: u16) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"message\":\"recorded\"}",
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { base, seen }
    }

    /// Wait (real time) until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        for _ in 0..500 {
            let got = self.seen.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "only {} of {n} requests arrived",
            self.seen.lock().unwrap().len()
        );
    }
}

/// A server that accepts connections and never answers.
async fn hanging_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    base
}

fn config(yaml: &str, dir: &Path) -> Config {
    let raw: RawConfig = serde_saphyr::from_str(yaml).unwrap();
    raw.validate(&dir.join("pailot.yaml"), dir, "notifications")
        .unwrap()
}

fn failed_event() -> Event {
    Event::new(
        EventKind::ReconcileFailed,
        1_800_000_000,
        "Deployment/default/grafana: the API server refused it",
    )
    .revision(SHA)
    .subject("tune grafana")
    .stage("apply")
    .reason("rejected")
    .charts(["grafana"])
}

#[tokio::test]
async fn webhook_carries_the_event_signed_like_flux_generic_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let server = Recorder::start(200).await;
    std::fs::write(dir.path().join("key"), "s3cret-key\n").unwrap();
    let n = Notifier::spawn(
        config(
            &format!(
                "sinks: [{{type: webhook, url: '{}/hooks/pailot', secretFile: key}}]",
                server.base
            ),
            dir.path(),
        ),
        "single-node",
    );
    n.notify(failed_event());
    let seen = server.wait_for(1).await.remove(0);
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/hooks/pailot")
    );
    assert_eq!(seen.header("content-type"), "application/json");
    // The receiver's check, written from Flux's documentation: `X-Signature: sha256=<hex HMAC of the body>`.
    let sig = seen.header("x-signature");
    let (algo, hex_mac) = sig.split_once('=').unwrap();
    assert_eq!(algo, "sha256");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"s3cret-key").unwrap();
    mac.update(&seen.body);
    mac.verify_slice(&hex::decode(hex_mac).unwrap()).expect(
        "X-Signature is the HMAC-SHA256 of the body under the key file's (trimmed) content",
    );
    let body = seen.json();
    assert_eq!(body["kind"], "reconcileFailed");
    assert_eq!(body["severity"], "error");
    assert_eq!(body["time"], "2027-01-15T08:00:00Z");
    assert_eq!(body["cluster"], "single-node");
    assert_eq!(body["revision"], SHA);
    assert_eq!(body["subject"], "tune grafana");
    assert_eq!(body["stage"], "apply");
    assert_eq!(body["reason"], "rejected");
    assert_eq!(body["charts"], serde_json::json!(["grafana"]));
    assert_eq!(body["reportingController"], "pailot");
    assert!(body["message"].as_str().unwrap().contains("refused"));
    assert!(!String::from_utf8_lossy(&seen.body).contains("s3cret"));
    assert_eq!(n.stats().sinks[0].sent, 1);
}

#[tokio::test]
async fn slack_gets_text_and_a_coloured_attachment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Recorder::start(200).await;
    std::fs::write(
        dir.path().join("url"),
        format!("{}/services/T0/B0/XXXX\n", server.base),
    )
    .unwrap();
    let n = Notifier::spawn(
        config(
            "sinks: [{type: slack, urlFile: url, username: pailot, channel: '#ops'}]",
            dir.path(),
        ),
        "lab",
    );
    n.notify(failed_event());
    n.notify(
        Event::new(
            EventKind::ReconcileSucceeded,
            1_800_000_100,
            "applied 3 charts",
        )
        .revision(SHA),
    );
    let seen = server.wait_for(2).await;
    assert_eq!(seen[0].path, "/services/T0/B0/XXXX");
    let m = seen[0].json();
    // Slack's incoming webhook: `text` is required (it is what notifications show); attachments add detail.
    let text = m["text"].as_str().unwrap();
    assert!(
        text.starts_with("lab: Reconcile failed at 0123456789ab:"),
        "{text}"
    );
    assert_eq!(m["username"], "pailot");
    assert_eq!(m["channel"], "#ops");
    let a = &m["attachments"][0];
    assert_eq!(a["color"], "danger");
    assert_eq!(a["title"], "Reconcile failed");
    assert_eq!(a["fallback"], m["text"]);
    let fields: Vec<(&str, &str)> = a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["title"].as_str().unwrap(), f["value"].as_str().unwrap()))
        .collect();
    assert!(
        fields.contains(&("Stage", "apply")) && fields.contains(&("Reason", "rejected")),
        "{fields:?}"
    );
    assert_eq!(seen[1].json()["attachments"][0]["color"], "good");
}

#[tokio::test]
async fn commit_statuses_follow_each_hosts_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Recorder::start(201).await;
    std::fs::write(dir.path().join("token"), "tok-123\n").unwrap();
    let n = Notifier::spawn(
        config(
            &format!(
                "sinks:
  - {{type: github, url: '{b}', repository: acme/deploy, tokenFile: token, targetUrl: 'https://grafana.example/d/pailot'}}
  - {{type: gitea, url: '{b}/', repository: acme/deploy, tokenFile: token, context: pailot/prod}}
  - {{type: gitlab, url: '{b}', project: acme/deploy, tokenFile: token}}
",
                b = server.base
            ),
            dir.path(),
        ),
        "lab",
    );
    n.notify(failed_event());
    let mut seen = server.wait_for(3).await;
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    let [gitea, gitlab, github] = [&seen[0], &seen[1], &seen[2]];

    // GitHub: POST /repos/{owner}/{repo}/statuses/{sha}; state error|failure|pending|success.
    assert_eq!(github.path, format!("/repos/acme/deploy/statuses/{SHA}"));
    assert_eq!(github.header("authorization"), "Bearer tok-123");
    assert_eq!(github.header("accept"), "application/vnd.github+json");
    assert_eq!(github.header("x-github-api-version"), "2022-11-28");
    assert!(github.header("user-agent").starts_with("pailot/"));
    let b = github.json();
    let keys: BTreeSet<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["state", "target_url", "description", "context"])
    );
    assert_eq!(
        b["state"], "failure",
        "a rejected object is the commit's fault"
    );
    assert_eq!(b["context"], "pailot/lab");
    assert_eq!(b["target_url"], "https://grafana.example/d/pailot");
    let d = b["description"].as_str().unwrap();
    assert!(
        d.starts_with("apply/rejected: ") && d.chars().count() <= 140,
        "{d}"
    );

    // Gitea: POST /api/v1/repos/{owner}/{repo}/statuses/{sha}; `Authorization: token …`.
    assert_eq!(
        gitea.path,
        format!("/api/v1/repos/acme/deploy/statuses/{SHA}")
    );
    assert_eq!(gitea.header("authorization"), "token tok-123");
    let b = gitea.json();
    assert!(
        ["pending", "success", "error", "failure", "warning"]
            .contains(&b["state"].as_str().unwrap())
    );
    assert_eq!(b["context"], "pailot/prod");

    // GitLab: POST /api/v4/projects/{id}/statuses/{sha} with the path URL-encoded; PRIVATE-TOKEN.
    assert_eq!(
        gitlab.path,
        format!("/api/v4/projects/acme%2Fdeploy/statuses/{SHA}")
    );
    assert_eq!(gitlab.header("private-token"), "tok-123");
    let b = gitlab.json();
    assert_eq!(b["state"], "failed");
    assert!(
        ["pending", "running", "success", "failed", "canceled"]
            .contains(&b["state"].as_str().unwrap())
    );
    assert_eq!(b["name"], "pailot/lab");

    // An infrastructure failure is GitHub's `error`, not the commit's `failure`; success is `success`.
    n.notify(
        Event::new(EventKind::ReconcileFailed, 1, "connection refused")
            .revision(SHA)
            .stage("apply")
            .reason("api_unreachable"),
    );
    n.notify(Event::new(EventKind::ReconcileSucceeded, 2, "applied").revision(SHA));
    let seen = server.wait_for(9).await;
    let github_states: Vec<String> = seen
        .iter()
        .filter(|s| s.path.starts_with("/repos/"))
        .map(|s| s.json()["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(github_states, ["failure", "error", "success"]);
    // Drift and suspension are not commit statuses; a short revision cannot carry one.
    n.notify(Event::new(EventKind::DriftCorrected, 3, "x").revision(SHA));
    n.notify(Event::new(EventKind::ReconcileFailed, 4, "y").revision("abc123"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.seen.lock().unwrap().len(), 9);
}

#[tokio::test]
async fn a_hanging_endpoint_never_blocks_the_sender_nor_the_other_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let good = Recorder::start(200).await;
    let hang = hanging_server().await;
    let n = Notifier::spawn(
        config(
            &format!(
                "sinks:
  - {{name: stuck, type: webhook, url: '{hang}/x'}}
  - {{name: fine, type: webhook, url: '{}/y'}}
timeout: 300ms
retries: 0
queue: 256
rateLimit: {{events: 1000, per: 1s}}
",
                good.base
            ),
            dir.path(),
        ),
        "lab",
    );
    let started = std::time::Instant::now();
    for i in 0..200u64 {
        n.notify(Event::new(
            EventKind::DriftCorrected,
            i,
            format!("drift {i}"),
        ));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(50),
        "200 notify calls took {took:?}"
    );
    // The healthy sink gets events while the other one hangs.
    good.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = n.stats();
    let (stuck, fine) = (&s.sinks[0], &s.sinks[1]);
    assert_eq!(stuck.sent, 0);
    assert!(stuck.failed >= 2, "timeouts count as failures: {s:?}");
    assert!(stuck.dropped > 0, "its full queue drops: {s:?}");
    assert_eq!(s.queue_dropped, 0, "{s:?}");
    assert!(fine.sent >= 5, "{s:?}");
    // Every event was failed, dropped, or is still waiting (16 queued + 1 in flight).
    let accounted = stuck.failed + stuck.dropped + s.queue_dropped;
    assert!(accounted <= 200 && 200 - accounted <= 17, "{s:?}");
}

#[tokio::test]
async fn transient_errors_are_retried_and_permanent_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Recorder::start(503).await;
    let denied = Recorder::start(401).await;
    std::fs::write(dir.path().join("token"), "bad").unwrap();
    let n = Notifier::spawn(
        config(
            &format!(
                "sinks:
  - {{type: webhook, url: '{}/x'}}
  - {{type: github, url: '{}', repository: a/b, tokenFile: token}}
retries: 1
",
                busy.base, denied.base
            ),
            dir.path(),
        ),
        "lab",
    );
    n.notify(failed_event());
    busy.wait_for(2).await; // the first attempt and one retry, 1 s apart
    denied.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(busy.seen.lock().unwrap().len(), 2);
    assert_eq!(denied.seen.lock().unwrap().len(), 1, "a 401 is not retried");
    let s = n.stats();
    assert_eq!((s.sinks[0].failed, s.sinks[1].failed), (1, 1));
}

/// Records what would be sent, with the (paused) time of each send.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, Delivery)>>>);

impl Transport for Log {
    async fn send(&self, d: &Delivery, _timeout: Duration) -> Result<(), SendError> {
        self.0.lock().unwrap().push((Instant::now(), d.clone()));
        Ok(())
    }
}

impl Log {
    fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| {
                serde_json::from_slice::<Value>(&d.body).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn identical_events_within_the_window_are_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let n = Notifier::spawn_with(
        config(
            "sinks: [{type: webhook, url: 'http://127.0.0.1:9/x'}]\ndedupWindow: 10m",
            dir.path(),
        ),
        "lab",
        log.clone(),
    );
    let failed = |t| {
        Event::new(EventKind::ReconcileFailed, t, "api down")
            .revision(SHA)
            .reason("api_unreachable")
    };
    n.notify(failed(1));
    n.notify(failed(2)); // a retry in backoff failing the same way
    settle().await;
    assert_eq!(log.kinds(), ["reconcileFailed"]);
    assert_eq!(n.stats().sinks[0].deduplicated, 1);
    // A change of state is news even inside the window: failed → succeeded → failed.
    n.notify(Event::new(EventKind::ReconcileSucceeded, 3, "ok").revision(SHA));
    n.notify(failed(4));
    settle().await;
    assert_eq!(
        log.kinds(),
        ["reconcileFailed", "reconcileSucceeded", "reconcileFailed"]
    );
    // Another topic does not reset this one.
    n.notify(Event::new(EventKind::DriftCorrected, 5, "drift"));
    n.notify(failed(6));
    settle().await;
    assert_eq!(log.kinds().len(), 4);
    // A failure that lasts is reported again once the window has passed.
    tokio::time::advance(Duration::from_secs(601)).await;
    n.notify(failed(7));
    settle().await;
    assert_eq!(log.kinds().last().unwrap(), "reconcileFailed");
    assert_eq!(log.kinds().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_delays_deliveries_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let n = Notifier::spawn_with(
        config(
            "sinks: [{type: webhook, url: 'http://127.0.0.1:9/x'}]\nrateLimit: {events: 2, per: 10s}",
            dir.path(),
        ),
        "lab",
        log.clone(),
    );
    let t0 = Instant::now();
    for i in 0..4 {
        n.notify(Event::new(
            EventKind::DriftCorrected,
            i,
            format!("drift {i}"),
        ));
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let at: Vec<u64> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.duration_since(t0).as_millis() as u64 / 100)
        .collect();
    // Two at once (the burst), then one every 10 s / 2 = 5 s.
    assert_eq!(at, [0, 0, 50, 100]);
}

#[tokio::test(start_paused = true)]
async fn a_sink_gets_only_the_events_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let n = Notifier::spawn_with(
        config(
            "sinks: [{type: webhook, url: 'http://127.0.0.1:9/x', events: [suspended, resumed]}]",
            dir.path(),
        ),
        "lab",
        log.clone(),
    );
    n.notify(Event::new(EventKind::DriftCorrected, 1, "drift"));
    n.notify(Event::new(EventKind::Suspended, 2, "maintenance"));
    n.notify(Event::new(EventKind::Resumed, 3, "done"));
    settle().await;
    assert_eq!(log.kinds(), ["suspended", "resumed"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_dispatch_queue_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    let n = Notifier::spawn_with(
        config(
            "sinks: [{type: webhook, url: 'http://127.0.0.1:9/x'}]\nqueue: 2",
            dir.path(),
        ),
        "lab",
        log.clone(),
    );
    // The dispatcher cannot run between these calls (one thread): two fit, eight are dropped.
    for i in 0..10 {
        n.notify(Event::new(
            EventKind::DriftCorrected,
            i,
            format!("drift {i}"),
        ));
    }
    settle().await;
    assert_eq!(n.stats().queue_dropped, 8);
    assert_eq!(log.kinds().len(), 2);
}

#[test]
fn without_sinks_notify_is_a_no_op() {
    let n = Notifier::disabled();
    n.notify(Event::new(EventKind::Resumed, 0, "x"));
    assert!(!n.enabled());
    assert_eq!(n.stats(), Stats::default());
}
