//! External account binding (RFC 8555 §7.3.4): a JWS MACed with a key the CA handed out, whose payload is the new
//! account's public key.

use aws_lc_rs::hmac;
use serde_json::{Value, json};

use crate::base64url::{b64_decode, b64_encode};
use crate::error::{JoseError, malformed};
use crate::jwk::Jwk;

/// The MAC algorithms accepted for a binding.
pub const EAB_ALGORITHMS: &[&str] = &["HS256", "HS384", "HS512"];

/// A parsed, not yet verified, external account binding.
#[derive(Debug, Clone)]
pub struct ExternalAccountBinding {
    /// The key identifier the CA gave out with the MAC key.
    pub kid: String,
    /// The `url` header: must be the new-account URL.
    pub url: String,
    /// The payload: must be the outer JWS's account key.
    pub jwk: Jwk,
    algorithm: hmac::Algorithm,
    signing_input: Vec<u8>,
    mac: Vec<u8>,
}

fn hmac_algorithm(name: &str) -> Result<hmac::Algorithm, JoseError> {
    match name {
        "HS256" => Ok(hmac::HMAC_SHA256),
        "HS384" => Ok(hmac::HMAC_SHA384),
        "HS512" => Ok(hmac::HMAC_SHA512),
        other => Err(JoseError::BadSignatureAlgorithm(format!(
            "external account binding algorithm {other:?} is not supported; use one of {}",
            EAB_ALGORITHMS.join(", ")
        ))),
    }
}

impl ExternalAccountBinding {
    /// Parses the `externalAccountBinding` member of a new-account payload.
    pub fn parse(value: &Value) -> Result<Self, JoseError> {
        let object = value.as_object().ok_or_else(|| malformed("externalAccountBinding is not a JWS object"))?;
        let part = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("externalAccountBinding is missing the {name:?} member")))
        };
        let (protected_b64, payload_b64, mac_b64) = (part("protected")?, part("payload")?, part("signature")?);
        let header: Value = serde_json::from_slice(&b64_decode(protected_b64)?)
            .map_err(|_| malformed("externalAccountBinding protected header is not valid JSON"))?;
        let header =
            header.as_object().ok_or_else(|| malformed("externalAccountBinding protected header is not an object"))?;
        let string = |name: &str| {
            header
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("externalAccountBinding protected header needs a string {name:?}")))
        };
        let algorithm = hmac_algorithm(string("alg")?)?;
        // §7.3.4: the binding is not replayable on its own, so it carries no nonce.
        if header.contains_key("nonce") {
            return Err(malformed("externalAccountBinding protected header must not contain a nonce"));
        }
        let (kid, url) = (string("kid")?.to_owned(), string("url")?.to_owned());
        let jwk = Jwk::from_slice(&b64_decode(payload_b64)?)
            .map_err(|e| malformed(format!("externalAccountBinding payload is not a public JWK: {e}")))?;
        Ok(Self {
            kid,
            url,
            jwk,
            algorithm,
            signing_input: format!("{protected_b64}.{payload_b64}").into_bytes(),
            mac: b64_decode(mac_b64)?,
        })
    }

    /// Checks the MAC with `key` (constant time).
    pub fn verify(&self, key: &[u8]) -> Result<(), JoseError> {
        let key = hmac::Key::new(self.algorithm, key);
        hmac::verify(&key, &self.signing_input, &self.mac).map_err(|_| JoseError::BadSignature)
    }
}

/// Builds a binding, as a client does: `alg` is one of [`EAB_ALGORITHMS`].
pub fn sign_external_account_binding(
    alg: &str,
    kid: &str,
    mac_key: &[u8],
    url: &str,
    account_key: &Jwk,
) -> Result<Value, JoseError> {
    let algorithm = hmac_algorithm(alg)?;
    let protected = b64_encode(json!({"alg": alg, "kid": kid, "url": url}).to_string().as_bytes());
    let payload = b64_encode(account_key.canonical_json().as_bytes());
    let mac = hmac::sign(&hmac::Key::new(algorithm, mac_key), format!("{protected}.{payload}").as_bytes());
    Ok(json!({"protected": protected, "payload": payload, "signature": b64_encode(mac.as_ref())}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::signing::SigningKey;

    #[test]
    fn bindings_verify_with_their_key_only() {
        let account = SigningKey::generate(Algorithm::Es256).unwrap().jwk();
        for alg in EAB_ALGORITHMS {
            let binding =
                sign_external_account_binding(alg, "kid-1", b"secret", "https://ca.example/acme/new-acct", &account)
                    .unwrap();
            let parsed = ExternalAccountBinding::parse(&binding).unwrap();
            assert_eq!(parsed.kid, "kid-1");
            assert_eq!(parsed.url, "https://ca.example/acme/new-acct");
            assert_eq!(parsed.jwk, account);
            assert!(parsed.verify(b"secret").is_ok(), "{alg}");
            assert_eq!(parsed.verify(b"other").unwrap_err(), JoseError::BadSignature);
        }
    }

    #[test]
    fn malformed_bindings() {
        let account = SigningKey::generate(Algorithm::Es256).unwrap().jwk();
        let good = sign_external_account_binding("HS256", "k", b"s", "u", &account).unwrap();
        let header = |h: Value| {
            let mut binding = good.clone();
            binding["protected"] = json!(b64_encode(h.to_string().as_bytes()));
            binding
        };
        let cases = [
            json!("a string"),
            json!({"protected": good["protected"], "payload": good["payload"]}),
            header(json!({"alg": "HS256", "kid": "k", "url": "u", "nonce": "n"})),
            header(json!({"alg": "HS256", "url": "u"})),
            header(json!({"alg": "HS256", "kid": "k"})),
            {
                let mut binding = good.clone();
                binding["payload"] = json!(b64_encode(b"{\"kty\":\"oct\",\"k\":\"AA\"}"));
                binding
            },
        ];
        for case in cases {
            assert!(matches!(ExternalAccountBinding::parse(&case), Err(JoseError::Malformed(_))), "{case}");
        }
        let rs256 = header(json!({"alg": "RS256", "kid": "k", "url": "u"}));
        assert!(matches!(ExternalAccountBinding::parse(&rs256), Err(JoseError::BadSignatureAlgorithm(_))));
    }
}
