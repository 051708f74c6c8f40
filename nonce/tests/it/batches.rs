//! Redemptions that meet at the wfe's typed client share calls: while one call to a replica is under way the others
//! queue and go in one `RedeemBatch`, each answered as it would be alone; a replica that predates `RedeemBatch` gets
//! one `Redeem` per nonce. Served here by a nonce service of the test's own over the real `NonceSource`, which
//! counts the calls and holds each a moment so that the redemptions surely meet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_core::peer::Peer;
use quarry_nonce::NonceSource;
use quarry_proto::client::{NonceClient, nonce_prefix};
use quarry_proto::core::Empty;
use quarry_proto::nonce::nonce_service_server::{NonceService, NonceServiceServer};
use quarry_proto::nonce::*;
use quarry_testkit::pki::TestPki;
use tonic::{Request, Response, Status};

use crate::PREFIX_KEY;

/// How long the service holds each call.
const HOLD: Duration = Duration::from_millis(100);

/// The calls a counting service served.
#[derive(Default)]
struct Calls {
    redeems: AtomicUsize,
    batches: AtomicUsize,
}

struct Counting {
    source: Mutex<NonceSource>,
    calls: Arc<Calls>,
    /// Whether it implements `RedeemBatch`; one that predates it answers `unimplemented`.
    implements_batches: bool,
}

impl Counting {
    fn redeem_one(&self, nonce: &str) -> bool {
        self.source.lock().unwrap().try_redeem(nonce).is_ok()
    }
}

#[tonic::async_trait]
impl NonceService for Counting {
    async fn nonce(&self, _request: Request<Empty>) -> Result<Response<NonceMessage>, Status> {
        Err(Status::unimplemented("the test mints from the source"))
    }

    async fn nonce_batch(&self, _request: Request<NonceBatchRequest>) -> Result<Response<NonceBatchResponse>, Status> {
        Err(Status::unimplemented("the test mints from the source"))
    }

    async fn redeem(&self, request: Request<NonceMessage>) -> Result<Response<RedeemResponse>, Status> {
        self.calls.redeems.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        Ok(Response::new(RedeemResponse { valid: self.redeem_one(&request.get_ref().nonce) }))
    }

    async fn redeem_batch(
        &self,
        request: Request<RedeemBatchRequest>,
    ) -> Result<Response<RedeemBatchResponse>, Status> {
        if !self.implements_batches {
            return Err(Status::unimplemented("an older nonce service"));
        }
        self.calls.batches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        let valid = request.get_ref().nonces.iter().map(|nonce| self.redeem_one(nonce)).collect();
        Ok(Response::new(RedeemBatchResponse { valid }))
    }
}

/// Starts the counting service on loopback: gives its calls, the typed client the wfe would use, and `count` nonces minted
/// by it. The service stops with the test's runtime.
async fn counting_service(
    pki: &TestPki,
    implements_batches: bool,
    count: usize,
) -> (Arc<Calls>, NonceClient, Vec<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("address");
    let mut source = NonceSource::new(&nonce_prefix(PREFIX_KEY.as_bytes(), addr), 1_024).expect("source");
    let minted = (0..count).map(|_| source.mint().expect("mint")).collect();
    let calls = Arc::new(Calls::default());
    let service = Counting { source: Mutex::new(source), calls: calls.clone(), implements_batches };
    let routes = tonic::service::Routes::new(NonceServiceServer::new(service));
    let tls = pki.tls("nonce");
    tokio::spawn(async move {
        let names = [quarry_nonce::SERVICE_NAME];
        quarry_core::grpc::serve(listener, &tls, routes, &names, std::future::pending()).await.expect("serve");
    });
    let peer = Peer::new(&pki.client_config("nonce", addr), &pki.tls("wfe")).expect("peer");
    (calls, NonceClient::new(peer, PREFIX_KEY.as_bytes()), minted)
}

/// Redeems every nonce twice, all at once: gives, per nonce, how many of its two redemptions were valid.
async fn redeem_each_twice_at_once(client: &NonceClient, nonces: &[String]) -> Vec<usize> {
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let mut redemptions = tokio::task::JoinSet::new();
    for (index, nonce) in nonces.iter().chain(nonces).enumerate() {
        let (client, nonce, slot) = (client.clone(), nonce.clone(), index % nonces.len());
        redemptions.spawn(async move { (slot, client.redeem(&nonce, deadline).await) });
    }
    let mut valid = vec![0; nonces.len()];
    while let Some(done) = redemptions.join_next().await {
        let (index, answer) = done.expect("redemption task");
        valid[index] += usize::from(answer.expect("the replica answers"));
    }
    valid
}

#[tokio::test]
async fn redemptions_that_meet_share_a_call_and_each_is_answered_as_alone() {
    let pki = TestPki::new();
    let (calls, client, mut nonces) = counting_service(&pki, true, 41).await;
    let last = nonces.pop().expect("a nonce kept for later");
    let valid = redeem_each_twice_at_once(&client, &nonces).await;
    assert!(valid.iter().all(|count| *count == 1), "each nonce redeems once: {valid:?}");
    let (redeems, batches) = (calls.redeems.load(Ordering::SeqCst), calls.batches.load(Ordering::SeqCst));
    // The first redemption calls at once; the other 79 queue behind it and go together (a slow machine may split
    // them once more).
    assert_eq!(redeems, 1, "one lone Redeem");
    assert!((1..=2).contains(&batches), "{batches} RedeemBatch calls for 79 redemptions");
    // With nothing under way, a redemption calls at once again, alone.
    assert!(client.redeem(&last, None).await.expect("the replica answers"));
    assert_eq!(calls.redeems.load(Ordering::SeqCst), 2);
    assert_eq!(calls.batches.load(Ordering::SeqCst), batches);
}

#[tokio::test]
async fn a_replica_that_predates_batches_gets_one_redeem_per_nonce() {
    let pki = TestPki::new();
    let (calls, client, nonces) = counting_service(&pki, false, 10).await;
    let valid = redeem_each_twice_at_once(&client, &nonces).await;
    assert!(valid.iter().all(|count| *count == 1), "each nonce redeems once: {valid:?}");
    assert_eq!(calls.redeems.load(Ordering::SeqCst), 20);
    assert_eq!(calls.batches.load(Ordering::SeqCst), 0);
}
