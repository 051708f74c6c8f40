//! The Generic Cell Rate Algorithm, pure: one theoretical arrival time (TAT) per bucket decides whether a request
//! of some cost fits, and what the TAT becomes. No clock, no store: the caller passes `now`.
//!
//! A limit of `count` per `period` with `burst` admits `burst` requests at once and then one per emission interval
//! (`period / count`): a request at `now` fits when `max(tat, now) + cost × interval − burst × interval ≤ now`.

/// Microseconds since the Unix epoch: fine enough for any limit, and exact in the doubles Redis's Lua computes with
/// (below 2^53 for the next 285 years), so both stores decide alike.
pub type Micros = i64;

/// A limit's rate and burst, in the form GCRA uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The time one unit of cost takes to be earned back: `period / count`.
    pub emission_interval: Micros,
    /// How far ahead of `now` the TAT may run: `burst × emission_interval`.
    pub burst_offset: Micros,
}

impl Rate {
    /// `count` per `period_micros`, with `burst`; `None` when any is zero or the interval would be under 1 µs.
    pub fn new(count: u64, period_micros: i64, burst: u64) -> Option<Self> {
        let count = i64::try_from(count).ok().filter(|c| *c > 0)?;
        let burst = i64::try_from(burst).ok().filter(|b| *b > 0)?;
        let emission_interval = (period_micros / count).max(0);
        (emission_interval > 0)
            .then(|| Self { emission_interval, burst_offset: emission_interval.saturating_mul(burst) })
    }
}

/// The outcome for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket's TAT if this request is spent (unchanged when it is denied).
    pub new_tat: Micros,
    /// How much more cost would fit right now after this request.
    pub remaining: u64,
    /// When denied: how long until this request would fit.
    pub retry_in: Micros,
    /// How long until the bucket is full again (all of `burst` available).
    pub reset_in: Micros,
}

/// Decides a request of `cost` at `now` against a bucket whose TAT is `tat` (`None`: never used, full).
pub fn decide(rate: Rate, tat: Option<Micros>, now: Micros, cost: u64) -> Decision {
    let tat = tat.map_or(now, |tat| tat.max(now));
    let cost = i64::try_from(cost).unwrap_or(i64::MAX);
    let increment = rate.emission_interval.saturating_mul(cost);
    let new_tat = tat.saturating_add(increment);
    let allow_at = new_tat.saturating_sub(rate.burst_offset);
    let remaining_after = |tat: Micros| {
        let headroom = now.saturating_add(rate.burst_offset).saturating_sub(tat);
        u64::try_from(headroom / rate.emission_interval).unwrap_or(0)
    };
    if allow_at <= now {
        Decision { allowed: true, new_tat, remaining: remaining_after(new_tat), retry_in: 0, reset_in: new_tat - now }
    } else {
        Decision {
            allowed: false,
            new_tat: tat,
            remaining: remaining_after(tat),
            retry_in: allow_at - now,
            reset_in: tat - now,
        }
    }
}

/// The TAT after giving `cost` back (a request that failed later): never earlier than `now`.
pub fn refund(rate: Rate, tat: Option<Micros>, now: Micros, cost: u64) -> Option<Micros> {
    let tat = tat?;
    let cost = i64::try_from(cost).unwrap_or(i64::MAX);
    Some(tat.saturating_sub(rate.emission_interval.saturating_mul(cost)).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Micros = 1_000_000;

    #[test]
    fn burst_then_one_per_interval() {
        // 10 per 100 s with a burst of 5: 5 at once, then one every 10 s.
        let rate = Rate::new(10, 100 * SECOND, 5).expect("rate");
        let mut tat = None;
        for n in 0..5 {
            let d = decide(rate, tat, 0, 1);
            assert!(d.allowed, "request {n}");
            assert_eq!(d.remaining, 4 - n);
            tat = Some(d.new_tat);
        }
        let denied = decide(rate, tat, 0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_in, 10 * SECOND);
        assert_eq!(denied.new_tat, tat.expect("tat"), "a denial spends nothing");
        assert!(!decide(rate, tat, 10 * SECOND - 1, 1).allowed, "one microsecond early");
        assert!(decide(rate, tat, 10 * SECOND, 1).allowed, "exactly one interval later");
    }

    #[test]
    fn costs_and_refunds() {
        let rate = Rate::new(1, SECOND, 3).expect("rate");
        let d = decide(rate, None, 0, 3);
        assert!(d.allowed && d.remaining == 0);
        assert!(!decide(rate, Some(d.new_tat), 0, 1).allowed);
        let refunded = refund(rate, Some(d.new_tat), 0, 1);
        assert!(decide(rate, refunded, 0, 1).allowed, "a refund makes room again");
        assert_eq!(refund(rate, Some(5), 10, 1), Some(10), "never before now");
        assert!(!decide(rate, None, 0, 4).allowed, "more than the burst never fits");
    }

    #[test]
    fn idle_buckets_refill_to_the_burst_and_no_further() {
        let rate = Rate::new(1, SECOND, 2).expect("rate");
        let d = decide(rate, Some(-1_000 * SECOND), 0, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn degenerate_rates_are_refused() {
        assert_eq!(Rate::new(0, SECOND, 1), None);
        assert_eq!(Rate::new(1, SECOND, 0), None);
        assert_eq!(Rate::new(10, 5, 1), None, "an interval under a microsecond");
    }
}
