//! CSRs for tests, signed by a [`quarry_jose::SigningKey`] (so that an account key or a certificate key a test
//! holds can be put in one), with the key's point compressed when asked: what an attacker sends to pass one key
//! off as another.

use quarry_jose::der::{self, TAG_SEQUENCE};
use quarry_jose::{Jwk, SigningKey};

/// A CSR for `names` carrying `key`, its EC point compressed when `compressed`.
pub fn csr_with_key(key: &SigningKey, names: &[&str], compressed: bool) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("valid names");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let signer = Signer::new(key, compressed);
    params.serialize_request(&signer).expect("the CSR serializes").der().to_vec()
}

/// An rcgen signer over a JWS signing key.
struct Signer<'a> {
    key: &'a SigningKey,
    public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl<'a> Signer<'a> {
    fn new(key: &'a SigningKey, compressed: bool) -> Self {
        let jwk = key.jwk();
        let public = match &jwk {
            Jwk::Ec { x, y, .. } if compressed => {
                [&[if y.last().is_some_and(|b| b % 2 == 1) { 0x03 } else { 0x02 }][..], x].concat()
            }
            _ => jwk.subject_public_key(),
        };
        let algorithm = match key.algorithm() {
            quarry_jose::Algorithm::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            quarry_jose::Algorithm::Es384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            quarry_jose::Algorithm::Rs256 => &rcgen::PKCS_RSA_SHA256,
        };
        Self { key, public, algorithm }
    }
}

impl rcgen::PublicKeyData for Signer<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for Signer<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature = self.key.sign(message);
        Ok(match self.key.jwk() {
            // JWS ECDSA signatures are r‖s; X.509's are the DER SEQUENCE of the two INTEGERs.
            Jwk::Ec { crv, .. } => {
                let (r, s) = signature.split_at(crv.coordinate_len());
                der::encode(TAG_SEQUENCE, &[der::encode_unsigned_integer(r), der::encode_unsigned_integer(s)].concat())
            }
            Jwk::Rsa { .. } => signature,
        })
    }
}
