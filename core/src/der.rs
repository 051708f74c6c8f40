//! The few DER operations X.509 libraries do not offer: walking a TBSCertificate's extensions, replacing or removing
//! one, and wrapping a signed TBS into a Certificate (on the DER primitives of `quarry_jose::der`).
//!
//! Certificate Transparency needs exactly these: a log strips the poison extension from a precertificate, the ca
//! swaps it for the SCT list, and a verifier strips the SCT list again; each side must reproduce the same bytes.

pub use quarry_jose::der::{
    DerError, Element, TAG_BIT_STRING, TAG_BOOLEAN, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, children,
    encode, encode_oid, encode_unsigned_integer, read, read_exact, unsigned_integer_content,
};

/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const TAG_EXTENSIONS: u8 = 0xa3;

/// An `Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`.
pub fn encode_extension(oid: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    let mut content = encode_oid(oid);
    if critical {
        content.extend_from_slice(&[TAG_BOOLEAN, 1, 0xff]);
    }
    content.extend(encode(TAG_OCTET_STRING, value));
    encode(TAG_SEQUENCE, &content)
}

/// The extnID of an encoded Extension, as its encoded OID element.
fn extension_oid<'a>(extension: &Element<'a>) -> Result<&'a [u8], DerError> {
    let (oid, _) = read(extension.content)?;
    if oid.tag != TAG_OID {
        return Err(DerError("extension without an OID"));
    }
    Ok(oid.encoded)
}

/// The extnValue of the extension `oid` in a TBSCertificate, if present.
pub fn extension_value<'a>(tbs: &'a [u8], oid: &[u64]) -> Result<Option<&'a [u8]>, DerError> {
    let wanted = encode_oid(oid);
    let tbs = read_exact(tbs, TAG_SEQUENCE)?;
    let Some(extensions) = children(tbs.content)?.into_iter().find(|e| e.tag == TAG_EXTENSIONS) else {
        return Ok(None);
    };
    let list = read_exact(extensions.content, TAG_SEQUENCE)?;
    for extension in children(list.content)? {
        if extension_oid(&extension)? == wanted.as_slice() {
            let value = children(extension.content)?.pop().ok_or(DerError("extension without a value"))?;
            if value.tag != TAG_OCTET_STRING {
                return Err(DerError("extnValue is not an OCTET STRING"));
            }
            return Ok(Some(value.content));
        }
    }
    Ok(None)
}

/// Rewrites a TBSCertificate with the extension `oid` replaced by `replacement` (an encoded Extension) in the same
/// position, or removed when `replacement` is `None`. Fails when the TBS has no such extension, so that a caller
/// never signs a certificate that silently lacks the change it asked for.
pub fn replace_extension(tbs: &[u8], oid: &[u64], replacement: Option<&[u8]>) -> Result<Vec<u8>, DerError> {
    let wanted = encode_oid(oid);
    let tbs = read_exact(tbs, TAG_SEQUENCE)?;
    let mut fields = Vec::with_capacity(tbs.content.len());
    let mut found = false;
    for field in children(tbs.content)? {
        if field.tag != TAG_EXTENSIONS {
            fields.extend_from_slice(field.encoded);
            continue;
        }
        let list = read_exact(field.content, TAG_SEQUENCE)?;
        let mut extensions = Vec::with_capacity(list.content.len());
        for extension in children(list.content)? {
            if extension_oid(&extension)? == wanted.as_slice() {
                if found {
                    return Err(DerError("the extension appears twice"));
                }
                found = true;
                extensions.extend_from_slice(replacement.unwrap_or_default());
            } else {
                extensions.extend_from_slice(extension.encoded);
            }
        }
        fields.extend(encode(TAG_EXTENSIONS, &encode(TAG_SEQUENCE, &extensions)));
    }
    if !found {
        return Err(DerError("the extension to replace is missing"));
    }
    Ok(encode(TAG_SEQUENCE, &fields))
}

/// The parts of a signed Certificate: TBSCertificate, signatureAlgorithm and the signature's bytes.
pub struct SignedParts<'a> {
    pub tbs: &'a [u8],
    pub signature_algorithm: &'a [u8],
    pub signature: &'a [u8],
}

/// Splits a Certificate (or CertificateList: same shape) into its parts.
pub fn split_signed(der: &[u8]) -> Result<SignedParts<'_>, DerError> {
    let outer = read_exact(der, TAG_SEQUENCE)?;
    let parts = children(outer.content)?;
    let [tbs, algorithm, signature] = parts.as_slice() else {
        return Err(DerError("a signed structure has three parts"));
    };
    if tbs.tag != TAG_SEQUENCE || algorithm.tag != TAG_SEQUENCE || signature.tag != TAG_BIT_STRING {
        return Err(DerError("unexpected signed structure"));
    }
    let (&unused_bits, bits) = signature.content.split_first().ok_or(DerError("empty signature"))?;
    if unused_bits != 0 {
        return Err(DerError("signature is not a whole number of bytes"));
    }
    Ok(SignedParts { tbs: tbs.encoded, signature_algorithm: algorithm.encoded, signature: bits })
}

/// `SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }`.
pub fn assemble_signed(tbs: &[u8], signature_algorithm: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(signature);
    let mut content = Vec::with_capacity(tbs.len() + signature_algorithm.len() + bits.len() + 8);
    content.extend_from_slice(tbs);
    content.extend_from_slice(signature_algorithm);
    content.extend(encode(TAG_BIT_STRING, &bits));
    encode(TAG_SEQUENCE, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let content = vec![0xab; len];
            let encoded = encode(TAG_OCTET_STRING, &content);
            let element = read_exact(&encoded, TAG_OCTET_STRING).expect("reads back");
            assert_eq!(element.content.len(), len);
            assert_eq!(element.encoded, encoded.as_slice());
        }
    }

    #[test]
    fn rejects_non_minimal_and_truncated_lengths() {
        assert!(read(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_err(), "long form for a short length");
        assert!(read(&[0x04, 0x05, 1, 2]).is_err(), "truncated");
        assert!(read(&[]).is_err());
    }

    #[test]
    fn unsigned_integers_are_minimal_and_positive() {
        let content = |value: u128| unsigned_integer_content(&value.to_be_bytes());
        assert_eq!(content(0), [0]);
        assert_eq!(content(0x7f), [0x7f]);
        assert_eq!(content(0x80), [0, 0x80]);
        assert_eq!(content(0x0102), [1, 2]);
        assert_eq!(encode_unsigned_integer(&[0, 0, 0xff]), [TAG_INTEGER, 2, 0, 0xff]);
        assert_eq!(encode_unsigned_integer(&[]), [TAG_INTEGER, 1, 0]);
    }

    #[test]
    fn oids_encode_like_x690() {
        // 1.3.6.1.4.1.11129.2.4.3, the CT poison, as every certificate encodes it.
        assert_eq!(
            encode_oid(&[1, 3, 6, 1, 4, 1, 11129, 2, 4, 3]),
            [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x03]
        );
    }

    fn certificate_with_extension(oid: &[u64], value: &[u8]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(oid, value.to_vec()));
        params.self_signed(&key).expect("signs").der().to_vec()
    }

    #[test]
    fn replacing_then_removing_an_extension_matches_a_tbs_built_without_it() {
        let poison = [1, 3, 6, 1, 4, 1, 11129, 2, 4, 3];
        let other = [1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];
        let der = certificate_with_extension(&poison, &[0x05, 0x00]);
        let tbs = split_signed(&der).expect("splits").tbs;
        assert_eq!(extension_value(tbs, &poison).expect("walks"), Some([0x05, 0x00].as_slice()));

        let swapped = replace_extension(tbs, &poison, Some(&encode_extension(&other, false, b"scts"))).expect("swaps");
        assert_eq!(extension_value(&swapped, &poison).expect("walks"), None);
        assert_eq!(extension_value(&swapped, &other).expect("walks"), Some(b"scts".as_slice()));
        let stripped_precert = replace_extension(tbs, &poison, None).expect("strips");
        let stripped_final = replace_extension(&swapped, &other, None).expect("strips");
        assert_eq!(stripped_precert, stripped_final);
        assert!(replace_extension(&stripped_final, &other, None).is_err(), "a missing extension is an error");
    }

    #[test]
    fn split_and_assemble_round_trip() {
        let der = certificate_with_extension(&[1, 2, 3, 4], &[0x05, 0x00]);
        let parts = split_signed(&der).expect("splits");
        assert_eq!(assemble_signed(parts.tbs, parts.signature_algorithm, parts.signature), der);
    }
}
