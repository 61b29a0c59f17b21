//! `pailot apply` against the real control plane: create, no-op, exactly-one-configured, CRD + CR, cycles, ApplySet.
//!
//! These tests run against the loopback test cluster that `crate::kube` finds or starts (`PAILOT_SKIP_CLUSTER=1`
//! skips them); each gets a fresh namespace and its own ApplySet (cluster name = namespace).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Run, TempTree, pailot_bin, repo_root};

/// The loopback test cluster, when one is up.
pub struct TestCluster {
    pub kubeconfig: PathBuf,
}

/// The shared test cluster (started by `crate::kube` when none runs), or `None` when `PAILOT_SKIP_CLUSTER=1`.
pub fn cluster() -> Option<TestCluster> {
    if crate::kube::skip_cluster() {
        return None;
    }
    Some(TestCluster {
        kubeconfig: crate::kube::shared_kubeconfig(),
    })
}

macro_rules! need_cluster {
    () => {
        match $crate::apply::cluster() {
            Some(c) => c,
            None => {
                eprintln!("skipped: PAILOT_SKIP_CLUSTER=1");
                return;
            }
        }
    };
}
pub(crate) use need_cluster;

impl TestCluster {
    /// `kubectl ARGS` against the test cluster.
    pub fn kubectl(&self, args: &[&str]) -> Run {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
            .into()
    }

    /// A fresh namespace (deleted when the guard drops).
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = crate::kube::unique_name(prefix);
        let r = self.kubectl(&["create", "namespace", &name]);
        assert_eq!(r.code, 0, "create namespace: {}", r.stderr);
        Namespace {
            cluster: self,
            name,
        }
    }

    /// JSON of `kubectl get KIND NAME -n NS -o json`, or `None` when absent.
    pub fn get(&self, ns: &str, what: &str) -> Option<Value> {
        let r = self.kubectl(&["get", "-n", ns, what, "-o", "json", "--ignore-not-found"]);
        assert_eq!(r.code, 0, "kubectl get {what}: {}", r.stderr);
        if r.stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&r.stdout).unwrap())
        }
    }
}

/// A namespace created for one test.
pub struct Namespace<'a> {
    cluster: &'a TestCluster,
    pub name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let extra = format!("{}-web", self.name);
        self.cluster.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            &extra,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// A copy of `tests/fixtures/apply/small-platform` whose cluster file targets `ns` with `overlays` and `values`
/// (a YAML mapping of chart -> values, indented by 2).
pub struct FixtureRepo {
    pub tree: TempTree,
    ns: String,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

impl FixtureRepo {
    pub fn new(ns: &str) -> Self {
        let tree = TempTree::new();
        copy_dir(
            &repo_root().join("tests/fixtures/apply/small-platform"),
            tree.path(),
        );
        let repo = FixtureRepo {
            tree,
            ns: ns.to_string(),
        };
        repo.set(&["all"], "");
        repo
    }

    /// Rewrite the cluster file: overlays and per-chart values (YAML, two-space indented lines).
    pub fn set(&self, overlays: &[&str], values: &str) {
        let values = if values.is_empty() {
            String::new()
        } else {
            format!("values:\n{values}")
        };
        self.tree.write(
            "clusters/test.yaml",
            &format!(
                "apiVersion: pailot.dev/v1\nkind: Cluster\nname: {ns}\noverlays: [{}]\nnamespace: {ns}\n\
                 machines:\n  - name: node-1\n    address: 127.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    \
                 capacity: {{memory: 32Gi, cpu: \"8\", gpu: 0}}\n{values}",
                overlays.join(", "),
                ns = self.ns
            ),
        );
    }

    /// `pailot CMD --repo … -c clusters/test.yaml --kubeconfig … ARGS`.
    pub fn pailot(&self, cluster: &TestCluster, cmd: &str, args: &[&str]) -> Run {
        let repo = self.tree.path().to_str().unwrap().to_string();
        let kc = cluster.kubeconfig.to_str().unwrap().to_string();
        let mut all: Vec<&str> = vec![
            cmd,
            "--repo",
            &repo,
            "-c",
            "clusters/test.yaml",
            "--kubeconfig",
            &kc,
        ];
        all.extend_from_slice(args);
        Command::new(pailot_bin())
            .args(&all)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run pailot")
            .into()
    }

    /// `pailot apply … -o json`, asserting the exit code; the report.
    pub fn apply_json(&self, cluster: &TestCluster, args: &[&str], code: i32) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        let r = self.pailot(cluster, "apply", &a);
        assert_eq!(
            r.code, code,
            "pailot apply {args:?}\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}", r.stdout))
    }
}

/// `(object, action)` pairs of a report, sorted.
pub fn actions(report: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["object"].as_str().unwrap().to_string(),
                o["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Objects of a report with `action`.
pub fn with_action(report: &Value, action: &str) -> Vec<String> {
    actions(report)
        .into_iter()
        .filter(|(_, a)| a == action)
        .map(|(o, _)| o)
        .collect()
}

#[test]
fn second_apply_is_unchanged_and_one_value_configures_exactly_one_object() {
    let c = need_cluster!();
    let ns = c.namespace("apply-one");
    let repo = FixtureRepo::new(&ns.name);
    let first = repo.apply_json(&c, &[], 0);
    let created = with_action(&first, "created");
    assert_eq!(created.len(), 7, "{:?}", actions(&first));
    let again = repo.apply_json(&c, &[], 0);
    assert_eq!(
        with_action(&again, "unchanged").len(),
        7,
        "{:?}",
        actions(&again)
    );
    repo.set(&["all"], "  web: {greeting: bonjour}\n");
    let third = repo.apply_json(&c, &[], 0);
    assert_eq!(
        with_action(&third, "configured"),
        vec![format!("ConfigMap/{}/web-config", ns.name)],
        "{:?}",
        actions(&third)
    );
    assert_eq!(with_action(&third, "unchanged").len(), 6);
    let cm = c.get(&ns.name, "configmap/web-config").unwrap();
    assert_eq!(cm["data"]["greeting"], "bonjour");
    // Members carry the ApplySet label and pailot's chart label; the parent carries the id.
    let parent = c
        .get(&ns.name, &format!("secret/applyset-{}", ns.name))
        .unwrap();
    let id = parent["metadata"]["labels"]["applyset.kubernetes.io/id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(third["applyset_id"], id.as_str());
    assert_eq!(
        cm["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        id.as_str()
    );
    assert_eq!(cm["metadata"]["labels"]["pailot.dev/chart"], "web");
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Deployment.apps,Namespace,Secret,Service"
    );
    assert!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/tooling"]
            .as_str()
            .unwrap()
            .starts_with("pailot/v")
    );
}

#[test]
fn crd_and_custom_resource_in_one_apply() {
    let c = need_cluster!();
    let ns = c.namespace("apply-crd");
    let repo = FixtureRepo::new(&ns.name);
    repo.set(&["with-widgets"], "");
    let report = repo.apply_json(&c, &[], 0);
    // The CRD's group carries the namespace, so each run has its own CRD.
    let crd = format!("widgets.{}.test.pailot.dev", ns.name);
    let mut created = with_action(&report, "created");
    created.sort();
    assert_eq!(
        created,
        vec![
            format!("CustomResourceDefinition/{crd}"),
            format!("Widget/{}/first-widget", ns.name)
        ],
        "{:?}",
        actions(&report)
    );
    let w = c.get(&ns.name, &format!("{crd}/first-widget")).unwrap();
    assert_eq!(w["spec"]["size"], 3);
    let again = repo.apply_json(&c, &[], 0);
    assert_eq!(
        with_action(&again, "unchanged").len(),
        2,
        "{:?}",
        actions(&again)
    );
    c.kubectl(&["delete", "crd", &crd, "--wait=false"]);
}

#[test]
fn dependency_cycle_is_reported_before_anything_is_applied() {
    let c = need_cluster!();
    let ns = c.namespace("apply-cycle");
    let repo = FixtureRepo::new(&ns.name);
    repo.tree.write(
        "charts/db/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: db\nversion: 1.0.0\ndependsOn: [web]\n",
    );
    let r = repo.pailot(&c, "apply", &[]);
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("cycle"), "{}", r.stderr);
    assert!(
        r.stderr.contains("db") && r.stderr.contains("web"),
        "{}",
        r.stderr
    );
    let left = c.kubectl(&[
        "get",
        "configmaps,deployments,secrets",
        "-n",
        &ns.name,
        "-l",
        "pailot.dev/chart",
        "-o",
        "name",
    ]);
    assert_eq!(left.stdout.trim(), "", "something was applied");
    assert!(
        c.get(&ns.name, &format!("secret/applyset-{}", ns.name))
            .is_none(),
        "the inventory was written"
    );
}

#[test]
fn kubectl_applyset_tooling_reads_the_inventory() {
    let c = need_cluster!();
    let ns = c.namespace("apply-kubectl");
    let n = ns.name.clone();
    let repo = FixtureRepo::new(&n);
    repo.apply_json(&c, &[], 0);
    let render: Run = Command::new(pailot_bin())
        .args([
            "render",
            "--repo",
            repo.tree.path().to_str().unwrap(),
            "-c",
            "clusters/test.yaml",
        ])
        .output()
        .unwrap()
        .into();
    assert_eq!(render.code, 0, "{}", render.stderr);
    // Everything but ConfigMap web-config: kubectl must find that one through our ApplySet and prune it.
    let docs: Vec<&str> = render
        .stdout
        .split("\n---\n")
        .filter(|d| !d.contains("name: web-config"))
        .collect();
    let file = repo
        .tree
        .write("rendered-less-one.yaml", &docs.join("\n---\n"));
    let kubectl_prune = || -> Run {
        // `kubectl diff` has no --applyset (kubectl 1.32); a server-side dry-run apply with prune reads the same way.
        Command::new("kubectl")
            .env("KUBECTL_APPLYSET", "true")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "--prune",
            ])
            .arg(format!("--applyset=secret/applyset-{n}"))
            .args(["-n", &n, "-f"])
            .arg(&file)
            .output()
            .unwrap()
            .into()
    };
    // kubectl reads the parent and, as the KEP asks, refuses an ApplySet of other tooling.
    let refused = kubectl_prune();
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("is managed by tooling \"pailot\" instead of \"kubectl\""),
        "{}",
        refused.stderr
    );
    // Hand the parent to kubectl: it recomputes our id (a wrong one is an error), parses the group kinds and
    // finds the members by their part-of label.
    let r = c.kubectl(&[
        "annotate",
        "secret",
        &format!("applyset-{n}"),
        "-n",
        &n,
        "--overwrite",
        "applyset.kubernetes.io/tooling=kubectl/v1.32.4",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = kubectl_prune();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let pruned: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("pruned"))
        .collect();
    assert_eq!(
        pruned,
        vec!["configmap/web-config pruned (server dry run)"],
        "{}",
        run.stdout
    );
    // And pailot now refuses the parent that another tool owns.
    let r = repo.pailot(&c, "apply", &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("is managed by tooling \"kubectl/v1.32.4\", not pailot"),
        "{}",
        r.stderr
    );
}

#[test]
fn uninstall_deletes_in_reverse_dependency_order_and_keeps_protected_kinds() {
    let c = need_cluster!();
    let ns = c.namespace("apply-uninstall");
    let n = ns.name.clone();
    let repo = FixtureRepo::new(&n);
    repo.apply_json(&c, &[], 0);
    // One chart only.
    let r = repo.pailot(&c, "uninstall", &["--chart", "db"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        c.get(&n, "deployment/db").is_none() && c.get(&n, "configmap/db-config").is_none(),
        "{}",
        r.stdout
    );
    assert!(c.get(&n, "deployment/web").is_some());
    // Everything: web's namespace is protected and stays, so the parent stays too.
    let r = repo.pailot(&c, "uninstall", &["-o", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["deleted"].as_array().unwrap().len(), 4, "{report}");
    assert_eq!(
        report["kept"],
        serde_json::json!([format!("Namespace/{n}-web")])
    );
    assert!(c.get(&n, "deployment/web").is_none());
    assert!(c.get(&n, &format!("secret/applyset-{n}")).is_some());
    let r = repo.pailot(&c, "uninstall", &["--prune-protected", "-o", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["parent_deleted"], true, "{report}");
    assert!(c.get(&n, &format!("secret/applyset-{n}")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_an_apply_after_the_objects_in_flight_and_a_rerun_finishes_it() {
    use crate::reconcile::{CORPUS_OBJECTS, corpus_objects};
    let Some(ns) = crate::kube::TestNamespace::new("apply-ctrl-c").await else {
        return;
    };
    let (repo, _) = crate::reconcile::corpus_repo(&ns.name, &ns.name);
    let args = |out: &str| {
        vec![
            "apply".to_string(),
            "--repo".into(),
            repo.path().display().to_string(),
            "-c".into(),
            "clusters/bench.yaml".into(),
            "--kubeconfig".into(),
            ns.kubeconfig.display().to_string(),
            "--prune".into(),
            "-o".into(),
            out.into(),
        ]
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(pailot_bin())
        .args(args("json"))
        .env_remove("KUBECONFIG")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if corpus_objects(&ns.client, &ns.name).await.0.len() >= 30 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before Ctrl-C: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t = std::time::Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "still running 30 s after SIGINT"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let took = t.elapsed();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap())
        .unwrap_or_else(|e| panic!("report is not JSON ({e}); stderr:\n{stderr}"));
    let (members, _) = corpus_objects(&ns.client, &ns.name).await;
    eprintln!(
        "Ctrl-C during `pailot apply` of {CORPUS_OBJECTS} objects: exit {code} after {took:?}, {} applied, {} not",
        members.len(),
        report["not_applied"]
    );
    assert_eq!(code.code(), Some(130), "{stderr}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert!(stderr.contains("stopped:"), "{stderr}");
    assert_eq!(report["stopped"], true);
    let reported = report["objects"].as_array().unwrap().len();
    let not_applied = report["not_applied"].as_u64().unwrap() as usize;
    assert!(not_applied > 0, "nothing was stopped: {stderr}");
    assert_eq!(
        reported + not_applied,
        CORPUS_OBJECTS,
        "every object is either reported or counted as not applied"
    );
    assert_eq!(
        members.len(),
        reported,
        "what exists is what the report lists"
    );
    assert!(report["prunes"].as_array().unwrap().is_empty());

    // The same command again finishes the job; nothing is left outside the ApplySet.
    let r: Run = Command::new(pailot_bin())
        .args(args("json"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let again: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(with_action(&again, "unchanged").len(), reported);
    assert_eq!(
        with_action(&again, "created").len(),
        CORPUS_OBJECTS - reported
    );
    let (members, unlabelled) = corpus_objects(&ns.client, &ns.name).await;
    assert_eq!(members.len(), CORPUS_OBJECTS);
    assert!(unlabelled.is_empty(), "{unlabelled:?}");
}
