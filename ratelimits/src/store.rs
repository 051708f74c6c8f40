//! Where the TATs live: in this process (the embedded default) or in Redis (shared by every replica). Both apply
//! a batch atomically — every bucket is decided, and the TATs are written only if all of them fit — so parallel
//! requests never admit more than a limit allows, and both decide with the same integer arithmetic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{self, Micros, Rate};

/// One call to Redis may take this long before the limiter goes on without it. A script over a batch's few keys
/// takes microseconds; this only bounds a Redis that hangs or a network that drops packets.
const REDIS_DEADLINE: Duration = Duration::from_secs(1);

/// After a failed call, calls skip Redis for this long, doubling at each further failure up to `MAX_COOL_OFF`:
/// with Redis down, every request would otherwise wait out a connection attempt of its own.
const MIN_COOL_OFF: Duration = Duration::from_millis(500);
const MAX_COOL_OFF: Duration = Duration::from_secs(5);

/// Idle keys outlive their TAT by this much in Redis, then expire.
const IDLE_GRACE_MS: i64 = 10 * 60 * 1000;

/// The in-memory store sweeps out TATs already in the past once it holds this many buckets, and after a sweep
/// again only once it has twice as many as the sweep left: with more live buckets than this (a 3-hour window holds
/// every account of 3 hours), sweeping at every batch made each request scan them all.
const SWEEP_AT: usize = 100_000;

/// One bucket in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub rate: Rate,
    pub cost: u64,
}

/// A store that could not answer; the limiter fails open on it.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct StoreError(pub String);

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// The two stores, with the same semantics.
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// The TAT each op's bucket had before this batch (`None`: unused), after writing the new TATs when `spend`
    /// is set and every op fits.
    pub async fn batch(&self, now: Micros, ops: &[Op], spend: bool) -> Result<Vec<Option<Micros>>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.batch(now, ops, spend)),
            Self::Redis(store) => store.batch(now, ops, spend).await,
        }
    }

    /// Gives the ops' cost back.
    pub async fn refund(&self, now: Micros, ops: &[Op]) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => {
                store.refund(now, ops);
                Ok(())
            }
            Self::Redis(store) => store.refund(now, ops).await,
        }
    }

    /// Forgets the buckets: they are full again.
    pub async fn reset(&self, keys: &[String]) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => {
                store.reset(keys);
                Ok(())
            }
            Self::Redis(store) => store.reset(keys).await,
        }
    }
}

/// TATs in this process, behind one mutex held for a batch (microseconds).
#[derive(Debug, Default)]
pub struct MemoryStore {
    tats: Mutex<Tats>,
}

#[derive(Debug, Default)]
struct Tats {
    by_key: HashMap<String, Micros>,
    /// Sweep when `by_key` reaches this size (0: [`SWEEP_AT`]).
    sweep_at: usize,
}

impl Tats {
    fn sweep_if_due(&mut self, now: Micros) {
        if self.by_key.len() >= self.sweep_at.max(SWEEP_AT) {
            self.by_key.retain(|_, tat| *tat > now);
            self.sweep_at = (self.by_key.len() * 2).max(SWEEP_AT);
        }
    }
}

impl MemoryStore {
    fn batch(&self, now: Micros, ops: &[Op], spend: bool) -> Vec<Option<Micros>> {
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        tats.sweep_if_due(now);
        let before: Vec<Option<Micros>> = ops.iter().map(|op| tats.by_key.get(&op.key).copied()).collect();
        let decisions: Vec<gcra::Decision> =
            ops.iter().zip(&before).map(|(op, tat)| gcra::decide(op.rate, *tat, now, op.cost)).collect();
        if spend && decisions.iter().all(|d| d.allowed) {
            for (op, decision) in ops.iter().zip(&decisions) {
                tats.by_key.insert(op.key.clone(), decision.new_tat);
            }
        }
        before
    }

    fn refund(&self, now: Micros, ops: &[Op]) {
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        for op in ops {
            if let Some(tat) = gcra::refund(op.rate, tats.by_key.get(&op.key).copied(), now, op.cost) {
                tats.by_key.insert(op.key.clone(), tat);
            }
        }
    }

    fn reset(&self, keys: &[String]) {
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            tats.by_key.remove(key);
        }
    }
}

/// The GCRA of `gcra::decide`, in Lua, over all keys at once: Redis runs a script atomically.
/// KEYS: buckets. ARGV: now, spend (1/0), key prefix, then interval, burst offset and cost per key.
/// Returns the TAT each key had before (-1: none).
const BATCH_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local spend = ARGV[2] == '1'
local before = {}
local new_tats = {}
local all_allowed = true
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + i * 3])
  local burst_offset = tonumber(ARGV[2 + i * 3])
  local cost = tonumber(ARGV[3 + i * 3])
  local stored = redis.call('GET', key)
  local tat = now
  if stored then
    before[i] = stored
    tat = math.max(tonumber(stored), now)
  else
    before[i] = '-1'
  end
  local new_tat = tat + interval * cost
  new_tats[i] = new_tat
  if new_tat - burst_offset > now then
    all_allowed = false
  end
end
if spend and all_allowed then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, string.format('%d', new_tats[i]), 'PX', math.floor((new_tats[i] - now) / 1000) + tonumber(ARGV[3]))
  end
end
return before
";

/// Refund: each key's TAT goes back by interval × cost, never before now. ARGV: now, grace, then interval and cost.
const REFUND_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if stored then
    local tat = math.max(tonumber(stored) - tonumber(ARGV[1 + i * 2]) * tonumber(ARGV[2 + i * 2]), now)
    redis.call('SET', key, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + tonumber(ARGV[2]))
  end
end
return 0
";

/// TATs in Redis, shared by every replica; keys expire when idle.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    batch: redis::Script,
    refund: redis::Script,
    breaker: Arc<Mutex<Breaker>>,
}

/// Whether Redis is being skipped after failures, and for how long the next failure will skip it.
#[derive(Debug)]
struct Breaker {
    open_until: Option<Instant>,
    cool_off: Duration,
}

impl Breaker {
    fn closed() -> Self {
        Self { open_until: None, cool_off: MIN_COOL_OFF }
    }

    /// An error when Redis is being skipped at `now`.
    fn admit(&self, now: Instant) -> Result<(), StoreError> {
        match self.open_until {
            Some(until) if now < until => Err(StoreError(format!(
                "Redis failed; not trying it again for another {} ms",
                until.duration_since(now).as_millis()
            ))),
            _ => Ok(()),
        }
    }

    fn record(&mut self, now: Instant, succeeded: bool) {
        if succeeded {
            *self = Self::closed();
        } else {
            self.open_until = Some(now + self.cool_off);
            self.cool_off = (self.cool_off * 2).min(MAX_COOL_OFF);
        }
    }
}

impl RedisStore {
    /// Reconnects when needed to `url`, e.g. `redis://127.0.0.1:6379/`. Redis need not be up yet: a replica that
    /// restarts while Redis is down starts, and its limiter fails open until Redis answers. Only a URL that
    /// cannot be parsed is an error.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        // One quick retry inside the manager; the breaker spaces out the rest.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_connection_timeout(Some(REDIS_DEADLINE))
            .set_response_timeout(Some(REDIS_DEADLINE));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            batch: redis::Script::new(BATCH_SCRIPT),
            refund: redis::Script::new(REFUND_SCRIPT),
            breaker: Arc::new(Mutex::new(Breaker::closed())),
        })
    }

    /// Whether Redis answers a PING now (for start-up logs: the store works without it).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        self.guarded(async move { redis::cmd("PING").query_async::<String>(&mut connection).await }).await.map(drop)
    }

    /// Runs one call unless the breaker is open, within the deadline, and records how it went.
    async fn guarded<T>(&self, call: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, StoreError> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner).admit(Instant::now())?;
        let outcome = match tokio::time::timeout(REDIS_DEADLINE, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::from(e)),
            Err(_) => Err(StoreError(format!("Redis did not answer in {} ms", REDIS_DEADLINE.as_millis()))),
        };
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner).record(Instant::now(), outcome.is_ok());
        outcome
    }

    async fn batch(&self, now: Micros, ops: &[Op], spend: bool) -> Result<Vec<Option<Micros>>, StoreError> {
        let mut invocation = self.batch.prepare_invoke();
        invocation.arg(now).arg(i32::from(spend)).arg(IDLE_GRACE_MS);
        for op in ops {
            invocation.key(&op.key).arg(op.rate.emission_interval).arg(op.rate.burst_offset).arg(op.cost);
        }
        let mut connection = self.connection.clone();
        let before: Vec<String> = self.guarded(async move { invocation.invoke_async(&mut connection).await }).await?;
        before
            .iter()
            .map(|tat| match tat.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(tat) => Ok(Some(tat)),
                Err(_) => Err(StoreError(format!("a stored TAT is not a number: {tat:?}"))),
            })
            .collect()
    }

    async fn refund(&self, now: Micros, ops: &[Op]) -> Result<(), StoreError> {
        let mut invocation = self.refund.prepare_invoke();
        invocation.arg(now).arg(IDLE_GRACE_MS);
        for op in ops {
            invocation.key(&op.key).arg(op.rate.emission_interval).arg(op.cost);
        }
        let mut connection = self.connection.clone();
        let _: i64 = self.guarded(async move { invocation.invoke_async(&mut connection).await }).await?;
        Ok(())
    }

    async fn reset(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let command = redis::cmd("DEL").arg(keys).clone();
        let _: i64 = self.guarded(async move { command.query_async(&mut connection).await }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_drop_past_tats_and_back_off_while_buckets_are_live() {
        let now = 1_000_000;
        let mut tats = Tats::default();
        for i in 0..SWEEP_AT {
            // Every tenth bucket's TAT is already in the past.
            let tat = if i % 10 == 0 { now - 1 } else { now + 1 };
            tats.by_key.insert(format!("bucket-{i}"), tat);
        }
        tats.sweep_if_due(now);
        let live = SWEEP_AT - SWEEP_AT / 10;
        assert_eq!(tats.by_key.len(), live);
        assert_eq!(tats.sweep_at, (live * 2).max(SWEEP_AT));
        // Still live everywhere: the next sweep waits for twice as many, instead of scanning at every batch.
        tats.by_key.insert("one-more".into(), now + 1);
        tats.sweep_if_due(now);
        assert_eq!(tats.by_key.len(), live + 1);
        assert_eq!(tats.sweep_at, live * 2);
    }
}
