//! The bad-key revoker (Boulder's `bad-key-revoker`, here a task of every ra replica): once a key is blocked — a
//! revocation for key compromise signed by the certificate's key, an operator's `revoke --reason keyCompromise` or
//! `block-key` — every unexpired certificate with that key is revoked for key compromise, whichever account holds
//! it. Its state is the database's (`blocked_keys.certificates_checked`, the key→serial index), and every step is
//! idempotent, so a replica killed mid-way, or two replicas on the same key, leave nothing undone and do nothing twice.

use std::time::{Duration, Instant};

use quarry_core::Problem;
use quarry_core::clock::now;
use quarry_proto::sa::revoke_for_key_compromise_response::Outcome;
use quarry_proto::sa::{MarkBlockedKeyCheckedRequest, RevokeForKeyCompromiseRequest, SerialsByKeyRequest};
use tokio_util::sync::CancellationToken;

use crate::registrar::Registrar;

/// How often each replica looks for blocked keys with certificates left, when nothing wakes it sooner.
pub const BAD_KEY_PERIOD: Duration = Duration::from_secs(10);
/// After a failed pass, the wait doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Keys taken per pass; the next pass takes the rest.
const KEYS_PER_PASS: i64 = 100;
/// The calls of one key's revocations.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A key stays on the list this long after it was blocked: an issuance that passed the blocked-key check just before
/// the key was blocked stores its precertificate within this (its finalization's whole budget is shorter), and a
/// later pass revokes it.
const ISSUANCE_GRACE: Duration = Duration::from_secs(300);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BadKeyReport {
    pub keys_checked: usize,
    pub certificates_revoked: usize,
}

impl Registrar {
    /// Runs passes every `period` until `stop`, and at once when a key was just blocked here.
    pub fn keep_revoking_bad_keys(&self, period: Duration, stop: CancellationToken) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = registrar.inner.bad_key_blocked.notified() => {}
                    () = stop.cancelled() => return,
                }
                wait = match registrar.revoke_bad_keys().await {
                    Ok(report) => {
                        if report != BadKeyReport::default() {
                            tracing::info!(?report, "revoked the certificates of blocked keys");
                        }
                        period
                    }
                    Err(problem) => {
                        tracing::warn!(%problem, "bad-key revocation pass failed; backing off");
                        (wait * 2).clamp(period, MAX_BACKOFF)
                    }
                };
            }
        });
    }

    /// One pass: for each blocked key not yet checked, revokes every unexpired certificate with it for key
    /// compromise, then marks the key checked once [`ISSUANCE_GRACE`] has passed since it was blocked: issuance
    /// refuses blocked keys, so no certificate of the key can appear after that.
    pub async fn revoke_bad_keys(&self) -> Result<BadKeyReport, Problem> {
        let sa = &self.inner.sa;
        let deadline = || Some(Instant::now() + CALL_TIMEOUT);
        let keys = sa.get_unchecked_blocked_keys(KEYS_PER_PASS, deadline()).await?;
        metrics::gauge!("quarry_bad_keys_unchecked").set(keys.len() as f64);
        let mut report = BadKeyReport::default();
        for key_hash in keys {
            let serials = sa
                .get_serials_by_key(SerialsByKeyRequest { key_hash: key_hash.clone(), now: now() }, deadline())
                .await?;
            for serial in serials {
                let request = RevokeForKeyCompromiseRequest { serial: serial.clone(), date: now() };
                let outcome = sa.revoke_for_key_compromise(request, deadline()).await?;
                if outcome != Outcome::Already {
                    report.certificates_revoked += 1;
                    metrics::counter!("quarry_bad_key_certificates_revoked_total").increment(1);
                    tracing::info!(
                        target: "audit",
                        event = "certificate-revoked",
                        serial,
                        reason = 1,
                        by = "bad-key revoker",
                        upgraded = outcome == Outcome::Upgraded,
                        "certificate of a blocked key revoked"
                    );
                }
            }
            let added_before = now() - ISSUANCE_GRACE.as_secs() as i64;
            sa.mark_blocked_key_checked(MarkBlockedKeyCheckedRequest { key_hash, added_before }, deadline()).await?;
            report.keys_checked += 1;
            metrics::counter!("quarry_bad_keys_checked_total").increment(1);
        }
        Ok(report)
    }
}
