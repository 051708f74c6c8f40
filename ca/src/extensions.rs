//! The extensions, beyond what rcgen has fields for, that every certificate of this CA carries: the DV certificate
//! policy and the caIssuers URL. The ca puts them on subscriber certificates, the ceremony on intermediates.

use quarry_core::der;

use crate::Error;
use crate::lint::DOMAIN_VALIDATED_POLICY;

/// certificatePolicies with the CA/Browser Forum domain-validated policy alone.
pub fn certificate_policies() -> rcgen::CustomExtension {
    let policy_information = der::encode(der::TAG_SEQUENCE, &der::encode_oid(DOMAIN_VALIDATED_POLICY));
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 32], der::encode(der::TAG_SEQUENCE, &policy_information))
}

/// id-pe-authorityInfoAccess with one caIssuers URI (RFC 5280 §4.2.2.1), DER-encoded by hand: rcgen has no field
/// for it.
pub fn authority_info_access(url: &str) -> Result<rcgen::CustomExtension, Error> {
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
