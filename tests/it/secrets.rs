//! SOPS-encrypted files against the real tools: files the `sops` CLI (v3.13.3) encrypts with keys
//! from `age-keygen` (v1.3.2) render to what `sops -d` prints, tampered and wrong-key files are
//! refused with exit 2, decrypted values never show outside `--show-secrets`, and the daemon
//! applies an encrypted Secret, corrects drift on it and follows a key rotation without printing it.
//!
//! The tools come from `scripts/tools-up` (built once, cached); `PAILOT_SKIP_SOPS_TOOLS=1` skips
//! these tests explicitly, anything else missing fails them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;

use crate::harness::{Run, TempTree, pailot_bin, repo_root};

/// The real CLIs.
struct Tools {
    sops: PathBuf,
    age_keygen: PathBuf,
}

/// `scripts/tools-up` once per test run; `None` only when skipped on request.
fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    if std::env::var("PAILOT_SKIP_SOPS_TOOLS").as_deref() == Ok("1") {
        eprintln!("skipped: PAILOT_SKIP_SOPS_TOOLS=1");
        return None;
    }
    let t = TOOLS.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/tools-up"))
            .output()
            .map_err(|e| format!("cannot run scripts/tools-up: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/tools-up failed (sops and age-keygen are needed; PAILOT_SKIP_SOPS_TOOLS=1 skips):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let env = String::from_utf8_lossy(&out.stdout).to_string();
        let get = |name: &str| -> Result<PathBuf, String> {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(PathBuf::from)
                .ok_or_else(|| format!("scripts/tools-up printed no {name}: {env}"))
        };
        Ok(Tools {
            sops: get("PAILOT_SOPS")?,
            age_keygen: get("PAILOT_AGE_KEYGEN")?,
        })
    });
    Some(t.as_ref().unwrap_or_else(|e| panic!("{e}")))
}

/// An age identity file and its recipient.
struct Key {
    file: PathBuf,
    recipient: String,
}

fn keygen(t: &Tools, file: &Path) -> Key {
    keygen_kind(t, file, false)
}

/// `age-keygen` (X25519), or `age-keygen -pq` (post-quantum hybrid) with `pq`.
fn keygen_kind(t: &Tools, file: &Path, pq: bool) -> Key {
    let mut cmd = Command::new(&t.age_keygen);
    if pq {
        cmd.arg("-pq");
    }
    let out = cmd.arg("-o").arg(file).output().expect("run age-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(file).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    Key {
        file: file.to_path_buf(),
        recipient,
    }
}

/// Run sops in `dir` (no `.sops.yaml` above temp dirs) with identity file `key` (or none).
fn sops(t: &Tools, dir: &Path, key: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(&t.sops);
    cmd.current_dir(dir)
        .args(args)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("XDG_CONFIG_HOME", dir.join(".no-sops-config"));
    if let Some(k) = key {
        cmd.env("SOPS_AGE_KEY_FILE", k);
    }
    let out = cmd.output().expect("run sops");
    assert!(
        out.status.success(),
        "sops {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Encrypt `rel` in place for `recipients`, with extra sops flags (the rule).
fn encrypt(t: &Tools, dir: &Path, rel: &str, recipients: &[&Key], flags: &[&str]) {
    let r: Vec<&str> = recipients.iter().map(|k| k.recipient.as_str()).collect();
    let joined = r.join(",");
    let mut args = vec!["encrypt", "-i", "--age", joined.as_str()];
    args.extend_from_slice(flags);
    args.push(rel);
    sops(t, dir, None, &args);
}

/// What `sops -d` prints for `rel`.
fn sops_decrypt(t: &Tools, dir: &Path, rel: &str, key: &Key) -> String {
    let out = sops(t, dir, Some(&key.file), &["decrypt", rel]);
    String::from_utf8(out.stdout).unwrap()
}

/// `pailot ARGS` in `dir` with `key` as `--age-key-file` (none: no key at all, not even the
/// test key cargo's config gives).
fn pailot_with(dir: &Path, key: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(pailot_bin());
    cmd.current_dir(dir)
        .args(args)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE");
    if let Some(k) = key {
        cmd.arg("--age-key-file").arg(k);
    }
    cmd.output().expect("run pailot").into()
}

/// Every way the run could show text: stdout and stderr.
fn assert_never_shown(run: &Run, secret: &str, what: &str) {
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "{what} printed the secret {secret:?}:\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

const CLUSTER: &str = "apiVersion: pailot.dev/v1\nkind: Cluster\nname: test\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {memory: 16Gi, cpu: \"4\"}\n";

/// A repository whose chart `dump` writes its merged values into a ConfigMap (as JSON) and whose
/// cluster files read `values_file`.
fn dump_repo(values_file: &str) -> TempTree {
    let t = TempTree::new();
    t.write(
        "charts/dump/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: dump\nversion: 0.1.0\n",
    );
    t.write("charts/dump/values.yaml", "greeting: hello\n");
    t.write(
        "charts/dump/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dump\ndata:\n  values.json: {{ values | tojson | tojson }}\n  greeting: {{ values.greeting | tojson }}\n",
    );
    t.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [\"*\"]}\n",
    );
    t.write(
        "clusters/test.yaml",
        &format!("{CLUSTER}valuesFiles: [{values_file}]\n"),
    );
    t
}

/// Values of every kind, as YAML under the chart `dump` (the planted secret is `password`).
fn yaml_values(password: &str) -> String {
    format!(
        "dump:\n  password: {password}\n  port: 9186\n  ratio: 0.25\n  whole: 2.0\n  enabled: true\n  list: [a, 1, {{k: v}}]\n  nested:\n    token: tok-123\n    note_unencrypted: visible\n    public_plain: p\n  multiline: |\n    line one\n    line two: more\n  empty: \"\"\n  date: 2024-01-02\n  octal: 0644\n"
    )
}

fn json_values(password: &str) -> String {
    format!(
        "{{\"dump\": {{\"password\": \"{password}\", \"port\": 9186, \"ratio\": 0.25, \"whole\": 2.0, \"enabled\": true, \"list\": [\"a\", 1, {{\"k\": \"v\"}}], \"nested\": {{\"token\": \"tok\", \"note_unencrypted\": \"visible\"}}}}}}\n"
    )
}

/// One encryption case: the file format, sops flags (the rule), and how many recipients; with
/// `rule`, the rule comes from a `.sops.yaml` creation rule instead (`mac_only_encrypted` has no flag).
struct Case {
    name: &'static str,
    ext: &'static str,
    flags: &'static [&'static str],
    recipients: usize,
    rule: Option<&'static str>,
    /// Post-quantum age keys (`age-keygen -pq`).
    pq: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "yaml default rule",
        ext: "yaml",
        flags: &[],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "yaml encrypted_regex",
        ext: "yaml",
        flags: &["--encrypted-regex", "^(password|token|multiline)$"],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "yaml unencrypted_regex",
        ext: "yaml",
        flags: &["--unencrypted-regex", "^(port|public_plain)$"],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "yaml encrypted_suffix",
        ext: "yaml",
        flags: &["--encrypted-suffix", "word"],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "yaml unencrypted_suffix",
        ext: "yaml",
        flags: &["--unencrypted-suffix", "_plain"],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "yaml mac_only_encrypted",
        ext: "yaml",
        flags: &[],
        recipients: 1,
        rule: Some("encrypted_regex: ^(password|token)$\n    mac_only_encrypted: true"),
        pq: false,
    },
    Case {
        name: "yaml two recipients",
        ext: "yaml",
        flags: &[],
        recipients: 2,
        rule: None,
        pq: false,
    },
    Case {
        name: "json default rule",
        ext: "json",
        flags: &[],
        recipients: 1,
        rule: None,
        pq: false,
    },
    Case {
        name: "json encrypted_regex",
        ext: "json",
        flags: &["--encrypted-regex", "^password$"],
        recipients: 2,
        rule: None,
        pq: false,
    },
];

/// For each rule and format: `pailot render --show-secrets` of the encrypted file is byte-identical
/// to the render of what `sops -d` printed; without `--show-secrets` the secret never shows.
#[test]
fn files_encrypted_by_the_sops_cli_render_like_sops_d_prints_them() {
    let Some(t) = tools() else { return };
    for case in CASES {
        let password = format!("pw-{}-hunter2", case.name.replace(' ', "-"));
        let enc = format!("clusters/secrets.sops.{}", case.ext);
        let repo = dump_repo(&enc);
        let keys: Vec<Key> = (0..case.recipients)
            .map(|i| keygen_kind(t, &repo.path().join(format!("key{i}.txt")), case.pq))
            .collect();
        let text = if case.ext == "json" {
            json_values(&password)
        } else {
            yaml_values(&password)
        };
        repo.write(&enc, &text);
        match case.rule {
            None => encrypt(
                t,
                repo.path(),
                &enc,
                &keys.iter().collect::<Vec<_>>(),
                case.flags,
            ),
            Some(rule) => {
                let r: Vec<&str> = keys.iter().map(|k| k.recipient.as_str()).collect();
                repo.write(
                    ".sops.yaml",
                    &format!(
                        "creation_rules:\n  - path_regex: \\.sops\\.\n    age: {}\n    {rule}\n",
                        r.join(",")
                    ),
                );
                sops(t, repo.path(), None, &["encrypt", "-i", &enc]);
                let text = std::fs::read_to_string(repo.path().join(&enc)).unwrap();
                assert!(text.contains("mac_only_encrypted: true"), "{text}");
            }
        }
        let on_disk = std::fs::read_to_string(repo.path().join(&enc)).unwrap();
        assert!(
            !on_disk.contains(&password),
            "{}: sops left the password in clear",
            case.name
        );
        // The last recipient alone decrypts it (a second recipient is as good as the first).
        let key = keys.last().unwrap();
        let plain = sops_decrypt(t, repo.path(), &enc, key);
        let plain_rel = format!("clusters/plain-values.{}", case.ext);
        repo.write(&plain_rel, &plain);
        repo.write(
            "clusters/plain.yaml",
            &format!("{CLUSTER}valuesFiles: [{plain_rel}]\n"),
        );

        let shown = pailot_with(
            repo.path(),
            Some(&key.file),
            &["render", "-c", "clusters/test.yaml", "--show-secrets"],
        );
        assert_eq!(shown.code, 0, "{}: {}", case.name, shown.stderr);
        let reference = pailot_with(repo.path(), None, &["render", "-c", "clusters/plain.yaml"]);
        assert_eq!(reference.code, 0, "{}: {}", case.name, reference.stderr);
        crate::harness::assert_text_eq(&reference.stdout, &shown.stdout, case.name);
        assert!(shown.stdout.contains(&password), "{}", case.name);

        let masked = pailot_with(
            repo.path(),
            Some(&key.file),
            &["render", "-c", "clusters/test.yaml"],
        );
        assert_eq!(masked.code, 0, "{}: {}", case.name, masked.stderr);
        assert_never_shown(&masked, &password, case.name);
        assert!(
            masked.stdout.contains("*** (secret value hidden)"),
            "{}",
            masked.stdout
        );
        assert!(
            masked.stderr.contains("--show-secrets"),
            "{}",
            masked.stderr
        );
        // The value that is not secret still renders.
        assert!(
            masked.stdout.contains("greeting: hello"),
            "{}",
            masked.stdout
        );
    }
}

/// The shipped example file decrypts with the public test key, as `sops -d` does.
#[test]
fn the_shipped_example_secrets_decrypt_with_the_test_key() {
    let Some(t) = tools() else { return };
    let key = Key {
        file: repo_root().join("tests/fixtures/sops/test-key.txt"),
        recipient: String::new(),
    };
    let plain = sops_decrypt(t, &repo_root(), "clusters/example.secrets.sops.yaml", &key);
    let want = pailot::chart::parse_yaml_documents(&plain, "sops -d").unwrap();
    let keyring = pailot::sops::Keyring::new(pailot::sops::AgeKeys::File(key.file.clone()));
    let text =
        std::fs::read_to_string(repo_root().join("clusters/example.secrets.sops.yaml")).unwrap();
    let got = pailot::sops::decrypt(&text, pailot::sops::Format::Yaml, &keyring).unwrap();
    assert_eq!(got[0].value, want[0]);
}

/// Tampering, a wrong key, no key, key types pailot does not use, and sops versions it does not
/// read all exit 2 naming the file and the reason, never with the plaintext.
#[test]
fn tampered_wrong_key_no_key_and_unsupported_files_exit_2_naming_the_file() {
    let Some(t) = tools() else { return };
    let password = "tamper-test-hunter2";
    let enc = "clusters/secrets.sops.yaml";
    let repo = dump_repo(enc);
    let key = keygen(t, &repo.path().join("key.txt"));
    let other = keygen(t, &repo.path().join("other.txt"));
    repo.write(enc, &yaml_values(password));
    encrypt(
        t,
        repo.path(),
        enc,
        &[&key],
        &["--unencrypted-suffix", "_unencrypted"],
    );
    let good = std::fs::read_to_string(repo.path().join(enc)).unwrap();
    let render =
        |key: Option<&Path>| pailot_with(repo.path(), key, &["render", "-c", "clusters/test.yaml"]);
    assert_eq!(render(Some(&key.file)).code, 0);

    let expect = |run: Run, what: &str, reason: &str| {
        assert_eq!(run.code, 2, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains(enc),
            "{what}: the error names the file: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(reason),
            "{what}: expected {reason:?} in {}",
            run.stderr
        );
        assert_never_shown(&run, password, what);
    };
    // An unencrypted value changed after encryption: the MAC no longer matches.
    repo.write(
        enc,
        &good.replace("note_unencrypted: visible", "note_unencrypted: changed"),
    );
    expect(
        render(Some(&key.file)),
        "changed plain value",
        "MAC mismatch",
    );
    // An encrypted value moved to another key: it fails authentication under its new path.
    let enc_of = |k: &str| {
        good.lines()
            .find(|l| l.trim_start().starts_with(&format!("{k}: ENC[")))
            .map(|l| l.split_once(": ").unwrap().1.to_string())
            .unwrap()
    };
    let (pw, port) = (enc_of("password"), enc_of("port"));
    repo.write(
        enc,
        &good
            .replacen(&pw, "SWAP", 1)
            .replacen(&port, &pw, 1)
            .replacen("SWAP", &port, 1),
    );
    expect(
        render(Some(&key.file)),
        "swapped values",
        "cannot be decrypted",
    );
    repo.write(enc, &good);
    expect(
        render(Some(&other.file)),
        "wrong key",
        "none of the age identities",
    );
    expect(render(None), "no key", "no age identity was given");
    // Only a PGP key (pailot decrypts age recipients only) and a sops 2 file.
    let mut doc = pailot::chart::parse_yaml_documents(&good, enc)
        .unwrap()
        .remove(0);
    doc["sops"]["version"] = "2.0.9".into();
    repo.write(enc, &pailot::chart::to_yaml_string(&doc));
    expect(render(Some(&key.file)), "sops 2", "sops 2.0.9");
    let mut doc = pailot::chart::parse_yaml_documents(&good, enc)
        .unwrap()
        .remove(0);
    let sops_meta = doc["sops"].as_object_mut().unwrap();
    sops_meta.remove("age");
    sops_meta.insert(
        "pgp".into(),
        serde_json::json!([{"created_at": "2026-01-01T00:00:00Z", "enc": "-----BEGIN PGP MESSAGE-----\nx\n-----END PGP MESSAGE-----", "fp": "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"}]),
    );
    repo.write(enc, &pailot::chart::to_yaml_string(&doc));
    expect(render(Some(&key.file)), "pgp only", "PGP only");
    // A file named like a sops file must be encrypted.
    repo.write(enc, &yaml_values(password));
    let run = render(Some(&key.file));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("not encrypted"), "{}", run.stderr);
}

/// `explain` shows where a decrypted value came from (the encrypted file and key), never the value;
/// a schema error on a decrypted value does not quote it either.
#[test]
fn explain_and_errors_name_the_encrypted_file_but_never_the_value() {
    let Some(t) = tools() else { return };
    let password = "explain-test-hunter2";
    let enc = "clusters/secrets.sops.yaml";
    let repo = dump_repo(enc);
    repo.write(
        "charts/dump/templates/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ndata:\n  password: {{ values.password | b64encode }}\n",
    );
    let key = keygen(t, &repo.path().join("key.txt"));
    repo.write(
        enc,
        &format!("dump:\n  password: {password}\n  port: 8080\n"),
    );
    encrypt(t, repo.path(), enc, &[&key], &[]);
    let run = pailot_with(
        repo.path(),
        Some(&key.file),
        &[
            "explain",
            "-c",
            "clusters/test.yaml",
            "Secret/app",
            "/data/password",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("{enc} key password")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("*** (secret value hidden)"),
        "{}",
        run.stdout
    );
    assert_never_shown(&run, password, "explain");
    let b64 = "ZXhwbGFpbi10ZXN0LWh1bnRlcjI="; // base64 of the password
    assert!(!run.stdout.contains(b64));
    let run = pailot_with(
        repo.path(),
        Some(&key.file),
        &[
            "explain",
            "-c",
            "clusters/test.yaml",
            "ConfigMap/dump",
            "-o",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_never_shown(&run, password, "explain -o json");

    // The schema wants an integer password: the error names the file and pointer, not the value.
    repo.write(
        "charts/dump/values.schema.json",
        r#"{"type": "object", "properties": {"password": {"type": "integer"}}}"#,
    );
    let run = pailot_with(
        repo.path(),
        Some(&key.file),
        &["render", "-c", "clusters/test.yaml"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(enc) && run.stderr.contains("/password"),
        "{}",
        run.stderr
    );
    assert_never_shown(&run, password, "schema error");

    // A template error in a chart whose values hold decrypted values keeps its kind and place only.
    std::fs::remove_file(repo.path().join("charts/dump/values.schema.json")).unwrap();
    repo.write(
        "charts/dump/templates/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  x: {{ values.password | from_nowhere }}\n",
    );
    let run = pailot_with(
        repo.path(),
        Some(&key.file),
        &["render", "-c", "clusters/test.yaml"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("charts/dump/templates/broken.yaml"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("details hidden"), "{}", run.stderr);
    assert_never_shown(&run, password, "template error");
}

/// A `kind: Secret` manifest written by sops under `templates/`, an encrypted overlay patch file,
/// an overlay's encrypted values file and a chart's values.sops.yaml all render; each decrypted
/// value is masked, and `--show-secrets` shows what `sops -d` printed.
#[test]
fn encrypted_manifests_patch_files_and_values_files_render_masked() {
    let Some(t) = tools() else { return };
    let repo = dump_repo("values/none.yaml");
    repo.write("values/none.yaml", "{}\n");
    let key = keygen(t, &repo.path().join("key.txt"));
    // A Secret written by sops (data and stringData encrypted, the rest readable).
    repo.write(
        "charts/dump/templates/db-secret.sops.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: manifest-hunter2\n",
    );
    encrypt(
        t,
        repo.path(),
        "charts/dump/templates/db-secret.sops.yaml",
        &[&key],
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    // Chart defaults, an overlay's values file and a patch file, all encrypted.
    repo.write(
        "charts/dump/values.sops.yaml",
        "chartToken: chart-hunter2\n",
    );
    encrypt(t, repo.path(), "charts/dump/values.sops.yaml", &[&key], &[]);
    repo.write(
        "overlays/all/secrets.sops.yaml",
        "dump:\n  overlayToken: overlay-hunter2\n",
    );
    encrypt(
        t,
        repo.path(),
        "overlays/all/secrets.sops.yaml",
        &[&key],
        &[],
    );
    repo.write(
        "overlays/all/patches/token.sops.yaml",
        "ops:\n  - {op: add, path: /data/patched, value: patch-hunter2}\n",
    );
    encrypt(
        t,
        repo.path(),
        "overlays/all/patches/token.sops.yaml",
        &[&key],
        &["--encrypted-regex", "^value$"],
    );
    repo.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [\"*\"]}\nvaluesFiles: [secrets.sops.yaml]\npatches:\n  - target: {kind: ConfigMap, name: dump}\n    file: patches/token.sops.yaml\n",
    );
    let secrets = [
        "manifest-hunter2",
        "chart-hunter2",
        "overlay-hunter2",
        "patch-hunter2",
    ];

    let masked = pailot_with(
        repo.path(),
        Some(&key.file),
        &["render", "-c", "clusters/test.yaml", "-o", "json"],
    );
    assert_eq!(masked.code, 0, "{}", masked.stderr);
    for s in secrets {
        assert_never_shown(&masked, s, "render");
    }
    let objs: Vec<serde_json::Value> = serde_json::from_str(&masked.stdout).unwrap();
    let cm = objs.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["data"]["patched"], "*** (secret value hidden)");
    assert_eq!(cm["data"]["greeting"], "hello");

    let shown = pailot_with(
        repo.path(),
        Some(&key.file),
        &[
            "render",
            "-c",
            "clusters/test.yaml",
            "-o",
            "json",
            "--show-secrets",
        ],
    );
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let objs: Vec<serde_json::Value> = serde_json::from_str(&shown.stdout).unwrap();
    let secret = objs.iter().find(|o| o["kind"] == "Secret").unwrap();
    let plain = sops_decrypt(
        t,
        repo.path(),
        "charts/dump/templates/db-secret.sops.yaml",
        &key,
    );
    let plain = pailot::chart::parse_yaml_documents(&plain, "sops -d")
        .unwrap()
        .remove(0);
    assert_eq!(secret["stringData"], plain["stringData"]);
    assert_eq!(secret["type"], plain["type"]);
    let cm = objs.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["data"]["patched"], "patch-hunter2");
    let values: serde_json::Value =
        serde_json::from_str(cm["data"]["values.json"].as_str().unwrap()).unwrap();
    assert_eq!(values["chartToken"], "chart-hunter2");
    assert_eq!(values["overlayToken"], "overlay-hunter2");

    // lint and chart lint decrypt with the key too; without one they say how to give it.
    for args in [
        &["lint", "-c", "clusters/test.yaml"][..],
        &["chart", "lint", "charts/dump"][..],
    ] {
        let ok = pailot_with(repo.path(), Some(&key.file), args);
        assert_eq!(ok.code, 0, "{args:?}: {}{}", ok.stdout, ok.stderr);
        for s in secrets {
            assert_never_shown(&ok, s, "lint");
        }
        let no_key = pailot_with(repo.path(), None, args);
        assert_ne!(no_key.code, 0, "{args:?}");
        let said = format!("{}{}", no_key.stdout, no_key.stderr);
        assert!(
            said.contains("no age identity was given"),
            "{args:?}: {said}"
        );
    }
    let explain = pailot_with(
        repo.path(),
        Some(&key.file),
        &[
            "explain",
            "-c",
            "clusters/test.yaml",
            "ConfigMap/dump",
            "/data/patched",
        ],
    );
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert!(
        explain
            .stdout
            .contains("overlays/all/patches/token.sops.yaml"),
        "{}",
        explain.stdout
    );
    for s in secrets {
        assert_never_shown(&explain, s, "explain");
    }
}

/// Rotation: after `sops rotate` to a new recipient (removing the old one), only the new identity
/// decrypts the file.
#[test]
fn after_rotation_only_the_new_identity_is_needed() {
    let Some(t) = tools() else { return };
    let enc = "clusters/secrets.sops.yaml";
    let repo = dump_repo(enc);
    let old = keygen(t, &repo.path().join("old.txt"));
    let new = keygen(t, &repo.path().join("new.txt"));
    repo.write(enc, &yaml_values("rotate-hunter2"));
    encrypt(t, repo.path(), enc, &[&old], &[]);
    let render = |k: &Key| {
        pailot_with(
            repo.path(),
            Some(&k.file),
            &["render", "-c", "clusters/test.yaml", "--show-secrets"],
        )
    };
    let before = render(&old);
    assert_eq!(before.code, 0, "{}", before.stderr);
    sops(
        t,
        repo.path(),
        Some(&old.file),
        &[
            "rotate",
            "-i",
            "--add-age",
            &new.recipient,
            "--rm-age",
            &old.recipient,
            enc,
        ],
    );
    let after = render(&new);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_eq!(after.stdout, before.stdout);
    let refused = render(&old);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("none of the age identities"),
        "{}",
        refused.stderr
    );
}

/// `SOPS_AGE_KEY` (the key text) works like a key file, as with sops.
#[test]
fn sops_age_key_text_works_like_a_key_file() {
    let Some(t) = tools() else { return };
    let enc = "clusters/secrets.sops.yaml";
    let repo = dump_repo(enc);
    let key = keygen(t, &repo.path().join("key.txt"));
    repo.write(enc, &yaml_values("env-hunter2"));
    encrypt(t, repo.path(), enc, &[&key], &[]);
    let text = std::fs::read_to_string(&key.file).unwrap();
    let secret_line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let run: Run = Command::new(pailot_bin())
        .current_dir(repo.path())
        .args(["render", "-c", "clusters/test.yaml"])
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("SOPS_AGE_KEY", secret_line)
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_never_shown(&run, "env-hunter2", "render");
    assert_never_shown(&run, secret_line, "render");
}

/// A scalar sops can encrypt: strings (any text), integers, floats, booleans.
fn scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<String>().prop_map(serde_json::Value::from),
        "[ -~]{0,40}".prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1.0e12f64..1.0e12).prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
    ]
}

proptest! {
    // Each case runs the sops binary twice: few cases, fixed (PROPTEST_CASES does not apply).
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Random values through `sops encrypt` and pailot's decryption: the same document as pailot
    /// reads from `sops decrypt`, with every value marked secret.
    #[test]
    fn random_values_round_trip_through_sops_encrypt(values in proptest::collection::vec(scalar(), 1..8), json in any::<bool>()) {
        let Some(t) = tools() else { return Ok(()) };
        static KEY: OnceLock<(TempTree, Key)> = OnceLock::new();
        let (dir, key) = KEY.get_or_init(|| {
            let d = TempTree::new();
            let k = keygen(t, &d.path().join("key.txt"));
            (d, k)
        });
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i}"), v.clone()))
            .collect();
        let doc = serde_json::json!({"values": map});
        let (rel, text, format) = if json {
            ("case.sops.json", serde_json::to_string_pretty(&doc).unwrap(), pailot::sops::Format::Json)
        } else {
            ("case.sops.yaml", pailot::chart::to_yaml_string(&doc), pailot::sops::Format::Yaml)
        };
        std::fs::write(dir.path().join(rel), &text).unwrap();
        encrypt(t, dir.path(), rel, &[key], &[]);
        let encrypted = std::fs::read_to_string(dir.path().join(rel)).unwrap();
        let keyring = pailot::sops::Keyring::new(pailot::sops::AgeKeys::File(key.file.clone()));
        let got = pailot::sops::decrypt(&encrypted, format, &keyring).unwrap();
        let plain = sops_decrypt(t, dir.path(), rel, key);
        let want = if json {
            serde_json::from_str::<serde_json::Value>(&plain).unwrap()
        } else {
            pailot::chart::parse_yaml_documents(&plain, "sops -d").unwrap().remove(0)
        };
        prop_assert_eq!(&got[0].value, &want);
        for (i, v) in values.iter().enumerate() {
            // sops leaves empty strings as they are; every other value was encrypted.
            if v.as_str() != Some("") {
                prop_assert!(got[0].secret.contains(&format!("/values/k{i}")), "k{} not secret", i);
            }
        }
    }
}

/// Every file under `dir`, as text (lossy).
fn files_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_text(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

/// The value of `data.<key>` of Secret `name`, decoded.
async fn secret_data(ns: &crate::kube::TestNamespace, name: &str, key: &str) -> Option<String> {
    let s: k8s_openapi::api::core::v1::Secret = ns.api().get_opt(name).await.ok()??;
    // The client has decoded the base64 already.
    String::from_utf8(s.data?.get(key)?.0.clone()).ok()
}

/// The daemon (a real process, rendering in its helper) applies a Secret written by sops and a
/// Secret rendered from an encrypted values file to the local control plane, puts a Secret edited
/// by someone else back, and follows a key rotation with only the new identity — and the planted
/// values never appear in its log, `/status`, `/metrics`, `pailot status`, `pailot render`, or
/// any file of its state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_encrypted_secrets_corrects_drift_and_follows_a_rotation_without_printing_them()
 {
    use kube::api::{Patch, PatchParams};
    let Some(t) = tools() else { return };
    let Some(ns) = crate::kube::TestNamespace::new("sops-daemon").await else {
        return;
    };
    let unique = ns.name.rsplit('-').next().unwrap_or("x").to_string();
    let db_password = format!("db-hunter2-{unique}");
    let token = format!("token-hunter2-{unique}");
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };

    let dir = tempfile::tempdir().unwrap();
    let old = keygen(t, &dir.path().join("old.txt"));
    let new = keygen(t, &dir.path().join("new.txt"));
    // The daemon's key file: private to its user, as the config check requires.
    let key_file = dir.path().join("age-key.txt");
    std::fs::copy(&old.file, &key_file).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let repo = crate::source::TempRepo::new();
    repo.write(
        "charts/app/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: app\nversion: 0.1.0\n",
    );
    repo.write("charts/app/values.yaml", "token: unset\n");
    repo.write(
        "charts/app/templates/app-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ntype: Opaque\ndata:\n  token: {{ values.token | b64encode }}\n",
    );
    // Not a Secret: a field computed from a decrypted value is found by provenance, and masked.
    repo.write(
        "charts/app/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  url: \"https://app:{{ values.token }}@db.example.invalid\"\n",
    );
    repo.write(
        "charts/app/templates/db.sops.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n  password: {}\n", b64(&db_password)),
    );
    repo.write(
        "clusters/secrets.sops.yaml",
        &format!("app:\n  token: {token}\n"),
    );
    repo.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [\"*\"]}\n",
    );
    repo.write(
        "clusters/test.yaml",
        &format!("apiVersion: pailot.dev/v1\nkind: Cluster\nname: {0}\nnamespace: {0}\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {{memory: 16Gi, cpu: \"4\"}}\nvaluesFiles: [clusters/secrets.sops.yaml]\n", ns.name),
    );
    encrypt(
        t,
        repo.path(),
        "charts/app/templates/db.sops.yaml",
        &[&old],
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    encrypt(t, repo.path(), "clusters/secrets.sops.yaml", &[&old], &[]);
    let head = repo.commit("app: two Secrets from sops files");

    let port = crate::alerting_e2e::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = crate::daemon::write_config(
        dir.path(),
        repo.path(),
        Some(&ns.kubeconfig),
        &format!(
            "reconcile:\n  wait: false\n  driftInterval: 5s\nserver:\n  listen: {addr}\ndecryption:\n  ageKeyFile: {}\n",
            key_file.display()
        ),
    );
    let mut d = crate::daemon::DaemonProcess::start(&cfg, addr, dir.path().join("daemon.log"));
    let limit = Duration::from_secs(120);
    d.wait_status(limit, "the first revision applied", |s| {
        s["revision"] == head.as_str() && s["lastReconcile"]["result"] == "success"
    })
    .await;
    assert_eq!(
        secret_data(&ns, "db", "password").await.as_deref(),
        Some(db_password.as_str())
    );
    assert_eq!(
        secret_data(&ns, "app", "token").await.as_deref(),
        Some(token.as_str())
    );

    // Someone else edits the Secret: the daemon puts the committed value back.
    let drifted = serde_json::json!({"data": {"password": b64("drifted-by-hand")}});
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    api.patch("db", &PatchParams::apply("tamperer").force(), &Patch::Apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": drifted["data"]
    })))
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        if secret_data(&ns, "db", "password").await.as_deref() == Some(db_password.as_str()) {
            break;
        }
        d.assert_running();
        assert!(
            t0.elapsed() < limit,
            "the drifted Secret was not corrected\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "drift on the encrypted Secret corrected in {:?}",
        t0.elapsed()
    );
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api();
    let url = |cm: k8s_openapi::api::core::v1::ConfigMap| {
        cm.data
            .and_then(|d| d.get("url").cloned())
            .unwrap_or_default()
    };
    let want_url = format!("https://app:{token}@db.example.invalid");
    assert_eq!(url(cms.get("app-config").await.unwrap()), want_url);
    cms.patch(
        "app-config",
        &PatchParams::apply("tamperer").force(),
        &Patch::Apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
            "data": {"url": "https://app:guessed@db.example.invalid"}
        })),
    )
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    while url(cms.get("app-config").await.unwrap()) != want_url {
        d.assert_running();
        assert!(
            t0.elapsed() < limit,
            "the drifted ConfigMap was not corrected\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Rotation: the files are re-encrypted to the new key only, and the daemon gets the new key.
    for f in [
        "charts/app/templates/db.sops.yaml",
        "clusters/secrets.sops.yaml",
    ] {
        sops(
            t,
            repo.path(),
            Some(&old.file),
            &[
                "rotate",
                "-i",
                "--add-age",
                &new.recipient,
                "--rm-age",
                &old.recipient,
                f,
            ],
        );
    }
    std::fs::write(&key_file, std::fs::read(&new.file).unwrap()).unwrap();
    let rotated = repo.commit("rotate the age key");
    d.wait_status(
        limit,
        "the rotated revision applied with the new key only",
        |s| s["revision"] == rotated.as_str() && s["lastReconcile"]["result"] == "success",
    )
    .await;
    assert_eq!(
        secret_data(&ns, "db", "password").await.as_deref(),
        Some(db_password.as_str())
    );

    let render = pailot_with(
        repo.path(),
        Some(&new.file),
        &["render", "-c", "clusters/test.yaml"],
    );
    assert_eq!(render.code, 0, "{}", render.stderr);
    // A commit that changed the encrypted file without sops: refused, the applied state stays.
    let values = std::fs::read_to_string(repo.path().join("clusters/secrets.sops.yaml")).unwrap();
    let mut doc = pailot::chart::parse_yaml_documents(&values, "v")
        .unwrap()
        .remove(0);
    doc["app"]["note_unencrypted"] = "added by hand".into();
    repo.write(
        "clusters/secrets.sops.yaml",
        &pailot::chart::to_yaml_string(&doc),
    );
    let tampered = repo.commit("edit the encrypted file by hand");
    let s = d
        .wait_status(limit, "the tampered commit refused", |s| {
            s["lastReconcile"]["revision"] == tampered.as_str()
                && s["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["stage"] == "render"))
        })
        .await;
    let err = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stage"] == "render")
        .unwrap();
    assert_eq!(err["file"], "clusters/secrets.sops.yaml", "{s:#}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("MAC mismatch"),
        "{s:#}"
    );
    assert_eq!(
        s["revision"],
        rotated.as_str(),
        "the last good revision stays applied: {s:#}"
    );
    assert!(
        d.metrics().await.contains("reason=\"invalid_input\""),
        "the failure is counted as invalid_input"
    );
    assert_eq!(
        secret_data(&ns, "app", "token").await.as_deref(),
        Some(token.as_str())
    );

    // Every channel the daemon and the commands write to.
    let status = d.get("/status").await.unwrap().1;
    let metrics = d.metrics().await;
    let status_cmd = pailot_with(
        repo.path(),
        None,
        &["status", "--url", &format!("http://{addr}"), "-o", "json"],
    );
    assert_eq!(status_cmd.code, 0, "{}", status_cmd.stderr);
    d.signal_and_wait("TERM", Duration::from_secs(30)).await;
    let log = d.log();
    let mut channels: Vec<(String, String)> = vec![
        ("daemon log".into(), log.clone()),
        ("/status".into(), status),
        ("/metrics".into(), metrics),
        (
            "pailot status".into(),
            format!("{}{}", status_cmd.stdout, status_cmd.stderr),
        ),
        (
            "pailot render".into(),
            format!("{}{}", render.stdout, render.stderr),
        ),
    ];
    for (p, text) in files_text(&dir.path().join("state")) {
        channels.push((p.display().to_string(), text));
    }
    assert!(channels.len() > 5, "the state directory is empty");
    for secret in [
        "guessed".to_string(),
        db_password.clone(),
        token.clone(),
        b64(&db_password),
        b64(&token),
    ] {
        for (what, text) in &channels {
            assert!(!text.contains(&secret), "{what} shows {secret:?}:\n{text}");
        }
    }
    assert!(
        log.contains("drift"),
        "the drift correction is logged\n{log}"
    );
    // The drift record says where the value came from: the encrypted manifest.
    assert!(
        log.contains("provenance=\"template charts/app/templates/db.sops.yaml"),
        "{log}"
    );
}

/// A new repository: `pailot init --sops-age-recipient` writes a `.sops.yaml` the real `sops`
/// follows; the secrets file it encrypts renders once the cluster file lists it.
#[test]
fn init_writes_a_sops_config_that_sops_follows() {
    let Some(t) = tools() else { return };
    let repo = TempTree::new();
    let key = keygen(t, &repo.path().join("key.txt"));
    repo.write(
        "quick-start.yaml",
        "machines:\n  - 192.168.10.5\nssh-username: pai\nssh-port: 22\ndns: 192.168.10.1\n",
    );
    let run = pailot_with(
        repo.path(),
        None,
        &[
            "init",
            "--from",
            "quick-start.yaml",
            "-o",
            "clusters/lab.yaml",
            "--sops-age-recipient",
            &key.recipient,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let config = std::fs::read_to_string(repo.path().join(".sops.yaml")).unwrap();
    assert!(config.contains(&key.recipient), "{config}");
    // sops finds .sops.yaml and encrypts to the recipient without --age.
    repo.write(
        "clusters/lab.secrets.sops.yaml",
        "dump:\n  password: init-hunter2\n",
    );
    sops(
        t,
        repo.path(),
        None,
        &["encrypt", "-i", "clusters/lab.secrets.sops.yaml"],
    );
    let enc = std::fs::read_to_string(repo.path().join("clusters/lab.secrets.sops.yaml")).unwrap();
    assert!(
        enc.contains(&key.recipient) && !enc.contains("init-hunter2"),
        "{enc}"
    );
    let plain = sops_decrypt(t, repo.path(), "clusters/lab.secrets.sops.yaml", &key);
    assert!(plain.contains("init-hunter2"));

    let bad = pailot_with(
        repo.path(),
        None,
        &[
            "init",
            "--from",
            "quick-start.yaml",
            "--sops-age-recipient",
            "age1notakey",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("not an age public key"),
        "{}",
        bad.stderr
    );
}

/// `pailot diff` after a secret changed: the field computed from it (here in a ConfigMap, not a
/// Secret) shows as changed, with both values masked; `pailot apply` prints no value either.
#[test]
fn diff_masks_fields_computed_from_decrypted_values() {
    let Some(t) = tools() else { return };
    let cluster = crate::apply::need_cluster!();
    let ns = cluster.namespace("sops-diff");
    let enc = "clusters/secrets.sops.yaml";
    let repo = TempTree::new();
    repo.write(
        "charts/app/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: app\nversion: 0.1.0\n",
    );
    repo.write(
        "charts/app/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  url: \"https://app:{{ values.password }}@db.example.invalid\"\n  plain: one\n",
    );
    repo.write(
        "overlays/all/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [\"*\"]}\n",
    );
    repo.write(
        "clusters/test.yaml",
        &format!("apiVersion: pailot.dev/v1\nkind: Cluster\nname: {0}\nnamespace: {0}\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 127.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {{memory: 32Gi, cpu: \"8\", gpu: 0}}\nvaluesFiles: [{enc}]\n", ns.name),
    );
    let key = keygen(t, &repo.path().join("key.txt"));
    let write_secret = |password: &str| {
        repo.write(enc, &format!("app:\n  password: {password}\n"));
        encrypt(t, repo.path(), enc, &[&key], &[]);
    };
    let run = |cmd: &str, extra: &[&str]| {
        let kc = cluster.kubeconfig.to_str().unwrap().to_string();
        let mut args = vec![cmd, "-c", "clusters/test.yaml", "--kubeconfig", &kc];
        args.extend_from_slice(extra);
        pailot_with(repo.path(), Some(&key.file), &args)
    };
    write_secret("first-hunter2");
    let applied = run("apply", &[]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_never_shown(&applied, "first-hunter2", "apply");
    let cm = cluster.get(&ns.name, "configmap/app").unwrap();
    assert_eq!(
        cm["data"]["url"],
        "https://app:first-hunter2@db.example.invalid"
    );

    write_secret("second-hunter2");
    for output in ["table", "json"] {
        let diff = run("diff", &["-o", output]);
        assert_eq!(diff.code, 1, "{}\n{}", diff.stdout, diff.stderr);
        assert!(diff.stdout.contains("/data/url"), "{}", diff.stdout);
        assert!(
            diff.stdout.contains("*** (secret value hidden)"),
            "{}",
            diff.stdout
        );
        for s in ["first-hunter2", "second-hunter2"] {
            assert_never_shown(&diff, s, "diff");
        }
    }
}
