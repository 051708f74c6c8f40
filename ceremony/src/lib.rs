//! Quarry's key ceremonies: the one that makes an environment's issuing hierarchy (`quarry ceremony`, on an HSM in
//! production), and the dev PKI with its alternate chains that `quarry dev`, the compose stack and the tests run on.
//!
//! Its own crate, beside the ca: the ca only reads keys and certificates; making them is done once, offline.

pub mod chains;
mod dev_pki;
mod error;
pub mod hierarchy;

pub use dev_pki::{DevPki, ensure_dev_pki, ensure_dev_pki_for_hosts};
pub use error::Error;
