//! Held polls: a POST-as-GET of an order being issued, or of an authorization or challenge being validated, is
//! answered when the work settles rather than at once, within `hold_processing_ms` and the request's deadline.
//! Clients honour `Retry-After` (seconds), while the work behind it takes tens of milliseconds: without the hold,
//! every certificate would wait a whole `Retry-After` per poll. The hold re-reads the resource from the sa's
//! read-only service only — it holds no nonce (the reply's is minted after the handler) and no lock.
//!
//! What the holds see also sets `Retry-After`: [`WorkTime`] keeps how long work stays under way once a poll finds
//! it so, and a reply still under way asks the client back after about that long, never later than configured.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quarry_core::Problem;

/// The shortest pause between two reads; pauses double after each read, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two reads: a settled resource is seen within this of settling.
const LONGEST_PAUSE: Duration = Duration::from_millis(200);
/// The most `hold_processing_ms` may be: a held request occupies a connection, and a client's own timeout is often
/// ten seconds or so.
pub(crate) const MAX_HOLD_MS: u64 = 5_000;
/// What the hold leaves of the request's deadline for the last read and the reply.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// How long one kind of work (validations, issuances) stays under way after a poll finds it so, as this wfe's
/// holds measured it: a moving average over the last few dozen holds, in milliseconds, forgotten after a minute
/// without one. A poll that finds the work done is no sample (nothing says it was ever under way), so the average
/// says how slow work is when it is slow; with no recent sample, work is taken to be fast.
#[derive(Debug)]
pub(crate) struct WorkTime {
    /// Off when holds are: then nothing measures, and `Retry-After` is the configured value.
    measuring: bool,
    epoch: Instant,
    average_ms: AtomicU64,
    /// When the last sample came, in milliseconds since `epoch`.
    sampled_at_ms: AtomicU64,
}

/// No hold has measured yet.
const UNMEASURED: u64 = u64::MAX;
/// Each hold counts for an eighth of the average: one slow validation moves it, one fast one does not erase it.
const WEIGHT_SHIFT: u32 = 3;
/// A minute without a hold that saw work under way: the slowness it measured is over.
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl WorkTime {
    /// Measures holds of at most `hold` (none when zero).
    pub(crate) fn new(hold: Duration) -> Self {
        Self {
            measuring: !hold.is_zero(),
            epoch: Instant::now(),
            average_ms: AtomicU64::new(UNMEASURED),
            sampled_at_ms: AtomicU64::new(0),
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts one hold: how long the work was seen under way (the whole hold, when it did not settle within it).
    fn record(&self, under_way: Duration) {
        let sample = u64::try_from(under_way.as_millis()).unwrap_or(u64::MAX / 2).min(u64::MAX / 2);
        let stale = !self.sampled_recently();
        let _ = self.average_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
            Some(if average == UNMEASURED || stale {
                sample
            } else {
                average - (average >> WEIGHT_SHIFT) + (sample >> WEIGHT_SHIFT)
            })
        });
        self.sampled_at_ms.store(self.millis_since_epoch(), Ordering::Relaxed);
    }

    /// The first pause of a hold: about as long as work was recently seen under way (so that one re-read usually
    /// finds it done), between [`FIRST_PAUSE`] and [`LONGEST_PAUSE`].
    fn first_pause(&self) -> Duration {
        match self.recent_average_ms() {
            Some(average) => Duration::from_millis(average).clamp(FIRST_PAUSE, LONGEST_PAUSE),
            None => FIRST_PAUSE,
        }
    }

    /// The average, unless nothing was measured in the last minute.
    fn recent_average_ms(&self) -> Option<u64> {
        let average = self.average_ms.load(Ordering::Relaxed);
        (average != UNMEASURED && self.sampled_recently()).then_some(average)
    }

    /// Whether the last sample came within [`FORGET_AFTER`].
    fn sampled_recently(&self) -> bool {
        self.millis_since_epoch().saturating_sub(self.sampled_at_ms.load(Ordering::Relaxed))
            <= FORGET_AFTER.as_millis() as u64
    }

    /// The `Retry-After` (whole seconds) for a reply whose work is under way: the measured time rounded up, at least
    /// one second (never zero: a client would poll at once) and at most `configured` — which it is outright when
    /// holds are off.
    pub(crate) fn retry_after(&self, configured: u64) -> u64 {
        if !self.measuring {
            return configured;
        }
        self.recent_average_ms().unwrap_or_default().div_ceil(1_000).clamp(1, configured.max(1))
    }
}

/// Re-reads the resource (`read`) while `under_way` says its work goes on, at most `hold` and never past `deadline`
/// (less a margin for the reply); returns the last read. A failed re-read ends the hold with the read before it:
/// that answer (still under way, with `Retry-After`) is as true as it was. Counted by `endpoint` in
/// `quarry_acme_held_polls_total` and `quarry_acme_held_poll_duration_seconds`, by outcome.
pub(crate) async fn until_settled<T, Read>(
    endpoint: &'static str,
    work_time: &WorkTime,
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
    // The first re-read when the work usually ends, then the pauses from the shortest, doubling.
    let mut pause = work_time.first_pause();
    let mut next_pause = if pause > FIRST_PAUSE { FIRST_PAUSE } else { FIRST_PAUSE * 2 };
    while under_way(&latest) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = next_pause;
        next_pause = (next_pause * 2).min(LONGEST_PAUSE);
        match read().await {
            Ok(read) => latest = read,
            Err(problem) => {
                tracing::debug!(%problem, endpoint, "a held poll's re-read failed; answering with the read before");
                break;
            }
        }
    }
    answered_after_waiting(endpoint, work_time, started, under_way(&latest));
    latest
}

/// Counts a request held since `started` for work it saw under way, now answered (`still_under_way`: the work
/// outlasted the hold): a sample of the work's time, and the held-poll metrics. A challenge's answer, which waits
/// at the ra for the validation it starts, counts here as well.
pub(crate) fn answered_after_waiting(
    endpoint: &'static str,
    work_time: &WorkTime,
    started: Instant,
    still_under_way: bool,
) {
    let outcome = if still_under_way { "still_processing" } else { "settled" };
    work_time.record(started.elapsed());
    metrics::counter!("quarry_acme_held_polls_total", "endpoint" => endpoint, "outcome" => outcome).increment(1);
    metrics::histogram!("quarry_acme_held_poll_duration_seconds", "endpoint" => endpoint, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
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
            &WorkTime::new(Duration::from_secs(1)),
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
            &WorkTime::new(Duration::from_secs(1)),
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

    #[test]
    fn retry_after_follows_the_measured_work_within_one_second_and_the_configured_value() {
        let work_time = WorkTime::new(Duration::from_millis(1_500));
        assert_eq!(work_time.retry_after(3), 1, "nothing measured: work is taken to be fast");
        work_time.record(Duration::from_millis(70));
        assert_eq!(work_time.retry_after(3), 1, "fast work: the shortest Retry-After");
        for _ in 0..40 {
            work_time.record(Duration::from_millis(1_500));
        }
        assert_eq!(work_time.retry_after(3), 2, "about 1.5 s, rounded up");
        for _ in 0..40 {
            work_time.record(Duration::from_secs(30));
        }
        assert_eq!(work_time.retry_after(3), 3, "never more than configured");
        assert_eq!(work_time.retry_after(0), 1, "never zero: a client would poll at once");
        // A minute later the slowness is forgotten.
        work_time.sampled_at_ms.store(0, Ordering::Relaxed);
        let forgotten = WorkTime { epoch: Instant::now() - FORGET_AFTER * 2, ..work_time };
        assert_eq!(forgotten.retry_after(3), 1);
        assert_eq!(WorkTime::new(Duration::ZERO).retry_after(3), 3, "holds off: the configured value");
    }

    #[tokio::test]
    async fn a_held_poll_is_measured_whether_or_not_it_settles() {
        let hold = Duration::from_millis(50);
        let work_time = WorkTime::new(hold);
        until_settled("test", &work_time, hold, None, 1, |n| *n > 0, || async { Ok(1) }).await;
        let average = work_time.average_ms.load(Ordering::Relaxed);
        assert!((50..1_000).contains(&average), "{average}");
        let settled_at_once = WorkTime::new(hold);
        until_settled("test", &settled_at_once, hold, None, 1, |n| *n > 0, || async { Ok(0) }).await;
        assert!(settled_at_once.average_ms.load(Ordering::Relaxed) < 50);
    }

    #[tokio::test]
    async fn the_first_re_read_comes_when_work_usually_ends() {
        let work_time = WorkTime::new(Duration::from_secs(2));
        assert_eq!(work_time.first_pause(), FIRST_PAUSE, "nothing measured");
        for _ in 0..40 {
            work_time.record(Duration::from_millis(60));
        }
        let first = work_time.first_pause();
        assert!((Duration::from_millis(50)..=Duration::from_millis(60)).contains(&first), "{first:?}");
        // Work that settles after about that long is found by one re-read.
        let reads = &AtomicU32::new(0);
        let started = Instant::now();
        let settled = until_settled(
            "test",
            &work_time,
            Duration::from_secs(2),
            None,
            false,
            |settled| !settled,
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(started.elapsed() >= Duration::from_millis(40))
            },
        )
        .await;
        assert!(settled);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        for _ in 0..40 {
            work_time.record(Duration::from_secs(5));
        }
        assert_eq!(work_time.first_pause(), LONGEST_PAUSE);
    }

    #[tokio::test]
    async fn a_failed_re_read_answers_with_the_read_before() {
        let answer = until_settled(
            "test",
            &WorkTime::new(Duration::from_secs(1)),
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
