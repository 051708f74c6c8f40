//! JSON Web Signatures (RFC 7515) and JSON Web Keys (RFC 7517) as ACME (RFC 8555 §6.2) uses them: the flattened
//! JSON serialization, the three algorithms Quarry accepts, the canonical public key (`jwk`) every other crate
//! compares and hashes keys by, RFC 7638 thumbprints, and signing for test clients.
//!
//! Pure and synchronous: no I/O, no async, aws-lc-rs as the only crypto. This file only gathers the modules' public
//! items, so that every path is `quarry_jose::X`.

mod algorithm;
mod base64url;
mod challenge;
pub mod der;
mod eab;
mod error;
mod jwk;
mod jws;
mod signing;

pub use algorithm::{Algorithm, SUPPORTED_ALGORITHMS};
pub use base64url::{b64_decode, b64_encode};
pub use challenge::{dns01_txt_value, key_authorization};
pub use eab::{EAB_ALGORITHMS, ExternalAccountBinding, sign_external_account_binding};
pub use error::JoseError;
pub use jwk::{EcCurve, Jwk, RSA_EXPONENT, RSA_SIZES, spki_sha256};
pub use jws::{Jws, KeyRef, ProtectedHeader};
pub use signing::{SigningKey, sign_flattened};
