//! PKCS#10 certificate signing requests: parsing, self-signature verification and name extraction.
//!
//! Only the subject, the public key and the subjectAltName from the extensionRequest attribute matter to Quarry;
//! every other requested extension (must-staple, key usages, ...) is ignored, because the ca decides the
//! certificate's extensions itself. Name policy (syntax, order match) is the ra's job, not this module's.

use crate::identifier::Identifier;
use std::collections::BTreeSet;
use std::net::IpAddr;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use quarry_jose::{EcCurve, JoseError, Jwk};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::AlgorithmIdentifier;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("malformed csr: {0}")]
    Malformed(String),
    #[error("csr signature does not verify with its public key")]
    BadSignature,
    /// Signed with an algorithm Quarry does not accept (SHA-1, PSS) or one that does not suit the key.
    #[error("csr signature algorithm: {0}")]
    BadSignatureAlgorithm(String),
    /// A key Quarry does not accept: `badPublicKey`.
    #[error("unsupported csr key: {0}")]
    UnsupportedKey(String),
}

/// A CSR whose self-signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// The whole CSR as received.
    pub der: Vec<u8>,
    /// The key's canonical SubjectPublicKeyInfo (`Jwk::spki_der`), which the certificate carries: not necessarily
    /// the CSR's bytes (a compressed EC point is re-encoded uncompressed).
    pub spki_der: Vec<u8>,
    /// The subject's first commonName, lowercased (ACME clients put a DNS name there).
    pub common_name: Option<String>,
    /// subjectAltName DNS names, lowercased, without duplicates, in request order.
    pub dns_names: Vec<String>,
    /// subjectAltName IP addresses without duplicates, in request order.
    pub ip_addresses: Vec<IpAddr>,
    /// The key, canonical: compare and hash keys through it.
    pub key: Jwk,
}

impl ParsedCsr {
    /// Every DNS-style name the CSR asks for: the SAN DNS names and the commonName.
    pub fn names(&self) -> BTreeSet<String> {
        self.dns_names.iter().cloned().chain(self.common_name.clone()).collect()
    }

    /// Every identifier the CSR asks for: SAN DNS names and IP addresses, and the commonName (an IP address when it
    /// parses as one).
    pub fn identifiers(&self) -> BTreeSet<Identifier> {
        let common_name = self.common_name.iter().map(|cn| match cn.parse::<IpAddr>() {
            Ok(ip) => Identifier::ip(ip),
            Err(_) => Identifier::dns(cn.clone()),
        });
        self.dns_names
            .iter()
            .map(|name| Identifier::dns(name.clone()))
            .chain(self.ip_addresses.iter().map(|ip| Identifier::ip(*ip)))
            .chain(common_name)
            .collect()
    }
}

/// Parses a DER CSR, verifies its self-signature and extracts its names and key.
pub fn parse_csr(der: &[u8]) -> Result<ParsedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| malformed(&e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data after the csr"));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(malformed("csr version is not 1"));
    }

    // The key is parsed (and refused when Quarry does not accept it) before the signature is checked, so that such
    // a key is reported as unsupported rather than as a bad signature.
    let key = Jwk::from_spki_der(info.subject_pki.raw).map_err(|e| match e {
        JoseError::BadPublicKey(detail) => CsrError::UnsupportedKey(detail),
        other => malformed(&other.to_string()),
    })?;
    verify_signature(&key, &csr.signature_algorithm, info.raw, &csr.signature_value.data)?;

    let common_name = match info.subject.iter_common_name().next() {
        None => None,
        Some(cn) => Some(cn.as_str().map_err(|_| malformed("commonName is not a text string"))?.to_ascii_lowercase()),
    };
    let (dns_names, ip_addresses) = requested_alt_names(&csr)?;

    Ok(ParsedCsr { der: der.to_vec(), spki_der: key.spki_der(), common_name, dns_names, ip_addresses, key })
}

fn malformed(detail: &str) -> CsrError {
    CsrError::Malformed(detail.to_owned())
}

/// Verifies the CSR's self-signature with its (canonical) key, under an algorithm that suits the key: PKCS#1 v1.5
/// with SHA-256/384/512 for RSA, ECDSA with SHA-256/384/512 for EC — as Let's Encrypt. SHA-1 and anything else are
/// refused before any verification.
fn verify_signature(
    key: &Jwk,
    algorithm: &AlgorithmIdentifier<'_>,
    signed: &[u8],
    signature: &[u8],
) -> Result<(), CsrError> {
    let oid = &algorithm.algorithm;
    let refused = || CsrError::BadSignatureAlgorithm(format!("{oid} is not accepted with a {} key", key.kind()));
    // RFC 4055 §5: the RSA algorithms take NULL parameters (or, leniently, none); RFC 5758 §3.2: ECDSA takes none.
    let null_or_absent = algorithm.parameters.as_ref().is_none_or(|p| p.tag() == x509_parser::asn1_rs::Tag::Null);
    let absent = algorithm.parameters.is_none();
    let verified = match key {
        Jwk::Rsa { n, e } => {
            let algorithm = if *oid == OID_PKCS1_SHA256WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else if *oid == OID_PKCS1_SHA384WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA384
            } else if *oid == OID_PKCS1_SHA512WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA512
            } else {
                return Err(refused());
            };
            if !null_or_absent {
                return Err(malformed("signature algorithm parameters must be NULL"));
            }
            RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(algorithm, signed, signature)
        }
        Jwk::Ec { crv, .. } => {
            let algorithm: &'static dyn VerificationAlgorithm = match (crv, oid) {
                (EcCurve::P256, o) if *o == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
                (EcCurve::P256, o) if *o == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
                (EcCurve::P256, o) if *o == OID_SIG_ECDSA_WITH_SHA512 => &signature::ECDSA_P256_SHA512_ASN1,
                (EcCurve::P384, o) if *o == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
                (EcCurve::P384, o) if *o == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
                (EcCurve::P384, o) if *o == OID_SIG_ECDSA_WITH_SHA512 => &signature::ECDSA_P384_SHA512_ASN1,
                _ => return Err(refused()),
            };
            if !absent {
                return Err(malformed("ECDSA signature algorithms take no parameters"));
            }
            UnparsedPublicKey::new(algorithm, key.subject_public_key()).verify(signed, signature)
        }
    };
    verified.map_err(|_| CsrError::BadSignature)
}

type AltNames = (Vec<String>, Vec<IpAddr>);

fn requested_alt_names(csr: &X509CertificationRequest<'_>) -> Result<AltNames, CsrError> {
    let mut extension_requests =
        csr.certification_request_info.iter_attributes().filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(request) => Some(request),
            _ => None,
        });
    let Some(request) = extension_requests.next() else {
        return Ok((Vec::new(), Vec::new()));
    };
    if extension_requests.next().is_some() {
        return Err(malformed("more than one extensionRequest attribute"));
    }

    let mut alt_name_extensions = Vec::new();
    for extension in &request.extensions {
        match extension.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => alt_name_extensions.push(&san.general_names),
            ParsedExtension::ParseError { .. } if extension.oid == OID_X509_EXT_SUBJECT_ALT_NAME => {
                return Err(malformed("subjectAltName extension does not parse"));
            }
            _ => {}
        }
    }
    if alt_name_extensions.len() > 1 {
        return Err(malformed("more than one subjectAltName extension"));
    }

    let mut dns_names: Vec<String> = Vec::new();
    let mut ip_addresses: Vec<IpAddr> = Vec::new();
    for name in alt_name_extensions.into_iter().flatten() {
        match name {
            GeneralName::DNSName(dns) => {
                if !dns.is_ascii() {
                    return Err(malformed("subjectAltName dNSName is not ascii"));
                }
                let dns = dns.to_ascii_lowercase();
                if !dns_names.contains(&dns) {
                    dns_names.push(dns);
                }
            }
            GeneralName::IPAddress(octets) => {
                let ip = crate::certificate::ip_from_octets(octets)
                    .ok_or_else(|| malformed("subjectAltName iPAddress is neither 4 nor 16 octets"))?;
                if !ip_addresses.contains(&ip) {
                    ip_addresses.push(ip);
                }
            }
            // ACME certificates name only DNS names and IP addresses; silently dropping an e-mail or URI name would
            // issue something other than what was asked for.
            other => {
                return Err(CsrError::Malformed(format!(
                    "unsupported subjectAltName type {}",
                    general_name_type(other)
                )));
            }
        }
    }
    Ok((dns_names, ip_addresses))
}

fn general_name_type(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::OtherName(..) => "otherName",
        GeneralName::RFC822Name(_) => "rfc822Name",
        GeneralName::DNSName(_) => "dNSName",
        GeneralName::X400Address(_) => "x400Address",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EDIPartyName(_) => "ediPartyName",
        GeneralName::URI(_) => "uniformResourceIdentifier",
        GeneralName::IPAddress(_) => "iPAddress",
        GeneralName::RegisteredID(_) => "registeredID",
        GeneralName::Invalid(..) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, SanType, SignatureAlgorithm};

    fn csr_der(alg: &'static SignatureAlgorithm, configure: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key generation");
        csr_der_with_key(&key, configure)
    }

    fn csr_der_with_key(key: &KeyPair, configure: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        configure(&mut params);
        params.serialize_request(key).expect("csr serialization").der().to_vec()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().expect("ia5 string"))
    }

    #[test]
    fn ecdsa_p256_csr_yields_lowercased_deduplicated_names() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
            p.distinguished_name.push(DnType::CommonName, "WWW.Example.COM");
            p.subject_alt_names = vec![dns("Example.com"), dns("www.example.com"), dns("EXAMPLE.com")];
        });
        let csr = parse_csr(&der).expect("valid csr");
        assert!(matches!(csr.key, Jwk::Ec { crv: EcCurve::P256, .. }));
        assert_eq!(csr.dns_names, vec!["example.com", "www.example.com"]);
        assert_eq!(csr.common_name.as_deref(), Some("www.example.com"));
        assert_eq!(csr.names(), BTreeSet::from(["example.com".to_owned(), "www.example.com".to_owned()]));
        assert_eq!(csr.der, der);
        assert!(csr.ip_addresses.is_empty());
    }

    #[test]
    fn common_name_counts_as_a_name() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P384_SHA384, |p| {
            p.distinguished_name.push(DnType::CommonName, "only-cn.example");
        });
        let csr = parse_csr(&der).expect("valid csr");
        assert!(matches!(csr.key, Jwk::Ec { crv: EcCurve::P384, .. }));
        assert!(csr.dns_names.is_empty());
        assert_eq!(csr.names(), BTreeSet::from(["only-cn.example".to_owned()]));
    }

    #[test]
    fn spki_is_the_keys_own_encoding() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key generation");
        let der = csr_der_with_key(&key, |p| p.subject_alt_names = vec![dns("a.example")]);
        let csr = parse_csr(&der).expect("valid csr");
        assert_eq!(csr.spki_der, rcgen::PublicKeyData::subject_public_key_info(&key));
    }

    #[test]
    fn ip_addresses_are_extracted_and_deduplicated() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
            p.subject_alt_names = vec![
                SanType::IpAddress("192.0.2.1".parse().expect("ip")),
                SanType::IpAddress("2001:db8::1".parse().expect("ip")),
                SanType::IpAddress("192.0.2.1".parse().expect("ip")),
                dns("mixed.example"),
            ];
        });
        let csr = parse_csr(&der).expect("valid csr");
        let expected: Vec<IpAddr> = vec!["192.0.2.1".parse().expect("ip"), "2001:db8::1".parse().expect("ip")];
        assert_eq!(csr.ip_addresses, expected);
        assert_eq!(csr.dns_names, vec!["mixed.example"]);
    }

    #[test]
    fn rsa_keys_are_parsed() {
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa generation");
        let pkcs8 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("pkcs8");
        let key = KeyPair::try_from(pkcs8.as_ref()).expect("rcgen accepts the rsa key");
        let der = csr_der_with_key(&key, |p| p.subject_alt_names = vec![dns("rsa.example")]);
        let csr = parse_csr(&der).expect("valid csr");
        assert_eq!(csr.key.rsa_modulus().map(<[u8]>::len), Some(256));
        assert_eq!(csr.key.algorithm(), quarry_jose::Algorithm::Rs256);
    }

    #[test]
    fn must_staple_and_other_requested_extensions_are_ignored() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
            p.subject_alt_names = vec![dns("staple.example")];
            // TLS Feature (RFC 7633) status_request, as certbot --must-staple sends it.
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                vec![0x30, 0x03, 0x02, 0x01, 0x05],
            )];
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        });
        let csr = parse_csr(&der).expect("valid csr");
        assert_eq!(csr.dns_names, vec!["staple.example"]);
    }

    #[test]
    fn tampered_signature_is_refused() {
        let mut der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| p.subject_alt_names = vec![dns("a.example")]);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(parse_csr(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn tampered_request_info_is_refused() {
        let mut der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| p.subject_alt_names = vec![dns("aaaa.example")]);
        let at = der.windows(4).position(|w| w == b"aaaa").expect("name in der");
        der[at] = b'b';
        assert_eq!(parse_csr(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        let mut der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| p.subject_alt_names = vec![dns("a.example")]);
        for input in [&b""[..], b"not a csr", &der[..der.len() / 2]] {
            assert!(matches!(parse_csr(input), Err(CsrError::Malformed(_))), "input {input:?}");
        }
        der.push(0);
        assert!(matches!(parse_csr(&der), Err(CsrError::Malformed(_))));
    }

    #[test]
    fn email_alt_names_are_refused() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
            p.subject_alt_names = vec![dns("a.example"), SanType::Rfc822Name("me@a.example".try_into().expect("ia5"))];
        });
        let err = parse_csr(&der).expect_err("email san");
        assert_eq!(err, CsrError::Malformed("unsupported subjectAltName type rfc822Name".into()));
        assert_eq!(err.to_string(), "malformed csr: unsupported subjectAltName type rfc822Name");
    }

    #[test]
    fn unsupported_curve_is_reported_as_such() {
        let der = csr_der(&rcgen::PKCS_ECDSA_P521_SHA512, |p| p.subject_alt_names = vec![dns("a.example")]);
        assert!(matches!(parse_csr(&der), Err(CsrError::UnsupportedKey(_))));
    }

    #[test]
    fn keys_quarry_does_not_accept_are_unsupported() {
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P521_SHA512] {
            let der = csr_der(alg, |p| p.subject_alt_names = vec![dns("a.example")]);
            assert!(matches!(parse_csr(&der), Err(CsrError::UnsupportedKey(_))), "{alg:?}");
        }
    }

    /// Found accepted by the attack run: a CSR signed with sha1WithRSAEncryption (ecdsa-with-SHA1 was refused).
    #[test]
    fn sha1_signatures_are_refused() {
        let der = include_bytes!("../testdata/sha1-rsa.csr.der");
        let err = parse_csr(der).expect_err("a SHA-1 signature");
        assert!(
            matches!(&err, CsrError::BadSignatureAlgorithm(detail) if detail.contains("1.2.840.113549.1.1.5")),
            "{err}"
        );
    }

    /// Found by the attack run: the same EC key, compressed, was taken for another key. It parses to the one
    /// canonical key, and the certificate will carry the uncompressed encoding.
    #[test]
    fn a_compressed_key_is_the_uncompressed_key() {
        let csr = parse_csr(include_bytes!("../testdata/compressed-p256.csr.der")).expect("a valid csr");
        let uncompressed = include_bytes!("../testdata/compressed-p256.spki.der");
        assert_eq!(csr.spki_der, uncompressed);
        assert_eq!(csr.key, Jwk::from_spki_der(uncompressed).unwrap());
        assert_eq!(csr.dns_names, ["compressed.example"]);
    }

    #[test]
    fn the_signature_algorithm_must_suit_the_key() {
        // An ECDSA CSR relabelled ecdsa-with-SHA224 (1.2.840.10045.4.3.1, an OID of the same length, not accepted):
        // refused by its algorithm before any verification.
        let der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, |p| p.subject_alt_names = vec![dns("a.example")]);
        let ecdsa_with_sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let at = der.windows(10).rposition(|w| w == ecdsa_with_sha256).expect("signature algorithm");
        let mut relabelled = der.clone();
        relabelled[at + 9] = 0x01;
        assert!(matches!(parse_csr(&relabelled), Err(CsrError::BadSignatureAlgorithm(_))));
    }
}
