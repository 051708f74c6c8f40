//! The nonce service's client (the wfe's): nonces minted at any replica, each redeemed at the replica that minted
//! it, found by the prefix the nonce starts with.
//!
//! A replica's prefix is derived from its address with a key every replica and every wfe share (as Boulder derives
//! it): the wfe learns the replicas by discovery and computes their prefixes, so nothing maps prefixes to replicas
//! by hand, and two replicas never share one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quarry_core::Problem;
use quarry_core::peer::Peer;

use crate::client::rpc;
use crate::nonce::nonce_service_client::NonceServiceClient as Nonces;
use crate::nonce::*;

/// The length of a replica's prefix: eight base64url characters (48 bits).
pub const PREFIX_LEN: usize = 8;

/// The prefix of the nonce replica reached at `addr`: the first 48 bits of HMAC-SHA256(`key`, "IP:PORT"), base64url.
pub fn nonce_prefix(key: &[u8], addr: SocketAddr) -> String {
    prefix_with(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key), addr)
}

fn prefix_with(key: &aws_lc_rs::hmac::Key, addr: SocketAddr) -> String {
    let tag = aws_lc_rs::hmac::sign(key, addr.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(&tag.as_ref()[..PREFIX_LEN / 4 * 3])
}

/// The nonce service, through every replica.
#[derive(Clone)]
pub struct NonceClient {
    peer: Peer,
    prefix_key: Arc<aws_lc_rs::hmac::Key>,
    /// Each current replica's prefix, computed the first time a nonce is redeemed while it is known: every POST
    /// redeems one, and an HMAC per replica per POST was work repeated for an answer that never changes. Replicas
    /// discovery no longer lists are forgotten when a new one appears.
    prefixes: Arc<Mutex<HashMap<SocketAddr, String>>>,
}

impl std::fmt::Debug for NonceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceClient").field("peer", &self.peer).finish_non_exhaustive()
    }
}

type Deadline = Option<Instant>;

impl NonceClient {
    pub fn new(peer: Peer, prefix_key: &[u8]) -> Self {
        let prefix_key = Arc::new(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, prefix_key));
        Self { peer, prefix_key, prefixes: Arc::default() }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// `count` fresh nonces from one replica.
    pub async fn nonce_batch(&self, count: u32, deadline: Deadline) -> Result<Vec<String>, Problem> {
        let request = NonceBatchRequest { count };
        let reply =
            rpc!(self.peer, Nonces, nonce_batch, "/quarry.nonce.v1.NonceService/NonceBatch", request, deadline)?;
        Ok(reply.nonces)
    }

    /// The replica whose prefix `nonce` starts with, among those known now.
    pub fn replica_of(&self, nonce: &str) -> Option<SocketAddr> {
        let prefix = nonce.get(..PREFIX_LEN)?;
        let replicas = self.peer.replicas();
        let mut known = self.prefixes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if replicas.iter().any(|addr| !known.contains_key(addr)) {
            // Discovery changed: forget the replicas gone, so that a long life of deployments does not pile them up.
            known.retain(|addr, _| replicas.contains(addr));
            for addr in &replicas {
                known.entry(*addr).or_insert_with(|| prefix_with(&self.prefix_key, *addr));
            }
        }
        replicas.into_iter().find(|addr| known.get(addr).is_some_and(|known| known == prefix))
    }

    /// Redeems `nonce` at the replica that minted it: `false` for a replay, a forgery, or a nonce of no known replica
    /// (one since gone); an error when that replica cannot be asked.
    pub async fn redeem(&self, nonce: &str, deadline: Deadline) -> Result<bool, Problem> {
        let Some(addr) = self.replica_of(nonce) else { return Ok(false) };
        let reply = self
            .peer
            .call_at(
                addr,
                "/quarry.nonce.v1.NonceService/Redeem",
                NonceMessage { nonce: nonce.to_owned() },
                deadline,
                |channel, request| async move { Nonces::new(channel).redeem(request).await },
            )
            .await?;
        Ok(reply.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_eight_base64url_characters_that_differ_by_address() {
        let a = nonce_prefix(b"a shared key of enough length", "127.0.0.2:9301".parse().unwrap());
        let b = nonce_prefix(b"a shared key of enough length", "127.0.0.3:9301".parse().unwrap());
        let other_key = nonce_prefix(b"another key of enough length!", "127.0.0.2:9301".parse().unwrap());
        assert_eq!(a.len(), PREFIX_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_ne!(a, b);
        assert_ne!(a, other_key);
        assert_eq!(a, nonce_prefix(b"a shared key of enough length", "127.0.0.2:9301".parse().unwrap()));
    }
}
