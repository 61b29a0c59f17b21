//! Health of live objects, kstatus-like: rolled out, complete, bound, established, or Ready.

use serde::Serialize;
use serde_json::Value;

/// The health of one live object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum Health {
    /// Healthy (kstatus `Current`).
    Current,
    /// Still converging; why.
    InProgress(String),
    /// Will not converge without a change; why.
    Failed(String),
}

impl Health {
    pub fn is_current(&self) -> bool {
        matches!(self, Health::Current)
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The condition of `type` in `status.conditions`.
pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_is(obj: &Value, kind: &str, status: &str) -> bool {
    condition(obj, kind).is_some_and(|c| c["status"] == status)
}

fn message_of(c: Option<&Value>) -> String {
    c.map(|c| {
        let reason = c["reason"].as_str().unwrap_or("");
        let msg = c["message"].as_str().unwrap_or("");
        match (reason.is_empty(), msg.is_empty()) {
            (false, false) => format!("{reason}: {msg}"),
            (false, true) => reason.to_string(),
            (true, false) => msg.to_string(),
            (true, true) => String::new(),
        }
    })
    .unwrap_or_default()
}

/// `status.observedGeneration` is behind `metadata.generation`.
fn generation_pending(obj: &Value) -> Option<Health> {
    let generation = obj["metadata"]["generation"].as_i64()?;
    let observed = obj["status"]["observedGeneration"].as_i64().unwrap_or(0);
    (observed < generation)
        .then(|| Health::InProgress(format!("observed generation {observed} of {generation}")))
}

/// Assess `obj` (a live object with `apiVersion`/`kind`).
pub fn assess(obj: &Value) -> Health {
    let kind = obj["kind"].as_str().unwrap_or("");
    let group = obj["apiVersion"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("");
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => statefulset(obj),
        ("apps", "DaemonSet") => daemonset(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => match obj["status"]["phase"].as_str() {
            Some("Bound") => Health::Current,
            Some("Lost") => Health::Failed("claim lost its volume".into()),
            other => Health::InProgress(format!("claim is {}", other.unwrap_or("Pending"))),
        },
        ("", "Service") => service(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if condition_is(obj, "Established", "True") {
                Health::Current
            } else if condition_is(obj, "NamesAccepted", "False") {
                Health::Failed(message_of(condition(obj, "NamesAccepted")))
            } else {
                Health::InProgress("not Established yet".into())
            }
        }
        _ => generic(obj),
    }
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn deployment(obj: &Value) -> Health {
    if let Some(h) = generation_pending(obj) {
        return h;
    }
    if let Some(c) = condition(obj, "Progressing")
        && c["reason"] == "ProgressDeadlineExceeded"
    {
        return Health::Failed(message_of(Some(c)));
    }
    let want = replicas(obj);
    let s = &obj["status"];
    let (updated, available, total) = (
        int(&s["updatedReplicas"]),
        int(&s["availableReplicas"]),
        int(&s["replicas"]),
    );
    if updated < want {
        return Health::InProgress(format!("{updated}/{want} replicas updated"));
    }
    if total > updated {
        return Health::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::InProgress(format!("{available}/{want} replicas available"));
    }
    Health::Current
}

fn statefulset(obj: &Value) -> Health {
    if let Some(h) = generation_pending(obj) {
        return h;
    }
    let want = replicas(obj);
    let s = &obj["status"];
    let ready = int(&s["readyReplicas"]);
    if ready < want {
        return Health::InProgress(format!("{ready}/{want} replicas ready"));
    }
    let rolling = obj["spec"]["updateStrategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling
        && obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0)
            == 0
    {
        let updated = int(&s["updatedReplicas"]);
        if updated < want {
            return Health::InProgress(format!("{updated}/{want} replicas updated"));
        }
        if let (Some(cur), Some(upd)) =
            (s["currentRevision"].as_str(), s["updateRevision"].as_str())
            && cur != upd
        {
            return Health::InProgress(format!("rolling out revision {upd}"));
        }
    }
    Health::Current
}

fn daemonset(obj: &Value) -> Health {
    if let Some(h) = generation_pending(obj) {
        return h;
    }
    let s = &obj["status"];
    let desired = int(&s["desiredNumberScheduled"]);
    let updated = int(&s["updatedNumberScheduled"]);
    let available = int(&s["numberAvailable"]);
    if updated < desired {
        return Health::InProgress(format!("{updated}/{desired} pods updated"));
    }
    if available < desired {
        return Health::InProgress(format!("{available}/{desired} pods available"));
    }
    Health::Current
}

fn job(obj: &Value) -> Health {
    if condition_is(obj, "Failed", "True") {
        return Health::Failed(message_of(condition(obj, "Failed")));
    }
    if condition_is(obj, "Complete", "True") {
        return Health::Current;
    }
    let s = &obj["status"];
    Health::InProgress(format!(
        "{} active, {} succeeded",
        int(&s["active"]),
        int(&s["succeeded"])
    ))
}

/// The scheduler's or the kubelet's reason a pod is not running/ready, if it says one.
pub fn pod_problem(pod: &Value) -> Option<String> {
    if let Some(c) = condition(pod, "PodScheduled")
        && c["status"] == "False"
    {
        return Some(format!("Pending: {}", message_of(Some(c))));
    }
    for cs in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(w) = cs["state"]["waiting"].as_object() {
            let reason = w.get("reason").and_then(Value::as_str).unwrap_or("Waiting");
            let msg = w.get("message").and_then(Value::as_str).unwrap_or("");
            return Some(format!(
                "container {} {reason}{}{msg}",
                cs["name"].as_str().unwrap_or("?"),
                if msg.is_empty() { "" } else { ": " }
            ));
        }
    }
    if let Some(c) = condition(pod, "Ready")
        && c["status"] == "False"
        && pod["status"]["phase"] == "Running"
    {
        let why = message_of(Some(c));
        return Some(if why.is_empty() {
            "Running but not Ready".to_string()
        } else {
            format!("Running but not Ready: {why}")
        });
    }
    None
}

fn pod(obj: &Value) -> Health {
    match obj["status"]["phase"].as_str() {
        Some("Succeeded") => Health::Current,
        Some("Failed") => Health::Failed(
            obj["status"]["message"]
                .as_str()
                .unwrap_or("pod failed")
                .to_string(),
        ),
        Some("Running") if condition_is(obj, "Ready", "True") => Health::Current,
        _ => Health::InProgress(pod_problem(obj).unwrap_or_else(|| "pod not ready".into())),
    }
}

fn service(obj: &Value) -> Health {
    if obj["spec"]["type"] == "LoadBalancer"
        && obj["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    {
        return Health::InProgress("waiting for a load balancer address".into());
    }
    Health::Current
}

fn generic(obj: &Value) -> Health {
    if let Some(h) = generation_pending(obj)
        && obj["status"]["observedGeneration"].is_i64()
    {
        return h;
    }
    match condition(obj, "Ready") {
        Some(c) if c["status"] == "True" => Health::Current,
        Some(c) => Health::InProgress(format!(
            "Ready={}: {}",
            c["status"].as_str().unwrap_or("Unknown"),
            message_of(Some(c))
        )),
        None => Health::Current,
    }
}

/// True for kinds whose pods explain an unhealthy state (pods are listed by `spec.selector`).
pub fn has_pods(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet"
    )
}

/// `spec.selector.matchLabels` as a label selector string.
pub fn pod_selector(obj: &Value) -> Option<String> {
    let labels = obj["spec"]["selector"]["matchLabels"].as_object()?;
    let s: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    (!s.is_empty()).then(|| s.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_rollout() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": 2},
            "spec": {"replicas": 2}, "status": {"observedGeneration": 1}});
        assert!(matches!(assess(&d), Health::InProgress(m) if m.contains("generation")));
        d["status"] = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1});
        assert_eq!(
            assess(&d),
            Health::InProgress("1/2 replicas available".into())
        );
        d["status"]["availableReplicas"] = json!(2);
        assert_eq!(assess(&d), Health::Current);
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]);
        assert_eq!(
            assess(&d),
            Health::Failed("ProgressDeadlineExceeded: too slow".into())
        );
    }

    #[test]
    fn statefulset_and_daemonset() {
        let mut s = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}});
        assert!(matches!(assess(&s), Health::InProgress(m) if m.contains("revision b")));
        s["status"]["currentRevision"] = json!("b");
        assert_eq!(assess(&s), Health::Current);
        let mut ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        assert_eq!(assess(&ds), Health::InProgress("2/3 pods available".into()));
        ds["status"]["numberAvailable"] = json!(3);
        assert_eq!(assess(&ds), Health::Current);
    }

    #[test]
    fn job_pod_pvc_crd_service() {
        let j = json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert!(matches!(assess(&j), Health::Failed(m) if m.starts_with("BackoffLimitExceeded")));
        let j = json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess(&j), Health::Current);
        let p = json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient memory."}]}});
        assert_eq!(
            assess(&p),
            Health::InProgress(
                "Pending: Unschedulable: 0/1 nodes are available: 1 Insufficient memory.".into()
            )
        );
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}});
        assert!(!assess(&pvc).is_current());
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(assess(&crd), Health::Current);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "ClusterIP"}});
        assert_eq!(assess(&svc), Health::Current);
        let lb = json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        assert!(!assess(&lb).is_current());
    }

    #[test]
    fn generic_ready_condition() {
        let x = json!({"apiVersion": "example.com/v1", "kind": "X", "status": {"conditions": [{"type": "Ready", "status": "False", "message": "waiting"}]}});
        assert_eq!(
            assess(&x),
            Health::InProgress("Ready=False: waiting".into())
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert_eq!(assess(&cm), Health::Current);
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "web", "tier": "fe"}}}});
        assert_eq!(pod_selector(&d).as_deref(), Some("app=web,tier=fe"));
    }
}
