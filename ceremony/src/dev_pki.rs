//! The dev PKI behind `quarry dev`: an issuing root with an ECDSA and an RSA intermediate, the internal mTLS CA with
//! one certificate per service, the wfe's HTTPS certificate and the fake CT logs' keys, generated once and then
//! reused.
//!
//! Reuse matters: a restarted dev stack must keep its root, or every ACME client that trusted it would break.
//! Something is generated again only when it is missing, close to expiry, or no longer signed by its parent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use quarry_ca::files;
use quarry_ca::issuance::{BACKDATE, random_serial};

use crate::Error;

/// Certificates closer than this to their notAfter are replaced.
pub(crate) const RENEW_BEFORE: Duration = Duration::days(30);

/// The serial prefix of dev hierarchy certificates; any valid value would do.
const CEREMONY_SERIAL_PREFIX: u8 = 0x7f;

/// Reserved for the internal CA's own files in `internal/`, so no service may take it.
const INTERNAL_CA_NAME: &str = "internal-ca";

/// Where `ensure_dev_pki` put everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The issuing root, to hand to ACME clients as their trust anchor.
    pub root_pem: PathBuf,
    /// The ECDSA issuing intermediate (E1) the ca signs with, and its key.
    pub intermediate_pem: PathBuf,
    pub intermediate_key: PathBuf,
    /// The RSA issuing intermediate (R1), for RSA subscriber keys.
    pub rsa_intermediate_pem: PathBuf,
    pub rsa_intermediate_key: PathBuf,
    /// The CA every internal gRPC peer trusts.
    pub internal_ca_pem: PathBuf,
    /// The CA of the wfe's HTTPS certificate, and that certificate with its key.
    pub https_ca_pem: PathBuf,
    pub https_cert: PathBuf,
    pub https_key: PathBuf,
    /// The keys (P-256) of the two fake Certificate Transparency logs `quarry dev` runs: kept, so that the SCTs in
    /// certificates issued before a restart still verify.
    pub ct_log_keys: [PathBuf; 2],
    /// The secret the nonce replicas and the wfe derive nonce prefixes from (base64url text).
    pub nonce_prefix_key: PathBuf,
    internal_dir: PathBuf,
}

impl DevPki {
    fn at(dir: &Path) -> Self {
        let webpki = dir.join("webpki");
        let internal = dir.join("internal");
        let https = dir.join("https");
        Self {
            root_pem: webpki.join("root.pem"),
            intermediate_pem: webpki.join("intermediate-e1.pem"),
            intermediate_key: webpki.join("intermediate-e1.key.pem"),
            rsa_intermediate_pem: webpki.join("intermediate-r1.pem"),
            rsa_intermediate_key: webpki.join("intermediate-r1.key.pem"),
            internal_ca_pem: internal.join(format!("{INTERNAL_CA_NAME}.pem")),
            https_ca_pem: https.join("ca.pem"),
            https_cert: https.join("wfe.pem"),
            https_key: https.join("wfe.key.pem"),
            ct_log_keys: ["a", "b"].map(|log| dir.join(format!("ct/ct-log-{log}.key.pem"))),
            nonce_prefix_key: internal.join("nonce-prefix.key"),
            internal_dir: internal,
        }
    }

    /// The mTLS (certificate, key) paths of `service`, whose certificate names `<service>.quarry`.
    pub fn service_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.internal_dir.join(format!("{name}.pem")), self.internal_dir.join(format!("{name}.key.pem")))
    }
}

/// Loads the dev PKI under `dir`, generating whatever is missing or stale, with a certificate for each of
/// `services` (`wfe`, `ra`, ...).
pub fn ensure_dev_pki(dir: &Path, services: &[&str]) -> Result<DevPki, Error> {
    ensure_dev_pki_for_hosts(dir, services, &[])
}

/// [`ensure_dev_pki`], with the ACME server's HTTPS certificate also valid for `public_hosts` (names or addresses
/// other machines reach the stack by); a certificate without one of them is replaced.
pub fn ensure_dev_pki_for_hosts(dir: &Path, services: &[&str], public_hosts: &[String]) -> Result<DevPki, Error> {
    for service in services {
        check_service_name(service)?;
    }
    let pki = DevPki::at(dir);
    for sub in ["webpki", "internal", "https", "ct"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io { path, source })?;
    }
    let now = OffsetDateTime::now_utc();

    let root_files = Files { cert: pki.root_pem.clone(), key: dir.join("webpki/root.key.pem") };
    let root = ensure(&root_files, &Spec::root(), None, now)?;
    let intermediate_files = Files { cert: pki.intermediate_pem.clone(), key: pki.intermediate_key.clone() };
    ensure(&intermediate_files, &Spec::intermediate(), Some(&root), now)?;
    let rsa_files = Files { cert: pki.rsa_intermediate_pem.clone(), key: pki.rsa_intermediate_key.clone() };
    ensure(&rsa_files, &Spec::rsa_intermediate(), Some(&root), now)?;

    let internal_ca_files =
        Files { cert: pki.internal_ca_pem.clone(), key: pki.internal_dir.join(format!("{INTERNAL_CA_NAME}.key.pem")) };
    let internal_ca = ensure(&internal_ca_files, &Spec::internal_ca(), None, now)?;
    for service in services {
        let (cert, key) = pki.service_cert(service);
        ensure(&Files { cert, key }, &Spec::service(service)?, Some(&internal_ca), now)?;
    }

    let https_ca_files = Files { cert: pki.https_ca_pem.clone(), key: dir.join("https/ca.key.pem") };
    let https_ca = ensure(&https_ca_files, &Spec::https_ca(public_hosts)?, None, now)?;
    let https_files = Files { cert: pki.https_cert.clone(), key: pki.https_key.clone() };
    ensure(&https_files, &Spec::https_server(public_hosts)?, Some(&https_ca), now)?;

    for path in &pki.ct_log_keys {
        if !path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            files::write_atomically(path, &key.serialize_pem(), true)?;
        }
    }
    if !pki.nonce_prefix_key.exists() {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| Error::Random)?;
        let text = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, key);
        files::write_atomically(&pki.nonce_prefix_key, &text, true)?;
    }

    Ok(pki)
}

fn check_service_name(name: &str) -> Result<(), Error> {
    let bytes = name.as_bytes();
    let label_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let well_formed = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(label_char)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if !well_formed || name == INTERNAL_CA_NAME {
        return Err(Error::ServiceName(name.to_owned()));
    }
    Ok(())
}

pub(crate) struct Files {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// A certificate with its key, able to sign children when it is a CA.
pub(crate) struct Certified {
    pub(crate) der: Vec<u8>,
    pub(crate) key: KeyPair,
}

/// What one certificate of the dev PKI looks like.
pub(crate) struct Spec {
    pub(crate) organization: Option<&'static str>,
    pub(crate) common_name: String,
    pub(crate) key_algorithm: &'static SignatureAlgorithm,
    pub(crate) lifetime: Duration,
    pub(crate) is_ca: IsCa,
    pub(crate) key_usages: Vec<KeyUsagePurpose>,
    pub(crate) extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub(crate) subject_alt_names: Vec<SanType>,
    pub(crate) name_constraints: Option<NameConstraints>,
}

impl Spec {
    pub(crate) fn ca(organization: Option<&'static str>, common_name: &str, years: i64, path_len: u8) -> Self {
        Self {
            organization,
            common_name: common_name.to_owned(),
            key_algorithm: &rcgen::PKCS_ECDSA_P384_SHA384,
            lifetime: Duration::days(365 * years + years / 4),
            is_ca: IsCa::Ca(BasicConstraints::Constrained(path_len)),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            extended_key_usages: Vec::new(),
            subject_alt_names: Vec::new(),
            name_constraints: None,
        }
    }

    pub(crate) fn root() -> Self {
        Self::ca(Some("Quarry"), "(DEV) Quarry Root X1", 10, 1)
    }

    pub(crate) fn intermediate() -> Self {
        Self::ca(Some("Quarry"), "(DEV) Quarry Intermediate E1", 5, 0)
    }

    pub(crate) fn rsa_intermediate() -> Self {
        let mut spec = Self::ca(Some("Quarry"), "(DEV) Quarry Intermediate R1", 5, 0);
        spec.key_algorithm = &rcgen::PKCS_RSA_SHA256;
        spec
    }

    /// Constrained to `.quarry`, so a leaked dev internal CA cannot vouch for real hosts.
    pub(crate) fn internal_ca() -> Self {
        let mut spec = Self::ca(Some("Quarry"), "(DEV) Quarry Internal CA", 10, 0);
        spec.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("quarry".into())],
            excluded_subtrees: Vec::new(),
        });
        spec
    }

    /// Constrained to loopback names, because developers may add it to a browser or system trust store.
    /// The CA of the ACME server's certificate, constrained to exactly the names that certificate holds, so that a
    /// developer who trusts it trusts nothing else.
    pub(crate) fn https_ca(public_hosts: &[String]) -> Result<Self, Error> {
        let mut spec = Self::ca(Some("Quarry"), "(DEV) Quarry HTTPS CA", 10, 0);
        let permitted_subtrees = Self::https_server(public_hosts)?
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::DnsName(name) => Some(GeneralSubtree::DnsName(name.as_str().to_owned())),
                SanType::IpAddress(ip) => Some(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    *ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                ))),
                _ => None,
            })
            .collect();
        spec.name_constraints = Some(NameConstraints { permitted_subtrees, excluded_subtrees: Vec::new() });
        Ok(spec)
    }

    pub(crate) fn leaf(common_name: &str, subject_alt_names: Vec<SanType>, ekus: Vec<ExtendedKeyUsagePurpose>) -> Self {
        Self {
            organization: None,
            common_name: common_name.to_owned(),
            key_algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            lifetime: Duration::days(365),
            is_ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            extended_key_usages: ekus,
            subject_alt_names,
            name_constraints: None,
        }
    }

    pub(crate) fn service(service: &str) -> Result<Self, Error> {
        let name = format!("{service}.quarry");
        let san = SanType::DnsName(ia5(&name)?);
        Ok(Self::leaf(&name, vec![san], vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]))
    }

    pub(crate) fn https_server(public_hosts: &[String]) -> Result<Self, Error> {
        let mut sans = vec![
            SanType::DnsName(ia5("localhost")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for host in public_hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(host)?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        Ok(Self::leaf("localhost", sans, vec![ExtendedKeyUsagePurpose::ServerAuth]))
    }

    pub(crate) fn params(&self, now: OffsetDateTime) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(organization) = self.organization {
            dn.push(DnType::OrganizationName, organization);
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(CEREMONY_SERIAL_PREFIX)?));
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + self.lifetime;
        params.is_ca = self.is_ca;
        params.key_usages = self.key_usages.clone();
        params.extended_key_usages = self.extended_key_usages.clone();
        params.subject_alt_names = self.subject_alt_names.clone();
        params.name_constraints = self.name_constraints.clone();
        Ok(params)
    }
}

fn ia5(name: &str) -> Result<rcgen::string::Ia5String, Error> {
    Ok(name.try_into()?)
}

/// Returns the certificate at `files` if it is still good, else generates, writes and returns a new one.
/// `parent` is `None` for a self-signed root.
pub(crate) fn ensure(
    files: &Files,
    spec: &Spec,
    parent: Option<&Certified>,
    now: OffsetDateTime,
) -> Result<Certified, Error> {
    if let Some(existing) = load_if_current(files, parent, now)?
        && covers(&existing.der, spec)
    {
        return Ok(existing);
    }
    let key = KeyPair::generate_for(spec.key_algorithm)?;
    let mut params = spec.params(now)?;
    let cert = match parent {
        None => params.self_signed(&key)?,
        Some(parent) => {
            params.use_authority_key_identifier_extension = true;
            let issuer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(parent.der.as_slice()), &parent.key)?;
            params.signed_by(&key, &issuer)?
        }
    };
    // Key first: a certificate on disk without its key would be taken for a complete pair on the next run.
    files::write_atomically(&files.key, &key.serialize_pem(), true)?;
    files::write_atomically(&files.cert, &cert.pem(), false)?;
    tracing::info!(path = %files.cert.display(), subject = spec.common_name, "generated dev certificate");
    Ok(Certified { der: cert.der().to_vec(), key })
}

fn load_if_current(files: &Files, parent: Option<&Certified>, now: OffsetDateTime) -> Result<Option<Certified>, Error> {
    if !files.cert.exists() || !files.key.exists() {
        return Ok(None);
    }
    let der = files::read_certificate(&files.cert)?;
    let key = files::read_key(&files.key)?;
    let bad = |detail: &str| Error::Certificate { path: files.cert.clone(), detail: detail.to_owned() };
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(&e.to_string()))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
        return Err(bad(&format!("does not match the key in {}", files.key.display())));
    }
    if cert.validity().not_after.to_datetime() < now + RENEW_BEFORE {
        return Ok(None);
    }
    if let Some(parent) = parent {
        let (_, parent_cert) = X509Certificate::from_der(&parent.der).map_err(|e| bad(&e.to_string()))?;
        let signed_by_parent = cert.issuer().as_raw() == parent_cert.subject().as_raw()
            && cert.verify_signature(Some(parent_cert.public_key())).is_ok();
        if !signed_by_parent {
            return Ok(None);
        }
    }
    Ok(Some(Certified { der, key }))
}

/// Whether the certificate `der` names every name `spec` asks for, in its subject alternative names and its name
/// constraints (a dev certificate asked for a new host is replaced, and so is the HTTPS CA that must permit it).
fn covers(der: &[u8], spec: &Spec) -> bool {
    let wanted_sans: Vec<String> = spec.subject_alt_names.iter().filter_map(san_text).collect();
    let wanted_permitted: Vec<String> = spec
        .name_constraints
        .iter()
        .flat_map(|constraints| &constraints.permitted_subtrees)
        .filter_map(|subtree| match subtree {
            GeneralSubtree::DnsName(name) => Some(format!("dns:{name}")),
            GeneralSubtree::IpAddress(subnet) => Some(format!("ip:{}", subnet_text(subnet))),
            _ => None,
        })
        .collect();
    if wanted_sans.is_empty() && wanted_permitted.is_empty() {
        return true;
    }
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return false };
    let present_sans: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(extension)) => extension.value.general_names.iter().filter_map(general_name_text).collect(),
        _ => Vec::new(),
    };
    let present_permitted: Vec<String> = match cert.name_constraints() {
        Ok(Some(extension)) => extension
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|subtree| general_name_text(&subtree.base))
            .collect(),
        _ => Vec::new(),
    };
    wanted_sans.iter().all(|name| present_sans.contains(name))
        && wanted_permitted.iter().all(|name| present_permitted.contains(name))
}

fn san_text(san: &SanType) -> Option<String> {
    match san {
        SanType::DnsName(name) => Some(format!("dns:{}", name.as_str())),
        SanType::IpAddress(ip) => Some(format!("ip:{ip}")),
        _ => None,
    }
}

/// A name of a parsed certificate as [`san_text`] writes it; a name constraint's address and mask as `ip:addr/len`.
fn general_name_text(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) => Some(format!("dns:{dns}")),
        GeneralName::IPAddress(bytes) => {
            let (addr, mask) = bytes.split_at(bytes.len() / if bytes.len() == 8 || bytes.len() == 32 { 2 } else { 1 });
            let ip = match addr.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
                _ => return None,
            };
            if mask.is_empty() {
                return Some(format!("ip:{ip}"));
            }
            let prefix: u32 = mask.iter().map(|byte| byte.count_ones()).sum();
            Some(format!("ip:{ip}/{prefix}"))
        }
        _ => None,
    }
}

/// A name constraint's subnet as `addr/len`, as [`general_name_text`] writes a parsed one.
fn subnet_text(subnet: &CidrSubnet) -> String {
    let (ip, mask): (IpAddr, &[u8]) = match subnet {
        CidrSubnet::V4(addr, mask) => (IpAddr::from(*addr), mask),
        CidrSubnet::V6(addr, mask) => (IpAddr::from(*addr), mask),
    };
    let prefix: u32 = mask.iter().map(|byte| byte.count_ones()).sum();
    format!("{ip}/{prefix}")
}

#[cfg(test)]
mod tests;
