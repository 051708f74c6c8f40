//! Test support for Quarry: the challenge test server, a throwaway PKI, fakes of peer services and an ACME client.

pub mod challtestsrv;
pub mod client;
pub mod csr;
pub mod ctlog;
pub mod db;
pub mod fakes;
pub mod otlp;
pub mod pki;
pub mod rotation;
pub mod stack;
