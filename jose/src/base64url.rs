//! Unpadded base64url (RFC 7515 §2), the encoding of every JOSE member, decoded strictly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{JoseError, malformed};

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
