//! Test support for Quarry: the challenge test server, a throwaway PKI, fakes of peer services and an ACME client.

pub mod challtestsrv;
/// The ACME client, under the name the tests have always used.
pub use quarry_acme_client as client;
pub mod csr;
pub mod ctlog;
pub mod db;
pub mod fakes;
pub mod otlp;
pub mod pki;
pub mod rotation;
pub mod stack;
pub mod verify;
