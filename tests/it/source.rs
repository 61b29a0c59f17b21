//! Git source against temporary repositories: clone/fetch, ref resolution, the ref watch, signed commits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pailot::daemon::config::{GitRef, RepoLocation, SourceConfig};
use pailot::daemon::reconcile::Trigger;
use pailot::daemon::source::git::{Error, GitSource};
use pailot::daemon::source::verify;
use pailot::daemon::source::watch::watch_refs;

/// A temporary git work tree driven with the `git` CLI (fixed identity, no global config).
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn new() -> Self {
        let r = TempRepo {
            dir: tempfile::tempdir().unwrap(),
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Run git; panics with its stderr on failure; returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git_in(self.path(), args)
    }
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    /// Stage everything and commit; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
    /// Commit signed with the SSH key `key` (private key file).
    pub fn commit_signed(&self, msg: &str, key: &Path) -> String {
        self.git(&["add", "-A"]);
        let k = key.display().to_string();
        self.git(&[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={k}"),
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            msg,
        ]);
        self.git(&["rev-parse", "HEAD"])
    }
}

pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn source_config(location: RepoLocation, git_ref: GitRef) -> SourceConfig {
    let url = match &location {
        RepoLocation::Local(p) => p.display().to_string(),
        RepoLocation::Remote(u) => u.clone(),
    };
    SourceConfig {
        location,
        url,
        git_ref,
        path: PathBuf::new(),
        cluster: "clusters/test.yaml".into(),
        overlays: None,
        poll_interval: Duration::from_secs(60),
        poll_jitter: 0.0,
        watch: pailot::daemon::config::SourceWatch::Auto,
        ssh_key_file: None,
        token: None,
        allowed_signers_file: None,
    }
}

fn local(repo: &TempRepo, git_ref: GitRef) -> (GitSource, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let src = GitSource::new(
        source_config(RepoLocation::Local(repo.path().to_path_buf()), git_ref),
        state.path(),
    );
    (src, state)
}

#[test]
fn clone_then_fetch_follows_the_branch_and_checks_out_each_revision() {
    let repo = TempRepo::new();
    repo.write("charts/a.txt", "one\n");
    let c1 = repo.commit("first");
    let (src, _state) = local(&repo, GitRef::Branch("main".into()));
    let r1 = src.sync(&[]).unwrap();
    assert_eq!(r1.commit, c1);
    assert_eq!(r1.summary, "first");
    assert_eq!(
        std::fs::read_to_string(r1.root.join("charts/a.txt")).unwrap(),
        "one\n"
    );

    repo.write("charts/a.txt", "two\n");
    let c2 = repo.commit("second");
    let r2 = src.sync(&[]).unwrap();
    assert_eq!(r2.commit, c2);
    assert_ne!(
        r1.checkout, r2.checkout,
        "one checkout directory per revision"
    );
    assert_eq!(
        std::fs::read_to_string(r2.root.join("charts/a.txt")).unwrap(),
        "two\n"
    );
    // The earlier checkout is untouched (a render of it in flight is not disturbed).
    assert_eq!(
        std::fs::read_to_string(r1.root.join("charts/a.txt")).unwrap(),
        "one\n"
    );
}

#[test]
fn tag_commit_and_missing_refs_resolve_as_configured() {
    let repo = TempRepo::new();
    let c1 = repo.commit("first");
    repo.git(&["tag", "v1"]);
    let _c2 = repo.commit("second");

    let (tag, _s1) = local(&repo, GitRef::Tag("v1".into()));
    assert_eq!(tag.sync(&[]).unwrap().commit, c1);

    let (pinned, _s2) = local(&repo, GitRef::Commit(c1[..12].to_string()));
    assert_eq!(pinned.sync(&[]).unwrap().commit, c1);

    let (missing, _s3) = local(&repo, GitRef::Branch("release".into()));
    let err = missing.sync(&[]).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err:?}");
    assert_eq!(
        pailot::failure::Failure::from(err).next(),
        pailot::failure::Next::AwaitChange,
        "a missing ref waits for a change"
    );
}

#[test]
fn sub_path_is_the_deployment_root() {
    let repo = TempRepo::new();
    repo.write("deploy/clusters/test.yaml", "x: 1\n");
    repo.commit("first");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = source_config(
        RepoLocation::Local(repo.path().to_path_buf()),
        GitRef::Branch("main".into()),
    );
    cfg.path = "deploy".into();
    let r = GitSource::new(cfg, state.path()).sync(&[]).unwrap();
    assert!(r.root.join("clusters/test.yaml").is_file());
}

#[test]
fn file_url_bare_remote_is_fetched() {
    let repo = TempRepo::new();
    let c1 = repo.commit("first");
    let bare = tempfile::tempdir().unwrap();
    git_in(
        bare.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &repo.path().display().to_string(),
            ".",
        ],
    );
    let cfg = source_config(
        RepoLocation::Local(bare.path().to_path_buf()),
        GitRef::Branch("main".into()),
    );
    let state = tempfile::tempdir().unwrap();
    let src = GitSource::new(cfg, state.path());
    assert_eq!(src.sync(&[]).unwrap().commit, c1);
    let c2 = repo.commit("second");
    repo.git(&["push", "-q", &bare.path().display().to_string(), "main"]);
    assert_eq!(src.sync(&[]).unwrap().commit, c2);
}

#[test]
fn unreachable_remote_is_transient() {
    let state = tempfile::tempdir().unwrap();
    let cfg = source_config(
        RepoLocation::Remote("http://127.0.0.1:9/none.git".into()),
        GitRef::Branch("main".into()),
    );
    let err = GitSource::new(cfg, state.path()).sync(&[]).unwrap_err();
    let f = pailot::failure::Failure::from(err);
    assert_eq!(
        (f.reason, f.next()),
        (
            pailot::failure::Reason::SourceUnreachable,
            pailot::failure::Next::Requeue
        ),
        "{f:?}"
    );
}

#[tokio::test]
async fn ref_watch_sees_a_commit_well_under_a_second() {
    let repo = TempRepo::new();
    repo.commit("first");
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let _watch = watch_refs(&repo.path().join(".git"), tx).unwrap();
    // Writing a non-ref file does not trigger.
    repo.write("notes.txt", "x");
    repo.git(&["add", "notes.txt"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_err(),
        "index change triggered"
    );

    let mut latencies = Vec::new();
    for i in 0..5 {
        repo.write("notes.txt", &format!("{i}"));
        let t = Instant::now();
        repo.commit(&format!("c{i}"));
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("no trigger within 2 s");
        assert_eq!(got, Some(Trigger::Watch));
        latencies.push(t.elapsed());
        // Drain a possible second debounced batch from the same commit.
        tokio::time::sleep(Duration::from_millis(250)).await;
        while rx.try_recv().is_ok() {}
    }
    latencies.sort();
    eprintln!("ref watch latency (commit → trigger): {latencies:?}");
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(500),
        "{latencies:?}"
    );
}

/// An SSH key pair in `dir` (`name` and `name.pub`).
pub fn ssh_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// An allowed_signers file trusting `key` for `principal`.
pub fn allowed_signers(dir: &Path, principal: &str, key: &Path) -> PathBuf {
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let f = dir.join("allowed_signers");
    std::fs::write(&f, format!("{principal} namespaces=\"git\" {pubkey}")).unwrap();
    f
}

#[test]
fn signed_by_allowed_key_passes_unsigned_and_untrusted_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let good = ssh_key(keys.path(), "good");
    let other = ssh_key(keys.path(), "other");
    let signers = allowed_signers(keys.path(), "ops@example.com", &good);
    let repo = TempRepo::new();

    let state = tempfile::tempdir().unwrap();
    let mut cfg = source_config(
        RepoLocation::Local(repo.path().to_path_buf()),
        GitRef::Branch("main".into()),
    );
    cfg.allowed_signers_file = Some(signers.clone());
    let src = GitSource::new(cfg, state.path());

    let signed = repo.commit_signed("signed", &good);
    let r = src.sync(&[]).unwrap();
    assert_eq!(r.commit, signed);
    assert_eq!(r.signer.as_deref(), Some("ops@example.com"));

    repo.commit("unsigned");
    match src.sync(&[]).unwrap_err() {
        Error::Verify(e @ verify::Error::Unsigned { .. }) => {
            assert_eq!(e.reason(), pailot::failure::Reason::UnsignedCommit)
        }
        e => panic!("expected unsigned, got {e:?}"),
    }

    repo.commit_signed("by a stranger", &other);
    match src.sync(&[]).unwrap_err() {
        Error::Verify(e @ verify::Error::UntrustedSigner { .. }) => {
            assert_eq!(e.reason(), pailot::failure::Reason::UntrustedSignature)
        }
        e => panic!("expected untrusted, got {e:?}"),
    }
}

/// Run `pailot daemon --helper` on one job envelope (as the daemon does) and return its JSON answer.
fn run_helper(job: &str, input: serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(crate::harness::pailot_bin())
        .args(["daemon", "--helper"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pailot daemon --helper");
    let envelope = serde_json::json!({"job": job, "input": input});
    let input = serde_json::to_vec(&envelope).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "helper wrote no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn the_daemon_helper_process_fetches_renders_and_reports_errors_as_data() {
    use pailot::daemon::helper::RenderJob;
    use pailot::daemon::source::git::SyncJob;
    let repo = crate::daemon::deploy_repo("from-the-helper");
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("source");
    let sync = |git_ref: GitRef| {
        serde_json::to_value(SyncJob {
            source: source_config(RepoLocation::Local(repo.path().to_path_buf()), git_ref),
            dir: dir.clone(),
            pinned: vec![],
        })
        .unwrap()
    };
    let render = |root: &str, commit: &str| {
        serde_json::to_value(RenderJob(pailot::render::RenderRequest {
            repo_root: root.into(),
            cluster_file: "clusters/test.yaml".into(),
            overlays: None,
            revision: Some(commit.to_string()),
            age_keys: Default::default(),
        }))
        .unwrap()
    };

    let synced = run_helper("sync", sync(GitRef::Branch("main".into())));
    let revision = &synced["Ok"]["Ok"];
    let commit = revision["commit"].as_str().expect("a revision");
    assert_eq!(commit, repo.git(&["rev-parse", "HEAD"]));
    let root = revision["root"].as_str().unwrap();
    assert!(Path::new(root).starts_with(&dir), "{root}");
    assert!(
        revision["author"].as_str().unwrap().contains('@'),
        "{revision}"
    );

    let rendered = run_helper("render", render(root, commit));
    let set = &rendered["Ok"]["Ok"];
    assert_eq!(set["cluster"]["name"], "test", "{rendered}");
    let objects = set["set"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{rendered}");
    assert_eq!(objects[0][0]["kind"], "ConfigMap");
    assert_eq!(
        objects[0][1]["object"]["data"]["greeting"],
        "from-the-helper"
    );
    assert_eq!(set["set"]["charts"][0]["name"], "web");

    // A template error is an input error (file and message), not a failed helper.
    repo.write("charts/web/templates/cm.yaml", "data: {{ values.greeting\n");
    repo.commit("broken template");
    let synced = run_helper("sync", sync(GitRef::Branch("main".into())));
    let revision = &synced["Ok"]["Ok"];
    let (root, commit) = (
        revision["root"].as_str().unwrap(),
        revision["commit"].as_str().unwrap(),
    );
    let failed = run_helper("render", render(root, commit));
    assert!(
        failed["Ok"]["Err"]["file"]
            .as_str()
            .unwrap()
            .ends_with("charts/web/templates/cm.yaml"),
        "{failed}"
    );

    // A ref that does not exist is the same error as in-process.
    let missing = run_helper("sync", sync(GitRef::Tag("v9".into())));
    assert_eq!(missing["Ok"]["Err"]["kind"], "refNotFound", "{missing}");
    // An unknown job is an error answer, not a crash.
    let unknown = run_helper("dance", serde_json::json!({}));
    assert!(
        unknown["Err"]
            .as_str()
            .unwrap()
            .contains("unknown helper job"),
        "{unknown}"
    );
}

#[test]
fn the_git_dir_of_a_local_repository_is_found_without_libgit2() {
    use pailot::daemon::source::git::git_dir_of;
    let repo = TempRepo::new();
    repo.write("a.txt", "a\n");
    repo.commit("first");
    let git_dir = git_dir_of(repo.path()).expect("work tree");
    assert_eq!(git_dir, repo.path().join(".git"));
    // The git directory itself, and a bare clone.
    assert_eq!(git_dir_of(&git_dir), Some(git_dir.clone()));
    let bare = tempfile::tempdir().unwrap();
    git_in(
        bare.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &repo.path().display().to_string(),
            "b.git",
        ],
    );
    let b = bare.path().join("b.git");
    assert_eq!(git_dir_of(&b), Some(b.clone()));
    // A linked worktree's `.git` file names its git directory.
    let wt = bare.path().join("wt");
    repo.git(&["worktree", "add", "-q", &wt.display().to_string()]);
    let linked = git_dir_of(&wt).expect("linked worktree");
    assert!(
        linked.starts_with(repo.path().join(".git/worktrees")),
        "{linked:?}"
    );
    // Not a repository.
    assert_eq!(git_dir_of(bare.path()), None);
}
