//! The nonce service's client (the wfe's): nonces minted at any replica, each redeemed at the replica that minted
//! it, found by the prefix the nonce starts with.
//!
//! A replica's prefix is derived from its address with a key every replica and every wfe share (as Boulder derives
//! it): the wfe learns the replicas by discovery and computes their prefixes, so nothing maps prefixes to replicas
//! by hand, and two replicas never share one.
//!
//! Redemptions are batched when they meet: while a call to a replica is under way, the redemptions for it queue,
//! and go in one `RedeemBatch` call when that call returns. A lone redemption is one `Redeem` call at once, as
//! before, so batching adds no wait; under load it saves calls. A replica that predates `RedeemBatch` (during a
//! rolling update) is sent one `Redeem` per nonce.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use quarry_core::peer::Peer;
use quarry_core::{ErrorKind, Problem};
use tokio::sync::oneshot;

use crate::client::rpc;
use crate::nonce::nonce_service_client::NonceServiceClient as Nonces;
use crate::nonce::*;

/// The length of a replica's prefix: eight base64url characters (48 bits).
pub const PREFIX_LEN: usize = 8;

/// The prefix of the nonce replica reached at `addr`: the first 48 bits of HMAC-SHA256(`key`, "IP:PORT"), base64url.
pub fn nonce_prefix(key: &[u8], addr: SocketAddr) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, addr.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(&tag.as_ref()[..PREFIX_LEN / 4 * 3])
}

/// The most redemptions one `RedeemBatch` call carries (the nonce service's limit).
const MAX_REDEEM_BATCH: usize = 256;

/// The nonce service, through every replica.
#[derive(Clone)]
pub struct NonceClient {
    peer: Peer,
    prefix_key: Arc<[u8]>,
    replicas: Arc<Mutex<HashMap<SocketAddr, Redemptions>>>,
}

/// The redemptions bound for one replica.
#[derive(Default)]
struct Redemptions {
    /// A call to the replica is under way: redemptions queue instead of calling.
    calling: bool,
    queued: Vec<Queued>,
    /// The replica answered `RedeemBatch` with `unimplemented`.
    no_batches: bool,
}

/// A redemption waiting for the call under way to return.
struct Queued {
    nonce: String,
    deadline: Deadline,
    answer: oneshot::Sender<Result<bool, Problem>>,
}

impl std::fmt::Debug for NonceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceClient").field("peer", &self.peer).finish_non_exhaustive()
    }
}

type Deadline = Option<Instant>;

impl NonceClient {
    pub fn new(peer: Peer, prefix_key: &[u8]) -> Self {
        Self { peer, prefix_key: prefix_key.into(), replicas: Arc::default() }
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
        self.peer.replicas().into_iter().find(|addr| nonce_prefix(&self.prefix_key, *addr) == prefix)
    }

    /// Redeems `nonce` at the replica that minted it: `false` for a replay, a forgery, or a nonce of no known replica
    /// (one since gone); an error when that replica cannot be asked.
    pub async fn redeem(&self, nonce: &str, deadline: Deadline) -> Result<bool, Problem> {
        let Some(addr) = self.replica_of(nonce) else { return Ok(false) };
        let queued = {
            let mut replicas = self.lock();
            let replica = replicas.entry(addr).or_default();
            if replica.calling {
                let (answer, answered) = oneshot::channel();
                replica.queued.push(Queued { nonce: nonce.to_owned(), deadline, answer });
                Some(answered)
            } else {
                replica.calling = true;
                None
            }
        };
        if let Some(answered) = queued {
            return answered.await.unwrap_or_else(|_| Err(Problem::new(ErrorKind::Unavailable, "redemption dropped")));
        }
        // Whatever becomes of this call (its request may be dropped halfway), what queued meanwhile is sent on.
        let _hand_over = HandOver { client: self, addr };
        self.call(addr, vec![nonce.to_owned()], deadline).await.map(|valid| valid[0])
    }

    /// Sends what queued for `addr` while a call was under way, batch after batch, until nothing is queued.
    async fn send_queued(self, addr: SocketAddr) {
        loop {
            let batch: Vec<Queued> = {
                let mut replicas = self.lock();
                let replica = replicas.entry(addr).or_default();
                if replica.queued.is_empty() {
                    replica.calling = false;
                    return;
                }
                let take = replica.queued.len().min(MAX_REDEEM_BATCH);
                replica.queued.drain(..take).collect()
            };
            let deadline = batch.iter().filter_map(|queued| queued.deadline).min();
            let nonces = batch.iter().map(|queued| queued.nonce.clone()).collect();
            match self.call(addr, nonces, deadline).await {
                Ok(valid) => {
                    for (queued, valid) in batch.into_iter().zip(valid) {
                        let _ = queued.answer.send(Ok(valid));
                    }
                }
                Err(problem) => {
                    for queued in batch {
                        let _ = queued.answer.send(Err(problem.clone()));
                    }
                }
            }
        }
    }

    /// Redeems `nonces` at `addr`: one `Redeem` for one nonce, else one `RedeemBatch` (one `Redeem` each at a replica
    /// that predates it); whether each was valid, in order.
    async fn call(&self, addr: SocketAddr, nonces: Vec<String>, deadline: Deadline) -> Result<Vec<bool>, Problem> {
        let no_batches = self.lock().get(&addr).is_some_and(|replica| replica.no_batches);
        if nonces.len() > 1 && !no_batches {
            let count = nonces.len();
            let reply = self
                .peer
                .call_at(
                    addr,
                    "/quarry.nonce.v1.NonceService/RedeemBatch",
                    RedeemBatchRequest { nonces: nonces.clone() },
                    deadline,
                    |channel, request| async move { Nonces::new(channel).redeem_batch(request).await },
                )
                .await;
            match reply {
                Ok(reply) if reply.valid.len() == count => return Ok(reply.valid),
                Ok(_) => return Err(Problem::internal("the nonce service answered a batch with the wrong count")),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    self.lock().entry(addr).or_default().no_batches = true;
                }
                Err(status) => return Err(status.into()),
            }
        }
        let mut valid = Vec::with_capacity(nonces.len());
        for nonce in nonces {
            let reply = self
                .peer
                .call_at(
                    addr,
                    "/quarry.nonce.v1.NonceService/Redeem",
                    NonceMessage { nonce },
                    deadline,
                    |channel, request| async move { Nonces::new(channel).redeem(request).await },
                )
                .await?;
            valid.push(reply.valid);
        }
        Ok(valid)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Redemptions>> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Passes the turn to call a replica on when the call that held it ends or is dropped: to a task sending what
/// queued meanwhile, or to the next redemption when nothing did.
struct HandOver<'a> {
    client: &'a NonceClient,
    addr: SocketAddr,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut replicas = self.client.lock();
        let replica = replicas.entry(self.addr).or_default();
        if replica.queued.is_empty() {
            replica.calling = false;
            return;
        }
        drop(replicas);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.client.clone().send_queued(self.addr));
            }
            // No runtime to send them from (the process is stopping): they are answered as not sent.
            Err(_) => {
                let mut replicas = self.client.lock();
                let replica = replicas.entry(self.addr).or_default();
                replica.queued.clear();
                replica.calling = false;
            }
        }
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
