//! `pailot apply --prune` against the real control plane: exactly the removed chart's objects go; foreign objects,
//! namespaces and everything-on-an-empty-render stay; a mass prune needs its flag.

use crate::apply::{FixtureRepo, need_cluster, with_action};

#[test]
fn removing_a_chart_prunes_exactly_its_objects_and_nothing_foreign() {
    let c = need_cluster!();
    let ns = c.namespace("prune-chart");
    let n = ns.name.clone();
    let repo = FixtureRepo::new(&n);
    repo.apply_json(&c, &[], 0);
    // Someone else's objects: one with only pailot's chart label, one in another ApplySet.
    let r = c.kubectl(&["create", "configmap", "foreign", "-n", &n]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.kubectl(&[
        "label",
        "configmap",
        "foreign",
        "-n",
        &n,
        "pailot.dev/chart=web",
    ]);
    c.kubectl(&["create", "configmap", "other-set", "-n", &n]);
    c.kubectl(&[
        "label",
        "configmap",
        "other-set",
        "-n",
        &n,
        "applyset.kubernetes.io/part-of=applyset-someone-else-v1",
    ]);

    repo.set(&["without-web"], "");
    let report = repo.apply_json(&c, &["--prune"], 0);
    let mut deleted = with_action(&report, "deleted");
    deleted.sort();
    let mut want = vec![
        format!("ConfigMap/{n}/web-config"),
        format!("Deployment/{n}/web"),
        format!("Secret/{n}/web-secret"),
        format!("Service/{n}/web"),
    ];
    want.sort();
    assert_eq!(deleted, want);
    // The namespace the chart created survives, reported as skipped.
    let skipped = with_action(&report, "skipped");
    assert!(
        skipped.contains(&format!("Namespace/{n}-web")),
        "{skipped:?}"
    );
    assert!(
        c.get("", &format!("namespace/{n}-web")).is_some(),
        "namespace was pruned"
    );
    for gone in [
        "configmap/web-config",
        "deployment/web",
        "secret/web-secret",
        "service/web",
    ] {
        assert!(c.get(&n, gone).is_none(), "{gone} still there");
    }
    assert!(
        c.get(&n, "configmap/foreign").is_some(),
        "foreign object touched"
    );
    assert!(
        c.get(&n, "configmap/other-set").is_some(),
        "other ApplySet's object touched"
    );
    assert!(c.get(&n, "deployment/db").is_some(), "db was pruned");
    // The parent forgets Service (no member left) but keeps Namespace (the kept namespace is still a member).
    let parent = c.get(&n, &format!("secret/applyset-{n}")).unwrap();
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Deployment.apps,Namespace"
    );
}

#[test]
fn an_empty_render_prunes_nothing() {
    let c = need_cluster!();
    let ns = c.namespace("prune-empty");
    let repo = FixtureRepo::new(&ns.name);
    repo.apply_json(&c, &[], 0);
    repo.set(&["nothing"], "");
    // An empty render is refused as a whole (it would leave everything unmanaged), whatever the flags.
    let r = repo.pailot(&c, "apply", &["--prune", "--allow-mass-prune"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("is empty"), "{}", r.stderr);
    assert!(c.get(&ns.name, "deployment/web").is_some());
    assert!(c.get(&ns.name, "configmap/db-config").is_some());
}

#[test]
fn a_mass_prune_is_refused_without_the_flag() {
    let c = need_cluster!();
    let ns = c.namespace("prune-mass");
    let repo = FixtureRepo::new(&ns.name);
    repo.set(&["all"], "  web: {extraConfigMaps: 12}\n");
    repo.apply_json(&c, &[], 0);
    repo.set(&["without-web"], "");
    let r = repo.pailot(&c, "apply", &["--prune"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("refusing to prune 16 of the 19"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--allow-mass-prune"), "{}", r.stderr);
    assert!(
        c.get(&ns.name, "configmap/web-extra-0").is_some(),
        "refused prune deleted something"
    );
    let report = repo.apply_json(&c, &["--prune", "--allow-mass-prune"], 0);
    assert_eq!(with_action(&report, "deleted").len(), 16);
    assert!(c.get(&ns.name, "configmap/web-extra-0").is_none());
}
