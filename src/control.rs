//! The control channel: one JSON request and one JSON response per connection on the daemon's unix socket.
//!
//! `pailot reconcile|suspend|resume|history` talk to the running daemon through
//! `<stateDir>/control.sock` (never through the HTTP port, which stays read-only). The socket is
//! mode 0660, owned by the daemon's user (root, or `pailot` under the systemd unit) and the
//! `pailot` group: root and members of that group may control the daemon; other users get
//! "permission denied" from the kernel before the daemon reads a byte.
//!
//! Protocol: the client connects, writes one JSON [`Request`] and a newline, and reads one JSON
//! [`Response`] and a newline; then both close. The server half ([`serve`]) takes a
//! [`ControlHandler`] (implemented by the daemon), its listener and its shutdown signal.
//!
//! ```text
//! → {"command":"suspend","reason":"maintenance","forSeconds":3600}
//! ← {"result":"suspended","suspension":{"since":1796000000,"until":1796003600,"reason":"maintenance","by":"uid 1000 (alice)"}}
//! ```

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::history;
use crate::suspension::Suspension;

/// Socket file name inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Read and write for the owner and the group, nothing for others.
pub const SOCKET_MODE: u32 = 0o660;
/// The group whose members may control the daemon (created by `systemd/sysusers.d/pailot.conf`).
pub const CONTROL_GROUP: &str = "pailot";
/// A request is a few hundred bytes; anything past this is not a pailot client.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections in flight may finish after shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The socket path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum Request {
    /// Fetch and reconcile now.
    Reconcile(ReconcileRequest),
    /// Stop applying and correcting (watching and reporting go on).
    Suspend(SuspendRequest),
    /// End a suspension.
    Resume,
    /// The last reconciles.
    History(HistoryQuery),
}

/// `pailot reconcile [--wait] [--correct-drift]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileRequest {
    /// Answer only when the reconcile has finished, with its history entry.
    pub wait: bool,
    /// Correct drift once, even in `warn` drift mode.
    pub correct_drift: bool,
}

/// `pailot suspend [--reason TEXT] [--for DURATION]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SuspendRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ends by itself after this many seconds; absent: until resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_seconds: Option<u64>,
}

impl SuspendRequest {
    /// The suspension this request asks for, started `now` by `peer`.
    pub fn to_suspension(&self, now: u64, peer: &Peer) -> Suspension {
        Suspension::new(
            now,
            self.for_seconds.map(Duration::from_secs),
            self.reason.clone(),
            Some(peer.to_string()),
        )
    }
}

/// `pailot history [--chart C] [--limit N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryQuery {
    /// At most this many entries (the newest); absent: all the daemon keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only reconciles that touched this chart, narrowed to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
}

impl HistoryQuery {
    /// Apply the query to entries (oldest first): chart filter, then the newest `limit`.
    pub fn select(&self, entries: Vec<history::Entry>) -> Vec<history::Entry> {
        let mut out: Vec<history::Entry> = match &self.chart {
            Some(c) => entries.iter().filter_map(|e| e.for_chart(c)).collect(),
            None => entries,
        };
        if let Some(n) = self.limit {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        out
    }
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    /// A reconcile was queued (no `wait`).
    ReconcileQueued,
    /// The reconcile ran (`wait`): its history entry.
    Reconciled { entry: history::Entry },
    /// The daemon is suspended now (a suspension in force is replaced).
    Suspended { suspension: Suspension },
    /// The suspension ended; `previous` is `None` when there was none.
    Resumed { previous: Option<Suspension> },
    /// History entries, oldest first.
    History { entries: Vec<history::Entry> },
    /// The request was refused or failed.
    Error(ControlError),
}

/// Why the daemon did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    /// One line for people.
    pub message: String,
}

/// The kinds of refusal, each with its exit code in the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// The request is malformed or has a bad value (exit 2).
    Invalid,
    /// The daemon will not do it now: suspended, not the leader, stopping (exit 1).
    Refused,
    /// It tried and failed (exit 1).
    Failed,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
    pub fn refused(message: impl Into<String>) -> Self {
        ControlError::new(ErrorKind::Refused, message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        ControlError::new(ErrorKind::Failed, message)
    }
}

/// What a reconcile request led to.
#[derive(Clone, Debug, PartialEq)]
pub enum ReconcileOutcome {
    /// Queued; the caller did not want to wait.
    Queued,
    /// Finished; its history entry.
    Finished(Box<history::Entry>),
}

/// Who is on the other end of a connection (from `SO_PEERCRED`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match user_name(self.uid) {
            Some(name) => write!(f, "uid {} ({name})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// The daemon's side of the channel. Each method answers one request; a method may take as long as
/// the work takes (`reconcile` with `wait`), and its future is dropped when the client goes away.
pub trait ControlHandler: Send + Sync + 'static {
    /// Fetch and reconcile now; with `wait`, resolve when that reconcile has finished.
    fn reconcile(
        &self,
        request: ReconcileRequest,
        peer: &Peer,
    ) -> impl Future<Output = Result<ReconcileOutcome, ControlError>> + Send;

    /// Suspend (replacing a suspension in force) and persist it; the suspension now in force.
    fn suspend(
        &self,
        request: SuspendRequest,
        peer: &Peer,
    ) -> impl Future<Output = Result<Suspension, ControlError>> + Send;

    /// End the suspension; the one that was in force, if any.
    fn resume(
        &self,
        peer: &Peer,
    ) -> impl Future<Output = Result<Option<Suspension>, ControlError>> + Send;

    /// History entries (oldest first), already narrowed by the query.
    fn history(
        &self,
        query: HistoryQuery,
    ) -> impl Future<Output = Result<Vec<history::Entry>, ControlError>> + Send;
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the socket.
    #[error("another pailot daemon is listening on {0} (one daemon per state directory)")]
    InUse(PathBuf),
    /// Something that is not a socket has the socket's name.
    #[error("{0} exists and is not a socket; remove it")]
    NotASocket(PathBuf),
    /// Creating, securing or placing the socket failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The bound control socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
    /// The socket file's inode, so drop removes our file and never a successor's.
    inode: Option<u64>,
    /// What the group setting came to (for the daemon's log), e.g. a missing `pailot` group.
    pub warning: Option<String>,
}

impl Listener {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.inode.is_some() && inode(&self.path) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Create the control socket at `path`: mode 0660, group `group` when it exists (else the
/// process's own group, with a warning in [`Listener::warning`]). The socket is made and secured
/// under a temporary name and renamed into place, so it is never reachable with a wider mode. A
/// stale socket (no process answers) is replaced; a live one is an error. Needs a tokio runtime.
pub fn bind(path: &Path, group: Option<&str>) -> Result<Listener, BindError> {
    let io = |action, path: &Path, source| BindError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(BindError::NotASocket(path.into())),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.into()));
            }
        }
        Err(_) => {}
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", path, e))?;
    let tmp = dir.join(format!(".{}.{}.tmp", SOCKET_FILE, std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let std_listener =
        std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| io("bind", &tmp, e))?;
    let cleanup = |e: BindError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| cleanup(io("set the mode of", &tmp, e)))?;
    let mut warning = None;
    if let Some(name) = group {
        match group_id(name) {
            Some(gid) => {
                if let Err(e) = std::os::unix::fs::chown(&tmp, None, Some(gid)) {
                    warning = Some(format!(
                        "cannot give {} to group {name} ({e}): only its owner can use it",
                        path.display()
                    ));
                }
            }
            None => {
                warning = Some(format!(
                    "group {name} does not exist (systemd-sysusers creates it): {} is usable by its owner and the daemon's own group only",
                    path.display()
                ))
            }
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| cleanup(io("move the socket to", path, e)))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| io("configure", path, e))?;
    let inner =
        tokio::net::UnixListener::from_std(std_listener).map_err(|e| io("listen on", path, e))?;
    Ok(Listener {
        inner,
        path: path.to_path_buf(),
        inode: inode(path),
        warning,
    })
}

/// Serve requests until `shutdown` completes, then stop accepting, remove the socket, and give
/// connections in flight a short grace before they are cut.
pub async fn serve<H: ControlHandler>(
    listener: Listener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.inner.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = handler.clone();
                    tasks.spawn(async move {
                        if let Err(e) = connection(stream, handler.as_ref()).await {
                            tracing::debug!(error = %e, "control connection ended early");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// One connection: read the request line, answer it, close. The handler's future is dropped if
/// the client hangs up first.
async fn connection<H: ControlHandler>(stream: UnixStream, handler: &H) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let n = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut reader)
            .take(MAX_REQUEST_BYTES)
            .read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line"))??;
    if n == 0 {
        return Ok(());
    }
    let response = match serde_json::from_slice::<Request>(&line) {
        Err(e) => Response::Error(ControlError::new(
            ErrorKind::Invalid,
            format!("not a pailot control request: {e}"),
        )),
        Ok(request) => {
            tracing::info!(%peer, command = request.command_word(), "control request");
            let answer = dispatch(handler, request, &peer);
            tokio::select! {
                r = answer => r,
                // The client sends nothing after its request: a read that ends means it hung up.
                _ = hung_up(&mut reader) => return Ok(()),
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("response serializes");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn hung_up(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) {
    let mut buf = [0u8; 64];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn dispatch<H: ControlHandler>(handler: &H, request: Request, peer: &Peer) -> Response {
    let result = match request {
        Request::Reconcile(r) => handler.reconcile(r, peer).await.map(|o| match o {
            ReconcileOutcome::Queued => Response::ReconcileQueued,
            ReconcileOutcome::Finished(entry) => Response::Reconciled { entry: *entry },
        }),
        Request::Suspend(s) => handler
            .suspend(s, peer)
            .await
            .map(|suspension| Response::Suspended { suspension }),
        Request::Resume => handler
            .resume(peer)
            .await
            .map(|previous| Response::Resumed { previous }),
        Request::History(q) => handler
            .history(q)
            .await
            .map(|entries| Response::History { entries }),
    };
    result.unwrap_or_else(Response::Error)
}

impl Request {
    /// The command's name, for logs.
    pub fn command_word(&self) -> &'static str {
        match self {
            Request::Reconcile(_) => "reconcile",
            Request::Suspend(_) => "suspend",
            Request::Resume => "resume",
            Request::History(_) => "history",
        }
    }
}

/// A reconcile asked for through the socket, handed to the daemon's loop. The loop answers it with
/// [`ManualReconcile::finish`] (or [`ManualReconcile::refuse`]); dropping it unanswered tells a
/// waiting client the daemon stopped.
#[derive(Debug)]
pub struct ManualReconcile {
    /// Correct drift once, even in `warn` drift mode.
    pub correct_drift: bool,
    /// Who asked.
    pub peer: Peer,
    reply: Option<tokio::sync::oneshot::Sender<Result<history::Entry, ControlError>>>,
}

impl ManualReconcile {
    /// Whether a client waits for the result.
    pub fn waited_for(&self) -> bool {
        self.reply.is_some()
    }
    /// The reconcile ran: its history entry goes to a waiting client.
    pub fn finish(self, entry: &history::Entry) {
        if let Some(r) = self.reply {
            let _ = r.send(Ok(entry.clone()));
        }
    }
    /// The daemon will not run it (not the leader, stopping...).
    pub fn refuse(self, message: impl Into<String>) {
        if let Some(r) = self.reply {
            let _ = r.send(Err(ControlError::refused(message)));
        }
    }
}

/// How many manual reconciles may wait for the loop; more are refused (the loop coalesces them anyway).
const MANUAL_QUEUE: usize = 16;

/// A ready-made [`ControlHandler`] for the daemon: the suspension is kept in the state directory and
/// published on a watch channel (answered at once, even during a long apply), the history is read
/// from its file, and reconcile requests go to the daemon's loop as [`ManualReconcile`]s.
/// `suspended` and `resumed` events go to the notifier, also when a `--for` suspension runs out.
#[derive(Clone)]
pub struct Controls {
    inner: Arc<ControlsInner>,
}

struct ControlsInner {
    state_dir: PathBuf,
    suspension: tokio::sync::watch::Sender<Option<Suspension>>,
    manual: tokio::sync::mpsc::Sender<ManualReconcile>,
    notifier: crate::notification::Notifier,
    /// Serializes suspend/resume/expiry so the file and the channel agree.
    writing: tokio::sync::Mutex<()>,
}

impl Controls {
    /// Load the suspension record (an expired one is removed; one that cannot be read counts as a
    /// suspension until `pailot resume`, and is reported in the returned warning) and start the
    /// task that ends `--for` suspensions. Needs a tokio runtime.
    pub fn start(
        state_dir: &Path,
        notifier: crate::notification::Notifier,
    ) -> (
        Controls,
        tokio::sync::mpsc::Receiver<ManualReconcile>,
        Option<String>,
    ) {
        let now = crate::clock::unix_now();
        let (current, warning) = match Suspension::load_active(state_dir, now) {
            Ok(s) => (s, None),
            Err(e) => (
                Some(Suspension::new(
                    now,
                    None,
                    Some(format!(
                        "the suspension record is unreadable; `pailot resume` removes it ({e})"
                    )),
                    None,
                )),
                Some(format!("{e}: staying suspended until `pailot resume`")),
            ),
        };
        let (suspension, _) = tokio::sync::watch::channel(current);
        let (manual, rx) = tokio::sync::mpsc::channel(MANUAL_QUEUE);
        let controls = Controls {
            inner: Arc::new(ControlsInner {
                state_dir: state_dir.to_path_buf(),
                suspension,
                manual,
                notifier,
                writing: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(expire(Arc::downgrade(&controls.inner)));
        (controls, rx, warning)
    }

    /// The suspension in force, and every change of it.
    pub fn suspension(&self) -> tokio::sync::watch::Receiver<Option<Suspension>> {
        self.inner.suspension.subscribe()
    }

    /// Whether applying and correcting are suspended now.
    pub fn is_suspended(&self) -> bool {
        self.inner.suspension.borrow().is_some()
    }
}

/// End `--for` suspensions when their time comes; ends when the controls are dropped.
async fn expire(inner: std::sync::Weak<ControlsInner>) {
    loop {
        let (mut changed, until) = {
            let Some(c) = inner.upgrade() else { return };
            let rx = c.suspension.subscribe();
            let until = rx.borrow().as_ref().and_then(|s| s.until);
            (rx, until)
        };
        let wait = match until {
            Some(u) => {
                let left = u.saturating_sub(crate::clock::unix_now());
                tokio::time::sleep(Duration::from_secs(left))
            }
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = wait => {}
            r = changed.changed() => if r.is_err() { return } else { continue },
        }
        let Some(c) = inner.upgrade() else { return };
        let _w = c.writing.lock().await;
        let now = crate::clock::unix_now();
        let ended = c
            .suspension
            .borrow()
            .as_ref()
            .is_some_and(|s| !s.is_active(now));
        if ended {
            if let Err(e) = Suspension::clear(&c.state_dir) {
                tracing::warn!(error = %e, "could not remove the expired suspension record");
            }
            let previous = c.suspension.send_replace(None);
            tracing::info!("suspension ended (--for ran out): applying again");
            c.notifier.notify(resumed_event(
                previous.as_ref(),
                "the suspension ran out",
                now,
            ));
        }
    }
}

fn resumed_event(previous: Option<&Suspension>, why: &str, now: u64) -> crate::notification::Event {
    let mut msg = why.to_string();
    if let Some(r) = previous.and_then(|p| p.reason.as_deref()) {
        msg.push_str(&format!(" (it was: {r})"));
    }
    crate::notification::Event::new(crate::notification::EventKind::Resumed, now, msg)
}

impl ControlHandler for Controls {
    async fn reconcile(
        &self,
        request: ReconcileRequest,
        peer: &Peer,
    ) -> Result<ReconcileOutcome, ControlError> {
        if let Some(s) = self.inner.suspension.borrow().as_ref() {
            return Err(ControlError::refused(format!(
                "the daemon is {}; `pailot resume` first",
                s.describe(crate::clock::unix_now())
            )));
        }
        let (reply, answer) = if request.wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let call = ManualReconcile {
            correct_drift: request.correct_drift,
            peer: peer.clone(),
            reply,
        };
        self.inner.manual.try_send(call).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                ControlError::refused("too many reconcile requests are waiting; try again shortly")
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                ControlError::refused("the daemon is stopping")
            }
        })?;
        match answer {
            None => Ok(ReconcileOutcome::Queued),
            Some(rx) => match rx.await {
                Ok(Ok(entry)) => Ok(ReconcileOutcome::Finished(Box::new(entry))),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ControlError::refused(
                    "the daemon stopped before the reconcile finished",
                )),
            },
        }
    }

    async fn suspend(
        &self,
        request: SuspendRequest,
        peer: &Peer,
    ) -> Result<Suspension, ControlError> {
        let _w = self.inner.writing.lock().await;
        let now = crate::clock::unix_now();
        let s = request.to_suspension(now, peer);
        s.save(&self.inner.state_dir)
            .map_err(|e| ControlError::failed(e.to_string()))?;
        self.inner.suspension.send_replace(Some(s.clone()));
        tracing::warn!(by = %peer, reason = s.reason.as_deref().unwrap_or(""), "suspended: no applying, no drift correction");
        let mut msg = format!("suspended by {peer}");
        if let Some(r) = &s.reason {
            msg.push_str(&format!(": {r}"));
        }
        if let Some(left) = s.remaining(now) {
            msg.push_str(&format!(" (for {})", crate::duration::format(left)));
        }
        self.inner.notifier.notify(crate::notification::Event::new(
            crate::notification::EventKind::Suspended,
            now,
            msg,
        ));
        Ok(s)
    }

    async fn resume(&self, peer: &Peer) -> Result<Option<Suspension>, ControlError> {
        let _w = self.inner.writing.lock().await;
        Suspension::clear(&self.inner.state_dir)
            .map_err(|e| ControlError::failed(e.to_string()))?;
        let previous = self.inner.suspension.send_replace(None);
        if previous.is_some() {
            tracing::info!(by = %peer, "resumed: applying again");
            self.inner.notifier.notify(resumed_event(
                previous.as_ref(),
                &format!("resumed by {peer}"),
                crate::clock::unix_now(),
            ));
        }
        Ok(previous)
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<history::Entry>, ControlError> {
        let dir = self.inner.state_dir.clone();
        let read = tokio::task::spawn_blocking(move || history::read(&dir, usize::MAX))
            .await
            .map_err(|e| ControlError::failed(e.to_string()))?
            .map_err(|e| ControlError::failed(e.to_string()))?;
        Ok(query.select(read.entries))
    }
}

/// Why a client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listens on it.
    #[error(
        "the pailot daemon is not running: nothing listens on {path} (start it with `systemctl start pailot`, or point --state-dir at its stateDir)"
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket's mode refuses this user.
    #[error(
        "permission denied on {path}: only root and members of group {CONTROL_GROUP} may control the daemon"
    )]
    PermissionDenied { path: PathBuf },
    /// The daemon did not answer in time.
    #[error("no answer from the daemon within {0:?}")]
    Timeout(Duration),
    /// Talking over the socket failed, or the daemon closed it without an answer.
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// Send one request to the daemon listening on `socket` and read its answer.
pub async fn request(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let protocol = |message: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClientError::PermissionDenied {
                path: socket.to_path_buf(),
            });
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                path: socket.to_path_buf(),
                source: e,
            });
        }
        Err(e) => return Err(protocol(format!("cannot connect: {e}"))),
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).expect("request serializes");
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| protocol(format!("cannot send the request: {e}")))?;
        let mut answer = Vec::new();
        BufReader::new(read)
            .read_until(b'\n', &mut answer)
            .await
            .map_err(|e| protocol(format!("cannot read the answer: {e}")))?;
        if answer.is_empty() {
            return Err(protocol(
                "the daemon closed the connection without an answer (stopping?)".into(),
            ));
        }
        serde_json::from_slice::<Response>(&answer)
            .map_err(|e| protocol(format!("not a pailot control answer: {e}")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// The numeric id of group `name`, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf`, both live and sized as passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// The login name of `uid`, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both live and sized as passed; pw_name then
    // points into `buf`, read before `buf` is dropped.
    unsafe {
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::history::{Entry, Outcome};

    /// A daemon stand-in: remembers the suspension, counts reconciles, and with `wait` answers once
    /// `release` is notified.
    #[derive(Default)]
    struct Fake {
        suspension: Mutex<Option<Suspension>>,
        reconciles: AtomicUsize,
        release: tokio::sync::Notify,
        dropped_waits: AtomicUsize,
    }

    struct CountDrop<'a>(&'a AtomicUsize, bool);
    impl Drop for CountDrop<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn entry() -> Entry {
        Entry {
            started_at: 1,
            duration_ms: 5,
            trigger: "manual".into(),
            revision: Some("abc".into()),
            subject: None,
            author: None,
            result: Outcome::Success,
            stage: None,
            reason: None,
            message: None,
            charts: Default::default(),
            drift_corrections: 0,
        }
    }

    impl ControlHandler for Fake {
        async fn reconcile(
            &self,
            request: ReconcileRequest,
            _peer: &Peer,
        ) -> Result<ReconcileOutcome, ControlError> {
            if self.suspension.lock().unwrap().is_some() {
                return Err(ControlError::refused("suspended"));
            }
            self.reconciles.fetch_add(1, Ordering::SeqCst);
            if !request.wait {
                return Ok(ReconcileOutcome::Queued);
            }
            let mut guard = CountDrop(&self.dropped_waits, false);
            self.release.notified().await;
            guard.1 = true;
            Ok(ReconcileOutcome::Finished(Box::new(entry())))
        }
        async fn suspend(
            &self,
            request: SuspendRequest,
            peer: &Peer,
        ) -> Result<Suspension, ControlError> {
            let s = request.to_suspension(100, peer);
            *self.suspension.lock().unwrap() = Some(s.clone());
            Ok(s)
        }
        async fn resume(&self, _peer: &Peer) -> Result<Option<Suspension>, ControlError> {
            Ok(self.suspension.lock().unwrap().take())
        }
        async fn history(&self, query: HistoryQuery) -> Result<Vec<Entry>, ControlError> {
            Ok(query.select(vec![entry(), entry(), entry()]))
        }
    }

    struct Running {
        dir: tempfile::TempDir,
        fake: Arc<Fake>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn socket(&self) -> PathBuf {
            socket_path(self.dir.path())
        }
        async fn stop(mut self) -> PathBuf {
            let socket = self.socket();
            let _ = self.stop.take().unwrap().send(());
            self.task.await.unwrap();
            socket
        }
    }

    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(&socket_path(dir.path()), None).unwrap();
        let fake = Arc::new(Fake::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, fake.clone(), async {
            let _ = rx.await;
        }));
        Running {
            dir,
            fake,
            stop: Some(tx),
            task,
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn each_command_round_trips_through_the_handler() {
        let d = start();
        let s = d.socket();
        let r = request(&s, &Request::Reconcile(ReconcileRequest::default()), T)
            .await
            .unwrap();
        assert_eq!(r, Response::ReconcileQueued);
        let r = request(
            &s,
            &Request::Suspend(SuspendRequest {
                reason: Some("maintenance".into()),
                for_seconds: Some(3600),
            }),
            T,
        )
        .await
        .unwrap();
        let Response::Suspended { suspension } = r else {
            panic!("{r:?}")
        };
        assert_eq!((suspension.since, suspension.until), (100, Some(3700)));
        assert_eq!(suspension.reason.as_deref(), Some("maintenance"));
        let me = unsafe { libc::getuid() };
        assert!(
            suspension
                .by
                .as_deref()
                .unwrap()
                .starts_with(&format!("uid {me}")),
            "{suspension:?}"
        );
        // Suspended: the fake refuses reconciles, and the refusal reaches the client as such.
        let r = request(&s, &Request::Reconcile(ReconcileRequest::default()), T)
            .await
            .unwrap();
        assert_eq!(r, Response::Error(ControlError::refused("suspended")));
        let r = request(&s, &Request::Resume, T).await.unwrap();
        assert!(
            matches!(r, Response::Resumed { previous: Some(_) }),
            "{r:?}"
        );
        let r = request(&s, &Request::Resume, T).await.unwrap();
        assert_eq!(r, Response::Resumed { previous: None });
        let r = request(
            &s,
            &Request::History(HistoryQuery {
                limit: Some(2),
                chart: None,
            }),
            T,
        )
        .await
        .unwrap();
        assert!(
            matches!(r, Response::History { ref entries } if entries.len() == 2),
            "{r:?}"
        );
        assert_eq!(d.fake.reconciles.load(Ordering::SeqCst), 1);
        let path = d.stop().await;
        assert!(!path.exists(), "shutdown removes the socket");
    }

    #[tokio::test]
    async fn wait_answers_when_the_reconcile_finishes_and_a_hang_up_drops_it() {
        let d = start();
        let s = d.socket();
        let waiting = tokio::spawn({
            let s = s.clone();
            async move {
                let req = Request::Reconcile(ReconcileRequest {
                    wait: true,
                    correct_drift: false,
                });
                request(&s, &req, T).await
            }
        });
        while d.fake.reconciles.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        d.fake.release.notify_waiters();
        let r = waiting.await.unwrap().unwrap();
        assert_eq!(r, Response::Reconciled { entry: entry() });

        // A client that gives up: the handler's future is dropped, not left waiting forever.
        let req = Request::Reconcile(ReconcileRequest {
            wait: true,
            correct_drift: false,
        });
        let r = request(&s, &req, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
        for _ in 0..200 {
            if d.fake.dropped_waits.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d.fake.dropped_waits.load(Ordering::SeqCst), 1);
        d.stop().await;
    }

    #[tokio::test]
    async fn garbage_is_answered_with_an_invalid_error() {
        let d = start();
        let mut c = UnixStream::connect(d.socket()).await.unwrap();
        c.write_all(b"{\"command\":\"explode\"}\n").await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        assert!(
            matches!(&r, Response::Error(e) if e.kind == ErrorKind::Invalid && e.message.contains("explode")),
            "{r:?}"
        );
        d.stop().await;
    }

    #[tokio::test]
    async fn socket_is_0660_a_live_one_is_kept_and_a_stale_one_replaced() {
        let d = start();
        let s = d.socket();
        let meta = std::fs::metadata(&s).unwrap();
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        let e = bind(&s, None).unwrap_err();
        assert!(matches!(e, BindError::InUse(_)), "{e}");
        // A socket file nobody listens on (a daemon killed with SIGKILL) is replaced.
        let stale = d.dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let l = bind(&stale, None).unwrap();
        assert!(UnixStream::connect(&stale).await.is_ok());
        drop(l);
        assert!(!stale.exists());
        // A regular file is not ours to replace.
        let file = d.dir.path().join("file.sock");
        std::fs::write(&file, "keep").unwrap();
        assert!(matches!(bind(&file, None), Err(BindError::NotASocket(_))));
        d.stop().await;
    }

    #[tokio::test]
    async fn a_missing_group_is_a_warning_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let l = bind(&socket_path(dir.path()), Some("no-such-group-pailot-test")).unwrap();
        assert!(
            l.warning.as_deref().unwrap().contains("does not exist"),
            "{:?}",
            l.warning
        );
        assert_eq!(
            std::fs::metadata(l.path()).unwrap().mode() & 0o777,
            SOCKET_MODE
        );
    }

    #[tokio::test]
    async fn no_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = socket_path(dir.path());
        let e = request(&s, &Request::Resume, T).await.unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("not running"), "{e}");
        // A stale socket file: refused, also "not running".
        drop(std::os::unix::net::UnixListener::bind(&s).unwrap());
        let e = request(&s, &Request::Resume, T).await.unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
    }

    /// Notification events the controls emit, recorded instead of sent.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<String>>>);
    impl crate::notification::http::Transport for Events {
        async fn send(
            &self,
            d: &crate::notification::payload::Delivery,
            _: Duration,
        ) -> Result<(), crate::notification::http::SendError> {
            let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            self.0.lock().unwrap().push(format!(
                "{}: {}",
                v["kind"].as_str().unwrap(),
                v["message"].as_str().unwrap()
            ));
            Ok(())
        }
    }

    fn notifier(events: &Events) -> crate::notification::Notifier {
        let raw: crate::notification::RawConfig =
            serde_saphyr::from_str("sinks: [{type: webhook, url: 'http://127.0.0.1:9/x'}]")
                .unwrap();
        let config = raw
            .validate(
                Path::new("/etc/pailot/pailot.yaml"),
                Path::new("/"),
                "notifications",
            )
            .unwrap();
        crate::notification::Notifier::spawn_with(config, "lab", events.clone())
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..400 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    fn me() -> Peer {
        Peer {
            uid: 0,
            gid: 0,
            pid: None,
        }
    }

    #[tokio::test]
    async fn controls_persist_and_publish_suspensions_and_forward_reconciles() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::default();
        let (c, mut manual, warning) = Controls::start(dir.path(), notifier(&events));
        assert!(warning.is_none() && !c.is_suspended());
        let mut watch = c.suspension();

        let s = c
            .suspend(
                SuspendRequest {
                    reason: Some("disk swap".into()),
                    for_seconds: Some(3600),
                },
                &me(),
            )
            .await
            .unwrap();
        assert!(c.is_suspended());
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow_and_update().as_ref(), Some(&s));
        assert_eq!(
            Suspension::load(dir.path()).unwrap(),
            Some(s.clone()),
            "on disk"
        );
        let e = c
            .reconcile(ReconcileRequest::default(), &me())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert!(
            e.message.contains("disk swap") && e.message.contains("pailot resume"),
            "{e}"
        );
        assert!(
            manual.try_recv().is_err(),
            "a refused reconcile never reaches the loop"
        );

        // A restart finds the suspension again.
        let (again, _m, _) = Controls::start(dir.path(), crate::notification::Notifier::disabled());
        assert!(again.is_suspended());

        assert_eq!(c.resume(&me()).await.unwrap(), Some(s));
        assert!(!c.is_suspended() && Suspension::load(dir.path()).unwrap().is_none());
        assert_eq!(c.resume(&me()).await.unwrap(), None);
        eventually("suspended and resumed events", || {
            events.0.lock().unwrap().len() == 2
        })
        .await;
        let got = events.0.lock().unwrap().clone();
        assert_eq!(
            got[0],
            "suspended: suspended by uid 0 (root): disk swap (for 1h)"
        );
        assert_eq!(
            got[1],
            "resumed: resumed by uid 0 (root) (it was: disk swap)"
        );

        // Reconcile: queued at once without wait; with wait, answered by the loop.
        let r = c
            .reconcile(ReconcileRequest::default(), &me())
            .await
            .unwrap();
        assert_eq!(r, ReconcileOutcome::Queued);
        assert!(!manual.recv().await.unwrap().waited_for());
        let waiting = tokio::spawn({
            let c = c.clone();
            async move {
                c.reconcile(
                    ReconcileRequest {
                        wait: true,
                        correct_drift: true,
                    },
                    &me(),
                )
                .await
            }
        });
        let call = manual.recv().await.unwrap();
        assert!(call.correct_drift && call.waited_for());
        call.finish(&entry());
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            ReconcileOutcome::Finished(Box::new(entry()))
        );
        // The loop drops a call unanswered (stopping): the client is told.
        let waiting = tokio::spawn({
            let c = c.clone();
            async move {
                c.reconcile(
                    ReconcileRequest {
                        wait: true,
                        correct_drift: false,
                    },
                    &me(),
                )
                .await
            }
        });
        drop(manual.recv().await.unwrap());
        let e = waiting.await.unwrap().unwrap_err();
        assert!(e.message.contains("stopped before"), "{e}");
    }

    #[tokio::test]
    async fn a_for_suspension_ends_by_itself_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::default();
        let (c, _manual, _) = Controls::start(dir.path(), notifier(&events));
        c.suspend(
            SuspendRequest {
                reason: Some("short".into()),
                for_seconds: Some(1),
            },
            &me(),
        )
        .await
        .unwrap();
        assert!(c.is_suspended());
        let started = std::time::Instant::now();
        eventually("the suspension to run out", || !c.is_suspended()).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            Suspension::load(dir.path()).unwrap().is_none(),
            "record removed"
        );
        eventually("a resumed event", || events.0.lock().unwrap().len() == 2).await;
        assert_eq!(
            events.0.lock().unwrap()[1],
            "resumed: the suspension ran out (it was: short)"
        );
    }

    #[tokio::test]
    async fn an_unreadable_record_keeps_the_daemon_suspended() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::suspension::SUSPENSION_FILE), "{oops").unwrap();
        let (c, _m, warning) =
            Controls::start(dir.path(), crate::notification::Notifier::disabled());
        assert!(c.is_suspended());
        assert!(warning.unwrap().contains("suspension.json"));
        c.resume(&me()).await.unwrap();
        assert!(!c.is_suspended() && !dir.path().join(crate::suspension::SUSPENSION_FILE).exists());
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Suspend(SuspendRequest {
            reason: Some("x".into()),
            for_seconds: Some(60),
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"command":"suspend","reason":"x","forSeconds":60}"#
        );
        let r: Request = serde_json::from_str(r#"{"command":"reconcile","wait":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Reconcile(ReconcileRequest {
                wait: true,
                correct_drift: false
            })
        );
        assert_eq!(
            serde_json::to_string(&Request::Resume).unwrap(),
            r#"{"command":"resume"}"#
        );
        assert!(group_id("root") == Some(0));
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
