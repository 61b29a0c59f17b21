//! A small job runner: one [`Job`] (fetch, render, provenance) in a short-lived helper process (`pailot daemon --helper`), bounded in time and memory.
//!
//! Why a process: libgit2 initialises OpenSSL when it starts (about 1 MiB of heap and 3 MiB of
//! library pages), and a render allocates many small objects at its peak; in the long-running daemon
//! all of that would stay resident. In a child it is handed back when the child exits. And a child
//! can be bounded: a template with two nested `range(100000)` loops, or one that doubles a string 40
//! times, ends as a typed [`Error`] (`TimedOut`, `OutOfMemory`) that the loop reports as the commit's
//! fault, while the daemon keeps running the last good revision.
//!
//! Protocol: the daemon starts its own executable (`/proc/self/exe`, so that an upgrade in place
//! cannot pair a daemon with a helper of another version) as `pailot daemon --helper`, writes one
//! JSON envelope `{"job": NAME, "input": …}` to its stdin and reads the job's JSON output from its
//! stdout. Jobs are domain types (`SyncJob` in `source::git`, `RenderJob`, `ProvenanceJob`); their
//! outputs carry their own typed errors. The helper logs to stderr (the daemon's journal); a source
//! token travels only on the pipe. Dropping the future of [`run`] kills the child (SIGTERM of the
//! daemon ends a helper in flight).
//!
//! Without [`enable`] (the integration tests run the daemon inside the test binary), the job runs
//! in-process on a blocking thread through the same JSON encoding (no limits apply then).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::source::git::SyncJob;
use crate::diag::InputError;
use crate::manifest::ObjectId;
use crate::render::{ProvenanceMode, RenderRequest, Rendered};

/// Work a helper process does: a domain type in, a domain type out.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The job's name in the envelope.
    const NAME: &'static str;
    /// What it produces (its own errors included, as data).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Do the work (in the helper process).
    fn run(self) -> Self::Output;
    /// Whether the job talks TLS (and so needs the system's CA certificates).
    fn needs_tls(&self) -> bool {
        false
    }
}

/// Render a checked-out revision without field provenance.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenderJob(pub RenderRequest);

impl Job for RenderJob {
    const NAME: &'static str = "render";
    type Output = Result<Rendered, InputError>;
    fn run(self) -> Self::Output {
        crate::render::render_with(&self.0, ProvenanceMode::Skip)
            .map(|(cluster, set)| Rendered { cluster, set })
    }
}

/// Render with provenance and say where each `(object, pointer)` got its value (drift records).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProvenanceJob {
    pub request: RenderRequest,
    pub fields: Vec<(ObjectId, String)>,
}

impl Job for ProvenanceJob {
    const NAME: &'static str = "provenance";
    type Output = Result<Vec<Option<String>>, InputError>;
    fn run(self) -> Self::Output {
        let (_, set) = crate::render::render(&self.request)?;
        Ok(self
            .fields
            .iter()
            .map(|(id, pointer)| super::drift::provenance_of(&set, id, pointer))
            .collect())
    }
}

/// Run the job named in `envelope` (the helper's dispatch table).
fn dispatch(job: &str, input: serde_json::Value) -> Result<Vec<u8>, String> {
    fn go<J: Job>(input: serde_json::Value) -> Result<Vec<u8>, String> {
        let job: J = serde_json::from_value(input)
            .map_err(|e| format!("unreadable {} job: {e}", J::NAME))?;
        serde_json::to_vec(&job.run()).map_err(|e| e.to_string())
    }
    match job {
        SyncJob::NAME => go::<SyncJob>(input),
        RenderJob::NAME => go::<RenderJob>(input),
        ProvenanceJob::NAME => go::<ProvenanceJob>(input),
        other => Err(format!("unknown helper job {other:?}")),
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    job: String,
    input: T,
}

/// Why a job did not produce its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The helper could not be started or fed.
    #[error("cannot run the {job} helper: {detail}")]
    Spawn { job: &'static str, detail: String },
    /// The helper ran past its wall-clock limit and was killed.
    #[error("the {job} helper ran longer than its limit of {} and was killed", crate::duration::format(*limit))]
    TimedOut { job: &'static str, limit: Duration },
    /// The helper exceeded its memory limit.
    #[error("the {job} helper exceeded its memory limit of {} MiB", limit >> 20)]
    OutOfMemory { job: &'static str, limit: u64 },
    /// The helper died (a signal, or an exit code other than 0).
    #[error("the {job} helper died ({status})")]
    Died { job: &'static str, status: String },
    /// The helper answered something unreadable.
    #[error("the {job} helper answered something unreadable: {detail}")]
    Protocol { job: &'static str, detail: String },
}

/// Limits of one helper process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit; the helper is killed after it.
    pub time: Duration,
    /// Address-space limit (`RLIMIT_AS`) in bytes; an allocation beyond it ends the helper with
    /// [`crate::oom::EXIT_HELPER_OUT_OF_MEMORY`].
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(60),
            memory: 1 << 30,
        }
    }
}

/// How to start the helper: the program and whether it logs JSON lines.
#[derive(Clone, Debug)]
struct Program {
    path: PathBuf,
    log_json: bool,
}

static PROGRAM: OnceLock<Program> = OnceLock::new();

/// Run jobs in helper processes started from `program` (the running pailot binary).
pub fn enable(program: PathBuf, log_json: bool) {
    let _ = PROGRAM.set(Program {
        path: program,
        log_json,
    });
}

/// The running executable, as a path that stays valid if the file is replaced (Linux: `/proc/self/exe`).
///
/// `PAILOT_HELPER_EXE` names another executable instead: under valgrind `/proc/self/exe` is valgrind
/// itself (`scripts/profile-daemon` profiles the daemon that way).
pub fn own_executable() -> std::io::Result<PathBuf> {
    if let Some(exe) = std::env::var_os("PAILOT_HELPER_EXE") {
        return Ok(PathBuf::from(exe));
    }
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe.to_path_buf())
    } else {
        std::env::current_exe()
    }
}

/// Whether helper processes are in use.
pub fn enabled() -> bool {
    PROGRAM.get().is_some()
}

/// Run `job` in a helper process (in-process on a blocking thread when helpers are off), within `limits`.
pub async fn run<J: Job>(job: J, limits: Limits) -> Result<J::Output, Error> {
    // libgit2 initialises OpenSSL with the system CA bundle (~35 ms to parse, per helper) even when
    // the remote is a path, file://, ssh or http: point it at an empty file when TLS is not used.
    let no_ca_bundle = !job.needs_tls();
    let input = serde_json::to_vec(&Envelope {
        job: J::NAME.to_string(),
        input: job,
    })
    .map_err(|e| Error::Spawn {
        job: J::NAME,
        detail: e.to_string(),
    })?;
    let output = match PROGRAM.get() {
        Some(program) => run_process(J::NAME, program, input, limits, no_ca_bundle).await?,
        None => tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            serve(&input[..], &mut out).map(|()| out)
        })
        .await
        .map_err(|e| Error::Died {
            job: J::NAME,
            status: e.to_string(),
        })?
        .map_err(|e| Error::Spawn {
            job: J::NAME,
            detail: e.to_string(),
        })?,
    };
    let protocol = |detail: String| Error::Protocol {
        job: J::NAME,
        detail,
    };
    let answer: Result<J::Output, String> =
        serde_json::from_slice(&output).map_err(|e| protocol(e.to_string()))?;
    answer.map_err(protocol)
}

/// `pailot daemon --helper`: read one envelope from stdin, write `Result<Output, String>` to stdout.
pub fn serve(mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let answer = match serde_json::from_slice::<Envelope<serde_json::Value>>(&bytes) {
        Ok(env) => {
            drop(bytes);
            dispatch(&env.job, env.input)
        }
        Err(e) => Err(format!("unreadable helper request: {e}")),
    };
    match answer {
        Ok(json) => {
            output.write_all(b"{\"Ok\":")?;
            output.write_all(&json)?;
            output.write_all(b"}")?;
        }
        Err(message) => serde_json::to_writer(&mut output, &Err::<(), _>(message))?,
    }
    output.flush()
}

/// The child's side of the limits: an allocation failure exits with a known code.
pub fn prepare_helper_process() {
    crate::oom::set_exit_code(crate::oom::EXIT_HELPER_OUT_OF_MEMORY);
}

/// Start the helper, feed it `input`, and return what it wrote to stdout.
async fn run_process(
    job: &'static str,
    program: &Program,
    input: Vec<u8>,
    limits: Limits,
    no_ca_bundle: bool,
) -> Result<Vec<u8>, Error> {
    let mut cmd = tokio::process::Command::new(&program.path);
    cmd.args(["daemon", "--helper"]);
    if no_ca_bundle {
        cmd.env("SSL_CERT_FILE", "/dev/null");
    }
    if program.log_json {
        cmd.arg("--log-json");
    }
    let memory = limits.memory;
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: memory,
                rlim_max: memory,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Spawn {
            job,
            detail: format!("{}: {e}", program.path.display()),
        })?;
    let mut stdin = child.stdin.take().ok_or_else(|| Error::Spawn {
        job,
        detail: "no stdin".into(),
    })?;
    let write = async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    };
    let work = async { tokio::join!(write, child.wait_with_output()) };
    let (written, output) = match tokio::time::timeout(limits.time, work).await {
        Ok(r) => r,
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => {
            return Err(Error::TimedOut {
                job,
                limit: limits.time,
            });
        }
    };
    let output = output.map_err(|e| Error::Spawn {
        job,
        detail: e.to_string(),
    })?;
    if output.status.code() == Some(crate::oom::EXIT_HELPER_OUT_OF_MEMORY) {
        return Err(Error::OutOfMemory {
            job,
            limit: limits.memory,
        });
    }
    if !output.status.success() {
        return Err(Error::Died {
            job,
            status: output.status.to_string(),
        });
    }
    written.map_err(|e| Error::Spawn {
        job,
        detail: format!("cannot write to the helper: {e}"),
    })?;
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_or_unknown_request_gets_an_error_answer_not_a_crash() {
        for req in [
            &b"{\"op\":\"dance\"}"[..],
            b"{\"job\":\"dance\",\"input\":{}}",
        ] {
            let mut out = Vec::new();
            serve(req, &mut out).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(v["Err"].as_str().is_some(), "{v}");
        }
    }

    #[tokio::test]
    async fn a_job_round_trips_through_the_envelope_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            RenderJob(RenderRequest {
                repo_root: dir.path().to_path_buf(),
                cluster_file: "clusters/none.yaml".into(),
                overlays: None,
                revision: None,
                age_keys: Default::default(),
            }),
            Limits::default(),
        )
        .await
        .unwrap();
        let err = out.unwrap_err();
        assert!(err.file.to_string_lossy().contains("none.yaml"), "{err}");
    }
}
