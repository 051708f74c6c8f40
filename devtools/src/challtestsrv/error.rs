//! The challenge test server's one error type: a socket it cannot bind, or mock data it cannot serve.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the challenge test server's {what} {protocol} socket on {addr}: {source}")]
    Bind { what: &'static str, protocol: &'static str, addr: SocketAddr, source: io::Error },
    /// Mock data that cannot be served, such as a CNAME target that is not a DNS name.
    #[error("{0}")]
    InvalidInput(String),
}
