//! The daemon end to end against the real control plane (tests/cluster): commit → applied latency,
//! a broken commit refused while the previous revision stays applied, drift corrected and reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::daemon::{DaemonProcess, RunningDaemon, metric_sum, write_config};
use crate::kube::TestNamespace;
use crate::source::TempRepo;

/// A deployment repository whose cluster (and ApplySet) is named after the test namespace.
fn repo_for(ns: &str, greeting: &str, with_deployment: bool) -> TempRepo {
    let repo = crate::daemon::deploy_repo(greeting);
    repo.write(
        "clusters/test.yaml",
        &format!(
            "apiVersion: pailot.dev/v1\nkind: Cluster\nname: {ns}\nnamespace: {ns}\noverlays: [all]\nmachines:\n  - name: node-1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {{memory: 16Gi, cpu: \"4\"}}\n"
        ),
    );
    if with_deployment {
        repo.write(
            "charts/web/templates/deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {{ values.replicas }}\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: example/web:1.0\n",
        );
        repo.write(
            "charts/web/values.yaml",
            &format!("greeting: {greeting}\nreplicas: 1\n"),
        );
    }
    repo.commit("cluster named after the namespace");
    repo
}

fn set_greeting(repo: &TempRepo, greeting: &str) -> String {
    let values = std::fs::read_to_string(repo.path().join("charts/web/values.yaml")).unwrap();
    let rest: String = values
        .lines()
        .filter(|l| !l.starts_with("greeting:"))
        .map(|l| format!("{l}\n"))
        .collect();
    repo.write(
        "charts/web/values.yaml",
        &format!("greeting: {greeting}\n{rest}"),
    );
    repo.commit(&format!("greeting {greeting}"))
}

async fn greeting(ns: &TestNamespace) -> Option<String> {
    let cms: kube::Api<ConfigMap> = ns.api();
    cms.get_opt("web-config")
        .await
        .ok()
        .flatten()?
        .data?
        .get("greeting")
        .cloned()
}

async fn wait_greeting(ns: &TestNamespace, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if greeting(ns).await.as_deref() == Some(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "greeting {want:?} not applied within {limit:?} (now {:?})",
            greeting(ns).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn config(dir: &Path, repo: &TempRepo, ns: &TestNamespace, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        repo.path(),
        Some(&ns.kubeconfig),
        &format!("reconcile:\n  wait: false\n  driftInterval: 1h\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_land_with_subsecond_latency_and_a_broken_commit_keeps_the_previous_revision() {
    let Some(ns) = TestNamespace::new("daemon-commit").await else {
        return;
    };
    let repo = repo_for(&ns.name, "v0", false);
    let dir = tempfile::tempdir().unwrap();
    let d = RunningDaemon::start(&config(dir.path(), &repo, &ns, ""), true).await;
    wait_greeting(&ns, "v0", Duration::from_secs(60)).await;
    // Ready once the first reconcile has finished (the ConfigMap may be visible a moment before).
    let t = Instant::now();
    while d.get("/readyz").await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "/readyz not 200 after the first apply"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 20 commits, one at a time: commit → ConfigMap updated.
    let mut latencies = Vec::new();
    for i in 1..=20 {
        let want = format!("v{i}");
        let t = Instant::now();
        set_greeting(&repo, &want);
        wait_greeting(&ns, &want, Duration::from_secs(30)).await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let (p50, p95) = (percentile(&latencies, 0.5), percentile(&latencies, 0.95));
    eprintln!(
        "commit→applied latency over 20 commits: p50 {p50:?}, p95 {p95:?}, min {:?}, max {:?}",
        latencies[0], latencies[19]
    );
    // Target p50 ≤ 1 s (measured alone: ~0.2–0.4 s). The bound here leaves room for a loaded CI
    // machine running the other cluster tests in parallel; scripts/bench-daemon measures it quietly.
    assert!(
        p50 <= Duration::from_secs(3),
        "p50 {p50:?} far above the 1 s target; all: {latencies:?}"
    );

    // A broken commit: refused with the file in /status, previous revision stays applied.
    let good_rev = repo.git(&["rev-parse", "HEAD"]);
    let s = d
        .wait_status(
            Duration::from_secs(10),
            "status of the last good revision",
            |s| s["revision"] == good_rev.as_str(),
        )
        .await;
    assert!(
        s["charts"]["web"]["objects"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "per-chart object count in /status: {s:#}"
    );
    repo.write(
        "charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata: [unclosed\n",
    );
    let bad = repo.commit("broken yaml");
    let s = d
        .wait_status(Duration::from_secs(20), "render error", |s| {
            s["lastReconcile"]["revision"] == bad.as_str()
                && s["errors"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    assert_eq!(s["errors"][0]["stage"], "render", "{s:#}");
    assert_eq!(
        s["errors"][0]["file"], "charts/web/templates/cm.yaml",
        "{s:#}"
    );
    assert_eq!(
        s["revision"],
        good_rev.as_str(),
        "previous revision stays applied"
    );
    assert_eq!(greeting(&ns).await.as_deref(), Some("v20"));
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(&m, "pailot_reconcile_failures_total{stage=\"render\""),
        1.0
    );

    // The next good commit recovers.
    repo.write(
        "charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  greeting: \"{{ values.greeting }}\"\n",
    );
    set_greeting(&repo, "fixed");
    wait_greeting(&ns, "fixed", Duration::from_secs(30)).await;
    d.shutdown().await;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["lastAppliedRevision"],
        repo.git(&["rev-parse", "HEAD"]).as_str()
    );
    assert!(state["inventory"].as_array().is_some_and(|i| !i.is_empty()));
}

async fn replicas(ns: &TestNamespace) -> Option<i32> {
    let deps: kube::Api<Deployment> = ns.api();
    deps.get_opt("web").await.ok().flatten()?.spec.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_drift_is_corrected_within_10s_or_only_reported_in_warn_mode() {
    let Some(ns) = TestNamespace::new("daemon-drift").await else {
        return;
    };
    let repo = repo_for(&ns.name, "hello", true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &repo, &ns, "");
    let d = RunningDaemon::start(&cfg, true).await;
    d.wait_status(Duration::from_secs(60), "first apply", |s| {
        s["revision"].is_string()
    })
    .await;
    assert_eq!(replicas(&ns).await, Some(1));

    crate::kube::kubectl_scale(&ns, "web", 3);
    let t = Instant::now();
    loop {
        if replicas(&ns).await == Some(1) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "drift not corrected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("kubectl scale → corrected in {:?}", t.elapsed());
    let m = d.metrics().await;
    assert!(metric_sum(&m, "pailot_drift_detected_total") >= 1.0, "{m}");
    d.shutdown().await;

    // Warn mode: reported with pointer and manager, not corrected.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "driftInterval: 1h\n",
        "driftInterval: 1h\n  driftMode: warn\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let d = RunningDaemon::start(&cfg, true).await;
    d.wait_status(Duration::from_secs(60), "startup apply", |s| {
        s["revision"].is_string() && s["phase"] == "idle"
    })
    .await;
    crate::kube::kubectl_scale(&ns, "web", 2);
    let s = d
        .wait_status(Duration::from_secs(10), "drift record", |s| {
            s["drift"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    let rec = s["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pointer"] == "/spec/replicas")
        .expect("replicas record");
    assert_eq!(rec["object"], format!("Deployment/{}/web", ns.name));
    assert!(
        rec["manager"]
            .as_str()
            .is_some_and(|m| m.contains("kubectl")),
        "{rec:#}"
    );
    assert!(rec["provenance"].as_str().is_some(), "{rec:#}");
    assert_eq!(rec["action"], "reported");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicas(&ns).await, Some(2), "warn mode must not correct");
    d.shutdown().await;
}

/// Poll interval and jitter of the poll-only test.
const POLL: Duration = Duration::from_secs(2);
const JITTER: f64 = 0.25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_poll_only_file_url_bare_remote_lands_within_one_poll_interval() {
    let Some(ns) = TestNamespace::new("daemon-remote").await else {
        return;
    };
    let work = repo_for(&ns.name, "r0", false);
    let bare = tempfile::tempdir().unwrap();
    crate::source::git_in(
        bare.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.path().display().to_string(),
            ".",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pailot.yaml");
    // `watch: off`: the file:// remote is only polled (with `auto` its refs would be watched).
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: pailot.dev/v1\nkind: DaemonConfig\nsource:\n  url: file://{}\n  cluster: clusters/test.yaml\n  pollInterval: {}s\n  pollJitter: {JITTER}\n  watch: off\nkubeconfig: {}\nstateDir: {}\nreconcile:\n  wait: false\n  driftInterval: 1h\n",
            bare.path().display(),
            POLL.as_secs(),
            ns.kubeconfig.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let d = RunningDaemon::start(&cfg, true).await;
    wait_greeting(&ns, "r0", Duration::from_secs(60)).await;
    let s = d.status().await;
    assert_eq!(s["source"]["watch"], "off", "{s:#}");
    assert_eq!(s["source"]["pollIntervalSeconds"], 2.0, "{s:#}");

    // A change lands within one poll interval plus its jitter plus the reconcile (fetch, render, apply of one
    // ConfigMap: well under 1 s; 1.5 s allowed for a loaded machine).
    let bound = POLL.mul_f64(1.0 + JITTER) + Duration::from_millis(1500);
    let mut took = Vec::new();
    for i in 1..=3 {
        let want = format!("r{i}");
        let rev = set_greeting(&work, &want);
        let t = Instant::now();
        work.git(&["push", "-q", &bare.path().display().to_string(), "main"]);
        wait_greeting(&ns, &want, bound).await;
        took.push(t.elapsed());
        let s = d
            .wait_status(Duration::from_secs(5), "the reconcile's status", |s| {
                s["lastReconcile"]["revision"] == rev.as_str()
            })
            .await;
        assert_eq!(
            s["lastReconcile"]["trigger"], "poll",
            "landed by something else than a poll: {s:#}"
        );
    }
    eprintln!(
        "push to a poll-only file:// bare remote (poll {POLL:?}, jitter {JITTER}) → applied in {took:?} (bound {bound:?})"
    );
    let s = d.status().await;
    let triggers = &s["source"]["triggers"];
    assert!(
        triggers["watch"].is_null(),
        "a watch fired with watch: off: {s:#}"
    );
    assert!(triggers["poll"].as_u64().unwrap_or(0) >= 3, "{s:#}");
    d.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_only_the_leader_applies_and_a_standby_takes_over() {
    let Some(ns) = TestNamespace::new("daemon-leader").await else {
        return;
    };
    let repo = repo_for(&ns.name, "l0", false);
    let (d1dir, d2dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let le = format!(
        "leaderElection:\n  enabled: true\n  leaseName: pailot-test\n  namespace: {}\n  leaseDuration: 3s\n",
        ns.name
    );
    let port = free_port();
    let c1 = config(
        d1dir.path(),
        &repo,
        &ns,
        &format!("{le}server:\n  listen: 127.0.0.1:{port}\n"),
    );
    let c2 = config(d2dir.path(), &repo, &ns, &le);
    // The first daemon is a real process, so it can be killed (SIGKILL: no lease release).
    let mut a = std::process::Command::new(crate::harness::pailot_bin())
        .args(["daemon", "--no-bootstrap", "--config"])
        .arg(&c1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_greeting(&ns, "l0", Duration::from_secs(60)).await;
    let b = RunningDaemon::start(&c2, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaders = |m: &str| metric_sum(m, "pailot_leader");
    let a_metrics = crate::daemon::http(a_addr, "GET", "/metrics", &[], b"")
        .await
        .1;
    assert_eq!(leaders(&a_metrics), 1.0, "{a_metrics}");
    assert_eq!(leaders(&b.metrics().await), 0.0);
    let fetches = |m: &str| metric_sum(m, "pailot_source_fetch_duration_seconds_count");
    assert_eq!(
        fetches(&b.metrics().await),
        0.0,
        "a standby must not reconcile"
    );

    a.kill().unwrap();
    a.wait().unwrap();
    set_greeting(&repo, "l1");
    let t = Instant::now();
    wait_greeting(&ns, "l1", Duration::from_secs(15)).await;
    eprintln!(
        "leader killed → standby applied the next commit in {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(3 + 1 + 3),
        "took over later than lease + one retry + a reconcile"
    );
    assert_eq!(leaders(&b.metrics().await), 1.0);
    b.shutdown().await;
}

/// The 600-object corpus (tests/fixtures/apply/bench-corpus) in a fresh repository, its cluster (and so its
/// ApplySet parent `applyset-<name>`) named `name` in namespace `ns`; the repository and its head commit.
pub fn corpus_repo(name: &str, ns: &str) -> (TempRepo, String) {
    let repo = TempRepo::new();
    let corpus = crate::harness::repo_root().join("tests/fixtures/apply/bench-corpus");
    for entry in walk(&corpus) {
        let rel = entry
            .strip_prefix(&corpus)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(&entry).unwrap();
        let text = if rel == "clusters/bench.yaml" {
            text.replace("name: bench", &format!("name: {name}"))
                .replace("namespace: bench", &format!("namespace: {ns}"))
        } else {
            text
        };
        repo.write(&rel, &text);
    }
    let head = repo.commit("corpus");
    (repo, head)
}

/// Objects the corpus renders.
pub const CORPUS_OBJECTS: usize = 600;

/// A daemon configuration for a corpus repository: no health wait, no drift sweep, no polling (1 h); `extra`
/// is appended (top-level YAML).
pub fn corpus_config(dir: &Path, repo: &TempRepo, kubeconfig: &Path, extra: &str) -> PathBuf {
    let cfg = write_config(
        dir,
        repo.path(),
        Some(kubeconfig),
        &format!("reconcile:\n  wait: false\n  driftInterval: 1h\n{extra}"),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("clusters/test.yaml", "clusters/bench.yaml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The ConfigMaps, Secrets, Services and Deployments in `ns` (as `Kind/name`): those labelled as members of an
/// ApplySet, and those that are not (orphans; the namespace's own `kube-root-ca.crt` aside).
pub async fn corpus_objects(client: &kube::Client, ns: &str) -> (BTreeSet<String>, Vec<String>) {
    use kube::api::{Api, ListParams};
    use kube::core::PartialObjectMeta;
    async fn names<K>(
        client: &kube::Client,
        ns: &str,
        kind: &str,
        members: &mut BTreeSet<String>,
        others: &mut Vec<String>,
    ) where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {kind} in {ns}: {e}"));
        for o in list.items {
            let o: PartialObjectMeta<K> = o;
            let name = o.metadata.name.clone().unwrap_or_default();
            if kind == "ConfigMap" && name == "kube-root-ca.crt" {
                continue;
            }
            let labelled = o
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("applyset.kubernetes.io/part-of"));
            let id = format!("{kind}/{name}");
            if labelled {
                members.insert(id);
            } else {
                others.push(id);
            }
        }
    }
    let (mut members, mut others) = (BTreeSet::new(), Vec::new());
    names::<ConfigMap>(client, ns, "ConfigMap", &mut members, &mut others).await;
    names::<k8s_openapi::api::core::v1::Secret>(client, ns, "Secret", &mut members, &mut others)
        .await;
    names::<k8s_openapi::api::core::v1::Service>(client, ns, "Service", &mut members, &mut others)
        .await;
    names::<Deployment>(client, ns, "Deployment", &mut members, &mut others).await;
    // The ApplySet parent lives in the same namespace; it is not a member of itself.
    others.retain(|o| !o.starts_with("Secret/applyset-"));
    (members, others)
}

/// `state.json` in `state_dir`: the inventory copy as `Kind/name`, and `lastAppliedRevision`.
pub fn state_inventory(state_dir: &Path) -> (BTreeSet<String>, Option<String>) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).unwrap()).unwrap();
    let inventory = state["inventory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["name"].as_str().unwrap()
            )
        })
        .collect();
    (
        inventory,
        state["lastAppliedRevision"].as_str().map(String::from),
    )
}

/// The group kinds the ApplySet parent `applyset-<name>` in `ns` records.
pub async fn parent_group_kinds(client: &kube::Client, ns: &str, name: &str) -> String {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), ns);
    let parent = secrets
        .get(&format!("applyset-{name}"))
        .await
        .unwrap_or_else(|e| panic!("ApplySet parent applyset-{name} in {ns}: {e}"));
    parent
        .metadata
        .annotations
        .unwrap_or_default()
        .get("applyset.kubernetes.io/contains-group-kinds")
        .cloned()
        .unwrap_or_default()
}

/// After a stop (or a failure) mid-apply and after convergence: every object of the namespace is a labelled
/// member, the state file lists exactly those, and the parent records all four kinds.
pub async fn assert_inventory_consistent(
    client: &kube::Client,
    ns: &str,
    name: &str,
    state_dir: &Path,
) -> BTreeSet<String> {
    let (members, unlabelled) = corpus_objects(client, ns).await;
    assert!(
        unlabelled.is_empty(),
        "objects without the ApplySet member label: {unlabelled:?}"
    );
    let (inventory, _) = state_inventory(state_dir);
    let orphans: Vec<&String> = members.difference(&inventory).collect();
    assert!(
        orphans.is_empty(),
        "{} object(s) in the cluster but not in state.json's inventory, e.g. {:?}",
        orphans.len(),
        &orphans[..orphans.len().min(5)]
    );
    let ghosts: Vec<&String> = inventory.difference(&members).collect();
    assert!(
        ghosts.is_empty(),
        "{} object(s) in state.json's inventory but not in the cluster, e.g. {:?}",
        ghosts.len(),
        &ghosts[..ghosts.len().min(5)]
    );
    let kinds = parent_group_kinds(client, ns, name).await;
    for k in ["ConfigMap", "Secret", "Service", "Deployment.apps"] {
        assert!(
            kinds.split(',').any(|x| x == k),
            "the ApplySet parent does not record {k}: {kinds:?}"
        );
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_apply_exits_promptly_and_a_restart_converges_with_a_consistent_inventory()
 {
    let Some(ns) = TestNamespace::new("daemon-sigterm").await else {
        return;
    };
    let (repo, head) = corpus_repo(&ns.name, &ns.name);
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = corpus_config(
        dir.path(),
        &repo,
        &ns.kubeconfig,
        &format!("server:\n  listen: {addr}\n"),
    );
    let state_dir = dir.path().join("state");

    let mut d = DaemonProcess::start(&cfg, addr, dir.path().join("daemon-1.log"));
    // SIGTERM once the apply is well under way: some objects exist, most do not yet.
    let t = Instant::now();
    let before = loop {
        let (m, _) = corpus_objects(&ns.client, &ns.name).await;
        if m.len() >= 30 {
            break m.len();
        }
        d.assert_running();
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the apply did not start within 120 s\n{}",
            d.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (code, took) = d.signal_and_wait("TERM", Duration::from_secs(30)).await;
    let (members, _) = corpus_objects(&ns.client, &ns.name).await;
    eprintln!(
        "SIGTERM during the {CORPUS_OBJECTS}-object apply ({before} objects there at the signal, {} at the exit): exit {code} after {took:?}",
        members.len()
    );
    assert!(code.success(), "exit {code}\n{}", d.tail());
    // Target: well under 2 s (measured ~0.1 s); 5 s leaves room for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM → exit took {took:?}\n{}",
        d.tail()
    );
    assert!(
        members.len() < CORPUS_OBJECTS,
        "the apply had finished before SIGTERM: nothing was stopped\n{}",
        d.tail()
    );
    let log = d.log();
    assert!(log.contains("apply stopped"), "{}", d.tail());
    drop(d);
    // The state is what was really applied: the revision is not recorded as applied, and the inventory copy
    // lists every object that exists (nothing orphaned).
    let (_, applied) = state_inventory(&state_dir);
    assert_eq!(
        applied, None,
        "a partly applied revision must not be recorded as applied"
    );
    let stopped = assert_inventory_consistent(&ns.client, &ns.name, &ns.name, &state_dir).await;
    assert_eq!(stopped, members);

    // A restart re-applies the revision and converges.
    let mut d = DaemonProcess::start(&cfg, addr, dir.path().join("daemon-2.log"));
    let t = Instant::now();
    let s = d
        .wait_status(Duration::from_secs(180), "converged", |s| {
            s["revision"] == head.as_str() && s["phase"] == "idle"
        })
        .await;
    eprintln!("restart → converged in {:?}", t.elapsed());
    assert_eq!(s["lastReconcile"]["result"], "success", "{s:#}");
    assert_eq!(s["lastReconcile"]["trigger"], "startup", "{s:#}");
    assert_eq!(d.get("/readyz").await.map(|r| r.0), Some(200));
    let (code, idle_stop) = d.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(code.success(), "exit {code}\n{}", d.tail());
    eprintln!("SIGTERM while idle → exit after {idle_stop:?}");
    let members = assert_inventory_consistent(&ns.client, &ns.name, &ns.name, &state_dir).await;
    assert_eq!(members.len(), CORPUS_OBJECTS);
    assert_eq!(
        state_inventory(&state_dir).1.as_deref(),
        Some(head.as_str())
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
