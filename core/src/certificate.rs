//! What the services read out of an issued certificate: the identifiers it certifies, and its issuer's id.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::identifier::Identifier;

/// The stable identifier of an issuer, stored with each certificate and keying its CRL shards: the first 7 bytes of
/// the SHA-256 of the issuer certificate's subject Name DER, big-endian (always positive: 56 bits fit an i64).
pub fn issuer_id(issuer_subject_der: &[u8]) -> i64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issuer_subject_der);
    digest.as_ref()[..7].iter().fold(0i64, |id, &byte| (id << 8) | i64::from(byte))
}

/// An iPAddress general name's 4 or 16 octets as an address; `None` for any other length.
pub fn ip_from_octets(octets: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        Some(IpAddr::from(v4))
    } else {
        <[u8; 16]>::try_from(octets).ok().map(IpAddr::from)
    }
}

/// The DNS names (lowercased) and IP addresses of the certificate's subjectAltName, in order; other name types are
/// not identifiers Quarry issues for and are left out.
pub fn identifiers(cert: &X509Certificate<'_>) -> Vec<Identifier> {
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(Identifier::dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(octets) => ip_from_octets(octets).map(Identifier::ip),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_become_addresses() {
        assert_eq!(ip_from_octets(&[192, 0, 2, 1]), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(ip_from_octets(&[0; 16]), Some("::".parse().unwrap()));
        assert_eq!(ip_from_octets(&[1, 2, 3]), None);
    }
}
