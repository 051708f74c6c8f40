//! The JWS signature algorithms Quarry accepts (RFC 7518 §3), by their JOSE names. Both the JWS header and the JWK
//! name one, so it lives apart from either.

use crate::error::JoseError;

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
