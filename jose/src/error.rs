//! Why a JWS or a JWK was refused, in the terms an ACME problem document uses.

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
