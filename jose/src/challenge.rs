//! What a challenge's proof is made of (RFC 8555 §8): the key authorization and the dns-01 TXT value derived from it.

use aws_lc_rs::digest;

use crate::base64url::b64_encode;
use crate::jwk::Jwk;

/// The key authorization of a challenge (RFC 8555 §8.1).
pub fn key_authorization(token: &str, account_key: &Jwk) -> String {
    format!("{token}.{}", account_key.thumbprint())
}

/// The TXT record value a dns-01 challenge expects (RFC 8555 §8.4).
pub fn dns01_txt_value(key_authorization: &str) -> String {
    b64_encode(digest::digest(&digest::SHA256, key_authorization.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::signing::SigningKey;

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
