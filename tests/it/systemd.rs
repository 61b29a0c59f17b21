//! systemd units (verify, security score), scripts/install, the example config and the sd_notify helpers.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{TempTree, pailot_bin, repo_root};

/// `systemd-analyze`, or a panic saying how to skip (tests are skipped only when asked).
fn systemd_analyze() -> Option<Command> {
    if std::env::var_os("PAILOT_SKIP_SYSTEMD").is_some() {
        return None;
    }
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "systemd-analyze not found: install systemd (Debian: apt install systemd) or set PAILOT_SKIP_SYSTEMD=1"
    );
    Some(Command::new("systemd-analyze"))
}

/// Run scripts/install into a temporary DESTDIR; returns the tree.
fn install_into(t: &TempTree, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let dest = t.path().join("dest");
    let out = Command::new(repo_root().join("scripts/install"))
        .arg("--binary")
        .arg(pailot_bin())
        .args(extra)
        .env("DESTDIR", &dest)
        .output()
        .expect("run scripts/install");
    (dest, out)
}

/// The installed units, with the binary path pointed at the staged binary so `verify` finds it.
fn staged_units(t: &TempTree, dest: &Path) -> PathBuf {
    let units = t.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let bin = dest.join("usr/local/bin/pailot");
    for u in ["pailot-bootstrap.service", "pailot.service"] {
        let text = std::fs::read_to_string(dest.join("etc/systemd/system").join(u)).unwrap();
        std::fs::write(
            units.join(u),
            text.replace("/usr/local/bin/pailot", bin.to_str().unwrap()),
        )
        .unwrap();
    }
    units
}

#[test]
fn install_script_places_binary_units_and_host_files() {
    let t = TempTree::new();
    let (dest, out) = install_into(&t, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/local/bin/pailot",
        "etc/systemd/system/pailot.service",
        "etc/systemd/system/pailot-bootstrap.service",
        "etc/sysusers.d/pailot.conf",
        "etc/tmpfiles.d/pailot.conf",
        "etc/pailot/pailot.yaml",
        "usr/local/share/doc/pailot/host.md",
    ] {
        assert!(dest.join(f).is_file(), "{f} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dest.join("usr/local/bin/pailot"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // A second install keeps an edited configuration and drops the example beside it.
    std::fs::write(dest.join("etc/pailot/pailot.yaml"), "# mine\n").unwrap();
    let (_, out) = install_into(&t, &[]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/pailot/pailot.yaml")).unwrap(),
        "# mine\n"
    );
    assert!(dest.join("etc/pailot/pailot.yaml.example").is_file());
    // --prefix moves the binary and the units follow it.
    let t2 = TempTree::new();
    let (dest2, out) = install_into(&t2, &["--prefix", "/opt/pailot"]);
    assert!(out.status.success());
    assert!(dest2.join("opt/pailot/bin/pailot").is_file());
    let unit = std::fs::read_to_string(dest2.join("etc/systemd/system/pailot.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/pailot/bin/pailot daemon --config /etc/pailot/pailot.yaml"),
        "{unit}"
    );
    // Usage errors exit 2.
    let bad = Command::new(repo_root().join("scripts/install"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let Some(mut cmd) = systemd_analyze() else {
        return;
    };
    let t = TempTree::new();
    let (dest, out) = install_into(&t, &[]);
    assert!(out.status.success());
    let units = staged_units(&t, &dest);
    let out = cmd
        .arg("verify")
        .arg(units.join("pailot-bootstrap.service"))
        .arg(units.join("pailot.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    // And it does catch a broken unit: a missing binary.
    let broken = units.join("pailot.service");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(
        &broken,
        text.replace(
            dest.join("usr/local/bin/pailot").to_str().unwrap(),
            "/nonexistent/pailot",
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "verify accepted a unit whose ExecStart does not exist"
    );
}

/// `→ Overall exposure level for pailot.service: 1.2 OK 🙂` -> 1.2
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in {output}"));
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn pailot_service_security_exposure_is_at_most_2_5() {
    let Some(mut cmd) = systemd_analyze() else {
        return;
    };
    let out = cmd
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_root().join("systemd/pailot.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score = exposure(&text);
    assert!(
        score <= 2.5,
        "systemd-analyze security scores pailot.service {score} (> 2.5):\n{text}"
    );
    // The unit must keep the settings the issue requires, not just a low number.
    let unit = std::fs::read_to_string(repo_root().join("systemd/pailot.service")).unwrap();
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "Wants=pailot-bootstrap.service",
        "After=pailot-bootstrap.service",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/pailot",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "User=pailot",
    ] {
        assert!(unit.contains(must), "pailot.service lacks {must:?}");
    }
    // A failed bootstrap (a mirror down at boot, an API not up yet) must not keep the daemon down:
    // the daemon reports the incomplete bootstrap instead (issue 11 item 10).
    assert!(
        !unit.lines().any(|l| l.starts_with("Requires=")
            || l.starts_with("BindsTo=")
            || l.starts_with("Requisite=")),
        "pailot.service must not require pailot-bootstrap.service:\n{unit}"
    );
    let boot =
        std::fs::read_to_string(repo_root().join("systemd/pailot-bootstrap.service")).unwrap();
    assert!(boot.contains("Type=oneshot") && boot.contains("RemainAfterExit=yes"));
    // A unit without the hardening scores far worse: the parser reads real scores.
    let t = TempTree::new();
    let plain = t.write("plain.service", "[Service]\nExecStart=/bin/true\n");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(plain)
        .output()
        .unwrap();
    assert!(exposure(&String::from_utf8_lossy(&out.stdout)) > 8.0);
}

/// The shipped config is valid as the unit runs it: with `$CREDENTIALS_DIRECTORY` holding the
/// `age-key` credential (empty: SetCredential='s default); outside systemd the check says why not.
#[test]
fn example_daemon_config_is_valid() {
    let creds = TempTree::new();
    let key = creds.write("age-key", "");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let out = Command::new(pailot_bin())
        .args(["daemon", "--check", "--config"])
        .arg(repo_root().join("systemd/pailot.yaml"))
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(pailot_bin())
        .args(["daemon", "--check", "--config"])
        .arg(repo_root().join("systemd/pailot.yaml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("decryption.ageKeyFile") && err.contains("LoadCredential="),
        "{err}"
    );
}

/// The age key never world-readable: the daemon refuses a key file other users can read.
#[test]
fn a_world_readable_age_key_is_refused() {
    let t = TempTree::new();
    let key = t.write("age-key.txt", "# key\n");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = t.write(
        "pailot.yaml",
        "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource: {url: /srv/repo}\ndecryption: {ageKeyFile: age-key.txt}\n",
    );
    let out = Command::new(pailot_bin())
        .args(["daemon", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(pailot_bin())
        .args(["daemon", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sysusers_and_tmpfiles_agree_on_the_user_and_state_dir() {
    let users =
        std::fs::read_to_string(repo_root().join("systemd/sysusers.d/pailot.conf")).unwrap();
    let tmp = std::fs::read_to_string(repo_root().join("systemd/tmpfiles.d/pailot.conf")).unwrap();
    assert!(users.lines().any(|l| l.starts_with("u pailot ")), "{users}");
    assert!(
        tmp.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["d", "/var/lib/pailot", "0750", "pailot", "pailot", "-"]),
        "{tmp}"
    );
}

/// Child half of `sd_notify_helpers_send_ready_and_watchdog`: runs only when re-executed with the socket set.
#[test]
#[ignore = "run by sd_notify_helpers_send_ready_and_watchdog in a child process"]
fn sd_notify_child() {
    if std::env::var_os("PAILOT_SD_NOTIFY_CHILD").is_none() {
        return;
    }
    assert!(pailot::systemd::notify_socket_set());
    assert_eq!(
        pailot::systemd::watchdog_interval(),
        Some(Duration::from_secs(2))
    );
    pailot::systemd::ready().unwrap();
    pailot::systemd::status("reconciled abc123\nsecond line").unwrap();
    pailot::systemd::watchdog().unwrap();
    pailot::systemd::stopping().unwrap();
}

#[test]
fn sd_notify_helpers_send_ready_and_watchdog() {
    let t = TempTree::new();
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "systemd::sd_notify_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PAILOT_SD_NOTIFY_CHILD", "1")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "4000000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        let n = sock.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        got,
        vec![
            "READY=1\n",
            "STATUS=reconciled abc123 second line\n",
            "WATCHDOG=1\n",
            "STOPPING=1\n"
        ]
    );
}

/// The kubelet unit of the `kubelet` package (pkgs.k8s.io) that bootstrap's drop-in extends.
const KUBELET_UNIT: &str = "[Unit]\nDescription=kubelet: The Kubernetes Node Agent\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\nStartLimitInterval=0\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn kubelet_drop_in_written_by_bootstrap_passes_systemd_analyze_verify() {
    let Some(mut cmd) = systemd_analyze() else {
        return;
    };
    let t = TempTree::new();
    let root = t.path().join("root");
    crate::preflight::copy_tree(&crate::preflight::host_fixture("single-node-32gib"), &root);
    let bin = crate::preflight::stub_commands(&t, None);
    let r = crate::preflight::pailot_with_path(
        &bin,
        &[
            "bootstrap",
            "--cluster",
            "clusters/single-node.yaml",
            "--root",
            root.to_str().unwrap(),
            "--skip-api",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // The unit and its drop-in side by side, the kubelet path pointed at the fixture's stub kubelet.
    let kubelet = root.join("usr/bin/kubelet");
    let units = t.path().join("units");
    std::fs::create_dir_all(units.join("kubelet.service.d")).unwrap();
    let point = |text: &str| text.replace("/usr/bin/kubelet", kubelet.to_str().unwrap());
    std::fs::write(units.join("kubelet.service"), point(KUBELET_UNIT)).unwrap();
    let dropin =
        std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service.d/10-pailot.conf"))
            .unwrap();
    std::fs::write(
        units.join("kubelet.service.d/10-pailot.conf"),
        point(&dropin),
    )
    .unwrap();
    let out = cmd
        .arg("verify")
        .arg(units.join("kubelet.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    // verify does read the drop-in: its ExecStart pointing at a missing binary fails.
    std::fs::write(
        units.join("kubelet.service.d/10-pailot.conf"),
        dropin.replace(
            "ExecStart=/usr/bin/kubelet",
            "ExecStart=/nonexistent/kubelet",
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("kubelet.service"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify ignored the drop-in");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubelet"));
}
