//! JSON Web Signatures (RFC 7515) and JSON Web Keys (RFC 7517) as ACME (RFC 8555 §6.2) uses them: the flattened
//! JSON serialization, the three algorithms Quarry accepts, the canonical public key (`key`) every other crate
//! compares and hashes keys by, RFC 7638 thumbprints, and signing for test clients.
//!
//! Pure and synchronous: no I/O, no async, aws-lc-rs as the only crypto.

pub mod der;
mod eab;
mod key;

pub use eab::{EAB_ALGORITHMS, ExternalAccountBinding, sign_external_account_binding};
pub use key::{EcCurve, Jwk, RSA_EXPONENT, RSA_SIZES, spki_sha256};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey};
use aws_lc_rs::{digest, rsa};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Why a JWS or JWK was refused; the message is fit for an ACME problem document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    BadSignatureAlgorithm(String),
    #[error("JWS verification error")]
    BadSignature,
    /// A key Quarry does not accept (type, curve, size, exponent, a point off its curve): `badPublicKey`.
    #[error("{0}")]
    BadPublicKey(String),
}

pub(crate) fn malformed(detail: impl Into<String>) -> JoseError {
    JoseError::Malformed(detail.into())
}

/// Unpadded base64url, as every JOSE member is encoded.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict unpadded base64url: padding and non-canonical trailing bits are refused.
pub fn b64_decode(text: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| malformed(format!("invalid base64url: {:?}", truncate(text))))
}

fn truncate(text: &str) -> &str {
    text.get(..40).unwrap_or(text)
}

/// The JWS algorithms Quarry accepts, by their JOSE names: one per accepted key type, as Let's Encrypt.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["RS256", "ES256", "ES384"];

/// A JWS signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Es256,
    Es384,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    pub fn parse(name: &str) -> Result<Self, JoseError> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "ES384" => Ok(Self::Es384),
            other => Err(JoseError::BadSignatureAlgorithm(format!(
                "JWS signature algorithm {other:?} is not supported; use one of {}",
                SUPPORTED_ALGORITHMS.join(", ")
            ))),
        }
    }
}

/// How a JWS names its signing key: an embedded JWK (new accounts) or an account URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Jwk(Jwk),
    Kid(String),
}

/// The protected header members ACME uses, plus the whole header as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectedHeader {
    pub alg: Algorithm,
    pub nonce: Option<String>,
    pub url: Option<String>,
    pub key: KeyRef,
    pub raw: Value,
}

/// A parsed, not yet verified, flattened JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    pub header: ProtectedHeader,
    pub payload: Vec<u8>,
    post_as_get: bool,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn optional_string(header: &Map<String, Value>, name: &str) -> Result<Option<String>, JoseError> {
    match header.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(malformed(format!("JWS header parameter {name:?} must be a string"))),
    }
}

impl Jws {
    /// Parses the flattened JSON serialization (RFC 7515 §7.2.2) and its protected header.
    pub fn parse(body: &[u8]) -> Result<Self, JoseError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| malformed("request body is not valid JSON"))?;
        let object = value.as_object().ok_or_else(|| malformed("JWS is not a JSON object"))?;
        if object.contains_key("signatures") {
            return Err(malformed("JWS general serialization is not supported; use the flattened serialization"));
        }
        if object.contains_key("header") {
            return Err(malformed("JWS unprotected headers are not allowed"));
        }
        let part = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("JWS is missing the {name:?} member")))
        };
        let (protected_b64, payload_b64, signature_b64) = (part("protected")?, part("payload")?, part("signature")?);

        let header_value: Value = serde_json::from_slice(&b64_decode(protected_b64)?)
            .map_err(|_| malformed("JWS protected header is not valid JSON"))?;
        let header = header_value.as_object().ok_or_else(|| malformed("JWS protected header is not a JSON object"))?;
        if header.contains_key("crit") {
            return Err(malformed("JWS protected header must not contain \"crit\""));
        }
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("JWS protected header is missing \"alg\""))?;
        let alg = Algorithm::parse(alg_name)?;
        let key = match (header.get("jwk"), header.get("kid")) {
            (Some(_), Some(_)) => {
                return Err(malformed("JWS protected header must not contain both \"jwk\" and \"kid\""));
            }
            (None, None) => return Err(malformed("JWS protected header must contain \"jwk\" or \"kid\"")),
            (Some(jwk), None) => KeyRef::Jwk(Jwk::from_json(jwk)?),
            (None, Some(Value::String(kid))) => KeyRef::Kid(kid.clone()),
            (None, Some(_)) => return Err(malformed("JWS header parameter \"kid\" must be a string")),
        };
        let nonce = optional_string(header, "nonce")?;
        let url = optional_string(header, "url")?;
        let payload = b64_decode(payload_b64)?;
        let signature = b64_decode(signature_b64)?;
        Ok(Self {
            header: ProtectedHeader { alg, nonce, url, key, raw: header_value.clone() },
            payload,
            post_as_get: payload_b64.is_empty(),
            signing_input: format!("{protected_b64}.{payload_b64}").into_bytes(),
            signature,
        })
    }

    /// True when the payload was exactly the empty string (RFC 8555 §6.3).
    pub fn is_post_as_get(&self) -> bool {
        self.post_as_get
    }

    /// Verifies the signature with `key`, which must suit the header's algorithm.
    pub fn verify(&self, key: &Jwk) -> Result<(), JoseError> {
        let alg = self.header.alg;
        if !key.algorithm_allowed(alg) {
            return Err(JoseError::BadSignatureAlgorithm(format!(
                "JWS signature algorithm {} does not match the account key type",
                alg.as_str()
            )));
        }
        let verified = match key {
            Jwk::Rsa { n, e } => RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &self.signing_input,
                &self.signature,
            ),
            Jwk::Ec { crv, .. } => {
                let algorithm = match crv {
                    EcCurve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, key.subject_public_key()).verify(&self.signing_input, &self.signature)
            }
        };
        verified.map_err(|_| JoseError::BadSignature)
    }
}

/// The key authorization of a challenge (RFC 8555 §8.1).
pub fn key_authorization(token: &str, account_key: &Jwk) -> String {
    format!("{token}.{}", account_key.thumbprint())
}

/// The TXT record value a dns-01 challenge expects (RFC 8555 §8.4).
pub fn dns01_txt_value(key_authorization: &str) -> String {
    b64_encode(digest::digest(&digest::SHA256, key_authorization.as_bytes()).as_ref())
}

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
                Jwk::Rsa { n: key::strip_leading_zeros(&components.n), e: key::strip_leading_zeros(&components.e) }
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

    use serde_json::json;

    const ALL: [Algorithm; 3] = [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256];

    fn signed(key: &SigningKey, header: Value, payload: Option<&[u8]>) -> Jws {
        Jws::parse(sign_flattened(key, &header, payload).as_bytes()).expect("parse")
    }

    fn header_for(key: &SigningKey) -> Value {
        json!({"alg": key.algorithm().as_str(), "nonce": "n1", "url": "https://ca/acme/new-acct", "jwk": key.jwk()})
    }

    #[test]
    fn every_algorithm_round_trips() {
        for alg in ALL {
            let key = SigningKey::generate(alg).unwrap();
            let jws = signed(&key, header_for(&key), Some(br#"{"a":1}"#));
            assert_eq!(jws.header.alg, alg);
            assert_eq!(jws.header.nonce.as_deref(), Some("n1"));
            assert_eq!(jws.header.key, KeyRef::Jwk(key.jwk()));
            assert!(!jws.is_post_as_get());
            jws.verify(&key.jwk()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            let jwk = Jwk::from_json(&key.jwk().to_json()).unwrap();
            assert_eq!(jwk, key.jwk());
        }
    }

    #[test]
    fn a_pkcs8_key_signs_as_itself_and_only_for_its_algorithm() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = SigningKey::from_pkcs8(Algorithm::Es256, pkcs8.as_ref()).unwrap();
        let again = SigningKey::from_pkcs8(Algorithm::Es256, pkcs8.as_ref()).unwrap();
        assert_eq!(key.jwk(), again.jwk(), "the same key each time it is read");
        signed(&key, header_for(&key), Some(b"{}")).verify(&again.jwk()).unwrap();
        for other in [Algorithm::Es384, Algorithm::Rs256] {
            assert!(
                matches!(SigningKey::from_pkcs8(other, pkcs8.as_ref()), Err(JoseError::BadPublicKey(_))),
                "{other:?}"
            );
        }
        assert!(SigningKey::from_pkcs8(Algorithm::Es256, b"not a key").is_err());
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let body: Value = serde_json::from_str(&sign_flattened(&key, &header_for(&key), Some(b"{}"))).unwrap();
        let other = b64_encode(b"{\"b\":2}");
        for (member, replacement) in [("payload", other.as_str()), ("signature", "AAAA")] {
            let mut tampered = body.clone();
            tampered[member] = json!(replacement);
            let jws = Jws::parse(tampered.to_string().as_bytes()).unwrap();
            assert_eq!(jws.verify(&key.jwk()), Err(JoseError::BadSignature), "{member}");
        }
        let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
        let jws = Jws::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(jws.verify(&stranger.jwk()), Err(JoseError::BadSignature));
    }

    #[test]
    fn algorithm_must_match_the_key() {
        let p256 = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut header = header_for(&p256);
        header["alg"] = json!("ES384");
        let jws = signed(&p256, header, Some(b"{}"));
        assert!(matches!(jws.verify(&p256.jwk()), Err(JoseError::BadSignatureAlgorithm(_))));
        let mut header = header_for(&p256);
        header["alg"] = json!("RS256");
        assert!(matches!(signed(&p256, header, None).verify(&p256.jwk()), Err(JoseError::BadSignatureAlgorithm(_))));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        type Expected = fn(&JoseError) -> bool;
        let cases: Vec<(Value, Expected)> = vec![
            (json!({"alg": "ES256", "nonce": "n", "url": "u"}), |e| matches!(e, JoseError::Malformed(_))),
            (json!({"alg": "ES256", "jwk": key.jwk(), "kid": "k"}), |e| matches!(e, JoseError::Malformed(_))),
            (json!({"alg": "ES256", "kid": "k", "crit": ["x"]}), |e| matches!(e, JoseError::Malformed(_))),
            (json!({"alg": "none", "kid": "k"}), |e| matches!(e, JoseError::BadSignatureAlgorithm(_))),
            (json!({"alg": "HS256", "kid": "k"}), |e| matches!(e, JoseError::BadSignatureAlgorithm(_))),
            (json!({"alg": "EdDSA", "kid": "k"}), |e| matches!(e, JoseError::BadSignatureAlgorithm(_))),
            (json!({"kid": "k"}), |e| matches!(e, JoseError::Malformed(_))),
            (json!({"alg": "ES256", "kid": 7}), |e| matches!(e, JoseError::Malformed(_))),
        ];
        for (header, expected) in cases {
            let err = Jws::parse(sign_flattened(&key, &header, None).as_bytes()).unwrap_err();
            assert!(expected(&err), "{header}: {err:?}");
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let good: Value = serde_json::from_str(&sign_flattened(&key, &header_for(&key), None)).unwrap();
        let mut padded = good.clone();
        padded["protected"] = json!(format!("{}=", good["protected"].as_str().unwrap()));
        let mut general = good.clone();
        general["signatures"] = json!([]);
        let mut unprotected = good.clone();
        unprotected["header"] = json!({});
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("signature");
        for body in [padded, general, unprotected, missing, json!([1])] {
            assert!(matches!(Jws::parse(body.to_string().as_bytes()), Err(JoseError::Malformed(_))), "{body}");
        }
        assert!(Jws::parse(b"not json").is_err());
    }

    #[test]
    fn post_as_get_is_an_empty_payload() {
        let key = SigningKey::generate(Algorithm::Es384).unwrap();
        let jws = signed(&key, header_for(&key), None);
        assert!(jws.is_post_as_get());
        assert!(jws.payload.is_empty());
        jws.verify(&key.jwk()).unwrap();
    }

    #[test]
    fn rsa_details_and_key_authorizations() {
        let key = SigningKey::generate(Algorithm::Rs256).unwrap();
        let jwk = key.jwk();
        assert_eq!(jwk.rsa_modulus().map(<[u8]>::len), Some(256));
        assert_eq!(jwk.subject_public_key()[0], 0x30);
        let ka = key_authorization("tok", &jwk);
        assert_eq!(ka, format!("tok.{}", jwk.thumbprint()));
        assert_eq!(dns01_txt_value(&ka).len(), 43);
    }
}
