//! Defects `scripts/reliability` found, each reproduced against the real `pailot daemon` and control plane.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;

use crate::kube::TestNamespace;
use crate::trust::{NO_WAIT, daemon, repo, wait_applied};

/// The decoded `data[key]` of Secret `name`.
async fn secret_value(ns: &TestNamespace, name: &str, key: &str) -> Option<String> {
    let api: kube::Api<Secret> = ns.api();
    let s = api.get_opt(name).await.ok().flatten()?;
    let bytes = s.data?.get(key)?.0.clone();
    String::from_utf8(bytes).ok()
}

fn kubectl(ns: &TestNamespace, args: &[&str]) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ns.kubeconfig)
        .args(["-n", &ns.name])
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chart writes its Secret with `stringData` (the usual way); the API server stores it as `data`. Someone
/// changes the value (`kubectl edit`, `kubectl patch`): that is drift like any other field, and in
/// `driftMode: correct` the daemon puts the value back, without showing either value anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_value_changed_by_someone_else_is_drift_and_is_put_back() {
    let Some(ns) = TestNamespace::new("rel-secret-drift").await else {
        return;
    };
    const DESIRED: &str = "desired-4d1f9c0b7e";
    const LIVE: &str = "someone-else-8a2e61";
    let repo = repo(&ns.name);
    repo.write(
        "charts/db/templates/secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-pass\ntype: Opaque\nstringData:\n  password: {DESIRED}\n"
        ),
    );
    let head = repo.commit("a Secret");
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(
        dir.path(),
        &repo,
        &ns,
        &NO_WAIT.replace(
            "driftInterval: 1h\n",
            "driftInterval: 1h\n  driftMode: correct\n",
        ),
    );
    wait_applied(&mut d, &head, Duration::from_secs(60)).await;
    assert_eq!(
        secret_value(&ns, "db-pass", "password").await.as_deref(),
        Some(DESIRED)
    );

    // As `kubectl edit` writes it: the base64 `data` field.
    let b64 = base64::engine::general_purpose::STANDARD.encode(LIVE);
    kubectl(
        &ns,
        &[
            "patch",
            "secret",
            "db-pass",
            "--type=merge",
            "-p",
            &format!("{{\"data\":{{\"password\":\"{b64}\"}}}}"),
        ],
    );
    let t = Instant::now();
    loop {
        if secret_value(&ns, "db-pass", "password").await.as_deref() == Some(DESIRED) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the changed Secret value was not put back within 15 s (drift: {})\n{}",
            d.status()
                .await
                .map(|s| s["drift"].to_string())
                .unwrap_or_default(),
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "Secret value changed by kubectl → put back in {:?}",
        t.elapsed()
    );
    let m = d.metrics().await;
    assert!(
        crate::daemon::metric_sum(&m, "pailot_drift_detected_total") >= 1.0,
        "{m}"
    );
    let log = d.log();
    for v in [DESIRED, LIVE, b64.as_str()] {
        assert!(!log.contains(v), "{v} in the daemon log\n{}", d.tail());
        let status = d.get("/status").await.unwrap().1;
        assert!(!status.contains(v), "{v} in /status: {status}");
    }
}
