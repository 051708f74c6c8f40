//! End-entity certificate issuance in Boulder's order: a linting copy signed by a throwaway key and linted, the
//! precertificate (same TBS, CT poison) signed by the issuer, then the final certificate (the poison swapped for the
//! SCT list).
//!
//! Every signature is verified with the issuer's public key, and every TBS compared with the one before it, before
//! anything leaves this module, so a signing or encoding fault can never reach a subscriber.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use quarry_core::csr::ParsedCsr;
use quarry_jose::Jwk;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use quarry_core::{ct, der};

use crate::extensions::{authority_info_access, certificate_policies};
use crate::lint::{self, LintContext};
use crate::signer::{FileSigner, LintKey, Signer, throwaway_key_like};
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

    fn of(alg: &'static rcgen::SignatureAlgorithm) -> Option<Self> {
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

/// An intermediate CA certificate, the signer holding its key, and a throwaway key of the same kind that signs
/// linting copies.
pub struct Issuer {
    certificate_der: Vec<u8>,
    subject_der: Vec<u8>,
    subject: String,
    spki_der: Vec<u8>,
    /// The subjectKeyIdentifier: the authorityKeyIdentifier of everything it signs.
    key_id: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_algorithm: KeyAlgorithm,
    signer: Box<dyn Signer>,
    /// rcgen signs with this throwaway key; the issuer's name and key identifier come from the certificate, so the
    /// TBS it produces is the one the real key signs.
    lint_signer: rcgen::Issuer<'static, LintKey>,
    /// SHA-256 of the precertificates signed lately, oldest first: a precertificate presented for its final
    /// certificate that is one of them needs no second verification of its signature (P-384: a tenth of the ca's CPU
    /// per certificate); any other, e.g. one another ca replica signed, is verified.
    signed_lately: Mutex<VecDeque<[u8; 32]>>,
}

/// How many precertificate digests an issuer remembers: minutes of issuance at a busy ca.
const SIGNED_LATELY: usize = 4096;

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
        Self::new(certificate_der, Box::new(FileSigner::new(key)))
            .map_err(|detail| Error::Certificate { path: cert.to_owned(), detail })
    }

    /// Loads an issuer from a certificate PEM and its key on a PKCS#11 token.
    pub fn from_token(cert: &Path, token: &crate::pkcs11::Pkcs11Config) -> Result<Self, Error> {
        let certificate_der = files::read_certificate(cert)?;
        let key = crate::pkcs11::Pkcs11Key::open(token)?;
        Self::new(certificate_der, Box::new(key)).map_err(|detail| Error::Certificate { path: cert.to_owned(), detail })
    }

    /// Refuses a certificate that cannot sign certificates or that does not belong to the signer's key.
    pub fn new(certificate_der: Vec<u8>, signer: Box<dyn Signer>) -> Result<Self, String> {
        let (rest, cert) = X509Certificate::from_der(&certificate_der).map_err(|e| format!("does not parse: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing data after the certificate".into());
        }
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err("is not a ca certificate (basicConstraints CA:TRUE missing)".into());
        }
        if let Ok(Some(usage)) = cert.key_usage()
            && !(usage.value.key_cert_sign() && usage.value.crl_sign())
        {
            return Err("its key usage does not allow certificate and CRL signing".into());
        }
        // The authority key identifier of what it signs is copied from here, never derived from a key.
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .ok_or("has no subjectKeyIdentifier")?;
        let spki_der = signer.subject_public_key_info();
        if spki_der != cert.public_key().raw {
            return Err("the private key does not match the certificate".into());
        }
        let algorithm = signer.algorithm();
        let key_algorithm =
            KeyAlgorithm::of(algorithm).ok_or_else(|| format!("unsupported key algorithm {algorithm:?}"))?;
        let lint_key = throwaway_key_like(algorithm).map_err(|e| format!("cannot make a linting key: {e}"))?;
        let lint_signer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(certificate_der.as_slice()), lint_key)
            .map_err(|e| format!("rcgen cannot read it: {e}"))?;

        let subject_der = cert.subject().as_raw().to_vec();
        let subject = cert.subject().to_string();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        Ok(Self {
            certificate_der,
            subject_der,
            subject,
            spki_der,
            key_id,
            not_before,
            not_after,
            key_algorithm,
            signer,
            lint_signer,
            signed_lately: Mutex::default(),
        })
    }

    /// The issuer certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The issuer certificate's subject Name, DER: what every issued certificate's issuer field must equal.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The issuer's SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
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

    /// Whether signing belongs on a blocking thread (see [`Signer::is_slow`]).
    pub fn signs_slowly(&self) -> bool {
        self.signer.is_slow()
    }

    /// The issuer's subjectKeyIdentifier.
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// The rcgen issuer that signs with the throwaway key, for building what the real key then signs.
    pub(crate) fn lint_signer(&self) -> &rcgen::Issuer<'static, LintKey> {
        &self.lint_signer
    }

    /// Signs `tbs` (a TBSCertificate or TBSCertList) with the real key and wraps it with `signature_algorithm`.
    pub(crate) fn sign_message(&self, tbs: &[u8], signature_algorithm: &[u8]) -> Result<Vec<u8>, Error> {
        let signature = self.signer.sign(tbs).inspect_err(|_| self.count_signing_error("sign"))?;
        Ok(der::assemble_signed(tbs, signature_algorithm, &signature))
    }

    /// `quarry_signing_errors_total{issuer, key_store, stage}`: a key store that fails to sign (`sign`: an HSM
    /// gone, a session lost) or a signature that does not verify (`self_check`), which the alerts watch apart from
    /// every other reason an issuance fails.
    fn count_signing_error(&self, stage: &'static str) {
        metrics::counter!(
            "quarry_signing_errors_total",
            "issuer" => self.subject().to_owned(),
            "key_store" => self.signer.key_store(),
            "stage" => stage,
        )
        .increment(1);
    }

    /// Signs `tbs` with the real key and checks the signature with the certificate's public key before anything
    /// else sees it.
    fn sign_checked(&self, tbs: &[u8], signature_algorithm: &[u8]) -> Result<Vec<u8>, Error> {
        let der = self.sign_message(tbs, signature_algorithm)?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| Error::SelfCheck(format!("signed certificate: {e}")))?;
        cert.verify_signature(Some(&self.public_key()?)).map_err(|_| {
            self.count_signing_error("self_check");
            Error::SelfCheck("the signature does not verify with the issuer's public key".into())
        })?;
        Ok(der)
    }

    /// The issuer's public key, from its SubjectPublicKeyInfo alone: what a signature check needs, without parsing
    /// the whole issuer certificate again.
    fn public_key(&self) -> Result<SubjectPublicKeyInfo<'_>, Error> {
        let (_, key) = SubjectPublicKeyInfo::from_der(&self.spki_der)
            .map_err(|e| Error::SelfCheck(format!("issuer public key: {e}")))?;
        Ok(key)
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The issuer's id (see [`quarry_core::certificate::issuer_id`]).
pub fn issuer_id(issuer: &Issuer) -> i64 {
    quarry_core::certificate::issuer_id(issuer.subject_der())
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

/// What a certificate profile puts in a certificate, as Let's Encrypt's `classic`, `tlsserver` and `shortlived`
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertProfile {
    /// The certificate's whole validity period, both ends included.
    pub validity: Duration,
    /// Whether to copy the first DNS name that fits into the subject commonName.
    pub include_common_name: bool,
    /// Whether an RSA key's certificate also allows keyEncipherment (TLS 1.2 RSA key exchange).
    pub key_encipherment: bool,
    /// Whether the extKeyUsage also holds clientAuth.
    pub client_auth: bool,
    /// Whether the certificate carries a subjectKeyIdentifier.
    pub subject_key_id: bool,
}

impl CertProfile {
    /// Let's Encrypt's classic profile: 90 days, commonName, keyEncipherment for RSA, clientAuth, SKID.
    pub const CLASSIC: Self = Self {
        validity: Duration::days(90),
        include_common_name: true,
        key_encipherment: true,
        client_auth: true,
        subject_key_id: true,
    };
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
    pub profile: CertProfile,
    /// The CRL distribution point (the URL of the certificate's CRL shard).
    pub crl_url: String,
    /// The Authority Information Access caIssuers URL (where the issuer's certificate is).
    pub issuer_url: String,
}

impl IssueRequest {
    /// The certificate's (notBefore, notAfter), whole seconds.
    pub fn validity_window(&self) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
        if self.profile.validity < Duration::SECOND {
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
            .checked_add(self.profile.validity - Duration::SECOND)
            .ok_or_else(|| Error::Request("notAfter is out of range".into()))?;
        Ok((not_before, not_after))
    }
}

/// A precertificate's TBS, built and linted but not yet signed by the issuer.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The linting copy: the TBS signed by the throwaway key. Stored before the real signature, so that the serial
    /// is revocable whatever happens next.
    pub linting_copy: Vec<u8>,
    tbs: Vec<u8>,
    signature_algorithm: Vec<u8>,
}

/// Builds the precertificate for `req` (with the CT poison), signs its linting copy with the throwaway key and lints
/// it. Nothing here touches the issuer's real key.
pub fn prepare_precertificate(issuer: &Issuer, req: &IssueRequest) -> Result<Prepared, Error> {
    check_serial(&req.serial)?;
    let (not_before, not_after) = req.validity_window()?;
    if not_after > issuer.not_after {
        return Err(Error::PastIssuerExpiry { not_after, issuer_not_after: issuer.not_after });
    }
    let mut params = certificate_params(req, not_before, not_after)?;
    let mut poison = rcgen::CustomExtension::from_oid_content(ct::POISON_OID, vec![0x05, 0x00]);
    poison.set_criticality(true);
    params.custom_extensions.push(poison);

    let subject_key =
        rcgen::SubjectPublicKeyInfo::from_der(&req.csr.spki_der).map_err(|e| Error::UnsupportedKey(e.to_string()))?;
    let linting_copy = params.signed_by(&subject_key, &issuer.lint_signer)?.der().to_vec();
    let (rest, cert) =
        X509Certificate::from_der(&linting_copy).map_err(|e| Error::SelfCheck(format!("linting copy: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::SelfCheck("trailing data after the linting copy".into()));
    }
    let context = LintContext {
        max_validity_secs: req.profile.validity.whole_seconds(),
        issuer_not_after: issuer.not_after.unix_timestamp(),
    };
    lint::check(&cert, &context)?;
    check_matches_request(issuer, req, &cert, not_before, not_after)?;
    let parts = der::split_signed(&linting_copy).map_err(|e| Error::SelfCheck(format!("linting copy: {e}")))?;
    let (tbs, signature_algorithm) = (parts.tbs.to_vec(), parts.signature_algorithm.to_vec());
    Ok(Prepared { linting_copy, tbs, signature_algorithm })
}

impl Prepared {
    /// The precertificate of a linting copy stored earlier (by this issuer, for an issuance a crash interrupted),
    /// linted again before anything is signed; `max_validity_secs` is the longest validity any profile allows.
    pub fn from_linting_copy(issuer: &Issuer, linting_copy: &[u8], max_validity_secs: i64) -> Result<Self, Error> {
        let (rest, cert) =
            X509Certificate::from_der(linting_copy).map_err(|e| Error::Request(format!("linting copy: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Request("trailing data after the linting copy".into()));
        }
        if cert.issuer().as_raw() != issuer.subject_der.as_slice() {
            return Err(Error::Request("the linting copy names another issuer".into()));
        }
        if ct::is_precertificate(linting_copy).ok() != Some(true) {
            return Err(Error::Request("the linting copy is not a precertificate".into()));
        }
        let context = LintContext { max_validity_secs, issuer_not_after: issuer.not_after.unix_timestamp() };
        lint::check(&cert, &context)?;
        let parts = der::split_signed(linting_copy).map_err(|e| Error::Request(format!("linting copy: {e}")))?;
        Ok(Self {
            linting_copy: linting_copy.to_vec(),
            tbs: parts.tbs.to_vec(),
            signature_algorithm: parts.signature_algorithm.to_vec(),
        })
    }
}

/// Signs the precertificate whose linting copy passed: the same TBS, now with the issuer's key.
pub fn sign_precertificate(issuer: &Issuer, prepared: &Prepared) -> Result<Vec<u8>, Error> {
    let der = issuer.sign_checked(&prepared.tbs, &prepared.signature_algorithm)?;
    if der::split_signed(&der).map(|p| p.tbs == prepared.tbs.as_slice()).ok() != Some(true) {
        return Err(Error::SelfCheck("the precertificate's TBS differs from its linting copy's".into()));
    }
    let mut signed_lately = issuer.signed_lately.lock().unwrap_or_else(PoisonError::into_inner);
    if signed_lately.len() >= SIGNED_LATELY {
        signed_lately.pop_front();
    }
    signed_lately.push_back(sha256(&der));
    Ok(der)
}

/// Signs the final certificate of `precertificate`: its TBS with the poison replaced by the SCT list (or removed when
/// there are no SCTs), nothing else changed, which is checked before the certificate is returned.
pub fn sign_final_certificate(issuer: &Issuer, precertificate: &[u8], scts: &[Vec<u8>]) -> Result<Vec<u8>, Error> {
    let self_check = |e: der::DerError| Error::SelfCheck(format!("final certificate: {e}"));
    let (_, precert) =
        X509Certificate::from_der(precertificate).map_err(|e| Error::Request(format!("precertificate: {e}")))?;
    let signed_here = || {
        let digest = sha256(precertificate);
        issuer.signed_lately.lock().unwrap_or_else(PoisonError::into_inner).contains(&digest)
    };
    let issuer_key = issuer.public_key()?;
    if precert.issuer().as_raw() != issuer.subject_der.as_slice()
        || !(signed_here() || precert.verify_signature(Some(&issuer_key)).is_ok())
    {
        return Err(Error::Request("the precertificate was not signed by this issuer".into()));
    }
    let parts = der::split_signed(precertificate).map_err(self_check)?;
    let sct_list = (!scts.is_empty()).then(|| ct::sct_list_extension(scts));
    let tbs = der::replace_extension(parts.tbs, ct::POISON_OID, sct_list.as_deref())
        .map_err(|e| Error::Request(format!("precertificate: {e}")))?;
    let der = issuer.sign_checked(&tbs, parts.signature_algorithm)?;

    // RFC 6962 §3.1: the final TBS minus the SCT list is the precertificate's TBS minus the poison.
    let final_tbs = der::split_signed(&der).map_err(self_check)?.tbs;
    let stripped_final = if scts.is_empty() {
        final_tbs.to_vec()
    } else {
        der::replace_extension(final_tbs, ct::SCT_LIST_OID, None).map_err(self_check)?
    };
    let stripped_precert = der::replace_extension(parts.tbs, ct::POISON_OID, None).map_err(self_check)?;
    if stripped_final != stripped_precert {
        return Err(Error::SelfCheck("the final certificate's TBS does not match the precertificate's".into()));
    }
    Ok(der)
}

/// The whole pipeline without Certificate Transparency: precertificate, then a final certificate with no SCTs.
pub fn issue_certificate(issuer: &Issuer, req: &IssueRequest) -> Result<Vec<u8>, Error> {
    let prepared = prepare_precertificate(issuer, req)?;
    let precertificate = sign_precertificate(issuer, &prepared)?;
    sign_final_certificate(issuer, &precertificate, &[])
}

fn certificate_params(
    req: &IssueRequest,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, Error> {
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

    let profile = &req.profile;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if profile.include_common_name
        && let Some(common_name) = dns_names.iter().find(|name| name.len() <= MAX_COMMON_NAME_LEN)
    {
        params.distinguished_name.push(DnType::CommonName, common_name.as_str());
    }
    params.subject_alt_names = subject_alt_names;
    params.serial_number = Some(SerialNumber::from_slice(&req.serial));
    params.not_before = not_before;
    params.not_after = not_after;
    if profile.subject_key_id {
        // rcgen writes the subjectKeyIdentifier with basicConstraints.
        params.is_ca = IsCa::ExplicitNoCa;
    } else {
        params.is_ca = IsCa::NoCa;
        let mut basic_constraints = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
        basic_constraints.set_criticality(true);
        params.custom_extensions.push(basic_constraints);
    }
    params.key_usages = match req.csr.key {
        // RSA key exchange in TLS 1.2 needs keyEncipherment; ECDSA keys only ever sign.
        Jwk::Rsa { .. } if profile.key_encipherment => {
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment]
        }
        _ => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if profile.client_auth {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![req.crl_url.clone()] }];
    params.custom_extensions.push(authority_info_access(&req.issuer_url)?);
    params.custom_extensions.push(certificate_policies());
    Ok(params)
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

/// The linting copy says what was asked: issuer, key, serial and validity.
fn check_matches_request(
    issuer: &Issuer,
    req: &IssueRequest,
    cert: &X509Certificate<'_>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), Error> {
    let fail = |what: &str| Err(Error::SelfCheck(what.to_owned()));
    if cert.issuer().as_raw() != issuer.subject_der.as_slice() {
        return fail("issuer name differs from the issuer certificate's subject");
    }
    if cert.public_key().raw != req.csr.spki_der.as_slice() {
        return fail("public key differs from the csr's");
    }
    if cert.raw_serial() != req.serial.as_slice() {
        return fail("serial differs from the reserved one");
    }
    if cert.validity().not_before.to_datetime() != not_before || cert.validity().not_after.to_datetime() != not_after {
        return fail("validity differs from the requested window");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
