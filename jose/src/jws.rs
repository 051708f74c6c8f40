//! JSON Web Signatures (RFC 7515) in the flattened JSON serialization ACME uses (RFC 8555 §6.2): the protected
//! header's members, how it names its key, and verification with that key.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::algorithm::Algorithm;
use crate::base64url::b64_decode;
use crate::error::{JoseError, malformed};
use crate::jwk::{EcCurve, Jwk};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64url::b64_encode;
    use crate::signing::{SigningKey, sign_flattened};

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
}
