//! Reading repository input: every file is opened, then its real path is checked to lie inside
//! the repository (or chart, or `files/` directory) it belongs to, and its size is bounded.
//!
//! A repository is written by whoever can push to it. A symlink committed as `values.yaml`,
//! as a chart directory or as a patch file would otherwise make pailot read — and apply to the
//! cluster — any file the reconciler can read (a client key, `/etc/shadow`). Checking the path
//! text is not enough (`charts/x` may itself be a link), and checking the real path before
//! opening leaves a window in which a link can be swapped, so the check is made on the file
//! actually opened: the kernel resolves the path beneath the root's directory (`openat2` with
//! `RESOLVE_BENEATH`: one system call, no escape possible), and where it cannot (an absolute symlink,
//! a kernel or sandbox without `openat2`, a path not under the root as given) the file is opened and
//! the real path of what was opened is read back (`/proc/self/fd`). Every read of repository input
//! goes through [`Root`]:
//! chart loading, values, schemas, templates, `files/` reads from templates, overlays, patch
//! files and the cluster file. Sizes are bounded by [`Limits::input_file`] (a 190 MB values file
//! took 2 GB of memory before).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::diag::InputError;
use crate::limits::Limits;

/// A directory input must stay inside, by real path.
#[derive(Clone, Debug)]
pub struct Root {
    real: PathBuf,
    /// The directory as the caller named it: paths under it are opened relative to `dir`.
    given: PathBuf,
    /// The directory itself (`O_PATH`), for `openat2`; `None` where it could not be opened.
    dir: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// What the directory is, for messages: `the repository`, `the chart`, `the chart's files/ directory`.
    what: &'static str,
}

impl Root {
    /// The real path of `dir`; `shown` names it in the error when it cannot be resolved.
    pub fn new(dir: &Path, what: &'static str, shown: &str) -> Result<Root, InputError> {
        let real = dir
            .canonicalize()
            .map_err(|e| InputError::new(shown, format!("cannot resolve {what} directory: {e}")))?;
        let fd = open_dir(&real).ok().map(std::sync::Arc::new);
        Ok(Root {
            real,
            given: dir.to_path_buf(),
            dir: fd,
            what,
        })
    }

    /// The real path of this root.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// What this root is, for messages (`the repository`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Whether the real path `p` lies inside this root.
    pub fn contains(&self, p: &Path) -> bool {
        p.starts_with(&self.real)
    }

    /// Read `path` as UTF-8 text; `shown` names it in errors (repo-relative).
    pub fn read_text(&self, path: &Path, shown: &str) -> Result<String, InputError> {
        let bytes = self.read_bytes(path, shown)?;
        utf8_text(bytes, shown)
    }

    /// Read `path` (a regular file whose real path lies inside this root, no larger than
    /// [`Limits::input_file`]).
    pub fn read_bytes(&self, path: &Path, shown: &str) -> Result<Vec<u8>, InputError> {
        let (file, len) = self.open(path, shown)?;
        read_bounded(file, len, shown)
    }

    /// Open `path` and check what was opened: its real path inside this root, a regular file.
    /// Returns the file and its size.
    fn open(&self, path: &Path, shown: &str) -> Result<(std::fs::File, u64), InputError> {
        let file = match self.open_beneath(path) {
            Some(file) => file,
            None => self.open_and_check(path, shown)?,
        };
        regular_file(file, shown)
    }

    /// `path` opened by the kernel strictly beneath this root (`openat2`, `RESOLVE_BENEATH`), or
    /// `None` when that cannot decide: the path is not under the root as given, an absolute or
    /// escaping symlink (`EXDEV`), a missing file, no `openat2` here. The caller then takes the
    /// slow path, which also makes the error message.
    fn open_beneath(&self, path: &Path) -> Option<std::fs::File> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        use std::os::unix::ffi::OsStrExt as _;
        let dir = self.dir.as_ref()?;
        let rel = path
            .strip_prefix(&self.given)
            .or_else(|_| path.strip_prefix(&self.real))
            .ok()?;
        let rel = std::ffi::CString::new(rel.as_os_str().as_bytes()).ok()?;
        if rel.as_bytes().is_empty() {
            return None;
        }
        // SAFETY: `open_how` is plain integers; all-zero is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: a valid directory fd, a NUL-terminated path and an `open_how` of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Some(unsafe { std::fs::File::from_raw_fd(fd as i32) })
    }

    /// Open `path`, then check the real path of what was opened (`/proc/self/fd`).
    fn open_and_check(&self, path: &Path, shown: &str) -> Result<std::fs::File, InputError> {
        let file = open_nonblocking(path)
            .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
        let real = real_path_of(&file, path)
            .map_err(|e| InputError::new(shown, format!("cannot resolve file: {e}")))?;
        if !self.contains(&real) {
            return Err(InputError::new(
                shown,
                format!(
                    "resolves to {}, outside {}: pailot reads no file outside it (a symlink?)",
                    real.display(),
                    self.what
                ),
            ));
        }
        Ok(file)
    }
}

/// `file` with its size, when it is a regular file.
fn regular_file(file: std::fs::File, shown: &str) -> Result<(std::fs::File, u64), InputError> {
    let meta = file
        .metadata()
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    if !meta.is_file() {
        return Err(InputError::new(shown, "not a regular file"));
    }
    Ok((file, meta.len()))
}

/// The directory at `real`, opened for use as `openat2`'s base (`O_PATH`: no read permission needed).
fn open_dir(real: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(real)?;
    Ok(dir.into())
}

/// Read a file given on the command line (not repository input): only the size is bounded.
pub fn read_text_unconfined(path: &Path, shown: &str) -> Result<String, InputError> {
    let file = open_nonblocking(path)
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    let (file, len) = regular_file(file, shown)?;
    let bytes = read_bounded(file, len, shown)?;
    utf8_text(bytes, shown)
}

/// Read `file`, whose size was `len` when checked, bounded by the input file limit.
fn read_bounded(file: std::fs::File, len: u64, shown: &str) -> Result<Vec<u8>, InputError> {
    let limit = Limits::current().input_file;
    if len > limit {
        return Err(too_large(shown, limit));
    }
    // The size can change between stat and read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(shown, limit));
    }
    Ok(bytes)
}

fn too_large(shown: &str, limit: u64) -> InputError {
    crate::limits::exceeded(
        shown,
        format_args!(
            "file is larger than the input file limit of {}",
            crate::quantity::Bytes(limit)
        ),
        "PAILOT_LIMIT_INPUT_FILE",
    )
}

/// Open for reading without blocking on a FIFO or device (`O_NONBLOCK` does not change reads
/// of regular files).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The real path of an open file: what `/proc/self/fd/N` points at (the file actually opened,
/// whatever happened to `path` since), or `path` resolved when /proc is not mounted.
fn real_path_of(file: &std::fs::File, path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd as _;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) if p.is_absolute() => Ok(p),
        _ => path.canonicalize(),
    }
}

/// Whether `path` lexically lies under `dir` (no `..`, both made absolute): input the
/// repository owns, as opposed to a file an operator named outside it.
pub fn lexically_inside(dir: &Path, path: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (d, p) = (abs(dir), abs(path));
    p.starts_with(&d)
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// `bytes` as text, or an error naming `shown` and the first invalid byte.
fn utf8_text(bytes: Vec<u8>, shown: &str) -> Result<String, InputError> {
    String::from_utf8(bytes).map_err(|e| {
        InputError::new(
            shown,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_root_are_refused_inside_ones_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("key.pem"), "SECRET").unwrap();
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("real.yaml"), "a: 1\n").unwrap();
        symlink(outside.path().join("key.pem"), repo.path().join("out.yaml")).unwrap();
        symlink(repo.path().join("real.yaml"), repo.path().join("in.yaml")).unwrap();
        symlink(outside.path(), repo.path().join("dir")).unwrap();
        let root = Root::new(repo.path(), "the repository", ".").unwrap();
        assert_eq!(
            root.read_text(&repo.path().join("in.yaml"), "in.yaml")
                .unwrap(),
            "a: 1\n"
        );
        for rel in ["out.yaml", "dir/key.pem"] {
            let e = root.read_text(&repo.path().join(rel), rel).unwrap_err();
            assert!(e.message.contains("outside the repository"), "{e}");
            assert!(!e.to_string().contains("SECRET"));
        }
        let e = root.read_text(&repo.path().join("dir"), "dir").unwrap_err();
        assert!(e.message.contains("outside"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_beneath_the_root_as_given_or_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("key.pem"), "SECRET").unwrap();
        let top = tempfile::tempdir().unwrap();
        let repo = top.path().join("repo");
        std::fs::create_dir_all(repo.join("charts/a")).unwrap();
        std::fs::write(repo.join("charts/a/values.yaml"), "a: 1\n").unwrap();
        std::fs::write(top.path().join("beside.yaml"), "SECRET").unwrap();
        // Relative links: one that stays inside (read through openat2), one that climbs out.
        symlink("charts/a/values.yaml", repo.join("in.yaml")).unwrap();
        symlink("../beside.yaml", repo.join("up.yaml")).unwrap();
        let out = outside.path().join("key.pem");
        symlink(&out, repo.join("charts/a/abs.yaml")).unwrap();
        // The root named relatively, as `pailot render --repo .` does.
        let cwd = std::env::current_dir().unwrap();
        let rel_repo = pathdiff(&repo, &cwd);
        for given in [repo.clone(), rel_repo] {
            let root = Root::new(&given, "the repository", ".").unwrap();
            for ok in [
                "in.yaml",
                "charts/a/values.yaml",
                "charts/../charts/a/values.yaml",
            ] {
                assert_eq!(
                    root.read_text(&given.join(ok), ok).unwrap(),
                    "a: 1\n",
                    "{ok}"
                );
                // The kernel resolved it (Linux >= 5.6), no read-back of the real path needed.
                assert!(root.open_beneath(&given.join(ok)).is_some(), "{ok}");
            }
            for bad in ["up.yaml", "../beside.yaml", "charts/a/abs.yaml"] {
                assert!(root.open_beneath(&given.join(bad)).is_none(), "{bad}");
                let e = root.read_text(&given.join(bad), bad).unwrap_err();
                assert!(e.message.contains("outside the repository"), "{bad}: {e}");
                assert!(!e.to_string().contains("SECRET"));
            }
            let e = root
                .read_text(&given.join("nope.yaml"), "nope.yaml")
                .unwrap_err();
            assert!(e.message.contains("cannot read file"), "{e}");
        }
    }

    /// `path` relative to `base` (both absolute), with `..` as needed.
    fn pathdiff(path: &Path, base: &Path) -> PathBuf {
        let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
        let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..b.len() {
            out.push("..");
        }
        for c in &p[common..] {
            out.push(c);
        }
        out
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let repo = tempfile::tempdir().unwrap();
        let fifo = repo.path().join("fifo.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let root = Root::new(repo.path(), "the repository", ".").unwrap();
        let e = root.read_text(&fifo, "fifo.yaml").unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let e = read_text_unconfined(Path::new("/dev/zero"), "/dev/zero").unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
    }

    #[test]
    fn lexical_containment() {
        assert!(lexically_inside(
            Path::new("/r"),
            Path::new("/r/clusters/a.yaml")
        ));
        assert!(!lexically_inside(Path::new("/r"), Path::new("/r/../etc/x")));
        assert!(!lexically_inside(Path::new("/r"), Path::new("/etc/x")));
    }
}
