//! Kubernetes PKI with kubeadm's file names under `/etc/kubernetes/pki`: certificates issued with rcgen
//! (ECDSA P-256), existing ones read back with x509-parser so that valid certificates are kept.
//!
//! Guarantees: a certificate that parses, is signed by the current CA, matches its key, names the wanted
//! subject and SANs and has not expired is kept byte for byte (so a second bootstrap changes nothing);
//! `--renew-certs` reissues every certificate with its existing key (the CA too: same key and subject, so
//! every certificate it signed stays valid); keys are written 0600.
//! Caveats: keys pailot did not write are used only when rcgen can load them (PKCS#8 PEM); the CA is never
//! replaced by a new key unless it is unusable and pailot wrote it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Serialize;

use crate::cluster::{Cluster, Machine, Role};

/// Host directory of the PKI (kubeadm's).
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
/// Validity of a CA certificate (kubeadm: 10 years).
pub const CA_DAYS: i64 = 3650;
/// Validity of every other certificate (kubeadm: 1 year).
pub const LEAF_DAYS: i64 = 365;
const DAY: i64 = 86_400;

/// Why the PKI could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value of the cluster file cannot go into a certificate.
    #[error("{0}")]
    Config(String),
    /// An existing file cannot be used and pailot did not write it.
    #[error("{path}: {message}; move it away (or bootstrap with --force to replace it)")]
    Unusable { path: String, message: String },
    /// rcgen refused the parameters or the key.
    #[error("failed to issue {what}")]
    Issue {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// Reading a file failed.
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP address when `s` parses as one, else a DNS name.
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// What a certificate is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Ca,
    Server,
    Client,
    ServerClient,
}

/// One certificate of the PKI, or a client certificate embedded in a kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// kubeadm's file stem under the PKI directory (`apiserver`, `etcd/server`), or the kubeconfig
    /// file name for embedded client certificates (`admin.conf`).
    pub name: String,
    pub common_name: String,
    pub organization: Option<String>,
    pub usage: Usage,
    /// Stem of the CA that signs it; `None` for a CA.
    pub issuer: Option<String>,
    pub sans: Vec<San>,
}

impl CertSpec {
    fn ca(name: &str, cn: &str) -> CertSpec {
        CertSpec {
            name: name.into(),
            common_name: cn.into(),
            organization: None,
            usage: Usage::Ca,
            issuer: None,
            sans: vec![],
        }
    }

    fn leaf(name: &str, cn: &str, org: Option<&str>, usage: Usage, issuer: &str) -> CertSpec {
        CertSpec {
            name: name.into(),
            common_name: cn.into(),
            organization: org.map(str::to_string),
            usage,
            issuer: Some(issuer.into()),
            sans: vec![],
        }
    }

    /// The metric label of this certificate: the kubeadm file stem with `/` as `-` (`etcd-ca`).
    pub fn label(&self) -> String {
        self.name.replace('/', "-")
    }

    fn days(&self) -> i64 {
        if self.usage == Usage::Ca {
            CA_DAYS
        } else {
            LEAF_DAYS
        }
    }
}

/// The certificates and keys a managed control-plane machine needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiSpec {
    /// CAs first, then the certificates they sign.
    pub certs: Vec<CertSpec>,
}

/// The first address of a CIDR (`10.254.0.0/16` -> `10.254.0.1`): the `kubernetes` Service's ClusterIP.
pub fn first_service_ip(cidr: &str) -> Result<IpAddr, Error> {
    let bad = || {
        Error::Config(format!(
            "kubernetes.serviceClusterIpRange {cidr:?} is not a CIDR (e.g. 10.254.0.0/16)"
        ))
    };
    let (addr, bits) = cidr.split_once('/').ok_or_else(bad)?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    match addr.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(a) if bits <= 30 => {
            let n = u32::from(a);
            let net = if bits == 0 {
                0
            } else {
                n & (u32::MAX << (32 - bits))
            };
            Ok(IpAddr::V4((net + 1).into()))
        }
        IpAddr::V6(a) if bits <= 126 => {
            let n = u128::from(a);
            let net = if bits == 0 {
                0
            } else {
                n & (u128::MAX << (128 - bits))
            };
            Ok(IpAddr::V6((net + 1).into()))
        }
        _ => Err(bad()),
    }
}

/// The machine whose static pods run the control plane (the chart renders it on the first k8s-master).
pub fn control_plane_machine(cluster: &Cluster) -> Option<&Machine> {
    cluster.with_role(Role::K8sMaster).next()
}

/// SANs of the API server's serving certificate: every k8s-master's address, name and hostname, the
/// `kubernetes` Service's names and ClusterIP, and localhost.
pub fn apiserver_sans(cluster: &Cluster) -> Result<Vec<San>, Error> {
    let domain = &cluster.kubernetes.cluster_domain;
    let mut sans: Vec<San> = vec![];
    let mut push = |s: San| {
        if !sans.contains(&s) {
            sans.push(s);
        }
    };
    for m in cluster.with_role(Role::K8sMaster) {
        push(San::parse(&m.address));
        push(San::Dns(m.name.clone()));
        push(San::parse(m.hostname()));
    }
    for d in [
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
    ] {
        push(San::Dns(d));
    }
    push(San::Ip(first_service_ip(
        &cluster.kubernetes.service_cluster_ip_range,
    )?));
    push(San::Ip("127.0.0.1".parse().expect("literal")));
    Ok(sans)
}

/// The PKI of a managed control-plane machine: kubeadm's certificates, plus the etcd ones when
/// etcd listens beyond loopback (`etcd_beyond_loopback`).
pub fn control_plane_spec(
    cluster: &Cluster,
    machine: &Machine,
    etcd_beyond_loopback: bool,
) -> Result<PkiSpec, Error> {
    let mut certs = vec![
        CertSpec::ca("ca", "kubernetes"),
        CertSpec::ca("front-proxy-ca", "front-proxy-ca"),
    ];
    let mut apiserver = CertSpec::leaf("apiserver", "kube-apiserver", None, Usage::Server, "ca");
    apiserver.sans = apiserver_sans(cluster)?;
    certs.push(apiserver);
    certs.push(CertSpec::leaf(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        Usage::Client,
        "ca",
    ));
    certs.push(CertSpec::leaf(
        "front-proxy-client",
        "front-proxy-client",
        None,
        Usage::Client,
        "front-proxy-ca",
    ));
    if etcd_beyond_loopback {
        let mut etcd_sans = vec![
            San::Dns("localhost".into()),
            San::Ip("127.0.0.1".parse().expect("literal")),
            San::Ip("::1".parse().expect("literal")),
            San::Dns(machine.name.clone()),
        ];
        for s in [San::parse(&machine.address), San::parse(machine.hostname())] {
            if !etcd_sans.contains(&s) {
                etcd_sans.push(s);
            }
        }
        certs.insert(2, CertSpec::ca("etcd/ca", "etcd-ca"));
        let mut server = CertSpec::leaf(
            "etcd/server",
            &machine.name,
            None,
            Usage::ServerClient,
            "etcd/ca",
        );
        server.sans = etcd_sans.clone();
        let mut peer = CertSpec::leaf(
            "etcd/peer",
            &machine.name,
            None,
            Usage::ServerClient,
            "etcd/ca",
        );
        peer.sans = etcd_sans;
        certs.push(server);
        certs.push(peer);
        certs.push(CertSpec::leaf(
            "etcd/healthcheck-client",
            "kube-etcd-healthcheck-client",
            None,
            Usage::Client,
            "etcd/ca",
        ));
        certs.push(CertSpec::leaf(
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            None,
            Usage::Client,
            "etcd/ca",
        ));
    }
    Ok(PkiSpec { certs })
}

/// Client certificate of a kubeconfig (signed by `ca`).
pub fn client_spec(file: &str, common_name: &str, organization: Option<&str>) -> CertSpec {
    CertSpec::leaf(file, common_name, organization, Usage::Client, "ca")
}

/// `<PKI_DIR>/<stem>.crt`.
pub fn cert_path(stem: &str) -> String {
    format!("{PKI_DIR}/{stem}.crt")
}

/// `<PKI_DIR>/<stem>.key`.
pub fn key_path(stem: &str) -> String {
    format!("{PKI_DIR}/{stem}.key")
}

/// A certificate read back: what bootstrap compares with the spec.
#[derive(Clone, Debug)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub issuer_der: Vec<u8>,
    pub subject_der: Vec<u8>,
    pub spki: Vec<u8>,
    pub sans: Vec<San>,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    pub not_after: i64,
}

/// Parse the first certificate of a PEM text.
pub fn parse_cert_pem(pem: &[u8]) -> Result<ParsedCert, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    if p.label != "CERTIFICATE" {
        return Err(format!("PEM block is {:?}, not CERTIFICATE", p.label));
    }
    parse_cert_der(&p.contents)
}

/// Parse a DER certificate.
pub fn parse_cert_der(der: &[u8]) -> Result<ParsedCert, String> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().ok().map(str::to_string);
    let mut sans = vec![];
    if let Ok(Some(ext)) = x.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.push(San::Dns(d.to_string()))
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        sans.push(San::Ip(IpAddr::from(a)));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        sans.push(San::Ip(IpAddr::from(a)));
                    }
                }
                _ => {}
            }
        }
    }
    let eku = x
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value.clone());
    Ok(ParsedCert {
        der: der.to_vec(),
        common_name: x.subject().iter_common_name().next().and_then(text),
        organizations: x.subject().iter_organization().filter_map(text).collect(),
        issuer_der: x.issuer().as_raw().to_vec(),
        subject_der: x.subject().as_raw().to_vec(),
        spki: x.public_key().raw.to_vec(),
        sans,
        is_ca: x.is_ca(),
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        not_after: x.validity().not_after.timestamp(),
    })
}

/// True when `cert` carries a valid signature of the key `issuer_spki` (DER SubjectPublicKeyInfo).
pub fn signed_by(cert: &ParsedCert, issuer_spki: &[u8]) -> bool {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(&cert.der) else {
        return false;
    };
    let Ok((_, spki)) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
            x509_parser::error::X509Error,
        >>::from_der(issuer_spki)
    else {
        return false;
    };
    x.verify_signature(Some(&spki)).is_ok()
}

/// Why an existing certificate does not fit its spec (`None`: it fits).
pub fn mismatch(
    cert: &ParsedCert,
    spec: &CertSpec,
    key_spki: Option<&[u8]>,
    issuer: Option<&ParsedCert>,
    now: i64,
) -> Option<String> {
    if cert.not_after <= now {
        return Some(format!(
            "expired {}",
            crate::clock::rfc3339_unix(cert.not_after)
        ));
    }
    if let Some(k) = key_spki
        && k != cert.spki.as_slice()
    {
        return Some("the certificate does not match its key".into());
    }
    if cert.common_name.as_deref() != Some(spec.common_name.as_str()) {
        return Some(format!(
            "common name is {:?}, wanted {:?}",
            cert.common_name.as_deref().unwrap_or(""),
            spec.common_name
        ));
    }
    if let Some(o) = &spec.organization
        && !cert.organizations.contains(o)
    {
        return Some(format!("organization {o:?} missing"));
    }
    let (server, client) = match spec.usage {
        Usage::Ca => (false, false),
        Usage::Server => (true, false),
        Usage::Client => (false, true),
        Usage::ServerClient => (true, true),
    };
    if spec.usage == Usage::Ca && !cert.is_ca {
        return Some("not a CA certificate".into());
    }
    if (server && !cert.server_auth) || (client && !cert.client_auth) {
        return Some("extended key usage does not allow its use".into());
    }
    let missing: Vec<String> = spec
        .sans
        .iter()
        .filter(|s| !cert.sans.contains(s))
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() {
        return Some(format!("SANs {} missing", missing.join(", ")));
    }
    match issuer {
        Some(ca) if cert.issuer_der != ca.subject_der || !signed_by(cert, &ca.spki) => {
            Some("not signed by the current CA".into())
        }
        _ => None,
    }
}

/// A CA able to sign: its certificate (PEM and parsed) and its key.
pub struct Authority {
    pub cert_pem: String,
    pub cert: ParsedCert,
    key: KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("common_name", &self.cert.common_name)
            .finish_non_exhaustive()
    }
}

fn params(spec: &CertSpec, now: i64) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = &spec.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, spec.common_name.as_str());
    p.distinguished_name = dn;
    // A little backdating, as kubeadm does, so a host whose clock is slightly behind accepts it.
    p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 300)
        .map_err(|_| Error::Config("the clock is out of range".into()))?;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(now + spec.days() * DAY)
        .map_err(|_| Error::Config("the clock is out of range".into()))?;
    p.serial_number = Some(SerialNumber::from(rand::random::<u64>() >> 1 | 1));
    match spec.usage {
        Usage::Ca => {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::KeyCertSign,
            ];
        }
        u => {
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            if matches!(u, Usage::Server | Usage::ServerClient) {
                p.extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if matches!(u, Usage::Client | Usage::ServerClient) {
                p.extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth);
            }
            p.use_authority_key_identifier_extension = true;
        }
    }
    for s in &spec.sans {
        p.subject_alt_names.push(match s {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(d) => SanType::DnsName(d.as_str().try_into().map_err(|e| Error::Issue {
                what: format!("certificate {} (SAN {d:?})", spec.name),
                source: e,
            })?),
        });
    }
    Ok(p)
}

/// A new ECDSA P-256 key pair.
pub fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Issue {
        what: "a key pair".into(),
        source,
    })
}

/// Load a PKCS#8 PEM private key.
pub fn load_key(pem: &str) -> Option<KeyPair> {
    KeyPair::from_pem(pem).ok()
}

/// DER SubjectPublicKeyInfo of a key.
pub fn key_spki(key: &KeyPair) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(key)
}

/// The PEM of a key pair's private key (PKCS#8).
pub fn key_pem(key: &KeyPair) -> String {
    key.serialize_pem()
}

/// The PEM of a key pair's public key (`PUBLIC KEY`, as `sa.pub`).
pub fn public_key_pem(key: &KeyPair) -> String {
    key.public_key_pem()
}

impl Authority {
    /// A new self-signed CA for `spec`.
    pub fn create(spec: &CertSpec, key: KeyPair, now: i64) -> Result<Authority, Error> {
        let p = params(spec, now)?;
        let cert = p.self_signed(&key).map_err(|source| Error::Issue {
            what: format!("certificate {}", spec.name),
            source,
        })?;
        let cert_pem = cert.pem();
        let parsed = parse_cert_der(cert.der()).map_err(Error::Config)?;
        Ok(Authority {
            cert_pem,
            cert: parsed,
            key,
        })
    }

    /// An existing CA (certificate PEM + key) to sign with.
    pub fn load(cert_pem: &str, key: KeyPair) -> Result<Authority, String> {
        let cert = parse_cert_pem(cert_pem.as_bytes())?;
        if !cert.is_ca {
            return Err("not a CA certificate".into());
        }
        if key_spki(&key) != cert.spki {
            return Err("the certificate does not match its key".into());
        }
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            cert,
            key,
        })
    }

    /// The same CA (same key and subject) with a new validity: everything it signed stays valid.
    pub fn renew(&self, spec: &CertSpec, now: i64) -> Result<Authority, Error> {
        let key = KeyPair::from_pem(&self.key.serialize_pem()).map_err(|source| Error::Issue {
            what: format!("certificate {}", spec.name),
            source,
        })?;
        Authority::create(spec, key, now)
    }

    /// Issue a certificate for `spec` and `key`, signed by this CA; returns its PEM.
    pub fn issue(&self, spec: &CertSpec, key: &KeyPair, now: i64) -> Result<String, Error> {
        let p = params(spec, now)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert.der.clone().into(), &self.key).map_err(
            |source| Error::Issue {
                what: format!("certificate {} (reading its CA)", spec.name),
                source,
            },
        )?;
        let cert = p.signed_by(key, &issuer).map_err(|source| Error::Issue {
            what: format!("certificate {}", spec.name),
            source,
        })?;
        Ok(cert.pem())
    }
}

/// One certificate's expiry, for the `pailot_certificate_expiry_timestamp_seconds{cert}` metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertExpiry {
    /// kubeadm file stem (`apiserver`, `front-proxy-ca`, `etcd-server`) or kubeconfig name (`admin.conf`).
    pub cert: String,
    /// Host path of the file it was read from.
    pub path: String,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// The certificates whose expiry is reported: every kubeadm certificate file and the client
/// certificates embedded in the kubeconfigs, as (label, host path, is a kubeconfig).
pub const KNOWN_CERTS: &[(&str, &str, bool)] = &[
    ("ca", "/etc/kubernetes/pki/ca.crt", false),
    ("apiserver", "/etc/kubernetes/pki/apiserver.crt", false),
    (
        "apiserver-kubelet-client",
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        false,
    ),
    (
        "front-proxy-ca",
        "/etc/kubernetes/pki/front-proxy-ca.crt",
        false,
    ),
    (
        "front-proxy-client",
        "/etc/kubernetes/pki/front-proxy-client.crt",
        false,
    ),
    ("etcd-ca", "/etc/kubernetes/pki/etcd/ca.crt", false),
    ("etcd-server", "/etc/kubernetes/pki/etcd/server.crt", false),
    ("etcd-peer", "/etc/kubernetes/pki/etcd/peer.crt", false),
    (
        "etcd-healthcheck-client",
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        false,
    ),
    (
        "apiserver-etcd-client",
        "/etc/kubernetes/pki/apiserver-etcd-client.crt",
        false,
    ),
    ("admin.conf", "/etc/kubernetes/admin.conf", true),
    (
        "controller-manager.conf",
        "/etc/kubernetes/controller-manager.conf",
        true,
    ),
    ("scheduler.conf", "/etc/kubernetes/scheduler.conf", true),
    ("kubelet.conf", "/etc/kubernetes/kubelet.conf", true),
];

/// Expiry of every known certificate present under `root` (missing files are skipped; so are files
/// this process may not read, such as the root-only kubeconfigs for the daemon's user). Sorted by expiry.
pub fn certificate_expiries(root: &Path) -> Result<Vec<CertExpiry>, Error> {
    let mut out = vec![];
    for (label, host_path, kubeconfig) in KNOWN_CERTS {
        let real = super::under_root(root, host_path);
        let bytes = match std::fs::read(&real) {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                continue;
            }
            Err(source) => return Err(Error::Io { path: real, source }),
        };
        let cert = if *kubeconfig {
            super::kubeconfig::client_cert_pem(&bytes)
                .and_then(|p| parse_cert_pem(p.as_bytes()).ok())
        } else {
            parse_cert_pem(&bytes).ok()
        };
        // An unparsable file still counts: as already expired, so the alert fires for it.
        out.push(CertExpiry {
            cert: label.to_string(),
            path: host_path.to_string(),
            not_after_unix: cert.map(|c| c.not_after).unwrap_or(0),
        });
    }
    out.sort_by(|a, b| {
        a.not_after_unix
            .cmp(&b.not_after_unix)
            .then(a.cert.cmp(&b.cert))
    });
    Ok(out)
}

/// The certificate that expires first under `root` (`None` without a PKI, e.g. an external control plane).
pub fn earliest_expiry(root: &Path) -> Result<Option<CertExpiry>, Error> {
    Ok(certificate_expiries(root)?.into_iter().next())
}

/// What bootstrap did with one certificate or key, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertAction {
    /// Valid and kept.
    Kept,
    /// Did not exist: issued.
    Issued,
    /// Reissued (renewal, or the old one no longer fitted).
    Reissued,
}

/// One decision of the PKI plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertDecision {
    pub cert: String,
    pub action: CertAction,
    /// Why it was reissued, or `expires <date>`.
    pub detail: String,
    pub not_after_unix: i64,
}

/// A file of the PKI to write (or to keep with the same bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiFile {
    pub path: String,
    pub content: Vec<u8>,
    pub private: bool,
    pub what: String,
}

/// Inputs of the PKI planner beside the spec.
pub struct PlanContext<'a> {
    pub root: &'a Path,
    pub now: i64,
    /// `--renew-certs`.
    pub renew: bool,
    /// `--force`: replace files pailot did not write that cannot be used.
    pub force: bool,
    /// Host path -> sha256 of what the previous run wrote (files pailot owns).
    pub ours: &'a BTreeMap<String, String>,
}

impl PlanContext<'_> {
    /// The bytes at `host_path` under the root, if any.
    pub fn read(&self, host_path: &str) -> Result<Option<Vec<u8>>, Error> {
        let real = super::under_root(self.root, host_path);
        match std::fs::read(&real) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path: real, source }),
        }
    }

    /// True when `bytes` at `host_path` are what pailot wrote there.
    pub fn is_ours(&self, host_path: &str, bytes: &[u8]) -> bool {
        self.ours.get(host_path).map(String::as_str) == Some(super::sha256_hex(bytes).as_str())
    }

    /// May `host_path` (holding `bytes`) be replaced? Ours, or `--force`.
    pub fn replaceable(&self, host_path: &str, bytes: &[u8], why: &str) -> Result<(), Error> {
        if self.force || self.is_ours(host_path, bytes) {
            Ok(())
        } else {
            Err(Error::Unusable {
                path: host_path.to_string(),
                message: why.to_string(),
            })
        }
    }
}

/// The planned PKI: files to write (kept files carry their current bytes) and the CAs to sign with.
#[derive(Debug, Default)]
pub struct PkiPlan {
    pub files: Vec<PkiFile>,
    pub decisions: Vec<CertDecision>,
    /// CA stem -> authority.
    pub authorities: BTreeMap<String, Authority>,
}

/// The file to plan for `content` at `path`: `None` when the host already holds exactly these bytes
/// and pailot did not write them (a valid file is used, not adopted: it stays out of the record).
pub fn keep_or_plan(
    ctx: &PlanContext,
    path: String,
    content: Vec<u8>,
    private: bool,
    what: String,
) -> Option<PkiFile> {
    let existing_foreign =
        matches!(ctx.read(&path), Ok(Some(b)) if b == content && !ctx.is_ours(&path, &b));
    (!existing_foreign).then_some(PkiFile {
        path,
        content,
        private,
        what,
    })
}

impl PkiPlan {
    fn file(
        &mut self,
        ctx: &PlanContext,
        path: String,
        content: Vec<u8>,
        private: bool,
        what: String,
    ) {
        self.files
            .extend(keep_or_plan(ctx, path, content, private, what));
    }

    /// The authority that signs `spec`.
    pub fn authority(&self, stem: &str) -> Option<&Authority> {
        self.authorities.get(stem)
    }
}

/// Decide every certificate and key of `spec` (and the service-account key pair when `service_account`).
pub fn plan(spec: &PkiSpec, service_account: bool, ctx: &PlanContext) -> Result<PkiPlan, Error> {
    let mut out = PkiPlan::default();
    for c in &spec.certs {
        let crt_path = cert_path(&c.name);
        let key_path_s = key_path(&c.name);
        let crt = ctx.read(&crt_path)?;
        let key = ctx.read(&key_path_s)?;
        let loaded_key = key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(load_key);
        let parsed = crt.as_deref().map(parse_cert_pem);
        if c.usage == Usage::Ca {
            let (auth, action, detail) =
                plan_ca(c, ctx, crt.as_deref(), key.as_deref(), parsed, loaded_key)?;
            out.decisions.push(CertDecision {
                cert: c.label(),
                action,
                detail,
                not_after_unix: auth.cert.not_after,
            });
            out.file(
                ctx,
                crt_path,
                auth.cert_pem.clone().into_bytes(),
                false,
                format!("certificate {}", c.name),
            );
            out.file(
                ctx,
                key_path_s,
                key_pem(&auth.key).into_bytes(),
                true,
                format!("key {}", c.name),
            );
            out.authorities.insert(c.name.clone(), auth);
            continue;
        }
        let issuer_stem = c.issuer.as_deref().expect("leaf has an issuer");
        let ca = out
            .authorities
            .get(issuer_stem)
            .expect("CAs come before what they sign");
        let (cert_pem, key_pair, action, detail) = plan_leaf(
            c,
            ctx,
            ca,
            &crt_path,
            crt.as_deref(),
            &key_path_s,
            key.as_deref(),
            parsed,
            loaded_key,
        )?;
        let not_after = parse_cert_pem(cert_pem.as_bytes())
            .map(|p| p.not_after)
            .unwrap_or(0);
        out.decisions.push(CertDecision {
            cert: c.label(),
            action,
            detail,
            not_after_unix: not_after,
        });
        out.file(
            ctx,
            crt_path,
            cert_pem.into_bytes(),
            false,
            format!("certificate {}", c.name),
        );
        out.file(
            ctx,
            key_path_s,
            key_pem(&key_pair).into_bytes(),
            true,
            format!("key {}", c.name),
        );
    }
    if service_account {
        plan_service_account(ctx, &mut out)?;
    }
    Ok(out)
}

fn expires(t: i64) -> String {
    format!("expires {}", crate::clock::rfc3339_unix(t))
}

type Planned = (Authority, CertAction, String);

fn plan_ca(
    c: &CertSpec,
    ctx: &PlanContext,
    crt: Option<&[u8]>,
    key: Option<&[u8]>,
    parsed: Option<Result<ParsedCert, String>>,
    loaded_key: Option<KeyPair>,
) -> Result<Planned, Error> {
    let crt_path = cert_path(&c.name);
    let key_path_s = key_path(&c.name);
    match (crt, key) {
        (None, None) => {
            let auth = Authority::create(c, new_key()?, ctx.now)?;
            let d = expires(auth.cert.not_after);
            Ok((auth, CertAction::Issued, d))
        }
        (Some(crt), Some(key)) => {
            let usable = match (parsed.expect("read"), loaded_key) {
                (Ok(p), Some(k)) => {
                    if !p.is_ca {
                        Err("not a CA certificate".to_string())
                    } else if key_spki(&k) != p.spki {
                        Err("the certificate does not match its key".into())
                    } else {
                        let text = std::str::from_utf8(crt).unwrap_or_default();
                        Authority::load(text, k)
                    }
                }
                (Err(e), _) => Err(e),
                (_, None) => Err(format!(
                    "{key_path_s} is not a PKCS#8 PEM key pailot can sign with"
                )),
            };
            match usable {
                Ok(auth) if ctx.renew => {
                    let renewed = auth.renew(c, ctx.now)?;
                    let d = format!(
                        "renewed with the same key, {}",
                        expires(renewed.cert.not_after)
                    );
                    Ok((renewed, CertAction::Reissued, d))
                }
                Ok(auth) if auth.cert.not_after <= ctx.now => {
                    ctx.replaceable(&crt_path, crt, "the CA certificate expired")?;
                    let renewed = auth.renew(c, ctx.now)?;
                    let d = format!(
                        "expired; renewed with the same key, {}",
                        expires(renewed.cert.not_after)
                    );
                    Ok((renewed, CertAction::Reissued, d))
                }
                Ok(auth) => {
                    let d = expires(auth.cert.not_after);
                    Ok((auth, CertAction::Kept, d))
                }
                Err(why) => {
                    // A new CA invalidates everything it signed; only a CA pailot wrote is replaced.
                    ctx.replaceable(&crt_path, crt, &why)?;
                    ctx.replaceable(&key_path_s, key, &why)?;
                    let auth = Authority::create(c, new_key()?, ctx.now)?;
                    Ok((auth, CertAction::Reissued, format!("{why}; new CA")))
                }
            }
        }
        (Some(crt), None) => {
            ctx.replaceable(&crt_path, crt, &format!("its key {key_path_s} is missing"))?;
            let auth = Authority::create(c, new_key()?, ctx.now)?;
            Ok((auth, CertAction::Reissued, "key was missing; new CA".into()))
        }
        (None, Some(key)) => {
            let Some(k) = loaded_key else {
                ctx.replaceable(&key_path_s, key, "not a PKCS#8 PEM key")?;
                let auth = Authority::create(c, new_key()?, ctx.now)?;
                let d = expires(auth.cert.not_after);
                return Ok((auth, CertAction::Issued, d));
            };
            let auth = Authority::create(c, k, ctx.now)?;
            let d = expires(auth.cert.not_after);
            Ok((auth, CertAction::Issued, d))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_leaf(
    c: &CertSpec,
    ctx: &PlanContext,
    ca: &Authority,
    crt_path: &str,
    crt: Option<&[u8]>,
    key_path_s: &str,
    key: Option<&[u8]>,
    parsed: Option<Result<ParsedCert, String>>,
    loaded_key: Option<KeyPair>,
) -> Result<(String, KeyPair, CertAction, String), Error> {
    // The key: kept when it loads (renewals keep keys, as kubeadm's do), else a new one.
    let key_pair = match (key, loaded_key) {
        (_, Some(k)) => k,
        (None, None) => new_key()?,
        (Some(bytes), None) => {
            ctx.replaceable(key_path_s, bytes, "not a PKCS#8 PEM key")?;
            new_key()?
        }
    };
    let spki = key_spki(&key_pair);
    let Some(crt) = crt else {
        let pem = ca.issue(c, &key_pair, ctx.now)?;
        let d = parse_cert_pem(pem.as_bytes())
            .map(|p| expires(p.not_after))
            .unwrap_or_default();
        return Ok((pem, key_pair, CertAction::Issued, d));
    };
    let why = match parsed.expect("read") {
        Ok(p) => match mismatch(&p, c, Some(&spki), Some(&ca.cert), ctx.now) {
            None if !ctx.renew => {
                let text = String::from_utf8_lossy(crt).into_owned();
                return Ok((text, key_pair, CertAction::Kept, expires(p.not_after)));
            }
            None => "renewed".to_string(),
            Some(why) => {
                ctx.replaceable(crt_path, crt, &why)?;
                why
            }
        },
        Err(e) => {
            ctx.replaceable(crt_path, crt, &e)?;
            e
        }
    };
    let pem = ca.issue(c, &key_pair, ctx.now)?;
    let d = parse_cert_pem(pem.as_bytes())
        .map(|p| format!("{why}; {}", expires(p.not_after)))
        .unwrap_or(why);
    Ok((pem, key_pair, CertAction::Reissued, d))
}

fn plan_service_account(ctx: &PlanContext, out: &mut PkiPlan) -> Result<(), Error> {
    let key_p = format!("{PKI_DIR}/sa.key");
    let pub_p = format!("{PKI_DIR}/sa.pub");
    let key = ctx.read(&key_p)?;
    let loaded = key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(load_key);
    let (k, action) = match (&key, loaded) {
        (_, Some(k)) => (k, CertAction::Kept),
        (None, None) => (new_key()?, CertAction::Issued),
        (Some(bytes), None) => {
            ctx.replaceable(&key_p, bytes, "not a PKCS#8 PEM key")?;
            (new_key()?, CertAction::Reissued)
        }
    };
    let want_pub = public_key_pem(&k);
    // sa.pub follows sa.key; a foreign sa.pub for another key would make every token invalid.
    if let Some(existing) = ctx.read(&pub_p)?
        && existing != want_pub.as_bytes()
    {
        let same_key = x509_parser::pem::parse_x509_pem(&existing)
            .ok()
            .is_some_and(|(_, p)| p.label == "PUBLIC KEY" && p.contents == key_spki(&k));
        if !same_key {
            ctx.replaceable(&pub_p, &existing, "it is not the public key of sa.key")?;
        } else {
            out.file(
                ctx,
                pub_p.clone(),
                existing,
                false,
                "service-account public key".into(),
            );
            out.file(
                ctx,
                key_p,
                key_pem(&k).into_bytes(),
                true,
                "service-account signing key".into(),
            );
            out.decisions.push(CertDecision {
                cert: "sa".into(),
                action,
                detail: "service-account key pair".into(),
                not_after_unix: 0,
            });
            return Ok(());
        }
    }
    out.decisions.push(CertDecision {
        cert: "sa".into(),
        action,
        detail: "service-account key pair".into(),
        not_after_unix: 0,
    });
    out.file(
        ctx,
        key_p,
        key_pem(&k).into_bytes(),
        true,
        "service-account signing key".into(),
    );
    out.file(
        ctx,
        pub_p,
        want_pub.into_bytes(),
        false,
        "service-account public key".into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_service_ip_of_v4_and_v6_ranges() {
        assert_eq!(
            first_service_ip("10.254.0.0/16").unwrap().to_string(),
            "10.254.0.1"
        );
        assert_eq!(
            first_service_ip("10.96.3.7/12").unwrap().to_string(),
            "10.96.0.1"
        );
        assert_eq!(
            first_service_ip("fd00:1::/112").unwrap().to_string(),
            "fd00:1::1"
        );
        for bad in ["10.0.0.0", "x/8", "10.0.0.0/33", "10.0.0.0/31"] {
            assert!(first_service_ip(bad).is_err(), "{bad}");
        }
    }

    fn ctx<'a>(
        root: &'a Path,
        ours: &'a BTreeMap<String, String>,
        now: i64,
        renew: bool,
    ) -> PlanContext<'a> {
        PlanContext {
            root,
            now,
            renew,
            force: false,
            ours,
        }
    }

    fn write(root: &Path, files: &[PkiFile]) -> BTreeMap<String, String> {
        let mut ours = BTreeMap::new();
        for f in files {
            let p = super::super::under_root(root, &f.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &f.content).unwrap();
            ours.insert(f.path.clone(), super::super::sha256_hex(&f.content));
        }
        ours
    }

    fn sample_spec() -> PkiSpec {
        let mut c = crate::chart::lint::sample_cluster();
        c.machines[0].address = "127.0.0.1".into();
        control_plane_spec(&c, &c.machines[0].clone(), false).unwrap()
    }

    #[test]
    fn plan_issues_everything_then_keeps_it_then_renews_with_the_same_keys() {
        let root = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let none = BTreeMap::new();
        let spec = sample_spec();
        let p1 = plan(&spec, true, &ctx(root.path(), &none, now, false)).unwrap();
        assert!(
            p1.decisions.iter().all(|d| d.action == CertAction::Issued),
            "{:?}",
            p1.decisions
        );
        let names: Vec<&str> = p1.files.iter().map(|f| f.path.as_str()).collect();
        for want in [
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/pki/ca.key",
            "/etc/kubernetes/pki/apiserver.crt",
            "/etc/kubernetes/pki/apiserver-kubelet-client.key",
            "/etc/kubernetes/pki/front-proxy-ca.crt",
            "/etc/kubernetes/pki/front-proxy-client.crt",
            "/etc/kubernetes/pki/sa.key",
            "/etc/kubernetes/pki/sa.pub",
        ] {
            assert!(names.contains(&want), "{want} not planned: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("etcd")),
            "etcd certs only beyond loopback"
        );
        assert!(
            p1.files
                .iter()
                .filter(|f| f.path.ends_with(".key"))
                .all(|f| f.private)
        );
        let apiserver = parse_cert_pem(
            &p1.files
                .iter()
                .find(|f| f.path.ends_with("/apiserver.crt"))
                .unwrap()
                .content,
        )
        .unwrap();
        for want in [
            "IP:127.0.0.1",
            "IP:10.254.0.1",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:pai-node-1",
            "DNS:localhost",
        ] {
            assert!(
                apiserver.sans.iter().any(|s| s.to_string() == want),
                "{want}: {:?}",
                apiserver.sans
            );
        }
        assert_eq!(apiserver.not_after, now + LEAF_DAYS * DAY);
        let ours = write(root.path(), &p1.files);

        // Second run, a month later: every file kept byte for byte.
        let p2 = plan(&spec, true, &ctx(root.path(), &ours, now + 30 * DAY, false)).unwrap();
        assert!(
            p2.decisions.iter().all(|d| d.action == CertAction::Kept),
            "{:?}",
            p2.decisions
        );
        assert_eq!(p1.files, p2.files);

        // --renew-certs: new certificates, same keys, still signed by a CA with the same key.
        let p3 = plan(&spec, true, &ctx(root.path(), &ours, now + 60 * DAY, true)).unwrap();
        assert!(
            p3.decisions
                .iter()
                .filter(|d| d.cert != "sa")
                .all(|d| d.action == CertAction::Reissued)
        );
        for (a, b) in p1.files.iter().zip(&p3.files) {
            assert_eq!(a.path, b.path);
            if a.path.ends_with(".key") || a.path.ends_with(".pub") {
                assert_eq!(a.content, b.content, "{} changed on renewal", a.path);
            } else {
                assert_ne!(a.content, b.content, "{} not renewed", a.path);
            }
        }
        let old_ca = parse_cert_pem(&p1.files[0].content).unwrap();
        let new_api = parse_cert_pem(
            &p3.files
                .iter()
                .find(|f| f.path.ends_with("/apiserver.crt"))
                .unwrap()
                .content,
        )
        .unwrap();
        assert!(
            signed_by(&new_api, &old_ca.spki),
            "the old CA certificate still verifies renewed certificates"
        );
        assert_eq!(new_api.not_after, now + 60 * DAY + LEAF_DAYS * DAY);
    }

    #[test]
    fn expired_or_mismatching_leaf_is_reissued_only_when_ours() {
        let root = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let none = BTreeMap::new();
        let spec = sample_spec();
        let p1 = plan(&spec, true, &ctx(root.path(), &none, now, false)).unwrap();
        let ours = write(root.path(), &p1.files);
        // Past the leaf validity: expired certificates are reissued, the CA is kept.
        let later = now + (LEAF_DAYS + 1) * DAY;
        let p2 = plan(&spec, true, &ctx(root.path(), &ours, later, false)).unwrap();
        let api = p2.decisions.iter().find(|d| d.cert == "apiserver").unwrap();
        assert_eq!(api.action, CertAction::Reissued);
        assert!(api.detail.starts_with("expired"), "{}", api.detail);
        assert_eq!(p2.decisions[0].action, CertAction::Kept);
        // A SAN added to the cluster (new address): reissued.
        let mut c = crate::chart::lint::sample_cluster();
        c.machines[0].address = "10.1.2.3".into();
        let spec2 = control_plane_spec(&c, &c.machines[0].clone(), false).unwrap();
        let p3 = plan(&spec2, true, &ctx(root.path(), &ours, now, false)).unwrap();
        let api = p3.decisions.iter().find(|d| d.cert == "apiserver").unwrap();
        assert_eq!(api.action, CertAction::Reissued);
        assert!(api.detail.contains("IP:10.1.2.3 missing"), "{}", api.detail);
        // The same mismatch in a file pailot did not write is an error naming it.
        let err = plan(&spec2, true, &ctx(root.path(), &none, now, false)).unwrap_err();
        assert!(
            err.to_string()
                .contains("/etc/kubernetes/pki/apiserver.crt: SANs IP:10.1.2.3 missing"),
            "{err}"
        );
    }

    #[test]
    fn foreign_valid_pki_is_used_but_not_recorded() {
        let root = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let none = BTreeMap::new();
        let spec = sample_spec();
        let p1 = plan(&spec, true, &ctx(root.path(), &none, now, false)).unwrap();
        write(root.path(), &p1.files);
        // Same files, but not recorded as pailot's: used, never planned (so never recorded or reset).
        let p2 = plan(&spec, true, &ctx(root.path(), &none, now, false)).unwrap();
        assert!(
            p2.files.is_empty(),
            "{:?}",
            p2.files.iter().map(|f| &f.path).collect::<Vec<_>>()
        );
        assert!(p2.authorities.contains_key("ca"));
    }

    #[test]
    fn etcd_certificates_when_etcd_leaves_loopback() {
        let c = crate::chart::lint::sample_cluster();
        let spec = control_plane_spec(&c, &c.machines[0], true).unwrap();
        let names: Vec<&str> = spec.certs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ca",
                "front-proxy-ca",
                "etcd/ca",
                "apiserver",
                "apiserver-kubelet-client",
                "front-proxy-client",
                "etcd/server",
                "etcd/peer",
                "etcd/healthcheck-client",
                "apiserver-etcd-client"
            ]
        );
        let server = &spec.certs[6];
        assert!(server.sans.contains(&San::parse("10.0.0.11")));
        assert_eq!(server.issuer.as_deref(), Some("etcd/ca"));
    }

    #[test]
    fn expiries_sorted_and_unparsable_counts_as_expired() {
        let root = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let none = BTreeMap::new();
        let p1 = plan(&sample_spec(), true, &ctx(root.path(), &none, now, false)).unwrap();
        write(root.path(), &p1.files);
        let e = certificate_expiries(root.path()).unwrap();
        let labels: Vec<&str> = e.iter().map(|c| c.cert.as_str()).collect();
        assert_eq!(
            labels,
            [
                "apiserver",
                "apiserver-kubelet-client",
                "front-proxy-client",
                "ca",
                "front-proxy-ca"
            ]
        );
        assert_eq!(
            earliest_expiry(root.path())
                .unwrap()
                .unwrap()
                .not_after_unix,
            now + LEAF_DAYS * DAY
        );
        std::fs::write(
            root.path()
                .join("etc/kubernetes/pki/front-proxy-client.crt"),
            "garbage",
        )
        .unwrap();
        let first = earliest_expiry(root.path()).unwrap().unwrap();
        assert_eq!(
            (first.cert.as_str(), first.not_after_unix),
            ("front-proxy-client", 0)
        );
        assert_eq!(
            earliest_expiry(tempfile::tempdir().unwrap().path()).unwrap(),
            None
        );
    }
}
