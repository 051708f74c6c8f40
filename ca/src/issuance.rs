//! End-entity certificate issuance: an intermediate's key and certificate, random serials, and signing with rcgen.
//!
//! Every certificate is re-parsed and its signature verified with the issuer's public key before it leaves this
//! module, so a signing or encoding fault can never reach a subscriber.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use quarry_core::csr::{CsrKey, ParsedCsr};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::{Error, files};

/// How far notBefore is set in the past, so that clients with a slow clock accept a fresh certificate.
pub const BACKDATE: Duration = Duration::hours(1);

/// Length of the serials from [`random_serial`]: a prefix byte and 136 random bits.
pub const SERIAL_LEN: usize = 18;

/// The longest commonName X.509 allows (RFC 5280 ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;

/// The signature key type of an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa,
    Ed25519,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::EcdsaP521 => "ecdsa-p521",
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }

    fn of(key: &KeyPair) -> Option<Self> {
        let alg = key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(Self::EcdsaP256)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Some(Self::EcdsaP384)
        } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
            Some(Self::EcdsaP521)
        } else if alg == &rcgen::PKCS_RSA_SHA256 || alg == &rcgen::PKCS_RSA_SHA384 || alg == &rcgen::PKCS_RSA_SHA512 {
            Some(Self::Rsa)
        } else if alg == &rcgen::PKCS_ED25519 {
            Some(Self::Ed25519)
        } else {
            None
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An intermediate CA certificate together with its private key.
pub struct Issuer {
    certificate_der: Vec<u8>,
    subject_der: Vec<u8>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_algorithm: KeyAlgorithm,
    signer: rcgen::Issuer<'static, KeyPair>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key_algorithm", &self.key_algorithm)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads an issuer from a certificate PEM (the first certificate in the file) and its private key PEM.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let certificate_der = files::read_certificate(cert)?;
        let key = files::read_key(key)?;
        Self::new(certificate_der, key).map_err(|detail| Error::Certificate { path: cert.to_owned(), detail })
    }

    /// Refuses a certificate that cannot sign certificates or that does not belong to `key`.
    fn new(certificate_der: Vec<u8>, key: KeyPair) -> Result<Self, String> {
        let (rest, cert) = X509Certificate::from_der(&certificate_der).map_err(|e| format!("does not parse: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing data after the certificate".into());
        }
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err("is not a ca certificate (basicConstraints CA:TRUE missing)".into());
        }
        if let Ok(Some(usage)) = cert.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err("its key usage does not allow certificate signing".into());
        }
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err("the private key does not match the certificate".into());
        }
        let key_algorithm =
            KeyAlgorithm::of(&key).ok_or_else(|| format!("unsupported key algorithm {:?}", key.algorithm()))?;

        let subject_der = cert.subject().as_raw().to_vec();
        let subject = cert.subject().to_string();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let signer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(certificate_der.as_slice()), key)
            .map_err(|e| format!("rcgen cannot sign with it: {e}"))?;
        Ok(Self { certificate_der, subject_der, subject, not_before, not_after, key_algorithm, signer })
    }

    /// The issuer certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The issuer certificate's subject Name, DER: what every issued certificate's issuer field must equal.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The subject in RFC 4514 form, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }
}

/// A stable identifier of an issuer, stored with each certificate: the first 7 bytes of the SHA-256 of the issuer
/// certificate's subject DER, big-endian (always positive, since 56 bits fit an i64 with room to spare).
pub fn issuer_id(issuer: &Issuer) -> i64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issuer.subject_der());
    digest.as_ref()[..7].iter().fold(0i64, |id, &byte| (id << 8) | i64::from(byte))
}

/// A serial of a `prefix` byte (0x01–0x7f, which keeps the INTEGER positive and its encoding 18 bytes long)
/// followed by 136 bits from the system CSPRNG.
pub fn random_serial(prefix: u8) -> Result<[u8; SERIAL_LEN], Error> {
    if !(0x01..=0x7f).contains(&prefix) {
        return Err(Error::SerialPrefix(prefix));
    }
    let mut serial = [0u8; SERIAL_LEN];
    serial[0] = prefix;
    aws_lc_rs::rand::fill(&mut serial[1..]).map_err(|_| Error::Random)?;
    Ok(serial)
}

/// What to put in one end-entity certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The verified CSR; only its public key is used.
    pub csr: ParsedCsr,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Big-endian, positive and minimally encoded (first byte 0x01–0x7f), at most 20 bytes.
    pub serial: Vec<u8>,
    /// The moment of issuance; the certificate's notBefore is this minus [`BACKDATE`].
    pub not_before: OffsetDateTime,
    /// The certificate's whole validity period, both ends included.
    pub validity: Duration,
    /// Whether to copy the first DNS name that fits into the subject commonName.
    pub include_common_name: bool,
    /// The CRL distribution point (the URL of the certificate's CRL shard).
    pub crl_url: Option<String>,
    /// The Authority Information Access caIssuers URL (where the issuer's certificate is).
    pub issuer_url: Option<String>,
}

impl IssueRequest {
    /// The certificate's (notBefore, notAfter), whole seconds.
    pub fn validity_window(&self) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
        if self.validity < Duration::SECOND {
            return Err(Error::Request("validity is shorter than one second".into()));
        }
        let not_before = self
            .not_before
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.checked_sub(BACKDATE))
            .ok_or_else(|| Error::Request("notBefore is out of range".into()))?;
        // RFC 5280 validity is inclusive of notAfter, hence the second taken off.
        let not_after = not_before
            .checked_add(self.validity - Duration::SECOND)
            .ok_or_else(|| Error::Request("notAfter is out of range".into()))?;
        Ok((not_before, not_after))
    }
}

/// Signs an end-entity certificate for `req` with `issuer` and returns it, DER.
pub fn issue_certificate(issuer: &Issuer, req: &IssueRequest) -> Result<Vec<u8>, Error> {
    check_serial(&req.serial)?;
    let (not_before, not_after) = req.validity_window()?;
    if not_after > issuer.not_after {
        return Err(Error::PastIssuerExpiry { not_after, issuer_not_after: issuer.not_after });
    }

    let dns_names = unique(&req.dns_names);
    let ip_addresses = unique(&req.ip_addresses);
    if dns_names.is_empty() && ip_addresses.is_empty() {
        return Err(Error::Request("no names to certify".into()));
    }
    let mut subject_alt_names = Vec::with_capacity(dns_names.len() + ip_addresses.len());
    for name in &dns_names {
        if name.is_empty() || !name.is_ascii() {
            return Err(Error::Request(format!("dns name {name:?} is not a non-empty ascii string")));
        }
        let ia5 = name.as_str().try_into().map_err(|_| Error::Request(format!("dns name {name:?} is not ia5")))?;
        subject_alt_names.push(SanType::DnsName(ia5));
    }
    subject_alt_names.extend(ip_addresses.iter().copied().map(SanType::IpAddress));

    let subject_key =
        rcgen::SubjectPublicKeyInfo::from_der(&req.csr.spki_der).map_err(|e| Error::UnsupportedKey(e.to_string()))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if req.include_common_name
        && let Some(common_name) = dns_names.iter().find(|name| name.len() <= MAX_COMMON_NAME_LEN)
    {
        params.distinguished_name.push(DnType::CommonName, common_name.as_str());
    }
    params.subject_alt_names = subject_alt_names;
    params.serial_number = Some(SerialNumber::from_slice(&req.serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match req.csr.key {
        // RSA key exchange in TLS 1.2 needs keyEncipherment; ECDSA and EdDSA keys only ever sign.
        CsrKey::Rsa { .. } => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        _ => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    if let Some(url) = &req.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![url.clone()] }];
    }
    if let Some(url) = &req.issuer_url {
        params.custom_extensions.push(authority_info_access(url)?);
    }

    let der = params.signed_by(&subject_key, &issuer.signer)?.der().to_vec();
    self_check(issuer, req, &der, not_before, not_after)?;
    Ok(der)
}

/// id-pe-authorityInfoAccess with one caIssuers URI (RFC 5280 §4.2.2.1), DER-encoded by hand: rcgen has no field
/// for it.
fn authority_info_access(url: &str) -> Result<rcgen::CustomExtension, Error> {
    if !url.is_ascii() || url.len() > 1_000 {
        return Err(Error::Request(format!("issuer URL {url:?} is not a short ASCII URI")));
    }
    let der_len =
        |len: usize| -> Vec<u8> { if len < 0x80 { vec![len as u8] } else { vec![0x82, (len >> 8) as u8, len as u8] } };
    // AccessDescription ::= SEQUENCE { id-ad-caIssuers, [6] IA5String uniformResourceIdentifier }
    let ca_issuers_oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let uri = [vec![0x86], der_len(url.len()), url.as_bytes().to_vec()].concat();
    let description_body = [ca_issuers_oid.to_vec(), uri].concat();
    let description = [vec![0x30], der_len(description_body.len()), description_body].concat();
    let value = [vec![0x30], der_len(description.len()), description].concat();
    Ok(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], value))
}

fn check_serial(serial: &[u8]) -> Result<(), Error> {
    match serial.first() {
        None => Err(Error::Serial("empty".into())),
        Some(_) if serial.len() > 20 => Err(Error::Serial("longer than 20 bytes".into())),
        // A leading 0x00 would be re-encoded shorter and a high bit would make the INTEGER negative, so the
        // certificate's serial would differ from the one reserved in the sa.
        Some(first) if !(0x01..=0x7f).contains(first) => Err(Error::Serial("first byte must be 0x01-0x7f".into())),
        Some(_) => Ok(()),
    }
}

fn unique<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

fn self_check(
    issuer: &Issuer,
    req: &IssueRequest,
    der: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), Error> {
    let fail = |what: &str| Error::SelfCheck(what.to_owned());
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::SelfCheck(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(fail("trailing data"));
    }
    let (_, issuer_cert) = X509Certificate::from_der(&issuer.certificate_der)
        .map_err(|e| Error::SelfCheck(format!("issuer certificate does not parse: {e}")))?;
    cert.verify_signature(Some(issuer_cert.public_key()))
        .map_err(|_| fail("signature does not verify with the issuer key"))?;
    if cert.issuer().as_raw() != issuer.subject_der.as_slice() {
        return Err(fail("issuer name differs from the issuer certificate's subject"));
    }
    if cert.public_key().raw != req.csr.spki_der.as_slice() {
        return Err(fail("public key differs from the csr's"));
    }
    if cert.raw_serial() != req.serial.as_slice() {
        return Err(fail("serial differs from the reserved one"));
    }
    if cert.validity().not_before.to_datetime() != not_before || cert.validity().not_after.to_datetime() != not_after {
        return Err(fail("validity differs from the requested window"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
