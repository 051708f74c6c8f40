//! Certificate Transparency (RFC 6962) as the ca, the publisher and the test log all need it: the poison and
//! SCT-list extensions, the SCT wire format, what a log signs, and checking a log's signature.

use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey};
use quarry_jose::spki_sha256;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::der;

/// The precertificate poison extension (critical, value NULL): no client accepts a certificate carrying it.
pub const POISON_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 3];
/// The embedded SCT list extension of a final certificate.
pub const SCT_LIST_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

/// TLS `HashAlgorithm.sha256` and `SignatureAlgorithm.{rsa, ecdsa}` (RFC 5246 §7.4.1.4.1).
const HASH_SHA256: u8 = 4;
const SIGNATURE_RSA: u8 = 1;
const SIGNATURE_ECDSA: u8 = 3;

/// Something in CT data that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtError(pub String);

impl fmt::Display for CtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CtError {}

impl From<der::DerError> for CtError {
    fn from(e: der::DerError) -> Self {
        Self(e.to_string())
    }
}

fn err(detail: impl Into<String>) -> CtError {
    CtError(detail.into())
}

/// The encoded poison Extension.
pub fn poison_extension() -> Vec<u8> {
    der::encode_extension(POISON_OID, true, &[0x05, 0x00])
}

/// Whether a certificate carries the poison, i.e. is a precertificate.
pub fn is_precertificate(certificate: &[u8]) -> Result<bool, CtError> {
    Ok(der::extension_value(der::split_signed(certificate)?.tbs, POISON_OID)?.is_some())
}

/// A v1 SignedCertificateTimestamp (RFC 6962 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sct {
    pub log_id: [u8; 32],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub extensions: Vec<u8>,
    pub hash_algorithm: u8,
    pub signature_algorithm: u8,
    pub signature: Vec<u8>,
}

impl Sct {
    /// The TLS encoding, as it appears in an SCT list.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(47 + self.extensions.len() + self.signature.len());
        out.push(0); // v1
        out.extend_from_slice(&self.log_id);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        push_u16_prefixed(&mut out, &self.extensions);
        out.push(self.hash_algorithm);
        out.push(self.signature_algorithm);
        push_u16_prefixed(&mut out, &self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CtError> {
        let mut reader = Reader(bytes);
        if reader.take(1)? != [0] {
            return Err(err("SCT version is not v1"));
        }
        let log_id = reader.take(32)?.try_into().map_err(|_| err("log id"))?;
        let timestamp_ms = u64::from_be_bytes(reader.take(8)?.try_into().map_err(|_| err("timestamp"))?);
        let extensions = reader.u16_prefixed()?.to_vec();
        let hash_algorithm = reader.take(1)?[0];
        let signature_algorithm = reader.take(1)?[0];
        let signature = reader.u16_prefixed()?.to_vec();
        if !reader.0.is_empty() {
            return Err(err("trailing bytes after the SCT"));
        }
        Ok(Self { log_id, timestamp_ms, extensions, hash_algorithm, signature_algorithm, signature })
    }
}

/// What a log's SCT vouches for.
#[derive(Debug, Clone, Copy)]
pub enum LogEntry<'a> {
    /// A final certificate, DER (add-chain).
    X509 { certificate: &'a [u8] },
    /// A precertificate (add-pre-chain): its issuer's key hash and its TBSCertificate with the poison extension
    /// removed. The key hash (as a log's id) is `quarry_jose::spki_sha256` of the SubjectPublicKeyInfo as the issuer's
    /// certificate carries it, not of Quarry's canonical re-encoding (`Jwk::key_hash`): RFC 6962 hashes those bytes.
    Precert { issuer_key_hash: [u8; 32], tbs: &'a [u8] },
}

impl<'a> LogEntry<'a> {
    /// The entry of a final certificate whose SCTs were embedded: its TBS without the SCT list, as the
    /// precertificate's TBS was without its poison.
    pub fn of_final_certificate(certificate: &[u8], issuer_spki: &[u8]) -> Result<(Vec<u8>, [u8; 32]), CtError> {
        let tbs = der::split_signed(certificate)?.tbs;
        Ok((der::replace_extension(tbs, SCT_LIST_OID, None)?, spki_sha256(issuer_spki)))
    }

    /// The entry of a precertificate: its TBS without the poison.
    pub fn of_precertificate(precertificate: &[u8], issuer_spki: &[u8]) -> Result<(Vec<u8>, [u8; 32]), CtError> {
        let tbs = der::split_signed(precertificate)?.tbs;
        Ok((der::replace_extension(tbs, POISON_OID, None)?, spki_sha256(issuer_spki)))
    }
}

/// The bytes a log signs for an entry (RFC 6962 §3.2 `digitally-signed struct`).
pub fn signed_data(entry: &LogEntry<'_>, timestamp_ms: u64, extensions: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(0); // v1
    out.push(0); // certificate_timestamp
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    match entry {
        LogEntry::X509 { certificate } => {
            out.extend_from_slice(&0u16.to_be_bytes());
            push_u24_prefixed(&mut out, certificate);
        }
        LogEntry::Precert { issuer_key_hash, tbs } => {
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(issuer_key_hash);
            push_u24_prefixed(&mut out, tbs);
        }
    }
    push_u16_prefixed(&mut out, extensions);
    out
}

/// A log's public key, by which its SCTs are checked.
#[derive(Debug, Clone)]
pub struct LogKey {
    spki: Vec<u8>,
    log_id: [u8; 32],
    algorithm: u8,
    /// Parsed once: a key parsed for each verification was checked anew each time (its point on the curve).
    public_key: ParsedPublicKey,
}

impl LogKey {
    /// From the log's SubjectPublicKeyInfo, DER: ECDSA P-256 or RSA, the two kinds RFC 6962 allows.
    pub fn from_spki(spki: &[u8]) -> Result<Self, CtError> {
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki).map_err(|e| err(format!("log key: {e}")))?;
        if !rest.is_empty() {
            return Err(err("log key: trailing data"));
        }
        let (algorithm, verification): (u8, &'static dyn signature::VerificationAlgorithm) =
            match info.algorithm.algorithm.to_id_string().as_str() {
                "1.2.840.10045.2.1" => (SIGNATURE_ECDSA, &signature::ECDSA_P256_SHA256_ASN1),
                "1.2.840.113549.1.1.1" => (SIGNATURE_RSA, &signature::RSA_PKCS1_2048_8192_SHA256),
                other => return Err(err(format!("log key: unsupported algorithm {other}"))),
            };
        let public_key = ParsedPublicKey::new(verification, info.subject_public_key.data.as_ref())
            .map_err(|e| err(format!("log key: {e}")))?;
        Ok(Self { spki: spki.to_vec(), log_id: spki_sha256(spki), algorithm, public_key })
    }

    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    pub fn log_id(&self) -> [u8; 32] {
        self.log_id
    }

    /// Checks that `sct` is this log's signature over `entry`.
    pub fn verify(&self, sct: &Sct, entry: &LogEntry<'_>) -> Result<(), CtError> {
        if sct.log_id != self.log_id {
            return Err(err("the SCT is from another log"));
        }
        if sct.hash_algorithm != HASH_SHA256 || sct.signature_algorithm != self.algorithm {
            return Err(err("the SCT's signature algorithm does not match the log's key"));
        }
        let message = signed_data(entry, sct.timestamp_ms, &sct.extensions);
        self.public_key.verify_sig(&message, &sct.signature).map_err(|_| err("the SCT's signature does not verify"))
    }
}

/// The SignedCertificateTimestampList of encoded SCTs (RFC 6962 §3.3).
pub fn encode_sct_list(scts: &[Vec<u8>]) -> Vec<u8> {
    let mut list = Vec::new();
    for sct in scts {
        push_u16_prefixed(&mut list, sct);
    }
    let mut out = Vec::with_capacity(list.len() + 2);
    push_u16_prefixed(&mut out, &list);
    out
}

pub fn decode_sct_list(bytes: &[u8]) -> Result<Vec<Sct>, CtError> {
    let mut outer = Reader(bytes);
    let mut list = Reader(outer.u16_prefixed()?);
    if !outer.0.is_empty() {
        return Err(err("trailing bytes after the SCT list"));
    }
    let mut scts = Vec::new();
    while !list.0.is_empty() {
        scts.push(Sct::decode(list.u16_prefixed()?)?);
    }
    Ok(scts)
}

/// The encoded SCT list Extension of a final certificate: the TLS list inside an OCTET STRING inside extnValue.
pub fn sct_list_extension(scts: &[Vec<u8>]) -> Vec<u8> {
    der::encode_extension(SCT_LIST_OID, false, &der::encode(der::TAG_OCTET_STRING, &encode_sct_list(scts)))
}

/// The SCTs embedded in a certificate, empty when it has none.
pub fn embedded_scts(certificate: &[u8]) -> Result<Vec<Sct>, CtError> {
    let tbs = der::split_signed(certificate)?.tbs;
    match der::extension_value(tbs, SCT_LIST_OID)? {
        None => Ok(Vec::new()),
        Some(value) => decode_sct_list(der::read_exact(value, der::TAG_OCTET_STRING)?.content),
    }
}

fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn push_u24_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CtError> {
        if self.0.len() < n {
            return Err(err("truncated CT structure"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u16_prefixed(&mut self) -> Result<&'a [u8], CtError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| err("length"))?);
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

    use super::*;

    fn log_key() -> (EcdsaKeyPair, LogKey) {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new()).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("parses");
        let spki = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen reads it");
        let log = LogKey::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&spki)).expect("log key");
        assert_eq!(key.public_key().as_ref(), log.public_key.as_ref());
        (key, log)
    }

    fn sign(key: &EcdsaKeyPair, log: &LogKey, entry: &LogEntry<'_>, timestamp_ms: u64) -> Sct {
        let signature = key.sign(&SystemRandom::new(), &signed_data(entry, timestamp_ms, &[])).expect("signs");
        Sct {
            log_id: log.log_id(),
            timestamp_ms,
            extensions: Vec::new(),
            hash_algorithm: HASH_SHA256,
            signature_algorithm: SIGNATURE_ECDSA,
            signature: signature.as_ref().to_vec(),
        }
    }

    /// A log key is parsed, its point checked on the curve, once, when the log is configured: a broken one fails
    /// there rather than at every SCT.
    #[test]
    fn a_log_key_off_its_curve_is_refused_when_configured() {
        let (_, log) = log_key();
        let mut spki = log.spki().to_vec();
        *spki.last_mut().expect("a point") ^= 0x01;
        let refused = LogKey::from_spki(&spki).expect_err("refused");
        assert!(refused.to_string().contains("log key"), "{refused}");
    }

    #[test]
    fn an_sct_round_trips_and_verifies_only_for_its_entry() {
        let (key, log) = log_key();
        let entry = LogEntry::Precert { issuer_key_hash: [7; 32], tbs: b"tbs" };
        let sct = sign(&key, &log, &entry, 1_700_000_000_000);
        let decoded = Sct::decode(&sct.encode()).expect("decodes");
        assert_eq!(decoded, sct);
        log.verify(&decoded, &entry).expect("verifies");

        let other = LogEntry::Precert { issuer_key_hash: [8; 32], tbs: b"tbs" };
        assert!(log.verify(&decoded, &other).is_err(), "another issuer");
        let mut later = decoded.clone();
        later.timestamp_ms += 1;
        assert!(log.verify(&later, &entry).is_err(), "another timestamp");
        let (_, other_log) = log_key();
        assert!(other_log.verify(&decoded, &entry).is_err(), "another log");
    }

    #[test]
    fn sct_lists_round_trip_through_the_extension() {
        let (key, log) = log_key();
        let entry = LogEntry::X509 { certificate: b"cert" };
        let scts = vec![sign(&key, &log, &entry, 1), sign(&key, &log, &entry, 2)];
        let encoded: Vec<Vec<u8>> = scts.iter().map(Sct::encode).collect();
        assert_eq!(decode_sct_list(&encode_sct_list(&encoded)).expect("decodes"), scts);
        assert!(decode_sct_list(&[0, 5, 0]).is_err(), "truncated");
    }
}
