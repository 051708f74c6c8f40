//! Final certificates handed to the publisher for the CT logs that take them, those issued within a moment of each
//! other in one call: nobody waits for these submissions, so a short wait costs no client anything, and each
//! certificate no longer costs a call of its own. A ca that stops drops what waits (at most a window's worth), as
//! it dropped a submission under way before.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use quarry_core::Problem;
use quarry_proto::client::PublisherClient;
use tokio::sync::mpsc;
use tracing::warn;

/// How long the first certificate of a batch waits for others to join it.
const WINDOW: Duration = Duration::from_millis(100);
/// The most certificates one call carries (the publisher takes up to `MOST_FINAL_CERTIFICATES`).
const MOST: usize = 64;
/// How many certificates may wait at most. Past that, one is not submitted, with a warning: the logs then lack a
/// copy they need not have (its SCTs are in the certificate), which is what any failure here amounts to.
const WAITING: usize = 4_096;
/// How long one hand-over may take.
const TIMEOUT: Duration = Duration::from_secs(30);

type Chain = Vec<Vec<u8>>;

/// What the queue needs of the publisher (the real one is its gRPC client; the tests record).
#[tonic::async_trait]
pub(crate) trait FinalLogs: Send + Sync + 'static {
    /// Hands over several chains in one call; `Ok(false)`: the publisher is older than the call and took none.
    async fn submit_batch(&self, chains: Vec<Chain>, deadline: Option<Instant>) -> Result<bool, Problem>;
    async fn submit_one(&self, chain: Chain, deadline: Option<Instant>) -> Result<(), Problem>;
}

#[tonic::async_trait]
impl FinalLogs for PublisherClient {
    async fn submit_batch(&self, chains: Vec<Chain>, deadline: Option<Instant>) -> Result<bool, Problem> {
        self.submit_final_certificates(chains, deadline).await
    }

    async fn submit_one(&self, chain: Chain, deadline: Option<Instant>) -> Result<(), Problem> {
        self.submit_final_certificate(chain, deadline).await
    }
}

/// The queue of final certificates for the publisher; cheap to clone.
#[derive(Clone)]
pub(crate) struct FinalSubmissions {
    publisher: Arc<dyn FinalLogs>,
    /// Made, with the task that empties it, by the first submission (so inside the runtime).
    queue: Arc<OnceLock<mpsc::Sender<Chain>>>,
}

impl FinalSubmissions {
    pub(crate) fn new(publisher: Arc<dyn FinalLogs>) -> Self {
        Self { publisher, queue: Arc::new(OnceLock::new()) }
    }

    /// Queues a final certificate's chain (the certificate, then its issuer) for the publisher.
    pub(crate) fn submit(&self, chain: Chain) {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(WAITING);
            tokio::spawn(hand_over(Arc::clone(&self.publisher), receiver));
            sender
        });
        if queue.try_send(chain).is_err() {
            warn!("too many final certificates wait for the publisher: one is not submitted to the CT logs");
        }
    }
}

/// Hands the queue's certificates over in batches: whatever arrives within [`WINDOW`] of a batch's first, at most
/// [`MOST`]. A publisher older than batches gets them one call each from then on.
async fn hand_over(publisher: Arc<dyn FinalLogs>, mut queue: mpsc::Receiver<Chain>) {
    let mut batches = true;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let window = tokio::time::sleep(WINDOW);
        tokio::pin!(window);
        while batch.len() < MOST {
            tokio::select! {
                next = queue.recv() => match next {
                    Some(chain) => batch.push(chain),
                    None => break,
                },
                () = &mut window => break,
            }
        }
        let deadline = Some(Instant::now() + TIMEOUT);
        if batches {
            match publisher.submit_batch(batch.clone(), deadline).await {
                Ok(true) => continue,
                Ok(false) => batches = false,
                Err(problem) => {
                    warn!(%problem, certificates = batch.len(), "final certificates not handed to the publisher");
                    continue;
                }
            }
        }
        for chain in batch {
            if let Err(problem) = publisher.submit_one(chain, deadline).await {
                warn!(%problem, "final certificate not handed to the publisher");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records each call as the number of certificates it carried; `older` refuses batches as an older publisher.
    #[derive(Default)]
    struct Recorded {
        older: bool,
        batches: Mutex<Vec<usize>>,
        singles: Mutex<usize>,
    }

    #[tonic::async_trait]
    impl FinalLogs for Recorded {
        async fn submit_batch(&self, chains: Vec<Chain>, _: Option<Instant>) -> Result<bool, Problem> {
            self.batches.lock().unwrap().push(chains.len());
            Ok(!self.older)
        }

        async fn submit_one(&self, _: Chain, _: Option<Instant>) -> Result<(), Problem> {
            *self.singles.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn chain(n: u8) -> Chain {
        vec![vec![n], vec![0]]
    }

    impl Recorded {
        fn calls(&self) -> (Vec<usize>, usize) {
            (self.batches.lock().unwrap().clone(), *self.singles.lock().unwrap())
        }

        /// Waits (at most 5 s) until the calls are `expected`. Certificates queued together, without an await
        /// between, are all waiting when the queue's task takes the first, so the batches do not depend on timing.
        async fn until(&self, expected: (Vec<usize>, usize)) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.calls() != expected {
                assert!(Instant::now() < deadline, "calls {:?}, expected {expected:?}", self.calls());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    #[tokio::test]
    async fn certificates_queued_together_go_in_one_call_at_most_a_batch_each() {
        let recorded = Arc::new(Recorded::default());
        let queue = FinalSubmissions::new(recorded.clone());
        for n in 0..3 {
            queue.submit(chain(n));
        }
        recorded.until((vec![3], 0)).await;
        queue.submit(chain(3));
        recorded.until((vec![3, 1], 0)).await;
        for n in 0..70 {
            queue.submit(chain(n));
        }
        recorded.until((vec![3, 1, MOST, 70 - MOST], 0)).await;
    }

    #[tokio::test]
    async fn an_older_publisher_is_asked_once_then_gets_one_call_per_certificate() {
        let recorded = Arc::new(Recorded { older: true, ..Recorded::default() });
        let queue = FinalSubmissions::new(recorded.clone());
        queue.submit(chain(0));
        queue.submit(chain(1));
        recorded.until((vec![2], 2)).await;
        queue.submit(chain(2));
        recorded.until((vec![2], 3)).await;
    }
}
