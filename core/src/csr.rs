//! PKCS#10 certificate signing requests: parsing, self-signature verification and name extraction.
//!
//! Only the subject, the public key and the subjectAltName from the extensionRequest attribute matter to Quarry;
//! every other requested extension (must-staple, key usages, ...) is ignored, because the ca decides the
//! certificate's extensions itself. Name policy (syntax, order match) is the ra's job, not this module's.

use crate::identifier::Identifier;
use std::collections::BTreeSet;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The RSA moduli aws-lc-rs verifies PKCS#1 and PSS signatures for; outside this range a CSR cannot be checked.
const RSA_VERIFIABLE_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("malformed csr: {0}")]
    Malformed(String),
    #[error("csr signature does not verify with its public key")]
    BadSignature,
    #[error("unsupported csr key: {0}")]
    UnsupportedKey(String),
}

/// The kind of public key a CSR carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrKey {
    EcdsaP256,
    EcdsaP384,
    Rsa {
        modulus_bits: usize,
        exponent: u64,
    },
    Ed25519,
    /// A key whose signature verified but which is none of the above; key policy decides what to do with it.
    Other(String),
}

/// A CSR whose self-signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// The whole CSR as received.
    pub der: Vec<u8>,
    /// The SubjectPublicKeyInfo, exactly as encoded in the CSR.
    pub spki_der: Vec<u8>,
    /// The subject's first commonName, lowercased (ACME clients put a DNS name there).
    pub common_name: Option<String>,
    /// subjectAltName DNS names, lowercased, without duplicates, in request order.
    pub dns_names: Vec<String>,
    /// subjectAltName IP addresses without duplicates, in request order.
    pub ip_addresses: Vec<IpAddr>,
    pub key: CsrKey,
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

    // The key is classified before the signature is checked so that a key aws-lc-rs cannot verify with is reported
    // as unsupported rather than as a bad signature.
    let key = classify_key(&info.subject_pki)?;
    match csr.verify_signature() {
        Ok(()) => {}
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            return Err(CsrError::UnsupportedKey(format!(
                "signature algorithm {} with this key",
                csr.signature_algorithm.algorithm
            )));
        }
        Err(_) => return Err(CsrError::BadSignature),
    }

    let common_name = match info.subject.iter_common_name().next() {
        None => None,
        Some(cn) => Some(cn.as_str().map_err(|_| malformed("commonName is not a text string"))?.to_ascii_lowercase()),
    };
    let (dns_names, ip_addresses) = requested_alt_names(&csr)?;

    Ok(ParsedCsr {
        der: der.to_vec(),
        spki_der: info.subject_pki.raw.to_vec(),
        common_name,
        dns_names,
        ip_addresses,
        key,
    })
}

fn malformed(detail: &str) -> CsrError {
    CsrError::Malformed(detail.to_owned())
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<CsrKey, CsrError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| malformed("ec public key without a named curve"))?;
        return if curve == OID_EC_P256 {
            Ok(CsrKey::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(CsrKey::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedKey(format!("ec curve {curve}")))
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(malformed("rsa public key does not parse"));
        };
        let modulus_bits = integer_bits(rsa.modulus);
        let exponent = rsa.try_exponent().map_err(|_| malformed("rsa public exponent is out of range"))?;
        if !RSA_VERIFIABLE_BITS.contains(&modulus_bits) {
            return Err(CsrError::UnsupportedKey(format!("rsa modulus of {modulus_bits} bits")));
        }
        return Ok(CsrKey::Rsa { modulus_bits, exponent });
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(CsrKey::Ed25519);
    }
    Ok(CsrKey::Other(algorithm.to_id_string()))
}

/// Bit length of an unsigned big-endian integer that may carry DER's leading zero octets.
fn integer_bits(be: &[u8]) -> usize {
    let significant = be.iter().position(|&b| b != 0).map_or(&[][..], |i| &be[i..]);
    match significant.first() {
        None => 0,
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
    }
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
        assert_eq!(csr.key, CsrKey::EcdsaP256);
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
        assert_eq!(csr.key, CsrKey::EcdsaP384);
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
        let der = csr_der(&rcgen::PKCS_ED25519, |p| {
            p.subject_alt_names = vec![
                SanType::IpAddress("192.0.2.1".parse().expect("ip")),
                SanType::IpAddress("2001:db8::1".parse().expect("ip")),
                SanType::IpAddress("192.0.2.1".parse().expect("ip")),
                dns("mixed.example"),
            ];
        });
        let csr = parse_csr(&der).expect("valid csr");
        assert_eq!(csr.key, CsrKey::Ed25519);
        let expected: Vec<IpAddr> = vec!["192.0.2.1".parse().expect("ip"), "2001:db8::1".parse().expect("ip")];
        assert_eq!(csr.ip_addresses, expected);
        assert_eq!(csr.dns_names, vec!["mixed.example"]);
    }

    #[test]
    fn rsa_key_size_and_exponent_are_reported() {
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa generation");
        let pkcs8 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("pkcs8");
        let key = KeyPair::try_from(pkcs8.as_ref()).expect("rcgen accepts the rsa key");
        let der = csr_der_with_key(&key, |p| p.subject_alt_names = vec![dns("rsa.example")]);
        let csr = parse_csr(&der).expect("valid csr");
        assert_eq!(csr.key, CsrKey::Rsa { modulus_bits: 2048, exponent: 65537 });
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
    fn integer_bits_ignores_leading_zero_octets() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0xff]), 9);
        assert_eq!(integer_bits(&[0x00]), 0);
        assert_eq!(integer_bits(&[]), 0);
    }
}
