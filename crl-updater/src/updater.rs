//! One update pass and the loop around it.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use quarry_core::peer::Peer;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::ca::generate_crl_request::Payload;
use quarry_proto::ca::{CrlEntry, CrlMetadata, GenerateCrlRequest};
use quarry_proto::client::{CaClient, SaClient};
use quarry_proto::sa::{GetRevokedCertificatesRequest, LeaseCrlShardRequest, UpdateCrlShardRequest};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::{error, info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::{Config, Error};

/// The longest `max_age_secs` accepted: under the CRLs' nine days of validity, with room for failed passes.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(7 * 86_400);

/// How long one shard's update (read, sign, store) may take.
const SHARD_TIMEOUT: Duration = Duration::from_secs(30);

/// An issuer whose CRLs are kept: its certificate, to check what the ca signs.
struct IssuerCert {
    id: i64,
    der: Vec<u8>,
    subject: String,
}

/// How many shards of one issuer are updated at once: enough to overlap the round trips, few enough not to crowd
/// the sa's writes.
const CONCURRENT_SHARDS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Updated,
    NothingDue,
    Failed,
    /// The sa refused the lease itself: every other lease of the pass would be refused alike.
    LeaseRefused,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub updated: usize,
    pub failed: usize,
}

pub struct Updater {
    issuers: Vec<IssuerCert>,
    sa: SaClient,
    ca: CaClient,
    shards: i64,
    period: Duration,
    lease: Duration,
    max_age: Duration,
}

impl Updater {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let invalid = |message: String| Error::Config(quarry_core::config::ConfigError::Invalid(message));
        quarry_core::crl::check_shard_count(config.shards).map_err(|why| invalid(format!("shards {why}")))?;
        if config.update_period_secs == 0 || config.lease_secs == 0 {
            return Err(invalid("update_period_secs and lease_secs must be positive".into()));
        }
        if config.max_age_secs > MAX_AGE_LIMIT.as_secs() {
            return Err(invalid(format!(
                "max_age_secs must be at most {} (a week): CRLs must be signed anew well before they expire",
                MAX_AGE_LIMIT.as_secs()
            )));
        }
        if config.issuers.is_empty() {
            return Err(invalid("issuers is empty".into()));
        }
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for path in &config.issuers {
            let bad = |detail: String| Error::Issuer { path: path.clone(), detail };
            let der = CertificateDer::from_pem_file(path).map_err(|e| bad(e.to_string()))?.to_vec();
            let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
            let id = quarry_core::certificate::issuer_id(cert.subject().as_raw());
            let subject = cert.subject().to_string();
            issuers.push(IssuerCert { id, der, subject });
        }
        Ok(Self {
            issuers,
            sa: SaClient::new(Peer::new(&config.sa, &config.tls)?),
            ca: CaClient::new(Peer::new(&config.ca, &config.tls)?),
            shards: config.shards,
            period: Duration::from_secs(config.update_period_secs),
            lease: Duration::from_secs(config.lease_secs),
            max_age: Duration::from_secs(config.max_age_secs),
        })
    }

    /// Runs a pass every period until `shutdown`; a pass under way when it comes is left to its leases.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut failed_passes = 0;
        loop {
            let started = Instant::now();
            let report = tokio::select! {
                report = self.pass() => report,
                () = &mut shutdown => return,
            };
            info!(
                updated = report.updated,
                failed = report.failed,
                took_ms = started.elapsed().as_millis() as u64,
                "CRL pass done"
            );
            record_pass(&report);
            failed_passes = if report.failed > 0 { failed_passes + 1 } else { 0 };
            tokio::select! {
                () = tokio::time::sleep(next_pass_in(self.period, started.elapsed(), failed_passes)) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Updates every due shard of every issuer — with revocations its CRL lacks, or a CRL older than `max_age` —
    /// not updated since the pass began and not held by another updater, a few at a time; each worker stops at the
    /// first "nothing due" or refused lease, and at most `shards` leases are asked per issuer, so a pass always ends.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        let pass_start = quarry_core::clock::now();
        // Every shard is due when max_age is 0 (`stale_before` 0 means no limit to the sa, hence the +1).
        let stale_before = pass_start + 1 - self.max_age.as_secs() as i64;
        for issuer in &self.issuers {
            let asked = AtomicI64::new(0);
            let worker = || async {
                let mut outcomes = Vec::new();
                while asked.fetch_add(1, Ordering::Relaxed) < self.shards {
                    match self.lease_and_update(issuer, pass_start, stale_before).await {
                        Outcome::NothingDue => break,
                        Outcome::LeaseRefused => {
                            outcomes.push(Outcome::Failed);
                            break;
                        }
                        outcome => outcomes.push(outcome),
                    }
                }
                outcomes
            };
            let outcomes: Vec<Outcome> =
                futures::future::join_all((0..CONCURRENT_SHARDS).map(|_| worker())).await.concat();
            report.updated += outcomes.iter().filter(|o| **o == Outcome::Updated).count();
            report.failed += outcomes.iter().filter(|o| **o == Outcome::Failed).count();
        }
        report
    }

    async fn lease_and_update(&self, issuer: &IssuerCert, pass_start: i64, stale_before: i64) -> Outcome {
        let until = quarry_core::clock::now() + self.lease.as_secs() as i64;
        let lease = LeaseCrlShardRequest {
            issuer_id: issuer.id,
            shard_count: self.shards,
            until,
            updated_before: pass_start,
            stale_before,
        };
        let (shard, revocations_pending) = match self.sa.lease_crl_shard(lease, None).await {
            Ok(answer) if answer.leased => (answer.shard, answer.revocations_pending),
            Ok(_) => return Outcome::NothingDue,
            // Its shard count is not this updater's (or another setting disagrees): retried on later passes, which
            // fail alike until an operator mends the configuration.
            Err(problem) if refused(&problem) => {
                error!(issuer = issuer.subject, shards = self.shards, %problem, "the sa refused a CRL shard lease");
                return Outcome::LeaseRefused;
            }
            Err(problem) => {
                warn!(issuer = issuer.subject, %problem, "leasing a CRL shard failed");
                return Outcome::Failed;
            }
        };
        match self.update_shard(issuer, shard, revocations_pending).await {
            Ok(()) => Outcome::Updated,
            // The lease lapses by itself; the shard is retried on a later pass.
            Err(ShardFailure { problem, ca_refused: true }) => {
                error!(issuer = issuer.subject, shard, shards = self.shards, %problem, "the ca refused a CRL shard");
                Outcome::Failed
            }
            Err(ShardFailure { problem, ca_refused: false }) => {
                warn!(issuer = issuer.subject, shard, %problem, "CRL shard update failed");
                Outcome::Failed
            }
        }
    }

    async fn update_shard(&self, issuer: &IssuerCert, shard: i64, revocations_seen: i64) -> Result<(), ShardFailure> {
        let deadline = Some(Instant::now() + SHARD_TIMEOUT);
        let this_update = quarry_core::clock::now();
        let query = GetRevokedCertificatesRequest { issuer_id: issuer.id, shard, expires_after: this_update };
        let mut revoked = self.sa.get_revoked_certificates(query, deadline).await?;
        let mut messages = vec![GenerateCrlRequest {
            payload: Some(Payload::Metadata(CrlMetadata { issuer_id: issuer.id, shard, this_update })),
        }];
        let mut misfiled = None;
        while let Some(entry) = revoked.next().await {
            let entry = entry.map_err(Problem::from)?;
            let own_shard = quarry_core::crl::shard(&entry.serial, self.shards);
            if own_shard != shard && misfiled.is_none() {
                misfiled = Some((entry.serial.clone(), own_shard));
            }
            messages.push(GenerateCrlRequest {
                payload: Some(Payload::Entry(CrlEntry {
                    serial: entry.serial,
                    reason: entry.reason,
                    revoked_at: entry.revoked_date,
                })),
            });
        }
        let entries = messages.len() - 1;
        let der = self.ca.generate_crl(messages, deadline).await.map_err(ShardFailure::from_ca)?;
        let next_update = check_crl(&der, &issuer.der, this_update, entries)?;
        let store =
            UpdateCrlShardRequest { issuer_id: issuer.id, shard, this_update, next_update, der, revocations_seen };
        self.sa.update_crl_shard(store, deadline).await?;
        match misfiled {
            None => Ok(()),
            Some((serial, own_shard)) => Err(misfiled_problem(&serial, shard, own_shard, self.shards).into()),
        }
    }
}

/// Whether a peer answered `problem` to refuse what this updater asked, rather than failing to answer (unavailable,
/// too slow, an internal error): a refusal comes back until the configurations agree, so it is logged as an error.
fn refused(problem: &Problem) -> bool {
    !matches!(problem.kind, ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::ServerInternal)
}

/// Why a leased shard's update failed. Only the ca's answers are told apart: the sa's conflicts there are races
/// between updaters (a lease that lapsed while its holder worked), not disagreements.
struct ShardFailure {
    problem: Problem,
    /// The ca refused the request (an entry of a shard its `crl_shards` does not give, an issuer it lacks).
    ca_refused: bool,
}

impl ShardFailure {
    fn from_ca(problem: Problem) -> Self {
        Self { ca_refused: refused(&problem), problem }
    }
}

impl From<Problem> for ShardFailure {
    fn from(problem: Problem) -> Self {
        Self { problem, ca_refused: false }
    }
}

/// The sa filed `serial` under `shard`, where this updater's count puts it in `own_shard`. The sa leases only at its
/// own `crl_shards`, this `shards`, so it filed the serial under an earlier count; and the ca, which refuses an entry
/// of another shard under its own count, signed it, so the ca's count is not this one either. The CRL is stored all
/// the same — it lists what the sa filed, and withholding it would publish less — but the update counts as failed,
/// so that the CRL alerts fire, and says why.
fn misfiled_problem(serial: &str, shard: i64, own_shard: i64, shards: i64) -> Problem {
    Problem::internal(format!(
        "the sa filed revoked serial {serial} under CRL shard {shard}, but with shards = {shards} it belongs in shard          {own_shard}: the sa's crl_shards, the ca's crl_shards and this crl-updater's shards must be equal          (quarry_core::crl; `quarry env check` compares them)"
    ))
}

/// Checks that `der` is a CRL signed by `issuer` for `this_update` with `entries` entries; returns its nextUpdate.
fn check_crl(der: &[u8], issuer: &[u8], this_update: i64, entries: usize) -> Result<i64, Problem> {
    let bad = |detail: &str| Problem::internal(format!("the ca's CRL {detail}"));
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|_| bad("does not parse"))?;
    let (_, issuer) = X509Certificate::from_der(issuer).map_err(|_| bad("issuer does not parse"))?;
    if !rest.is_empty() || crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(bad("names another issuer"));
    }
    crl.verify_signature(issuer.public_key()).map_err(|_| bad("signature does not verify"))?;
    if crl.last_update().timestamp() != this_update || crl.iter_revoked_certificates().count() != entries {
        return Err(bad("differs from what was asked"));
    }
    crl.next_update().map(|t| t.timestamp()).ok_or_else(|| bad("has no nextUpdate"))
}

/// `quarry_crl_shard_updates_total{result}`, and `quarry_crl_last_complete_pass_timestamp_seconds`: when a pass last
/// updated every due shard (those with revocations their CRL lacks, or older than `max_age_secs`) without a failure.
/// After a complete pass no published CRL is stale; the alert on that time is "CRLs are stale", whatever the cause.
fn record_pass(report: &PassReport) {
    metrics::counter!("quarry_crl_shard_updates_total", "result" => "updated").increment(report.updated as u64);
    metrics::counter!("quarry_crl_shard_updates_total", "result" => "failed").increment(report.failed as u64);
    if report.failed == 0 {
        metrics::gauge!("quarry_crl_last_complete_pass_timestamp_seconds").set(quarry_core::clock::now() as f64);
    }
}

/// How long after a pass the next one starts: a period after the last began, or — after a pass in which shards
/// failed (at a fresh install the crl-updater may start before any sa answers) — sooner, 5 s doubling with each
/// failed pass in a row, so that no CRL waits a whole period for storage that came up a moment late.
fn next_pass_in(period: Duration, pass_took: Duration, failed_passes: u32) -> Duration {
    let regular = period.saturating_sub(pass_took);
    if failed_passes == 0 {
        return regular;
    }
    let retry = Duration::from_secs(5).saturating_mul(1 << (failed_passes - 1).min(16));
    retry.min(regular)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pass_is_retried_sooner_with_back_off() {
        let period = Duration::from_secs(300);
        let took = Duration::from_secs(1);
        assert_eq!(next_pass_in(period, took, 0), Duration::from_secs(299));
        let retries: Vec<u64> = (1..=8).map(|n| next_pass_in(period, took, n).as_secs()).collect();
        assert_eq!(retries, [5, 10, 20, 40, 80, 160, 299, 299]);
    }
}
