//! `pailot init`: a paictl quick-start.yaml turned into a Cluster file (SSH passwords are never written).

use std::net::IpAddr;

use serde::Deserialize;

use crate::diag::InputError;

/// The paictl quick-start format (deployment/configCmd.py).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QuickStart {
    /// Host IPs; the first is the master.
    pub machines: Vec<String>,
    pub ssh_username: String,
    /// Read only to warn that it is dropped; never written or printed.
    #[serde(default)]
    pub ssh_password: Option<String>,
    #[serde(default)]
    pub ssh_keyfile_path: Option<String>,
    #[serde(default)]
    pub ssh_secret_name: Option<String>,
    #[serde(default)]
    pub ssh_port: Option<PortValue>,
    #[serde(default)]
    pub dns: Option<String>,
    #[serde(default)]
    pub service_cluster_ip_range: Option<String>,
}

/// `ssh-port` as paictl accepted it: a number or a string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u64),
    Text(String),
}

/// The generated Cluster file and what the user must be told.
#[derive(Clone, Debug, PartialEq)]
pub struct InitOutput {
    /// Cluster file text (YAML with comments).
    pub yaml: String,
    /// Warnings for stderr (never containing a secret).
    pub warnings: Vec<String>,
}

/// A `.sops.yaml` for a new deployment repository: one creation rule that encrypts every
/// `*.sops.yaml`/`*.sops.json` to `recipients` (age public keys, `age1…`), checked here.
pub fn sops_config(recipients: &[String]) -> Result<String, InputError> {
    if recipients.is_empty() {
        return Err(InputError::new(
            "--sops-age-recipient",
            "no age recipient given",
        ));
    }
    for r in recipients {
        // age marks X25519 deprecated for new keys; sops users have them, and age-keygen makes them.
        #[allow(deprecated)]
        let ok =
            r.parse::<age::x25519::Recipient>().is_ok() || r.parse::<age::pq::Recipient>().is_ok();
        if !ok {
            return Err(InputError::new(
                "--sops-age-recipient",
                format!("{r:?} is not an age public key (age1…, printed by age-keygen)"),
            ));
        }
    }
    Ok(format!(
        "# sops creation rules (docs/secrets.md): `sops -e -i clusters/<name>.secrets.sops.yaml`\n\
         # encrypts to these age recipients; each holder of one of their keys can decrypt.\n\
         creation_rules:\n  - path_regex: \\.sops\\.(ya?ml|json)$\n    age: {}\n",
        recipients.join(",")
    ))
}

/// Why a password is never copied into the Cluster file.
pub const PASSWORD_WARNING: &str = "ssh-password is NOT written to the Cluster file: the cluster file lives in git, \
and a password there leaks to every clone, fork and CI log; set up key-based SSH instead \
(ssh-copy-id, then machines[].ssh.keyFile)";

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1)
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Convert quick-start `text` (read from `file`) into a Cluster file named `name`.
pub fn convert(text: &str, file: &str, name: &str) -> Result<InitOutput, InputError> {
    let qs: QuickStart =
        serde_saphyr::from_str(text).map_err(|e| crate::chart::yaml::yaml_error(file, &e))?;
    let mut warnings = Vec::new();
    if qs.machines.is_empty() {
        return Err(
            InputError::new(file, "machines must list at least one host IP")
                .at(line_of(text, "machines"), 1)
                .pointer("/machines"),
        );
    }
    for (i, m) in qs.machines.iter().enumerate() {
        if m.trim().parse::<IpAddr>().is_err() {
            return Err(
                InputError::new(file, format!("machines[{i}] {m:?} is not an IP address"))
                    .at(line_of(text, m), 1)
                    .pointer(format!("/machines/{i}")),
            );
        }
    }
    if qs.ssh_username.trim().is_empty() {
        return Err(InputError::new(file, "ssh-username must not be empty")
            .at(line_of(text, "ssh-username"), 1)
            .pointer("/ssh-username"));
    }
    let port: u16 = match &qs.ssh_port {
        None => 22,
        Some(PortValue::Number(n)) => {
            u16::try_from(*n).ok().filter(|p| *p > 0).ok_or_else(|| {
                InputError::new(file, format!("ssh-port {n} is not a TCP port"))
                    .at(line_of(text, "ssh-port"), 1)
                    .pointer("/ssh-port")
            })?
        }
        Some(PortValue::Text(s)) => {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    InputError::new(file, format!("ssh-port {s:?} is not a TCP port"))
                        .at(line_of(text, "ssh-port"), 1)
                        .pointer("/ssh-port")
                })?
        }
    };
    if qs.ssh_password.is_some() {
        warnings.push(format!("{file}: {PASSWORD_WARNING}"));
    }
    if qs.ssh_password.is_some() && qs.ssh_keyfile_path.is_none() {
        warnings.push(format!(
            "{file}: no ssh-keyfile-path given: machines[].ssh.keyFile is left unset; add one"
        ));
    }
    if qs.ssh_secret_name.is_some() {
        warnings.push(format!(
            "{file}: ssh-secret-name is a paictl Kubernetes secret; pailot does not use it"
        ));
    }
    if qs.dns.is_none() {
        warnings.push(format!(
            "{file}: no dns given: paictl read the master's /etc/resolv.conf over SSH; set kubernetes.clusterDns if kubelets need it"
        ));
    }

    let single = qs.machines.len() == 1;
    let mut y = String::new();
    y.push_str("# Generated by `pailot init` from a paictl quick-start.yaml.\n");
    y.push_str("# FILL IN each machine's real capacity (memory, cpu, gpu): the values below are\n");
    y.push_str("# placeholders, and `pailot budget` checks what would run there against them.\n");
    y.push_str("# Machine names default to the IP (paictl's nodename); use the kubelet's node name if it differs.\n");
    y.push_str("# SSH passwords are never stored here: use key files (ssh.keyFile).\n");
    y.push_str("apiVersion: pailot.dev/v1\nkind: Cluster\n");
    y.push_str(&format!("name: {}\n", q(name)));
    y.push_str(if single {
        "overlays: [base, single-node-lowmem]\n"
    } else {
        "overlays: [base]\n"
    });
    y.push_str("namespace: default\ndataPath: /datastorage\n");
    y.push_str("kubernetes:\n");
    y.push_str(&format!(
        "  serviceClusterIpRange: {}\n",
        q(qs.service_cluster_ip_range
            .as_deref()
            .unwrap_or("10.254.0.0/16"))
    ));
    if let Some(dns) = &qs.dns {
        y.push_str(&format!("  clusterDns: {}\n", q(dns)));
    }
    y.push_str("machines:\n");
    for (i, ip) in qs.machines.iter().enumerate() {
        let ip = ip.trim();
        let roles = if single {
            "[k8s-master, pai-master, pai-worker, dashboard]"
        } else if i == 0 {
            "[k8s-master, pai-master, dashboard]"
        } else {
            "[pai-worker]"
        };
        y.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            q(ip),
            q(ip)
        ));
        y.push_str("    capacity: {memory: 32Gi, cpu: \"8\", gpu: 0}   # PLACEHOLDER: set this machine's real capacity\n");
        y.push_str(&format!(
            "    ssh: {{user: {}, port: {port}",
            q(qs.ssh_username.trim())
        ));
        if let Some(k) = &qs.ssh_keyfile_path {
            y.push_str(&format!(", keyFile: {}", q(k)));
        }
        y.push_str("}\n");
    }
    Ok(InitOutput { yaml: y, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, Role};

    #[test]
    fn single_machine_gets_all_roles_and_lowmem_and_no_password() {
        let text = "machines:\n  - 192.168.1.10\nssh-username: pai\nssh-password: hunter2-secret\nssh-port: \"2222\"\ndns: 8.8.8.8\n";
        let out = convert(text, "quick-start.yaml", "pai").unwrap();
        assert!(!out.yaml.contains("hunter2-secret"));
        assert!(!out.warnings.iter().any(|w| w.contains("hunter2-secret")));
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("NOT written") && w.contains("git"))
        );
        let c: Cluster = serde_saphyr::from_str(&out.yaml).unwrap();
        assert_eq!(
            c.overlays,
            vec!["base".to_string(), "single-node-lowmem".into()]
        );
        assert_eq!(
            c.machines[0].roles,
            vec![
                Role::K8sMaster,
                Role::PaiMaster,
                Role::PaiWorker,
                Role::Dashboard
            ]
        );
        assert_eq!(c.machines[0].ssh.as_ref().unwrap().port, 2222);
        assert_eq!(c.kubernetes.cluster_dns.as_deref(), Some("8.8.8.8"));
    }

    #[test]
    fn several_machines_first_is_master() {
        let text = "machines: [10.0.0.1, 10.0.0.2]\nssh-username: pai\nssh-keyfile-path: /root/.ssh/id_ed25519\n";
        let out = convert(text, "qs.yaml", "lab").unwrap();
        let c: Cluster = serde_saphyr::from_str(&out.yaml).unwrap();
        assert_eq!(c.overlays, vec!["base".to_string()]);
        assert_eq!(c.machines[1].roles, vec![Role::PaiWorker]);
        assert_eq!(
            c.machines[0].ssh.as_ref().unwrap().key_file.as_deref(),
            Some("/root/.ssh/id_ed25519")
        );
        assert!(out.warnings.iter().all(|w| !w.contains("NOT written")));
    }

    #[test]
    fn bad_ip_names_index_and_line() {
        let err = convert(
            "machines:\n  - 10.0.0.1\n  - not-an-ip\nssh-username: pai\n",
            "qs.yaml",
            "x",
        )
        .unwrap_err();
        assert_eq!(err.pointer.as_deref(), Some("/machines/1"));
        assert_eq!(err.line, Some(3));
    }
}
