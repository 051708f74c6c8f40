//! JSON Web Signatures (RFC 7515) and JSON Web Keys (RFC 7517) as ACME (RFC 8555 §6.2) uses them: the flattened
//! JSON serialization, the four algorithms Quarry accepts, RFC 7638 thumbprints, and signing for test clients.
//!
//! Pure and synchronous: no I/O, no async, aws-lc-rs as the only crypto.

mod eab;

pub use eab::{EAB_ALGORITHMS, ExternalAccountBinding, sign_external_account_binding};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey};
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
    #[error("{0}")]
    UnsupportedKey(String),
}

fn malformed(detail: impl Into<String>) -> JoseError {
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

/// The JWS algorithms Quarry accepts, by their JOSE names.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["RS256", "ES256", "ES384", "EdDSA"];

/// A JWS signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Es256,
    Es384,
    EdDsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn parse(name: &str) -> Result<Self, JoseError> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "ES384" => Ok(Self::Es384),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(JoseError::BadSignatureAlgorithm(format!(
                "JWS signature algorithm {other:?} is not supported; use one of {}",
                SUPPORTED_ALGORITHMS.join(", ")
            ))),
        }
    }
}

/// The elliptic curves accepted for ECDSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// A public key in JWK form. RSA components are kept without leading zero bytes, so equal keys compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Jwk {
    Ec {
        crv: EcCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Ed25519, the only OKP curve accepted.
    Okp {
        x: Vec<u8>,
    },
}

/// Members that only a private key has; a JWK carrying one is refused rather than silently trimmed.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, JoseError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("JWK is missing the string member {name:?}")))
}

impl Jwk {
    /// Parses a public JWK from its JSON object form.
    pub fn from_json(value: &Value) -> Result<Self, JoseError> {
        let object = value.as_object().ok_or_else(|| malformed("JWK is not a JSON object"))?;
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
            return Err(malformed(format!("JWK contains the private member {private:?}")));
        }
        match member(object, "kty")? {
            "EC" => {
                let crv = match member(object, "crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => return Err(JoseError::UnsupportedKey(format!("unsupported EC curve {other:?}"))),
                };
                let x = b64_decode(member(object, "x")?)?;
                let y = b64_decode(member(object, "y")?)?;
                if x.len() != crv.coordinate_len() || y.len() != crv.coordinate_len() {
                    return Err(malformed(format!("EC key coordinates have the wrong length for {}", crv.name())));
                }
                Ok(Self::Ec { crv, x, y })
            }
            "RSA" => {
                let n = strip_leading_zeros(&b64_decode(member(object, "n")?)?);
                let e = strip_leading_zeros(&b64_decode(member(object, "e")?)?);
                if n.is_empty() || e.is_empty() {
                    return Err(malformed("RSA key has an empty modulus or exponent"));
                }
                Ok(Self::Rsa { n, e })
            }
            "OKP" => match member(object, "crv")? {
                "Ed25519" => {
                    let x = b64_decode(member(object, "x")?)?;
                    if x.len() != 32 {
                        return Err(malformed("Ed25519 key must be 32 bytes"));
                    }
                    Ok(Self::Okp { x })
                }
                other => Err(JoseError::UnsupportedKey(format!("unsupported OKP curve {other:?}"))),
            },
            other => Err(JoseError::UnsupportedKey(format!("unsupported key type {other:?}"))),
        }
    }

    /// Parses a JWK from JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, JoseError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| malformed("JWK is not valid JSON"))?;
        Self::from_json(&value)
    }

    /// The RFC 7638 canonical JSON: required members only, in lexicographic order, no whitespace.
    pub fn canonical_json(&self) -> String {
        match self {
            Self::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#, crv.name(), b64_encode(x), b64_encode(y))
            }
            Self::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64_encode(e), b64_encode(n)),
            Self::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64_encode(x)),
        }
    }

    /// The JWK as a JSON value (its canonical members).
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null)
    }

    /// RFC 7638 thumbprint: base64url SHA-256 of the canonical JSON.
    pub fn thumbprint(&self) -> String {
        b64_encode(&self.key_hash())
    }

    /// SHA-256 of the canonical JSON: a stable key for "one account per key".
    pub fn key_hash(&self) -> [u8; 32] {
        let digest = digest::digest(&digest::SHA256, self.canonical_json().as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        hash
    }

    /// Whether `alg` is the one algorithm this key may sign with.
    pub fn algorithm_allowed(&self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Self::Rsa { .. }, Algorithm::Rs256)
                | (Self::Ec { crv: EcCurve::P256, .. }, Algorithm::Es256)
                | (Self::Ec { crv: EcCurve::P384, .. }, Algorithm::Es384)
                | (Self::Okp { .. }, Algorithm::EdDsa)
        )
    }

    /// The RSA modulus length in bits, for key policy.
    pub fn rsa_modulus_bits(&self) -> Option<usize> {
        match self {
            Self::Rsa { n, .. } => Some(n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)),
            _ => None,
        }
    }

    /// The RSA public exponent, when it fits in 64 bits.
    pub fn rsa_exponent(&self) -> Option<u64> {
        match self {
            Self::Rsa { e, .. } if e.len() <= 8 => Some(e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))),
            _ => None,
        }
    }

    /// The key as the subjectPublicKey BIT STRING of an X.509 SubjectPublicKeyInfo carries it (EC: the
    /// uncompressed point; Ed25519: the raw key; RSA: the DER RSAPublicKey), so a CSR's key can be compared.
    pub fn subject_public_key(&self) -> Vec<u8> {
        match self {
            Self::Ec { x, y, .. } => [&[0x04][..], x, y].concat(),
            Self::Okp { x } => x.clone(),
            Self::Rsa { n, e } => der_sequence(&[der_unsigned_integer(n), der_unsigned_integer(e)].concat()),
        }
    }

    /// The key as a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), byte for byte what a CSR or certificate holds for
    /// it, so that blocked-key hashes (SHA-256 of the SPKI) match whichever form a key arrives in.
    pub fn spki_der(&self) -> Vec<u8> {
        // AlgorithmIdentifier encodings: id-ecPublicKey with the curve, rsaEncryption with NULL, id-Ed25519.
        const P256: &[u8] = &[
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
            0x03, 0x01, 0x07,
        ];
        const P384: &[u8] = &[
            0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
        ];
        const RSA: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
        const ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
        let algorithm = match self {
            Self::Ec { crv: EcCurve::P256, .. } => P256,
            Self::Ec { crv: EcCurve::P384, .. } => P384,
            Self::Rsa { .. } => RSA,
            Self::Okp { .. } => ED25519,
        };
        let key = self.subject_public_key();
        // A BIT STRING with no unused bits.
        let bits = [vec![0x03], der_length(key.len() + 1), vec![0x00], key].concat();
        der_sequence(&[algorithm, bits.as_slice()].concat())
    }

    /// SHA-256 of [`Jwk::spki_der`]: the key's identity in blocked-key lists.
    pub fn spki_hash(&self) -> [u8; 32] {
        let digest = digest::digest(&digest::SHA256, &self.spki_der());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        hash
    }
}

fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        [vec![0x80 | bytes.len() as u8], bytes].concat()
    }
}

fn der_unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    // A leading zero keeps a magnitude with its high bit set positive.
    let body = if magnitude.first().is_some_and(|b| b & 0x80 != 0) {
        [&[0][..], magnitude].concat()
    } else {
        magnitude.to_vec()
    };
    [vec![0x02], der_length(body.len()), body].concat()
}

fn der_sequence(content: &[u8]) -> Vec<u8> {
    [vec![0x30], der_length(content.len()), content.to_vec()].concat()
}

impl serde::Serialize for Jwk {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Jwk {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
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
            Jwk::Okp { x } => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(&self.signing_input, &self.signature)
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
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.algorithm().as_str())
    }
}

impl SigningKey {
    /// A fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: Algorithm) -> Result<Self, JoseError> {
        let failed = |_| JoseError::UnsupportedKey(format!("cannot generate a {} key", alg.as_str()));
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
            Algorithm::EdDsa => Self::Ed25519(Ed25519KeyPair::generate().map_err(failed)?),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ecdsa { alg, .. } => *alg,
            Self::Rsa(_) => Algorithm::Rs256,
            Self::Ed25519(_) => Algorithm::EdDsa,
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
            Self::Ed25519(pair) => Jwk::Okp { x: pair.public_key().as_ref().to_vec() },
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
            Self::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
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

    #[test]
    fn spki_encodings_match_the_crypto_librarys() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256, Algorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            let expected: PublicKeyX509Der<'static> = match &key {
                SigningKey::Ecdsa { pair, .. } => pair.public_key().as_der().unwrap(),
                SigningKey::Rsa(pair) => pair.public_key().as_der().unwrap(),
                SigningKey::Ed25519(pair) => pair.public_key().as_der().unwrap(),
            };
            assert_eq!(key.jwk().spki_der(), expected.as_ref(), "{alg:?}");
            let hash = digest::digest(&digest::SHA256, expected.as_ref());
            assert_eq!(key.jwk().spki_hash().as_slice(), hash.as_ref(), "{alg:?}");
        }
    }
    use serde_json::json;

    const ALL: [Algorithm; 4] = [Algorithm::Es256, Algorithm::Es384, Algorithm::Rs256, Algorithm::EdDsa];

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
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let jws = signed(&key, header_for(&key), None);
        assert!(jws.is_post_as_get());
        assert!(jws.payload.is_empty());
        jws.verify(&key.jwk()).unwrap();
    }

    #[test]
    fn thumbprints_match_the_rfc_vectors() {
        // RFC 7638 §3.1.
        let rsa = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(Jwk::from_json(&rsa).unwrap().thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // RFC 8037 Appendix A.3.
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(Jwk::from_json(&ed).unwrap().thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn private_and_unsupported_keys_are_refused() {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let mut private = key.jwk().to_json();
        private["d"] = json!("AAAA");
        assert!(matches!(Jwk::from_json(&private), Err(JoseError::Malformed(_))));
        let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"});
        assert!(matches!(Jwk::from_json(&p521), Err(JoseError::UnsupportedKey(_))));
        let short = json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"});
        assert!(matches!(Jwk::from_json(&short), Err(JoseError::Malformed(_))));
    }

    #[test]
    fn rsa_details_and_key_authorizations() {
        let key = SigningKey::generate(Algorithm::Rs256).unwrap();
        let jwk = key.jwk();
        assert_eq!(jwk.rsa_modulus_bits(), Some(2048));
        assert_eq!(jwk.rsa_exponent(), Some(65537));
        assert_eq!(jwk.subject_public_key()[0], 0x30);
        let ka = key_authorization("tok", &jwk);
        assert_eq!(ka, format!("tok.{}", jwk.thumbprint()));
        assert_eq!(dns01_txt_value(&ka).len(), 43);
    }
}
