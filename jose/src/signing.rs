//! Private keys that sign JWSs, for ACME test clients and the prober: generated or read from PKCS#8, and the
//! flattened JWS they make.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaPublicKeyComponents};
use serde_json::Value;

use crate::algorithm::Algorithm;
use crate::base64url::b64_encode;
use crate::error::JoseError;
use crate::jwk::{EcCurve, Jwk, strip_leading_zeros};

/// A private key that signs JWSs, for ACME test clients.
pub enum SigningKey {
    Ecdsa { alg: Algorithm, pair: EcdsaKeyPair },
    Rsa(rsa::KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.algorithm().as_str())
    }
}

impl SigningKey {
    /// A fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: Algorithm) -> Result<Self, JoseError> {
        let failed = |_| JoseError::BadPublicKey(format!("cannot generate a {} key", alg.as_str()));
        Ok(match alg {
            Algorithm::Es256 => Self::Ecdsa {
                alg,
                pair: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?,
            },
            Algorithm::Es384 => Self::Ecdsa {
                alg,
                pair: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).map_err(failed)?,
            },
            Algorithm::Rs256 => Self::Rsa(rsa::KeyPair::generate(rsa::KeySize::Rsa2048).map_err(failed)?),
        })
    }

    /// A key kept as PKCS#8 DER (a prober's persistent account key); refused unless it is a key for `alg`.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, JoseError> {
        let rejected = |e| JoseError::BadPublicKey(format!("not a {} key in PKCS#8: {e}", alg.as_str()));
        Ok(match alg {
            Algorithm::Es256 => Self::Ecdsa {
                alg,
                pair: EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(rejected)?,
            },
            Algorithm::Es384 => Self::Ecdsa {
                alg,
                pair: EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8).map_err(rejected)?,
            },
            Algorithm::Rs256 => Self::Rsa(rsa::KeyPair::from_pkcs8(pkcs8).map_err(rejected)?),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ecdsa { alg, .. } => *alg,
            Self::Rsa(_) => Algorithm::Rs256,
        }
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        match self {
            Self::Ecdsa { alg, pair } => {
                let point = pair.public_key().as_ref();
                let crv = if *alg == Algorithm::Es256 { EcCurve::P256 } else { EcCurve::P384 };
                let len = crv.coordinate_len();
                Jwk::Ec { crv, x: point[1..1 + len].to_vec(), y: point[1 + len..].to_vec() }
            }
            Self::Rsa(pair) => {
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                Jwk::Rsa { n: strip_leading_zeros(&components.n), e: strip_leading_zeros(&components.e) }
            }
        }
    }

    /// Signs `message` in the JWS form (fixed-length r‖s for ECDSA).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ecdsa { pair, .. } => pair.sign(&rng, message).map(|s| s.as_ref().to_vec()).unwrap_or_default(),
            Self::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                match pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature) {
                    Ok(()) => signature,
                    Err(_) => Vec::new(),
                }
            }
        }
    }
}

/// Builds a flattened JWS over `payload` (`None`: the empty POST-as-GET payload) with the given protected header.
pub fn sign_flattened(key: &SigningKey, protected_header: &Value, payload: Option<&[u8]>) -> String {
    let protected = b64_encode(protected_header.to_string().as_bytes());
    let payload = payload.map(b64_encode).unwrap_or_default();
    let signature = b64_encode(&key.sign(format!("{protected}.{payload}").as_bytes()));
    serde_json::json!({ "protected": protected, "payload": payload, "signature": signature }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::Jws;

    use serde_json::json;

    #[test]
    fn a_pkcs8_key_signs_as_itself_and_only_for_its_algorithm() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = SigningKey::from_pkcs8(Algorithm::Es256, pkcs8.as_ref()).unwrap();
        let again = SigningKey::from_pkcs8(Algorithm::Es256, pkcs8.as_ref()).unwrap();
        assert_eq!(key.jwk(), again.jwk(), "the same key each time it is read");
        let header = json!({"alg": "ES256", "nonce": "n1", "url": "https://ca/acme/new-acct", "jwk": key.jwk()});
        let signed = sign_flattened(&key, &header, Some(b"{}"));
        Jws::parse(signed.as_bytes()).expect("parse").verify(&again.jwk()).unwrap();
        for other in [Algorithm::Es384, Algorithm::Rs256] {
            assert!(
                matches!(SigningKey::from_pkcs8(other, pkcs8.as_ref()), Err(JoseError::BadPublicKey(_))),
                "{other:?}"
            );
        }
        assert!(SigningKey::from_pkcs8(Algorithm::Es256, b"not a key").is_err());
    }
}
