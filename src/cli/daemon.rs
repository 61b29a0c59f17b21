//! `pailot daemon --config F`: the GitOps reconciler.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::daemon::config::{self, Config};

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Daemon configuration file.
    #[arg(long, default_value = "/etc/pailot/pailot.yaml", env = "PAILOT_CONFIG")]
    pub config: PathBuf,
    /// Apply even without a bootstrap record in the state directory (the cluster was set up by other means).
    #[arg(long)]
    pub no_bootstrap: bool,
    /// Validate the configuration file and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check: bool,
    /// Log as JSON lines (for journald/Loki) instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Internal: run one fetch or render for a running daemon (JSON request on stdin, response on stdout).
    #[arg(long, hide = true)]
    pub helper: bool,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    if args.helper {
        crate::daemon::helper::prepare_helper_process();
        crate::daemon::memory::limit_arenas();
        init_logging(args.log_json);
        crate::daemon::helper::serve(std::io::stdin().lock(), std::io::stdout().lock())
            .context("daemon helper: cannot read its request or write its response")?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(config::Error::Invalid(e)) => {
            return Err(anyhow::Error::new(e).context("invalid daemon configuration"));
        }
        // A file that cannot be read is bad input too (`--check` promises 0 or 2).
        Err(e) => return Err(anyhow::Error::new(super::UsageError(e.to_string()))),
    };
    if args.check {
        println!("{}: valid", args.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(args.log_json);
    raise_open_files_limit();
    // Before the runtime starts any thread (see daemon::memory).
    crate::daemon::memory::limit_arenas();
    // Fetch and render in short-lived helper processes (see daemon::helper).
    match crate::daemon::helper::own_executable() {
        Ok(exe) => crate::daemon::helper::enable(exe, args.log_json),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find the pailot executable; fetching and rendering in-process")
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| format!("failed to listen on {}", cfg.server.listen))?;
        tracing::info!(listen = %cfg.server.listen, config = %cfg.file.display(), "pailot daemon starting");
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = reload_tx.try_send(());
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let options = crate::daemon::Options { no_bootstrap: args.no_bootstrap };
        crate::daemon::run(cfg, listener, shutdown, reload_rx, options).await.context("daemon failed")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raise the soft limit of open files to the hard one (systemd's unit sets `LimitNOFILE`), so that
/// HTTP clients (capped by `server::MAX_CONNECTIONS`) never take the descriptors reconciling needs.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open files limit");
            }
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAILOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
