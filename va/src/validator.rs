//! The seam between the service and the challenge types: one [`Validator`] per challenge type, so tls-alpn-01
//! and remote perspectives can be added without touching the others.

use quarry_core::model::{ChallengeType, ValidationRecord};
use quarry_core::{Identifier, Problem};

/// One validation to perform: what the authorization is for and what the client must have published.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The authorization's identifier, without any `*.` (a wildcard order's authorization is for its base name).
    pub identifier: &'a Identifier,
    pub token: &'a str,
    /// `token || '.' || thumbprint(account key)`, computed by the ra.
    pub key_authorization: &'a str,
}

/// Proves control of an identifier by one challenge type.
#[tonic::async_trait]
pub trait Validator: Send + Sync {
    /// The challenge type this validator answers for.
    fn challenge_type(&self) -> ChallengeType;

    /// Performs the validation, appending a record for every request made; a record is appended before its
    /// request starts, so that a validation cut short by the overall timeout still says what it was doing.
    async fn validate(&self, attempt: Attempt<'_>, records: &mut Vec<ValidationRecord>) -> Result<(), Problem>;
}
