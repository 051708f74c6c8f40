//! Quarry's shared core: domain types, error kinds, configuration loading and the gRPC plumbing every service uses.
//!
//! Nothing here knows about HTTP, ACME problem documents or the database: those belong to the wfe and the sa.

pub mod build;
pub mod certificate;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod crl;
pub mod csr;
pub mod ct;
pub mod der;
pub mod discovery;
pub mod error;
pub mod fault;
pub mod grpc;
pub mod http_client;
pub mod http_server;
pub mod identifier;
pub mod lane;
pub mod model;
pub mod peer;
pub mod policy;
pub mod profile;
pub mod service;
pub mod shutdown;
pub mod tcp;
pub mod telemetry;
pub mod testing;
pub mod tls;

pub use error::{ErrorKind, Problem, SubProblem};
pub use identifier::{Identifier, IdentifierType};

/// Installs aws-lc-rs as the process-wide rustls crypto provider; every binary calls this first.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
