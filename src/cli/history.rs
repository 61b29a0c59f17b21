//! `pailot history`: the daemon's last reconciles, from its control socket or else its history file.

use std::process::ExitCode;
use std::time::Duration;

use super::Output;
use super::control::{ControlArgs, short_rev};
use crate::clock::format_unix;
use crate::control::{self, ClientError, HistoryQuery, Request, Response};
use crate::duration::format as format_duration;
use crate::history::{self, Entry, Outcome};

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Only reconciles that touched this chart (their counts narrowed to it).
    #[arg(long, value_name = "NAME")]
    pub chart: Option<String>,
    /// At most this many, the newest.
    #[arg(long, short = 'n', value_name = "N")]
    pub limit: Option<usize>,
    /// Output format: a table for people, or the entries as JSON or YAML (oldest first).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let query = HistoryQuery {
        limit: args.limit,
        chart: args.chart.clone(),
    };
    let entries = entries(&args.control, &query)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&entries)?),
        Output::Table if entries.is_empty() => eprintln!("no reconciles recorded yet"),
        Output::Table => print!("{}", table(&entries)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon; when it is not running (or this user may not use its socket), read the file.
fn entries(args: &ControlArgs, query: &HistoryQuery) -> anyhow::Result<Vec<Entry>> {
    let socket = args.socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let asked = rt.block_on(control::request(
        &socket,
        &Request::History(query.clone()),
        ANSWER_TIMEOUT,
    ));
    let why_not_socket = match asked {
        Ok(Response::History { entries }) => return Ok(entries),
        Ok(Response::Error(e)) => return Err(anyhow::Error::new(e)),
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e @ (ClientError::NotRunning { .. } | ClientError::PermissionDenied { .. })) => e,
        Err(e) => return Err(e.into()),
    };
    let read = history::read(&args.state_dir, usize::MAX).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "{why_not_socket}; reading the history file instead"
        ))
    })?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    Ok(query.select(read.entries))
}

/// The history for people, oldest first.
pub fn table(entries: &[Entry]) -> String {
    let mut rows = vec![
        [
            "STARTED", "DURATION", "TRIGGER", "REVISION", "RESULT", "CHANGES", "SUBJECT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in entries {
        let changes = match e.result {
            Outcome::Success => {
                let mut c = e.totals().summary();
                if e.drift_corrections > 0 {
                    c.push_str(&format!(", {} drift corrected", e.drift_corrections));
                }
                c
            }
            _ => [e.stage.as_deref(), e.reason.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("/"),
        };
        rows.push(vec![
            format_unix(e.started_at as i64),
            format_duration(Duration::from_millis(e.duration_ms)),
            e.trigger.clone(),
            e.revision.as_deref().map_or("-", short_rev).to_string(),
            e.result.as_str().to_string(),
            if changes.is_empty() {
                "-".into()
            } else {
                changes
            },
            e.subject.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    super::table::columns(&rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::history::ActionCounts;

    #[test]
    fn table_shows_changes_or_the_failure() {
        let ok = Entry {
            started_at: 1_800_000_000,
            duration_ms: 4200,
            trigger: "watch".into(),
            revision: Some("1a2b3c4d5e6f7a8b9c0d".into()),
            subject: Some("tune zookeeper".into()),
            author: None,
            result: Outcome::Success,
            stage: None,
            reason: None,
            message: None,
            charts: BTreeMap::from([(
                "zookeeper".into(),
                ActionCounts {
                    configured: 1,
                    ..Default::default()
                },
            )]),
            drift_corrections: 0,
        };
        let failed = Entry {
            result: Outcome::Failure,
            stage: Some("render".into()),
            reason: Some("invalid_input".into()),
            charts: BTreeMap::new(),
            trigger: "poll".into(),
            ..ok.clone()
        };
        let t = table(&[ok, failed]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("STARTED"), "{t}");
        assert!(lines[1].contains("2027-01-15 08:00:00 UTC  4s"), "{t}");
        assert!(
            lines[1].contains("1a2b3c4d5e6f  success  1 configured"),
            "{t}"
        );
        assert!(lines[2].contains("failure  render/invalid_input"), "{t}");
    }
}
