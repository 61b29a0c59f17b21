//! `pailot status`: what the running daemon last did, read from its `/status` endpoint.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::table::columns;
use super::{Output, UsageError};
use crate::daemon::status::Status as StatusSnapshot;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Address of the daemon's HTTP server.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9464",
        env = "PAILOT_STATUS_URL"
    )]
    pub url: String,
    /// Output format: a table for people, or the `/status` document as JSON or YAML.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Give up when the daemon does not answer within this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (host, port, prefix) = parse_url(&args.url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(args.timeout),
                http_get(&host, port, &format!("{prefix}/status")),
            )
            .await
            .unwrap_or_else(|_| bail!("no answer within {} s", args.timeout))
        })
        .with_context(|| format!("cannot read the daemon's status from {}", args.url))?;
    let snapshot: StatusSnapshot = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{}/status did not return a pailot status document",
            args.url
        )
    })?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&snapshot)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&snapshot)?),
        Output::Table => print!("{}", table(&snapshot, unix_now())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Split `http://host:port/prefix` into its parts; only plain HTTP (the daemon listens on loopback).
fn parse_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| UsageError(format!("--url {url:?}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| UsageError(format!("--url {url:?}: bad port {p:?}")))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err(UsageError(format!("--url {url:?}: no host")).into());
    }
    Ok((host, port, path.to_string()))
}

/// GET `path` from `host:port` over HTTP/1.1; the body of a 200 answer.
async fn http_get(host: &str, port: u16, path: &str) -> anyhow::Result<Bytes> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "GET {path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// "12s ago" / "in 3m" for a Unix time relative to `now`.
fn relative(t: f64, now: f64) -> String {
    let d = (t - now).round() as i64;
    let a = d.unsigned_abs();
    let span = if a < 120 {
        format!("{a}s")
    } else if a < 7200 {
        format!("{}m", a / 60)
    } else if a < 172_800 {
        format!("{}h", a / 3600)
    } else {
        format!("{}d", a / 86400)
    };
    if d >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".to_string())
}

/// The human view of a status snapshot.
pub fn table(s: &StatusSnapshot, now: f64) -> String {
    let short = |r: &Option<String>| r.as_deref().map(|r| r.get(..12).unwrap_or(r).to_string());
    let mut head = vec![vec!["REVISION".to_string(), opt(&s.revision)]];
    if s.failed_revision.is_some() {
        head.push(vec!["FAILED REVISION".into(), opt(&s.failed_revision)]);
    }
    let mut phase = s.phase.map_or("-".to_string(), |p| p.as_str().to_string());
    if let Some(since) = s.phase_since {
        let _ = write!(phase, " (since {})", relative(since, now));
    }
    head.push(vec!["PHASE".into(), phase]);
    if let Some(sus) = &s.suspended {
        head.push(vec!["SUSPENDED".into(), sus.describe(now as u64)]);
    }
    if let Some(l) = s.leader {
        head.push(vec!["LEADER".into(), if l { "yes" } else { "no" }.into()]);
    }
    if let Some(m) = &s.drift_mode {
        head.push(vec!["DRIFT MODE".into(), m.clone()]);
    }
    if let Some(r) = &s.last_reconcile {
        let mut v = r.result.clone();
        if let Some(rev) = short(&r.revision) {
            let _ = write!(v, " of {rev}");
        }
        if let Some(tr) = &r.trigger {
            let _ = write!(v, " ({tr})");
        }
        if let (Some(stage), Some(reason)) = (r.stage, r.reason) {
            let _ = write!(v, " at {stage}, {reason}");
        }
        if let Some(d) = r.duration_seconds {
            let _ = write!(v, " in {d:.1}s");
        }
        if let Some(t) = r.finished_at {
            let _ = write!(v, ", {}", relative(t, now));
        }
        if let Some(m) = &r.message {
            let _ = write!(v, ": {m}");
        }
        if let Some(to) = short(&r.rolled_back_to) {
            let _ = write!(v, "; rolled back to {to}");
        }
        head.push(vec!["LAST RECONCILE".into(), v]);
    }
    if let Some(b) = s.bootstrap.as_ref().filter(|b| !b.complete) {
        head.push(vec![
            "BOOTSTRAP".into(),
            format!("incomplete: {}", b.missing.join("; ")),
        ]);
    }
    if let Some(e) = &s.state_error {
        head.push(vec!["STATE".into(), format!("cannot be written: {e}")]);
    }
    if let Some(t) = s.next_wakeup {
        head.push(vec!["NEXT WAKE-UP".into(), relative(t, now)]);
    }
    if let Some(src) = &s.source {
        let mut v = format!(
            "watch {}, poll every {}s",
            src.watch, src.poll_interval_seconds
        );
        if !src.triggers.is_empty() {
            let counts: Vec<String> = src
                .triggers
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = write!(v, "; triggers: {}", counts.join(", "));
        }
        head.push(vec!["SOURCE".into(), v]);
    }
    let mut out = columns(&head);
    if !s.charts.is_empty() {
        let mut rows = vec![vec![
            "CHART".into(),
            "RESULT".into(),
            "READY".into(),
            "OBJECTS".into(),
            "DRIFTED".into(),
            "MESSAGE".into(),
        ]];
        for (name, c) in &s.charts {
            rows.push(vec![
                name.clone(),
                c.result.clone(),
                if c.ready { "yes" } else { "no" }.into(),
                c.objects.to_string(),
                c.drifted.to_string(),
                opt(&c.message),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if !s.drift.is_empty() {
        let mut rows = vec![vec![
            "DRIFT".into(),
            "OBJECT".into(),
            "FIELD".into(),
            "MANAGER".into(),
            "ACTION".into(),
            "DESIRED FROM".into(),
        ]];
        for d in &s.drift {
            rows.push(vec![
                d.chart.clone(),
                d.object.clone(),
                d.pointer.clone(),
                opt(&d.manager),
                d.action.clone(),
                opt(&d.provenance),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if !s.errors.is_empty() {
        out.push_str("\nERRORS\n");
        for e in &s.errors {
            let mut place = String::new();
            if let Some(f) = &e.file {
                place.push_str(f);
                if let Some(l) = e.line {
                    let _ = write!(place, ":{l}");
                    if let Some(c) = e.column {
                        let _ = write!(place, ":{c}");
                    }
                }
            }
            for extra in [&e.place, &e.pointer, &e.object].into_iter().flatten() {
                let _ = write!(place, "{}{extra}", if place.is_empty() { "" } else { " " });
            }
            let _ = writeln!(
                out,
                "  [{}] {}{}{}",
                e.stage,
                place,
                if place.is_empty() { "" } else { ": " },
                e.message
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{
        ChartStatus, DriftRecord, LastReconcile as ReconcileStatus, Phase, SourceStatus,
        StatusError,
    };

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9464").unwrap(),
            ("127.0.0.1".into(), 9464, "".into())
        );
        assert_eq!(
            parse_url("http://h/p/").unwrap(),
            ("h".into(), 80, "/p".into())
        );
        assert_eq!(
            parse_url("http://[::1]:9/x").unwrap(),
            ("::1".into(), 9, "/x".into())
        );
        assert!(parse_url("https://h").is_err());
        assert!(parse_url("http://h:notaport").is_err());
    }

    #[test]
    fn table_shows_charts_drift_and_error_positions() {
        let mut s = StatusSnapshot {
            revision: Some("abc123".into()),
            phase: Some(Phase::Idle),
            ..Default::default()
        };
        s.last_reconcile = Some(ReconcileStatus {
            result: "failure".into(),
            trigger: Some("commit".into()),
            finished_at: Some(990.0),
            duration_seconds: Some(1.25),
            ..Default::default()
        });
        s.next_wakeup = Some(1030.0);
        s.source = Some(SourceStatus {
            watch: "off".into(),
            poll_interval_seconds: 2.0,
            triggers: [("poll".to_string(), 3), ("webhook".to_string(), 1)].into(),
            ..Default::default()
        });
        s.charts.insert(
            "grafana".into(),
            ChartStatus {
                result: "applied".into(),
                ready: true,
                objects: 2,
                ..Default::default()
            },
        );
        s.drift.push(DriftRecord {
            chart: "grafana".into(),
            object: "Deployment/default/grafana".into(),
            pointer: "/spec/replicas".into(),
            manager: Some("kubectl-scale".into()),
            action: "corrected".into(),
            ..Default::default()
        });
        s.errors.push(StatusError {
            stage: "render".into(),
            message: "unknown key".into(),
            file: Some("charts/x/values.yaml".into()),
            line: Some(3),
            column: Some(7),
            pointer: Some("/a".into()),
            ..Default::default()
        });
        let t = table(&s, 1000.0);
        assert!(t.contains("REVISION        abc123"), "{t}");
        assert!(
            t.contains("LAST RECONCILE  failure (commit) in 1.2s, 10s ago"),
            "{t}"
        );
        assert!(
            t.contains("SOURCE          watch off, poll every 2s; triggers: poll 3, webhook 1"),
            "{t}"
        );
        assert!(t.contains("NEXT WAKE-UP    in 30s"), "{t}");
        assert!(
            t.contains("grafana  applied  yes    2        0        -"),
            "{t}"
        );
        assert!(
            t.contains("Deployment/default/grafana  /spec/replicas  kubectl-scale  corrected"),
            "{t}"
        );
        assert!(
            t.contains("[render] charts/x/values.yaml:3:7 /a: unknown key"),
            "{t}"
        );
    }
}
