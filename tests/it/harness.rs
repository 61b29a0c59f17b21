//! Test harness: run the `pailot` binary, build temporary repositories, compare outputs readably.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `pailot` binary built for this test run (`PAILOT_TEST_BIN` overrides it, e.g. to show
/// that a regression test fails against an older build).
pub fn pailot_bin() -> PathBuf {
    std::env::var_os("PAILOT_TEST_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pailot")))
}

/// Root of this repository (holds charts/, overlays/, clusters/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Result of running `pailot`: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run `pailot ARGS` in `dir`.
pub fn pailot_in(dir: &Path, args: &[&str]) -> Run {
    pailot_env(dir, &[], args)
}

/// Run `pailot ARGS` in `dir` with extra environment variables.
pub fn pailot_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    Command::new(pailot_bin())
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run pailot")
        .into()
}

/// Run `pailot ARGS` in the repository root.
pub fn pailot(args: &[&str]) -> Run {
    pailot_in(&repo_root(), args)
}

/// A temporary directory tree that tests write files into.
pub struct TempTree {
    pub dir: tempfile::TempDir,
}

impl TempTree {
    pub fn new() -> Self {
        TempTree {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Write `content` to `rel` (creating parent directories); returns the full path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// Assert two texts are equal, printing a line diff of the first differences when not.
pub fn assert_text_eq(expected: &str, got: &str, what: &str) {
    if expected == got {
        return;
    }
    let mut msg = format!("{what}: output differs\n");
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let mut shown = 0;
    for i in 0..e.len().max(g.len()) {
        let (a, b) = (e.get(i).copied(), g.get(i).copied());
        if a != b {
            msg.push_str(&format!(
                "line {}:\n  expected: {:?}\n  got:      {:?}\n",
                i + 1,
                a,
                b
            ));
            shown += 1;
            if shown == 10 {
                break;
            }
        }
    }
    panic!("{msg}");
}
