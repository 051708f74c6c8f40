//! One typed client per service: domain methods over a [`Peer`] (every replica, balanced, re-resolved), so that
//! retries, deadlines and client metrics live in one place and callers never build a raw gRPC request.
//!
//! Each method makes one RPC. An RPC the proto files mark idempotent is retried on another replica after a transport
//! failure; any other only when it surely never reached a server (see [`quarry_core::peer`]). Every failure is a
//! [`Problem`](quarry_core::Problem): the peer's own, or a generic one that never echoes transport text.

mod ca;
mod nonce;
mod publisher;
mod ra;
mod sa;
mod va;

pub use ca::CaClient;
pub use nonce::{NonceClient, PREFIX_LEN, nonce_prefix};
pub use publisher::PublisherClient;
pub use ra::RaClient;
pub use sa::{FinalizationFacts, SaClient};
pub use va::VaClient;

use quarry_core::peer::Idempotence;

include!(concat!(env!("OUT_DIR"), "/idempotence.rs"));

/// Whether the RPC at `path` (`/package.Service/Method`) may be retried after it may have run, as its proto says.
pub fn idempotence(path: &str) -> Idempotence {
    match RPCS.iter().find(|(rpc, _)| *rpc == path) {
        Some((_, true)) => Idempotence::Idempotent,
        _ => Idempotence::NotIdempotent,
    }
}

/// One unary RPC through a peer: `rpc!(peer, GeneratedClient, method, "/pkg.Service/Method", message, deadline)`,
/// giving `Result<Reply, Problem>`.
macro_rules! rpc {
    ($peer:expr, $client:ident, $method:ident, $path:literal, $message:expr, $deadline:expr) => {
        $peer
            .call($path, $crate::client::idempotence($path), &$message, $deadline, |channel, request| async move {
                $client::new(channel).$method(request).await
            })
            .await
            .map_err(quarry_core::Problem::from)
    };
}
pub(crate) use rpc;

/// A call's answer, or `None` from a peer that predates the call (`unimplemented`, during a rolling update): its
/// caller then does what it did before the call existed.
pub(crate) fn unless_unimplemented<R>(reply: Result<R, tonic::Status>) -> Result<Option<R>, quarry_core::Problem> {
    match reply {
        Ok(reply) => Ok(Some(reply)),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
        Err(status) => Err(quarry_core::Problem::from(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC path the clients name is one the proto files define, so no call falls back to "not idempotent"
    /// by a typo.
    #[test]
    fn every_path_the_clients_name_exists() {
        let sources = [
            include_str!("ca.rs"),
            include_str!("nonce.rs"),
            include_str!("publisher.rs"),
            include_str!("ra.rs"),
            include_str!("sa/read_only.rs"),
            include_str!("sa/read_write.rs"),
            include_str!("va.rs"),
        ];
        let mut named = 0;
        for source in sources {
            for path in source.split('"').filter(|part| part.starts_with("/quarry.")) {
                assert!(RPCS.iter().any(|(rpc, _)| *rpc == path), "{path} is not an RPC of the proto files");
                named += 1;
            }
        }
        assert!(named >= RPCS.len() - 2, "the clients name {named} of {} RPCs", RPCS.len());
    }

    #[test]
    fn reads_are_idempotent_and_fuses_are_not() {
        assert_eq!(idempotence("/quarry.sa.v1.StorageAuthorityReadOnly/GetAccount"), Idempotence::Idempotent);
        assert_eq!(idempotence("/quarry.sa.v1.StorageAuthority/SetOrderProcessing"), Idempotence::NotIdempotent);
        assert_eq!(idempotence("/quarry.nonce.v1.NonceService/Redeem"), Idempotence::NotIdempotent);
        assert_eq!(idempotence("/unknown/Rpc"), Idempotence::NotIdempotent);
    }
}
