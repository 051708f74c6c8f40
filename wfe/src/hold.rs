//! Held polls: a POST-as-GET of an order being issued, or of an authorization or challenge being validated, is
//! answered when the work settles rather than at once, within `hold_processing_ms` and the request's deadline.
//! Clients honour `Retry-After` (seconds), while the work behind it takes tens of milliseconds: without the hold,
//! every certificate would wait a whole `Retry-After` per poll. The hold re-reads the resource from the sa's
//! read-only service only — it holds no nonce (the reply's is minted after the handler) and no lock.

use std::future::Future;
use std::time::{Duration, Instant};

use quarry_core::Problem;

/// The first pause between two reads; it doubles after each read, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two reads: a settled resource is seen within this of settling.
const LONGEST_PAUSE: Duration = Duration::from_millis(200);
/// The most `hold_processing_ms` may be: a held request occupies a connection, and a client's own timeout is often
/// ten seconds or so.
pub(crate) const MAX_HOLD_MS: u64 = 5_000;
/// What the hold leaves of the request's deadline for the last read and the reply.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Re-reads the resource (`read`) while `under_way` says its work goes on, at most `hold` and never past `deadline`
/// (less a margin for the reply); returns the last read. A failed re-read ends the hold with the read before it:
/// that answer (still under way, with `Retry-After`) is as true as it was. Counted by `endpoint` in
/// `quarry_acme_held_polls_total` and `quarry_acme_held_poll_duration_seconds`, by outcome.
pub(crate) async fn until_settled<T, Read>(
    endpoint: &'static str,
    hold: Duration,
    deadline: Option<Instant>,
    first: T,
    under_way: impl Fn(&T) -> bool,
    mut read: impl FnMut() -> Read,
) -> T
where
    Read: Future<Output = Result<T, Problem>>,
{
    if hold.is_zero() || !under_way(&first) {
        return first;
    }
    let started = Instant::now();
    let mut until = started + hold;
    if let Some(deadline) = deadline {
        until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(started));
    }
    let mut latest = first;
    let mut pause = FIRST_PAUSE;
    while under_way(&latest) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
        match read().await {
            Ok(read) => latest = read,
            Err(problem) => {
                tracing::debug!(%problem, endpoint, "a held poll's re-read failed; answering with the read before");
                break;
            }
        }
    }
    let outcome = if under_way(&latest) { "still_processing" } else { "settled" };
    metrics::counter!("quarry_acme_held_polls_total", "endpoint" => endpoint, "outcome" => outcome).increment(1);
    metrics::histogram!("quarry_acme_held_poll_duration_seconds", "endpoint" => endpoint, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    latest
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A resource that settles on its `settles_at`-th read.
    async fn hold_counting(settles_at: u32, hold: Duration, deadline: Option<Instant>) -> (bool, u32, Duration) {
        let reads = &AtomicU32::new(0);
        let started = Instant::now();
        let settled = until_settled(
            "test",
            hold,
            deadline,
            false,
            |settled| !settled,
            move || async move { Ok(reads.fetch_add(1, Ordering::SeqCst) + 1 >= settles_at) },
        )
        .await;
        (settled, reads.load(Ordering::SeqCst), started.elapsed())
    }

    #[tokio::test]
    async fn a_settling_resource_is_answered_as_soon_as_it_is_read_settled() {
        let (settled, reads, took) = hold_counting(3, Duration::from_secs(2), None).await;
        assert!(settled);
        assert_eq!(reads, 3);
        // Pauses of 10, 20 and 40 ms.
        assert!(took >= Duration::from_millis(70) && took < Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test]
    async fn the_hold_ends_with_the_resource_still_under_way() {
        let (settled, reads, took) = hold_counting(u32::MAX, Duration::from_millis(300), None).await;
        assert!(!settled);
        assert!(reads >= 3, "{reads}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn the_request_deadline_bounds_the_hold() {
        let deadline = Instant::now() + DEADLINE_MARGIN + Duration::from_millis(100);
        let (settled, _, took) = hold_counting(u32::MAX, Duration::from_secs(2), Some(deadline)).await;
        assert!(!settled);
        assert!(took < Duration::from_millis(800), "{took:?}");
    }

    #[tokio::test]
    async fn no_hold_when_disabled_or_already_settled() {
        let (settled, reads, _) = hold_counting(u32::MAX, Duration::ZERO, None).await;
        assert!(!settled);
        assert_eq!(reads, 0);
        let reads = &AtomicU32::new(0);
        let answer = until_settled(
            "test",
            Duration::from_secs(1),
            None,
            true,
            |settled| !settled,
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            },
        )
        .await;
        assert!(answer);
        assert_eq!(reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_re_read_answers_with_the_read_before() {
        let answer = until_settled(
            "test",
            Duration::from_secs(1),
            None,
            1,
            |n| *n > 0,
            || async { Err(Problem::internal("the sa is away")) },
        )
        .await;
        assert_eq!(answer, 1);
    }
}
