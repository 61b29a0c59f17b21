//! Kubeconfig files with embedded client certificates (admin.conf, controller-manager.conf,
//! scheduler.conf, kubelet.conf), written and read back the way kubeadm lays them out.

use base64::Engine as _;
use serde_json::Value;

/// One kubeconfig pailot writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeconfigSpec {
    /// Host path (`/etc/kubernetes/admin.conf`).
    pub path: String,
    /// The client certificate's subject.
    pub common_name: String,
    pub organization: Option<String>,
}

/// The kubeconfigs of a managed control-plane machine named `node` (kubeadm's names and identities).
pub fn control_plane_kubeconfigs(node: &str) -> Vec<KubeconfigSpec> {
    let k = |path: &str, cn: &str, o: Option<&str>| KubeconfigSpec {
        path: path.into(),
        common_name: cn.into(),
        organization: o.map(str::to_string),
    };
    vec![
        k(
            "/etc/kubernetes/admin.conf",
            "kubernetes-admin",
            Some("system:masters"),
        ),
        k(
            "/etc/kubernetes/controller-manager.conf",
            "system:kube-controller-manager",
            None,
        ),
        k(
            "/etc/kubernetes/scheduler.conf",
            "system:kube-scheduler",
            None,
        ),
        kubelet(node, "/etc/kubernetes/kubelet.conf"),
    ]
}

/// The kubelet kubeconfig of node `node` at `path` (`system:node:<node>` in `system:nodes`).
pub fn kubelet(node: &str, path: &str) -> KubeconfigSpec {
    KubeconfigSpec {
        path: path.into(),
        common_name: format!("system:node:{node}"),
        organization: Some("system:nodes".into()),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The kubeconfig text: one cluster `cluster_name` at `server` trusting `ca_pem`, one user with an
/// embedded client certificate and key.
pub fn render(
    cluster_name: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("string serializes");
    let ctx = format!("{user}@{cluster_name}");
    [
        "# Written by pailot bootstrap; `pailot bootstrap --reset --include-pki` removes it."
            .to_string(),
        "apiVersion: v1".into(),
        "kind: Config".into(),
        "clusters:".into(),
        format!("- name: {}", q(cluster_name)),
        "  cluster:".into(),
        format!("    server: {}", q(server)),
        format!("    certificate-authority-data: {}", b64(ca_pem)),
        "users:".into(),
        format!("- name: {}", q(user)),
        "  user:".into(),
        format!("    client-certificate-data: {}", b64(cert_pem)),
        format!("    client-key-data: {}", b64(key_pem)),
        "contexts:".into(),
        format!("- name: {}", q(&ctx)),
        "  context:".into(),
        format!("    cluster: {}", q(cluster_name)),
        format!("    user: {}", q(user)),
        format!("current-context: {}", q(&ctx)),
        "preferences: {}".into(),
        String::new(),
    ]
    .join("\n")
}

/// The parts of a kubeconfig bootstrap checks: the first cluster's server and CA, the first user's
/// client certificate and key (all PEM text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeconfigParts {
    pub server: Option<String>,
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

fn decode(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Read the parts of a kubeconfig (`None` when it is not YAML with a cluster and a user).
pub fn parts(bytes: &[u8]) -> Option<KubeconfigParts> {
    let text = std::str::from_utf8(bytes).ok()?;
    let v: Value = serde_saphyr::from_str(text).ok()?;
    let cluster = &v["clusters"][0]["cluster"];
    let user = &v["users"][0]["user"];
    Some(KubeconfigParts {
        server: cluster["server"].as_str().map(str::to_string),
        ca_pem: decode(&cluster["certificate-authority-data"]),
        cert_pem: decode(&user["client-certificate-data"]),
        key_pem: decode(&user["client-key-data"]),
    })
}

/// The embedded client certificate of a kubeconfig, as PEM.
pub fn client_cert_pem(bytes: &[u8]) -> Option<String> {
    parts(bytes)?.cert_pem
}

/// Decide one kubeconfig: kept byte for byte when its server, CA and client certificate still fit (and
/// no renewal was asked), else written with a new certificate (the existing key kept when it loads).
pub fn plan(
    spec: &KubeconfigSpec,
    ctx: &super::pki::PlanContext,
    ca: &super::pki::Authority,
    cluster_name: &str,
    server: &str,
) -> Result<(Option<super::pki::PkiFile>, super::pki::CertDecision), super::pki::Error> {
    use super::pki::{self, CertAction, CertDecision};
    let name = spec
        .path
        .rsplit('/')
        .next()
        .unwrap_or(&spec.path)
        .to_string();
    let cert_spec = pki::client_spec(&name, &spec.common_name, spec.organization.as_deref());
    let existing = ctx.read(&spec.path)?;
    let found = existing.as_deref().and_then(parts);
    let key = found
        .as_ref()
        .and_then(|p| p.key_pem.as_deref())
        .and_then(pki::load_key);
    let why = match (&existing, &found) {
        (None, _) => None,
        (Some(_), None) => Some("it is not a kubeconfig".to_string()),
        (Some(_), Some(p)) => {
            let cert = p
                .cert_pem
                .as_deref()
                .map(|c| pki::parse_cert_pem(c.as_bytes()));
            if p.server.as_deref() != Some(server) {
                Some(format!(
                    "its server is {:?}, wanted {server:?}",
                    p.server.as_deref().unwrap_or("")
                ))
            } else if p.ca_pem.as_deref() != Some(ca.cert_pem.as_str()) {
                Some("it trusts another CA certificate".into())
            } else {
                match (cert, &key) {
                    (Some(Ok(c)), Some(k)) => pki::mismatch(
                        &c,
                        &cert_spec,
                        Some(&pki::key_spki(k)),
                        Some(&ca.cert),
                        ctx.now,
                    )
                    .map(|m| format!("client certificate: {m}")),
                    (Some(Err(e)), _) => Some(format!("client certificate: {e}")),
                    (None, _) => Some("it has no client certificate".into()),
                    (_, None) => Some("its client key is not a PKCS#8 key".into()),
                }
            }
        }
    };
    if let (Some(bytes), None) = (&existing, &why)
        && !ctx.renew
    {
        let not_after = found
            .as_ref()
            .and_then(|p| p.cert_pem.as_deref())
            .and_then(|c| pki::parse_cert_pem(c.as_bytes()).ok())
            .map(|c| c.not_after)
            .unwrap_or(0);
        let file = pki::keep_or_plan(
            ctx,
            spec.path.clone(),
            bytes.clone(),
            true,
            format!("kubeconfig {name}"),
        );
        return Ok((
            file,
            CertDecision {
                cert: name,
                action: CertAction::Kept,
                detail: format!("expires {}", crate::clock::rfc3339_unix(not_after)),
                not_after_unix: not_after,
            },
        ));
    }
    if let (Some(bytes), Some(w)) = (&existing, &why) {
        ctx.replaceable(&spec.path, bytes, w)?;
    }
    let key = match key {
        Some(k) => k,
        None => pki::new_key()?,
    };
    let cert_pem = ca.issue(&cert_spec, &key, ctx.now)?;
    let not_after = pki::parse_cert_pem(cert_pem.as_bytes())
        .map(|c| c.not_after)
        .unwrap_or(0);
    let text = render(
        cluster_name,
        server,
        &ca.cert_pem,
        &spec.common_name,
        &cert_pem,
        &pki::key_pem(&key),
    );
    let (action, detail) = match (&existing, why) {
        (None, _) => (
            CertAction::Issued,
            format!("expires {}", crate::clock::rfc3339_unix(not_after)),
        ),
        (Some(_), Some(w)) => (
            CertAction::Reissued,
            format!("{w}; expires {}", crate::clock::rfc3339_unix(not_after)),
        ),
        (Some(_), None) => (
            CertAction::Reissued,
            format!("renewed; expires {}", crate::clock::rfc3339_unix(not_after)),
        ),
    };
    Ok((
        Some(super::pki::PkiFile {
            path: spec.path.clone(),
            content: text.into_bytes(),
            private: true,
            what: format!("kubeconfig {name}"),
        }),
        CertDecision {
            cert: name,
            action,
            detail,
            not_after_unix: not_after,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_reads_back() {
        let text = render(
            "single-node",
            "https://10.0.0.11:6443",
            "CA\n",
            "kubernetes-admin",
            "CRT\n",
            "KEY\n",
        );
        let p = parts(text.as_bytes()).unwrap();
        assert_eq!(p.server.as_deref(), Some("https://10.0.0.11:6443"));
        assert_eq!(p.ca_pem.as_deref(), Some("CA\n"));
        assert_eq!(p.cert_pem.as_deref(), Some("CRT\n"));
        assert_eq!(p.key_pem.as_deref(), Some("KEY\n"));
        let v: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["current-context"], "kubernetes-admin@single-node");
        assert_eq!(v["contexts"][0]["context"]["user"], "kubernetes-admin");
        assert!(parts(b"not: [a kubeconfig").is_none());
    }
}
