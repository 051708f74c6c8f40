//! The limiter: transactions against buckets, decided by a [`Store`], with the first denial explained; a store
//! that fails lets requests through (fail open), logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::gcra::{self, Micros};
use crate::limits::{Bucket, LimitName, Limits, OverrideEntry};
use crate::store::{Op, Store};

/// A request's claim on one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub bucket: Bucket,
    pub cost: u64,
}

impl Transaction {
    pub fn one(bucket: Bucket) -> Self {
        Self { bucket, cost: 1 }
    }
}

/// Why a request was refused: the limit, its bucket, and when the request would fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub limit: LimitName,
    pub bucket_id: String,
    /// Microseconds from the decision until the request would fit.
    pub retry_in: Micros,
    /// When that is, Unix microseconds.
    pub retry_at: Micros,
}

impl Denial {
    /// Whole seconds to wait, rounded up, at least 1: the `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        u64::try_from(self.retry_in.max(0)).unwrap_or(0).div_ceil(1_000_000).max(1)
    }

    /// A sentence naming the limit, the bucket and when it frees.
    pub fn detail(&self) -> String {
        let when = time::OffsetDateTime::from_unix_timestamp(self.retry_at.div_euclid(1_000_000) + 1)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| "later".to_owned());
        format!("too many requests under {} for {:?}: retry after {when}", self.limit, self.bucket_id)
    }
}

/// A limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied(Denial),
}

pub struct Limiter {
    limits: RwLock<Limits>,
    file_limits: Limits,
    store: Store,
    store_errors: AtomicU64,
}

impl Limiter {
    pub fn new(limits: Limits, store: Store) -> Self {
        Self { limits: RwLock::new(limits.clone()), file_limits: limits, store, store_errors: AtomicU64::new(0) }
    }

    /// Replaces the overrides taken from elsewhere than the limits file (the sa's table), keeping the file's.
    pub fn set_extra_overrides(&self, overrides: &[OverrideEntry]) -> Result<(), crate::LimitsError> {
        let mut limits = self.file_limits.clone();
        limits.add_overrides(overrides)?;
        *self.limits.write().unwrap_or_else(PoisonError::into_inner) = limits;
        Ok(())
    }

    /// One more failure of the bucket store, counted here and in `quarry_ratelimit_store_errors_total`.
    fn count_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("quarry_ratelimit_store_errors_total").increment(1);
    }

    /// How often the store failed and requests went through unchecked.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Whether the account's certificates count per account (it has a CertificatesPerDomainPerAccount override).
    pub fn counts_domains_per_account(&self, account_id: i64) -> bool {
        self.limits.read().unwrap_or_else(PoisonError::into_inner).has_per_account_domain_override(account_id)
    }

    fn ops<'t>(&self, transactions: &'t [Transaction]) -> Vec<(Op, &'t Transaction)> {
        let limits = self.limits.read().unwrap_or_else(PoisonError::into_inner);
        transactions
            .iter()
            .filter_map(|t| limits.rate(&t.bucket).map(|rate| (Op { key: t.bucket.key(), rate, cost: t.cost }, t)))
            .collect()
    }

    /// Decides without spending.
    pub async fn check(&self, now: Micros, transactions: &[Transaction]) -> Verdict {
        self.run(now, transactions, false).await
    }

    /// Decides and, if every transaction fits, spends them all; otherwise spends none.
    pub async fn spend(&self, now: Micros, transactions: &[Transaction]) -> Verdict {
        self.run(now, transactions, true).await
    }

    async fn run(&self, now: Micros, transactions: &[Transaction], spend: bool) -> Verdict {
        let ops = self.ops(transactions);
        if ops.is_empty() {
            return Verdict::Allowed;
        }
        let plain: Vec<Op> = ops.iter().map(|(op, _)| op.clone()).collect();
        let before = match self.store.batch(now, &plain, spend).await {
            Ok(before) => before,
            Err(error) => {
                self.count_store_error();
                tracing::warn!(%error, "rate-limit store failed; the request goes through unchecked");
                return Verdict::Allowed;
            }
        };
        let denial = ops
            .iter()
            .zip(&before)
            .filter_map(|((op, transaction), tat)| {
                let decision = gcra::decide(op.rate, *tat, now, op.cost);
                metrics::counter!(
                    "quarry_ratelimit_decisions_total",
                    "limit" => transaction.bucket.limit.as_str(),
                    "action" => if spend { "spend" } else { "check" },
                    "decision" => if decision.allowed { "allowed" } else { "denied" },
                )
                .increment(1);
                (!decision.allowed).then(|| Denial {
                    limit: transaction.bucket.limit,
                    bucket_id: transaction.bucket.id.clone(),
                    retry_in: decision.retry_in,
                    retry_at: now + decision.retry_in,
                })
            })
            .max_by_key(|denial| denial.retry_in);
        denial.map_or(Verdict::Allowed, Verdict::Denied)
    }

    /// Gives back what `transactions` spent, when the request failed after spending.
    pub async fn refund(&self, now: Micros, transactions: &[Transaction]) {
        let ops: Vec<Op> = self.ops(transactions).into_iter().map(|(op, _)| op).collect();
        if let Err(error) = self.store.refund(now, &ops).await {
            self.count_store_error();
            tracing::warn!(%error, "rate-limit refund failed");
        }
    }

    /// Empties the buckets (e.g. the pausing count after a successful validation).
    pub async fn reset(&self, buckets: &[Bucket]) {
        let keys: Vec<String> = buckets.iter().map(Bucket::key).collect();
        if let Err(error) = self.store.reset(&keys).await {
            self.count_store_error();
            tracing::warn!(%error, "rate-limit reset failed");
        }
    }
}
