//! Checks every certificate must pass before the real issuer key signs it, run on the linting copy (the same TBS,
//! signed by a throwaway key).
//!
//! These are the rules a subscriber certificate of this CA must follow whatever went wrong upstream: the ra decided
//! what may be certified, and the lints catch a ca that would encode something else.

use quarry_core::Identifier;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::public_key::PublicKey;

use crate::Error;

/// The certificate policy every subscriber certificate asserts: CA/Browser Forum domain validated.
pub const DOMAIN_VALIDATED_POLICY: &[u64] = &[2, 23, 140, 1, 2, 1];

/// The extensions a subscriber certificate may carry, by OID.
const ALLOWED_EXTENSIONS: &[&str] = &[
    "2.5.29.14",               // subjectKeyIdentifier
    "2.5.29.15",               // keyUsage
    "2.5.29.17",               // subjectAltName
    "2.5.29.19",               // basicConstraints
    "2.5.29.31",               // cRLDistributionPoints
    "2.5.29.32",               // certificatePolicies
    "2.5.29.35",               // authorityKeyIdentifier
    "2.5.29.37",               // extKeyUsage
    "1.3.6.1.5.5.7.1.1",       // authorityInfoAccess
    "1.3.6.1.4.1.11129.2.4.2", // embedded SCT list
    "1.3.6.1.4.1.11129.2.4.3", // CT poison
];

const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const MAX_COMMON_NAME_LEN: usize = 64;

/// What a certificate is linted against.
#[derive(Debug, Clone, Copy)]
pub struct LintContext {
    /// The longest validity the profile allows, in seconds, both ends included.
    pub max_validity_secs: i64,
    /// The issuer's notAfter, Unix seconds: nothing it signs may outlive it.
    pub issuer_not_after: i64,
}

/// Runs every lint; the first failure is returned with what it found.
pub fn check(cert: &X509Certificate<'_>, context: &LintContext) -> Result<(), Error> {
    let fail = |detail: String| Err(Error::Lint(detail));
    if cert.version().0 != 2 {
        return fail("not a v3 certificate".into());
    }
    let serial = cert.raw_serial();
    if !(9..=20).contains(&serial.len()) || serial[0] & 0x80 != 0 || serial[0] == 0 {
        return fail("serial must be a positive integer of 9 to 20 bytes".into());
    }
    check_validity(cert, context)?;
    check_extensions(cert)?;
    let names = check_names(cert)?;
    check_common_name(cert, &names)?;
    check_public_key(cert)
}

fn check_validity(cert: &X509Certificate<'_>, context: &LintContext) -> Result<(), Error> {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_after < not_before {
        return Err(Error::Lint("notAfter precedes notBefore".into()));
    }
    let validity = not_after - not_before + 1;
    if validity > context.max_validity_secs {
        return Err(Error::Lint(format!(
            "validity of {validity} s exceeds the profile's {} s",
            context.max_validity_secs
        )));
    }
    if not_after > context.issuer_not_after {
        return Err(Error::Lint("notAfter is after the issuer's notAfter".into()));
    }
    Ok(())
}

fn check_extensions(cert: &X509Certificate<'_>) -> Result<(), Error> {
    let fail = |detail: &str| Err(Error::Lint(detail.to_owned()));
    let mut seen = Vec::new();
    let (mut aia, mut crldp, mut policy, mut key_usage, mut server_auth) = (false, false, false, false, false);
    for extension in cert.extensions() {
        let oid = extension.oid.to_id_string();
        if !ALLOWED_EXTENSIONS.contains(&oid.as_str()) {
            return Err(Error::Lint(format!("forbidden extension {oid}")));
        }
        if seen.contains(&oid) {
            return Err(Error::Lint(format!("extension {oid} appears twice")));
        }
        match extension.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => return fail("basicConstraints says CA"),
            ParsedExtension::KeyUsage(usage) => {
                if !usage.digital_signature() || usage.key_cert_sign() || usage.crl_sign() {
                    return fail("keyUsage must allow digitalSignature and not certificate or CRL signing");
                }
                key_usage = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                if eku.any || eku.code_signing || eku.email_protection || eku.time_stamping || eku.ocsp_signing {
                    return fail("extKeyUsage may only hold serverAuth and clientAuth");
                }
                if !eku.other.is_empty() {
                    return fail("extKeyUsage holds an unknown purpose");
                }
                server_auth = eku.server_auth;
            }
            ParsedExtension::AuthorityInfoAccess(info) => {
                aia = info.accessdescs.iter().any(|d| d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.2");
            }
            ParsedExtension::CRLDistributionPoints(points) => crldp = !points.points.is_empty(),
            ParsedExtension::CertificatePolicies(policies) => {
                policy = policies.iter().any(|p| p.policy_id.to_id_string() == "2.23.140.1.2.1");
            }
            ParsedExtension::ParseError { error } => return Err(Error::Lint(format!("extension {oid}: {error}"))),
            _ => {}
        }
        seen.push(oid);
    }
    for (present, what) in [
        (key_usage, "keyUsage is missing"),
        (server_auth, "extKeyUsage lacks serverAuth"),
        (aia, "authorityInfoAccess lacks a caIssuers URL"),
        (crldp, "cRLDistributionPoints is missing"),
        (policy, "certificatePolicies lacks the domain-validated policy"),
    ] {
        if !present {
            return fail(what);
        }
    }
    Ok(())
}

/// The SAN names as identifier text, each checked.
fn check_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, Error> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::Lint(format!("subjectAltName: {e}")))?
        .ok_or_else(|| Error::Lint("subjectAltName is missing".into()))?;
    if san.critical && cert.subject().iter_attributes().next().is_some() {
        return Err(Error::Lint("subjectAltName is critical although the subject is not empty".into()));
    }
    let mut names = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                if dns.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(Error::Lint(format!("dns name {dns:?} is not lowercase")));
                }
                Identifier::dns((*dns).to_owned())
                    .check_well_formed()
                    .map_err(|p| Error::Lint(format!("dns name {dns:?}: {}", p.detail)))?;
                names.push((*dns).to_owned());
            }
            GeneralName::IPAddress(octets) => {
                let ip = quarry_core::certificate::ip_from_octets(octets)
                    .ok_or_else(|| Error::Lint("an IP address SAN is neither 4 nor 16 bytes".into()))?;
                names.push(ip.to_string());
            }
            other => return Err(Error::Lint(format!("subjectAltName holds a {other:?}, not a dns name or IP"))),
        }
    }
    if names.is_empty() {
        return Err(Error::Lint("subjectAltName is empty".into()));
    }
    Ok(names)
}

fn check_common_name(cert: &X509Certificate<'_>, names: &[String]) -> Result<(), Error> {
    let mut attributes = cert.subject().iter_attributes();
    let Some(attribute) = attributes.next() else { return Ok(()) };
    if attributes.next().is_some() || attribute.attr_type().to_id_string() != "2.5.4.3" {
        return Err(Error::Lint("the subject may hold only a commonName".into()));
    }
    let common_name = attribute.as_str().map_err(|_| Error::Lint("commonName is not a string".into()))?;
    if common_name.len() > MAX_COMMON_NAME_LEN || !names.iter().any(|n| n == common_name) {
        return Err(Error::Lint(format!("commonName {common_name:?} is not one of the SAN names or is too long")));
    }
    Ok(())
}

fn check_public_key(cert: &X509Certificate<'_>) -> Result<(), Error> {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(Error::Lint(format!("RSA key of {bits} bits; allowed are 2048, 3072 and 4096")));
            }
            if rsa.try_exponent().ok() != Some(65_537) {
                return Err(Error::Lint("RSA public exponent is not 65537".into()));
            }
            Ok(())
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some(P256 | P384) => Ok(()),
                other => Err(Error::Lint(format!("ECDSA curve {other:?}; allowed are P-256 and P-384"))),
            }
        }
        _ => Err(Error::Lint(format!("public key algorithm {} is not allowed", spki.algorithm.algorithm))),
    }
}
