//! The stock against a fake nonce replica that counts its batches (on a current-thread runtime, so that a task
//! woken or spawned runs before a timer the test waits on).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

const REFILL: Refill = Refill { batch: 16, wait: Duration::from_secs(5), shelf_life: Duration::from_secs(10) };

/// Mints numbered nonces (prefixed with `prefix`) in batches of `REFILL.batch`, each after `delay`, and counts
/// the batches asked for; fails while `failing` is set.
#[derive(Clone)]
struct FakeReplica {
    prefix: &'static str,
    delay: Duration,
    batches: Arc<AtomicUsize>,
    minted: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

type BatchFuture = std::pin::Pin<Box<dyn Future<Output = Result<Vec<String>, Problem>> + Send>>;

impl FakeReplica {
    fn new(prefix: &'static str, delay: Duration) -> Self {
        Self { prefix, delay, batches: Arc::default(), minted: Arc::default(), failing: Arc::default() }
    }

    fn fetch(&self) -> impl Fn() -> BatchFuture + use<> {
        let replica = self.clone();
        move || {
            let replica = replica.clone();
            replica.batches.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // A zero delay is no timer at all: the batch is there at the first poll.
                if !replica.delay.is_zero() {
                    tokio::time::sleep(replica.delay).await;
                }
                if replica.failing.load(Ordering::SeqCst) {
                    return Err(Problem::new(ErrorKind::Unavailable, "replica down"));
                }
                let first = replica.minted.fetch_add(REFILL.batch, Ordering::SeqCst);
                Ok((first..first + REFILL.batch).map(|n| format!("{}{n:04}", replica.prefix)).collect())
            })
        }
    }

    fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn replies_that_find_the_stock_out_share_one_batch() {
    let stock = NonceStock::new(REFILL);
    let replica = FakeReplica::new("a", Duration::from_millis(20));
    let fetch = replica.fetch();
    let takes = (0..8).map(|_| stock.take(&fetch));
    let nonces: Vec<String> = futures::future::try_join_all(takes).await.unwrap();
    assert_eq!(replica.batches(), 1, "eight replies at once, one batch");
    let distinct: std::collections::BTreeSet<&String> = nonces.iter().collect();
    assert_eq!(distinct.len(), 8, "no nonce handed out twice: {nonces:?}");
    assert_eq!(stock.len(), REFILL.batch - 8);
}

#[tokio::test]
async fn a_stock_running_low_is_refilled_before_it_runs_out() {
    let stock = NonceStock::new(REFILL);
    let replica = FakeReplica::new("a", Duration::ZERO);
    let fetch = replica.fetch();
    stock.take(&fetch).await.unwrap();
    assert_eq!(replica.batches(), 1);
    // Handed out one by one, with a moment between replies for a background batch to land: the stock never runs
    // out again, and one batch is asked for each time it falls below a quarter of a batch.
    for taken in 1..=(3 * REFILL.batch) {
        assert!(stock.len() > 0, "out after {taken} nonces");
        stock.take(&fetch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // 49 nonces: the first batch, then one each time 3 are left (after 13, 29 and 45 nonces).
    assert_eq!(replica.batches(), 4);
    assert_eq!(stock.len(), 4 * REFILL.batch - 49);
}

#[tokio::test]
async fn a_failed_batch_is_the_replys_error_and_the_next_reply_asks_again() {
    let stock = NonceStock::new(REFILL);
    let replica = FakeReplica::new("a", Duration::from_millis(1));
    replica.failing.store(true, Ordering::SeqCst);
    let fetch = replica.fetch();
    let problem = stock.take(&fetch).await.unwrap_err();
    assert_eq!(problem.kind, ErrorKind::Unavailable);
    replica.failing.store(false, Ordering::SeqCst);
    assert_eq!(stock.take(&fetch).await.unwrap(), "a0015");
    assert_eq!(replica.batches(), 2);
}

#[tokio::test]
async fn a_stuck_refill_holds_a_reply_up_only_for_the_wait() {
    let stock = NonceStock::new(Refill { wait: Duration::from_millis(100), ..REFILL });
    let stuck = FakeReplica::new("s", Duration::from_secs(3600));
    // The first reply is stuck in its own fetch, holding the refill.
    let first = tokio::spawn({
        let (stock, fetch) = (stock.clone(), stuck.fetch());
        async move { stock.take(&fetch).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(stuck.batches(), 1);
    let healthy = FakeReplica::new("h", Duration::ZERO);
    let before = Instant::now();
    let nonce = stock.take(&healthy.fetch()).await.unwrap();
    let waited = before.elapsed();
    assert!(nonce.starts_with('h'), "{nonce}");
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(5), "waited {waited:?}");
    first.abort();
}

#[tokio::test]
async fn nonces_past_their_shelf_life_are_not_handed_out() {
    let stock = NonceStock::new(Refill { shelf_life: Duration::from_millis(50), ..REFILL });
    let replica = FakeReplica::new("a", Duration::ZERO);
    let fetch = replica.fetch();
    assert_eq!(stock.take(&fetch).await.unwrap(), "a0015");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(stock.take(&fetch).await.unwrap(), "a0031", "from a new batch");
    assert_eq!(replica.batches(), 2);
    assert_eq!(stock.len(), REFILL.batch - 1, "the stale ones dropped");
}

#[tokio::test]
async fn a_replicas_nonces_are_forgotten_and_no_more_than_four_batches_are_kept() {
    let stock = NonceStock::new(REFILL);
    let (a, b) = (FakeReplica::new("a", Duration::ZERO), FakeReplica::new("b", Duration::ZERO));
    stock.stock(a.fetch()().await.unwrap());
    stock.stock(b.fetch()().await.unwrap());
    stock.forget("a");
    assert_eq!(stock.len(), REFILL.batch);
    assert!(stock.at_hand().iter().all(|(_, nonce)| nonce.starts_with('b')));
    for _ in 0..5 {
        stock.stock(b.fetch()().await.unwrap());
    }
    assert_eq!(stock.len(), REFILL.most_at_hand());
}
