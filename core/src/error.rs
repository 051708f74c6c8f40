//! Error kinds shared by every service, and the `Problem` that carries one across gRPC.
//!
//! A kind is named after the RFC 8555 problem type it becomes at the wfe (`badNonce`, `malformed`, ...);
//! a few kinds (`notFound`, `duplicate`, `timeout`, `unavailable`) are internal and mapped by the wfe.

use serde::{Deserialize, Serialize};

use crate::identifier::Identifier;

macro_rules! error_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// What went wrong, in terms a client or a peer service can act on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind { $($variant,)* }

        impl ErrorKind {
            /// The kind's name: the suffix of its `urn:ietf:params:acme:error:` type where it has one.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// Parses a name produced by [`ErrorKind::as_str`].
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

error_kinds! {
    AccountDoesNotExist => "accountDoesNotExist",
    AlreadyReplaced => "alreadyReplaced",
    AlreadyRevoked => "alreadyRevoked",
    BadCsr => "badCSR",
    BadNonce => "badNonce",
    BadPublicKey => "badPublicKey",
    BadRevocationReason => "badRevocationReason",
    BadSignatureAlgorithm => "badSignatureAlgorithm",
    Caa => "caa",
    Compound => "compound",
    Connection => "connection",
    Dns => "dns",
    ExternalAccountRequired => "externalAccountRequired",
    IncorrectResponse => "incorrectResponse",
    InvalidContact => "invalidContact",
    InvalidProfile => "invalidProfile",
    Malformed => "malformed",
    OrderNotReady => "orderNotReady",
    RateLimited => "rateLimited",
    RejectedIdentifier => "rejectedIdentifier",
    ServerInternal => "serverInternal",
    Tls => "tls",
    Unauthorized => "unauthorized",
    UnsupportedContact => "unsupportedContact",
    UnsupportedIdentifier => "unsupportedIdentifier",
    UserActionRequired => "userActionRequired",
    Conflict => "conflict",
    // Two services whose configurations break a rule they share (the CRL shard count): FailedPrecondition on gRPC.
    Misconfigured => "misconfigured",
    NotFound => "notFound",
    Duplicate => "duplicate",
    Timeout => "timeout",
    Unavailable => "unavailable",
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        // An unknown name from a newer peer degrades to an internal error instead of failing the whole message.
        Ok(Self::parse(&name).unwrap_or(Self::ServerInternal))
    }
}

/// One identifier's share of a compound problem (RFC 8555 §6.7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubProblem {
    pub kind: ErrorKind,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
}

/// An error a service reports to its caller: a kind, a human-readable detail and optional subproblems.
///
/// The detail must be fit for an ACME client to read: never a Rust error's debug output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ErrorKind,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<SubProblem>,
    /// When the client may try again, in seconds (a `rateLimited` problem's `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into(), subproblems: Vec::new(), retry_after_secs: None }
    }

    /// A `rateLimited` problem the client may retry after `retry_after_secs`.
    pub fn rate_limited(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self { retry_after_secs: Some(retry_after_secs), ..Self::new(ErrorKind::RateLimited, detail) }
    }

    pub fn with_subproblems(mut self, subproblems: Vec<SubProblem>) -> Self {
        self.subproblems = subproblems;
        self
    }

    /// One problem for a request with several offending identifiers (RFC 8555 §6.7.1): their shared kind, or
    /// `rejectedIdentifier` when they differ, with one subproblem each. `None` when there is nothing to report.
    pub fn from_identifier_subproblems(subproblems: Vec<SubProblem>) -> Option<Self> {
        let first = subproblems.first()?;
        let kind =
            if subproblems.iter().all(|s| s.kind == first.kind) { first.kind } else { ErrorKind::RejectedIdentifier };
        let detail = match subproblems.as_slice() {
            [only] => only.detail.clone(),
            many => format!("Cannot issue for {} identifiers (see subproblems)", many.len()),
        };
        Some(Self::new(kind, detail).with_subproblems(subproblems))
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Malformed, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServerInternal, detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [ErrorKind::BadNonce, ErrorKind::BadCsr, ErrorKind::Malformed, ErrorKind::NotFound] {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::parse("nope"), None);
    }

    #[test]
    fn problems_round_trip_through_json() {
        let problem = Problem::new(ErrorKind::RejectedIdentifier, "no").with_subproblems(vec![SubProblem {
            kind: ErrorKind::Malformed,
            detail: "bad name".into(),
            identifier: Some(Identifier::dns("a..b")),
        }]);
        let json = serde_json::to_string(&problem).unwrap();
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), problem);
    }
}
