//! Where rate limits apply, as Boulder applies them: new accounts per IP address and IPv6 /48; new orders per
//! account, checked with the certificates per registered domain, per identifier set and the failed validations per
//! identifier; certificates spent after issuance; failed validations spent when they fail.
//!
//! All of it happens in the ra, which both checks and spends, so that the embedded in-memory store works in a stack
//! of separate processes; with Redis every ra replica shares the buckets.

use std::net::IpAddr;
use std::path::PathBuf;

use quarry_core::identifier::{fqdn_set_hash, registered_domain};
use quarry_core::{Identifier, IdentifierType, Problem};
use quarry_ratelimits::limits::ip_domain_bucket_id;
use quarry_ratelimits::{
    Bucket, Denial, Limiter, Limits, LimitsFile, MemoryStore, OverrideEntry, RedisStore, Store, Transaction, Verdict,
    now_micros,
};
use serde::Deserialize;

use crate::Error;

/// The ra's rate-limit settings: the environment's limits file, and the shared store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// The limits file (`deploy/env/<env>/ratelimits.toml`).
    pub limits_file: PathBuf,
    /// Redis shared by every ra replica, e.g. `redis://127.0.0.1:6379/`; without it, buckets live in this process.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How often the overrides in the sa's table are read again, in seconds.
    #[serde(default = "default_overrides_refresh_secs")]
    pub overrides_refresh_secs: u64,
}

fn default_overrides_refresh_secs() -> u64 {
    300
}

/// How an order is exempt (RFC 9773 replacements in their window from everything; renewals of the same identifier
/// set from the new-order and per-domain limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    None,
    Renewal,
    Replacement,
}

pub struct RateLimits {
    limiter: Limiter,
}

fn refusal(denial: Denial) -> Problem {
    Problem::rate_limited(denial.detail(), denial.retry_after_secs())
}

impl RateLimits {
    pub async fn open(config: &RateLimitsConfig) -> Result<Self, Error> {
        let text = std::fs::read_to_string(&config.limits_file)
            .map_err(|e| Error::Invalid(format!("rate limits file {}: {e}", config.limits_file.display())))?;
        let file: LimitsFile = toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("rate limits file {}: {e}", config.limits_file.display())))?;
        let limits = Limits::from_file(&file).map_err(|e| Error::Invalid(e.to_string()))?;
        let store = match &config.redis_url {
            Some(url) => {
                let store = RedisStore::connect(url).map_err(|e| Error::Invalid(e.to_string()))?;
                // A replica restarting while Redis is down still starts; its checks fail open until Redis is back.
                if let Err(e) = store.ping().await {
                    tracing::warn!(error = %e, "the rate-limit store does not answer yet; limits fail open until it does");
                }
                Store::Redis(store)
            }
            None => Store::Memory(MemoryStore::default()),
        };
        Ok(Self { limiter: Limiter::new(limits, store) })
    }

    /// Spends a new account's registration buckets; returns what to refund if creating the account fails.
    pub async fn new_account(&self, ip: Option<IpAddr>) -> Result<Vec<Transaction>, Problem> {
        let Some(ip) = ip else { return Ok(Vec::new()) };
        let mut spend = vec![Transaction::one(Bucket::new_registrations_per_ip(ip))];
        spend.extend(Bucket::new_registrations_per_ipv6_range(ip).map(Transaction::one));
        self.spend(spend).await
    }

    /// Checks a new order against every limit it could hit and spends NewOrdersPerAccount; returns what to refund
    /// if creating the order fails.
    pub async fn new_order(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        exemption: Exemption,
    ) -> Result<Vec<Transaction>, Problem> {
        if exemption == Exemption::Replacement {
            return Ok(Vec::new());
        }
        let mut check: Vec<Transaction> = identifiers
            .iter()
            .map(|id| Transaction::one(Bucket::failed_authorizations(account_id, &id.value)))
            .collect();
        check.push(Transaction::one(Bucket::certificates_per_fqdn_set(&fqdn_set_id(identifiers))));
        if exemption == Exemption::Renewal {
            return self.check(check).await.map(|()| Vec::new());
        }
        check.extend(self.domain_transactions(account_id, identifiers));
        self.check(check).await?;
        self.spend(vec![Transaction::one(Bucket::new_orders_per_account(account_id))]).await
    }

    /// Spends the certificate buckets once a certificate is issued. The order was checked against them, so a
    /// denial here means a race: the certificate stands, and the bucket was not charged.
    pub async fn issued(&self, account_id: i64, identifiers: &[Identifier], renewal: bool) {
        let mut spend = vec![Transaction::one(Bucket::certificates_per_fqdn_set(&fqdn_set_id(identifiers)))];
        if !renewal {
            spend.extend(self.domain_transactions(account_id, identifiers));
        }
        if let Verdict::Denied(denial) = self.limiter.spend(now_micros(), &spend).await {
            tracing::warn!(detail = denial.detail(), "a certificate was issued past its rate limit");
        }
    }

    /// Spends a failed validation of `identifier` by the account; true when the account has now failed for it so
    /// many times in a row that it is to be paused for it.
    pub async fn failed_validation(&self, account_id: i64, identifier: &Identifier) -> bool {
        let spend = [Transaction::one(Bucket::failed_authorizations(account_id, &identifier.value))];
        if let Verdict::Denied(denial) = self.limiter.spend(now_micros(), &spend).await {
            tracing::info!(detail = denial.detail(), "failed validations past the limit");
        }
        let pausing = [Transaction::one(Bucket::failed_authorizations_for_pausing(account_id, &identifier.value))];
        matches!(self.limiter.spend(now_micros(), &pausing).await, Verdict::Denied(_))
    }

    /// A validation passed: the account's run of failures for the identifier is over.
    pub async fn succeeded_validation(&self, account_id: i64, identifier: &Identifier) {
        self.limiter.reset(&[Bucket::failed_authorizations_for_pausing(account_id, &identifier.value)]).await;
    }

    /// Replaces the overrides read from the sa's table.
    pub fn set_sa_overrides(&self, overrides: &[OverrideEntry]) {
        if let Err(error) = self.limiter.set_extra_overrides(overrides) {
            tracing::warn!(%error, "the sa's rate-limit overrides are not usable; keeping the file's");
        }
    }

    pub async fn refund(&self, transactions: &[Transaction]) {
        if !transactions.is_empty() {
            self.limiter.refund(now_micros(), transactions).await;
        }
    }

    async fn check(&self, transactions: Vec<Transaction>) -> Result<(), Problem> {
        match self.limiter.check(now_micros(), &transactions).await {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(denial) => Err(refusal(denial)),
        }
    }

    async fn spend(&self, transactions: Vec<Transaction>) -> Result<Vec<Transaction>, Problem> {
        match self.limiter.spend(now_micros(), &transactions).await {
            Verdict::Allowed => Ok(transactions),
            Verdict::Denied(denial) => Err(refusal(denial)),
        }
    }

    /// One CertificatesPerDomain transaction per registered domain (or IP bucket) of the order, counted per
    /// account instead when the account has a per-account override.
    fn domain_transactions(&self, account_id: i64, identifiers: &[Identifier]) -> Vec<Transaction> {
        let mut ids: Vec<String> = identifiers
            .iter()
            .filter_map(|id| match id.kind {
                IdentifierType::Dns => registered_domain(&id.value),
                IdentifierType::Ip => id.value.parse().ok().map(ip_domain_bucket_id),
            })
            .collect();
        ids.sort();
        ids.dedup();
        let per_account = self.limiter.counts_domains_per_account(account_id);
        ids.iter()
            .map(|id| {
                Transaction::one(if per_account {
                    Bucket::certificates_per_domain_per_account(account_id, id)
                } else {
                    Bucket::certificates_per_domain(id)
                })
            })
            .collect()
    }
}

/// The identifier set's bucket id: its hash (the sa's FQDN-set hash), hex.
fn fqdn_set_id(identifiers: &[Identifier]) -> String {
    hex::encode(fqdn_set_hash(identifiers.iter().map(|id| id.value.as_str())))
}
