//! Shell completions and man pages generated from the CLI definition: valid, useful, and installed by scripts/install.

use std::path::Path;
use std::process::Command;

use crate::harness::{TempTree, pailot, pailot_bin, repo_root};

/// Run `bash -c script` and return (success, stdout, stderr).
fn bash(script: &str) -> (bool, String, String) {
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .output()
        .expect("bash");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What bash completion offers for `line` (the cursor at its end) with the script at `script`.
fn complete(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let (ok, out, err) = bash(&format!(
        "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT={point}; \
         _pailot pailot '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        point = line.len(),
        cur = words[words.len() - 1],
        prev = words[words.len().saturating_sub(2)],
    ));
    assert!(ok, "completion failed: {err}");
    out.lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_is_valid_and_completes_commands_and_flags() {
    let t = TempTree::new();
    let r = pailot(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    let script = t.write("pailot.bash", &r.stdout);
    let (ok, _, err) = bash(&format!("bash -n {}", script.display()));
    assert!(ok, "bash -n: {err}");
    let got = complete(&script, "pailot re");
    for want in ["reconcile", "render", "resume"] {
        assert!(
            got.iter().any(|w| w == want),
            "`pailot re<TAB>` offers {got:?}, not {want}"
        );
    }
    assert!(!got.iter().any(|w| w == "status"), "{got:?}");
    let got = complete(&script, "pailot suspend --");
    for want in ["--reason", "--for", "--state-dir"] {
        assert!(
            got.iter().any(|w| w == want),
            "`pailot suspend --<TAB>` offers {got:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    for (shell, marker) in [("zsh", "#compdef pailot"), ("fish", "complete -c pailot")] {
        let r = pailot(&["completions", shell]);
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        assert!(
            r.stdout.contains(marker),
            "{shell}: {}",
            &r.stdout[..200.min(r.stdout.len())]
        );
        for cmd in [
            "reconcile",
            "suspend",
            "resume",
            "history",
            "render",
            "daemon",
        ] {
            assert!(r.stdout.contains(cmd), "{shell} script lacks {cmd}");
        }
    }
    let r = pailot(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "an unknown shell is a usage error: {r:?}");
}

/// `man --warnings=w -l FILE`: groff's warnings (`w`: every category; groff's `all` leaves some
/// out) on stderr, the rendered page on stdout.
fn man(page: &Path) -> (String, String) {
    let o = Command::new("man")
        .args(["--warnings=w", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("man (Debian: apt install man-db)");
    assert!(o.status.success(), "man -l {}: {o:?}", page.display());
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn man_pages_render_without_warnings() {
    let t = TempTree::new();
    // The check itself: a page with an unknown macro and character does get warnings.
    let broken = t.write(
        "broken.1",
        ".TH X 1\n.SH NAME\nx \\- y\n.nosuchmacro\n\\[nosuchchar]\n",
    );
    let (_, warnings) = man(&broken);
    assert!(
        warnings.contains("nosuchmacro") && warnings.contains("nosuchchar"),
        "{warnings}"
    );

    let r = pailot(&["man"]);
    assert_eq!(r.code, 0, "{r:?}");
    let page = t.write("pailot.1", &r.stdout);
    let (text, warnings) = man(&page);
    assert_eq!(warnings, "", "groff warnings for pailot.1");
    assert!(
        text.contains("SYNOPSIS") && text.contains("reconcile"),
        "{text}"
    );

    let dir = t.path().join("man1");
    let r = pailot(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "pailot.1",
        "pailot-suspend.1",
        "pailot-history.1",
        "pailot-chart-package.1",
    ] {
        assert!(
            pages.iter().any(|p| p == want),
            "{want} missing from {pages:?}"
        );
    }
    for p in &pages {
        let (text, warnings) = man(&dir.join(p));
        assert_eq!(warnings, "", "groff warnings for {p}");
        assert!(text.contains("NAME"), "{p}: {text}");
    }
    let (text, _) = man(&dir.join("pailot-suspend.1"));
    assert!(
        text.contains("--for") && text.contains("--reason"),
        "{text}"
    );
}

#[test]
fn install_script_places_completions_and_man_pages() {
    let t = TempTree::new();
    let dest = t.path().join("dest");
    let out = Command::new(repo_root().join("scripts/install"))
        .arg("--binary")
        .arg(pailot_bin())
        .env("DESTDIR", &dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for f in [
        "usr/local/share/bash-completion/completions/pailot",
        "usr/local/share/zsh/site-functions/_pailot",
        "usr/local/share/fish/vendor_completions.d/pailot.fish",
        "usr/local/share/man/man1/pailot.1",
        "usr/local/share/man/man1/pailot-reconcile.1",
    ] {
        let p = dest.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let bash_script = dest.join("usr/local/share/bash-completion/completions/pailot");
    let (ok, _, err) = bash(&format!("bash -n {}", bash_script.display()));
    assert!(ok, "{err}");
}
