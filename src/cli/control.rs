//! `pailot reconcile|suspend|resume`: thin clients of the running daemon's control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_DIFF, Output, UsageError};
use crate::clock::unix_now;
use crate::control::{self, ControlError, ErrorKind, Request, Response};
use crate::daemon::config::DEFAULT_STATE_DIR;
use crate::duration::{format as format_duration, parse as parse_duration};
use crate::history::{Entry, Outcome};

/// Where the daemon's control socket is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// The daemon's state directory (`stateDir` of its configuration): holds control.sock,
    /// history.jsonl and suspension.json.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "PAILOT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The control socket, when it is not `<state-dir>/control.sock`.
    #[arg(long, value_name = "PATH", env = "PAILOT_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl ControlArgs {
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| control::socket_path(&self.state_dir))
    }
}

#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Wait until the reconcile has finished, print its result, and exit 1 when it failed.
    #[arg(long)]
    pub wait: bool,
    /// Correct drift once, also in `warn` drift mode.
    #[arg(long)]
    pub correct_drift: bool,
    /// With --wait: give up waiting after this long (the reconcile itself goes on).
    #[arg(long, value_name = "D", default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format of the result (with --wait).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Why (shown by `pailot status`, in notifications and in the suspension record).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Resume by itself after this long (e.g. `2h`, `30m`); without it, until `pailot resume`.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub for_: Option<Duration>,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

/// How long a request other than `reconcile --wait` may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Send `request` and wait up to `timeout` for the answer; control errors become CLI errors.
pub fn ask(args: &ControlArgs, request: Request, timeout: Duration) -> anyhow::Result<Response> {
    let socket = args.socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = rt.block_on(control::request(&socket, &request, timeout))?;
    match response {
        Response::Error(e) => Err(control_error(e)),
        r => Ok(r),
    }
}

/// A refusal from the daemon: bad requests exit 2, the rest 1.
fn control_error(e: ControlError) -> anyhow::Error {
    match e.kind {
        ErrorKind::Invalid => {
            UsageError(format!("the daemon refused the request: {}", e.message)).into()
        }
        ErrorKind::Refused => anyhow::anyhow!("the daemon refused: {}", e.message),
        ErrorKind::Failed => anyhow::anyhow!("the daemon failed: {}", e.message),
    }
}

fn unexpected(r: &Response) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the daemon: {r:?}")
}

pub fn run_reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Reconcile(control::ReconcileRequest {
        wait: args.wait,
        correct_drift: args.correct_drift,
    });
    let timeout = if args.wait {
        args.timeout
    } else {
        ANSWER_TIMEOUT
    };
    match ask(&args.control, request, timeout)? {
        Response::ReconcileQueued => {
            println!("reconcile requested; `pailot history` shows its result when it has finished");
            Ok(ExitCode::SUCCESS)
        }
        Response::Reconciled { entry } => {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entry)?),
                Output::Yaml => print!("{}", serde_saphyr::to_string(&entry)?),
                Output::Table => print!("{}", reconcile_table(&entry)),
            }
            Ok(if entry.result == Outcome::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DIFF)
            })
        }
        r => Err(unexpected(&r)),
    }
}

/// The summary line's first word: what happened to the revision.
fn outcome_verb(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "reconciled",
        Outcome::Failure => "failed",
        Outcome::Stopped => "stopped",
        Outcome::Superseded => "superseded",
    }
}

/// The result of one reconcile, for people: a summary line, then each chart's counts.
pub fn reconcile_table(e: &Entry) -> String {
    let mut out = format!(
        "{} {} in {} ({})",
        outcome_verb(e.result),
        e.revision.as_deref().map_or("-", short_rev),
        format_duration(Duration::from_millis(e.duration_ms)),
        e.trigger,
    );
    if let Some(s) = &e.subject {
        out.push_str(&format!(": {s}"));
    }
    out.push('\n');
    if e.result != Outcome::Success {
        let place = match (&e.stage, &e.reason) {
            (Some(s), Some(r)) => format!("{s}/{r}"),
            (Some(s), None) => s.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "-".into(),
        };
        out.push_str(&format!(
            "  {place}: {}\n",
            e.message.as_deref().unwrap_or("(no message)")
        ));
    }
    if e.drift_corrections > 0 {
        out.push_str(&format!(
            "  drift corrected: {} object(s)\n",
            e.drift_corrections
        ));
    }
    let mut rows = vec![vec!["CHART".to_string(), "CHANGES".into()]];
    for (chart, counts) in &e.charts {
        rows.push(vec![chart.clone(), counts.summary()]);
    }
    if rows.len() > 1 {
        out.push_str(&super::table::columns(&rows));
    }
    out
}

/// The first 12 characters of a commit id.
pub fn short_rev(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

pub fn run_suspend(args: SuspendArgs) -> anyhow::Result<ExitCode> {
    if args.for_.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(UsageError("--for must be at least 1s".into()).into());
    }
    let request = Request::Suspend(control::SuspendRequest {
        reason: args.reason.clone(),
        for_seconds: args.for_.map(|d| d.as_secs()),
    });
    match ask(&args.control, request, ANSWER_TIMEOUT)? {
        Response::Suspended { suspension } => {
            println!("{}", suspension.describe(unix_now()));
            Ok(ExitCode::SUCCESS)
        }
        r => Err(unexpected(&r)),
    }
}

pub fn run_resume(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    match ask(&args.control, Request::Resume, ANSWER_TIMEOUT)? {
        Response::Resumed { previous: Some(p) } => {
            println!("resumed (it was {})", p.describe(unix_now()));
            Ok(ExitCode::SUCCESS)
        }
        Response::Resumed { previous: None } => {
            println!("not suspended: nothing to resume");
            Ok(ExitCode::SUCCESS)
        }
        r => Err(unexpected(&r)),
    }
}
