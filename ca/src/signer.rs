//! Where an issuer's private key lives, behind one trait: a PEM file (dev) today, a PKCS#11 token tomorrow.
//!
//! The ca never hands a key to a certificate library: it builds the to-be-signed bytes with a throwaway key and asks
//! the signer to sign exactly those bytes, so any key store that can sign a message can hold an issuer's key.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::Error;

/// Signs messages with an issuer's private key.
pub trait Signer: Send + Sync + fmt::Debug {
    /// The key's SubjectPublicKeyInfo, DER.
    fn subject_public_key_info(&self) -> Vec<u8>;
    /// The signature algorithm, which fixes the AlgorithmIdentifier written into what is signed.
    fn algorithm(&self) -> &'static SignatureAlgorithm;
    /// Signs `message` (a TBSCertificate or TBSCertList), returning the signature as X.509 carries it.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error>;
    /// Whether one signature takes long enough (an RSA key, a round trip to an HSM) that it belongs on a blocking
    /// thread rather than the async executor.
    fn is_slow(&self) -> bool;
    /// Where the key lives (`file`, `pkcs11`): the label of the signing metrics, so an HSM's errors show as its own.
    fn key_store(&self) -> &'static str;
}

/// A key read from a PEM file into this process.
pub struct FileSigner {
    key: KeyPair,
}

impl FileSigner {
    pub fn new(key: KeyPair) -> Self {
        Self { key }
    }
}

impl fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSigner").field("algorithm", self.key.algorithm()).finish_non_exhaustive()
    }
}

impl Signer for FileSigner {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(SigningKey::sign(&self.key, message)?)
    }

    fn key_store(&self) -> &'static str {
        "file"
    }

    fn is_slow(&self) -> bool {
        self.key.algorithm() == &rcgen::PKCS_RSA_SHA256
            || self.key.algorithm() == &rcgen::PKCS_RSA_SHA384
            || self.key.algorithm() == &rcgen::PKCS_RSA_SHA512
    }
}

/// What "signs" linting copies (of certificates and CRLs): the public half of a fresh key of the same kind as
/// `algorithm`'s, so the copy's AlgorithmIdentifier and TBS are byte for byte what the real key then signs, and a
/// signature of the right form and size made once at start. A linting copy is parsed and checked, never verified
/// (nothing may trust it), and signing each one for real was a fifth of the ca's CPU per certificate.
pub(crate) struct LintKey {
    key: KeyPair,
    placeholder_signature: Vec<u8>,
}

impl PublicKeyData for LintKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for LintKey {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.placeholder_signature.clone())
    }
}

pub(crate) fn throwaway_key_like(algorithm: &'static SignatureAlgorithm) -> Result<LintKey, Error> {
    let key = KeyPair::generate_for(algorithm)?;
    let placeholder_signature = key.sign(b"quarry linting copy")?;
    Ok(LintKey { key, placeholder_signature })
}
