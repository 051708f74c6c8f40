//! Recovery of work a crash interrupted. Every ra replica sweeps now and then for validations and orders left
//! mid-way longer than anything still running could take — their ra died, or could not record the outcome — and
//! takes each over through a claim in the sa, which exactly one sweeper wins:
//! - a validation is run again once; interrupted a second time, its authorization is failed;
//! - an order whose precertificate was stored is finished from it by the ca, so a signed precertificate gets its
//!   certificate; one that died before is failed, and the client orders again.
//!
//! An issuance that did finish needs no sweeper: storing the certificate makes its order valid in the same
//! transaction.

use std::time::{Duration, Instant};

use quarry_core::clock::now;
use quarry_core::model::ChallengeStatus;
use quarry_core::{ErrorKind, Problem};
use quarry_jose::Jwk;
use quarry_proto::sa::{self as sapb, StuckItem};
use tokio_util::sync::CancellationToken;

use crate::authorizations::{RECORD_GRACE, failed_validation};
use crate::registrar::Registrar;

/// How often each replica looks for stuck work.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// How often each replica says it is alive…
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// …and for how long each time: a replica silent this long is taken for dead, and its work over.
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// Work younger than this is never taken for orphaned: its owner may not have had its first heartbeat recorded.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(5);
/// Past its timeout, how long an issuance may take to record its outcome before it is taken over.
const FINALIZE_GRACE: Duration = Duration::from_secs(30);
/// At most this many stuck rows of each kind per sweep; the next sweep takes the rest.
const SWEEP_BATCH: i64 = 50;
/// One sweep's calls.
const SWEEP_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Taking over an interrupted issuance: the ca signs and gets SCTs again.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(60);

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub validations_retried: usize,
    pub validations_failed: usize,
    pub orders_completed: usize,
    pub orders_failed: usize,
}

/// What became of one stuck row this replica claimed.
enum Recovered {
    Retried,
    Completed,
    Failed,
}

impl Registrar {
    /// Records this replica as alive now; the first heartbeat, before it takes any work.
    pub async fn heartbeat(&self) -> Result<(), Problem> {
        let inner = &self.inner;
        let ttl = HEARTBEAT_TTL.as_secs() as i64;
        inner.sa.heartbeat(&inner.instance, ttl, Some(Instant::now() + SWEEP_CALL_TIMEOUT)).await
    }

    /// Says this replica is gone, as it stops: whatever it leaves unfinished is taken over at once.
    pub async fn farewell(&self) {
        let inner = &self.inner;
        if let Err(problem) = inner.sa.heartbeat(&inner.instance, 0, Some(Instant::now() + SWEEP_CALL_TIMEOUT)).await {
            tracing::warn!(%problem, "cannot say this replica is gone; its heartbeat will lapse instead");
        }
    }

    /// Sends a heartbeat every few seconds until `stop`.
    pub fn keep_beating(&self, stop: CancellationToken) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                if let Err(problem) = registrar.heartbeat().await {
                    tracing::warn!(%problem, "heartbeat not recorded");
                }
            }
        });
    }

    /// Sweeps every `period` until `stop`.
    pub fn keep_sweeping(&self, period: Duration, stop: CancellationToken) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                let report = registrar.sweep().await;
                if report != SweepReport::default() {
                    tracing::info!(?report, "recovered interrupted work");
                }
            }
        });
    }

    /// One sweep: takes over every validation and order stuck past its deadline (its timeout, plus the time its
    /// outcome may take to be recorded) that no other replica claims first.
    pub async fn sweep(&self) -> SweepReport {
        let inner = &self.inner;
        self.sweep_older_than(inner.validation_timeout + RECORD_GRACE, inner.finalize_timeout + FINALIZE_GRACE).await
    }

    /// A sweep taking over validations begun more than `validation_age` ago and orders processing for more than
    /// `order_age`, and whatever a replica whose heartbeat has lapsed began.
    pub async fn sweep_older_than(&self, validation_age: Duration, order_age: Duration) -> SweepReport {
        let inner = &self.inner;
        let now = now();
        let request = sapb::StuckWorkRequest {
            authorizations_before: now - validation_age.as_secs() as i64,
            orders_before: now - order_age.as_secs() as i64,
            limit: SWEEP_BATCH,
            orphaned_before: now - ORPHAN_MIN_AGE.as_secs() as i64,
        };
        let mut report = SweepReport::default();
        let work = match inner.sa.get_stuck_work(request, Some(Instant::now() + SWEEP_CALL_TIMEOUT)).await {
            Ok(work) => work,
            Err(problem) => {
                tracing::warn!(%problem, "cannot look for interrupted work");
                return report;
            }
        };
        for item in work.authorizations {
            match self.recover_validation(item).await {
                Ok(Some(Recovered::Retried)) => report.validations_retried += 1,
                Ok(Some(_)) => report.validations_failed += 1,
                Ok(None) => {}
                Err(problem) => tracing::warn!(authorization_id = item.id, %problem, "recovering a validation failed"),
            }
        }
        for item in work.orders {
            match self.recover_order(item).await {
                Ok(Some(Recovered::Completed)) => report.orders_completed += 1,
                Ok(Some(_)) => report.orders_failed += 1,
                Ok(None) => {}
                Err(problem) => tracing::warn!(order_id = item.id, %problem, "recovering an order failed"),
            }
        }
        report
    }

    /// Takes a stuck validation over: runs it again the first time, fails it the second.
    async fn recover_validation(&self, item: StuckItem) -> Result<Option<Recovered>, Problem> {
        let sa = &self.inner.sa;
        let deadline = Some(Instant::now() + SWEEP_CALL_TIMEOUT);
        let claimed = sa.claim_stuck_authorization(item, &self.inner.instance, deadline).await?;
        let Some(recoveries) = claimed else { return Ok(None) };
        let authz = sa.get_authorization(item.id, deadline).await?;
        let attempted = authz.challenges.iter().find(|c| c.status == ChallengeStatus::Processing).cloned();
        let Some(challenge) = attempted else {
            // Recorded meanwhile: nothing left to do.
            return Ok(None);
        };
        if recoveries == 0 {
            let account = sa.get_account(authz.account_id, deadline).await?;
            let jwk =
                Jwk::from_slice(&account.jwk).map_err(|_| Problem::internal("stored account key does not parse"))?;
            let key_authorization = quarry_jose::key_authorization(&challenge.token, &jwk);
            tracing::info!(target: "audit", event = "validation-retried", authorization_id = authz.id, challenge = %challenge.kind, "an interrupted validation runs again");
            recovered("validation", "retried");
            // Nobody waits for this one: its client polls.
            drop(self.validation_of(authz, challenge.kind, key_authorization));
            return Ok(Some(Recovered::Retried));
        }
        let problem = Problem::internal(
            "the CA was interrupted twice while validating this authorization; start again with a new order",
        );
        self.record_validation(authz.clone(), failed_validation(&authz, challenge.kind.as_str(), &problem)).await;
        recovered("validation", "failed");
        Ok(Some(Recovered::Failed))
    }

    /// Takes a stuck order over: finishes it from its stored precertificate, or fails it when none was stored.
    async fn recover_order(&self, item: StuckItem) -> Result<Option<Recovered>, Problem> {
        let inner = &self.inner;
        let deadline = Some(Instant::now() + SWEEP_CALL_TIMEOUT);
        let claimed = inner.sa.claim_stuck_order(item, &inner.instance, deadline).await?;
        let Some(precertificate) = claimed else { return Ok(None) };
        let Some(serial) = precertificate else {
            let problem = Problem::internal(
                "issuance was interrupted before a certificate was signed; finalize a new order for these names",
            );
            return match inner.sa.set_order_error(item.id, &problem, deadline).await {
                Ok(()) => {
                    tracing::warn!(order_id = item.id, "an interrupted order failed: no certificate was signed for it");
                    recovered("order", "failed");
                    Ok(Some(Recovered::Failed))
                }
                // The certificate was stored after all: the order is valid.
                Err(conflict) if conflict.kind == ErrorKind::Conflict => Ok(None),
                Err(problem) => Err(problem),
            };
        };
        self.finish_from_precertificate(item.id, &serial).await?;
        Ok(Some(Recovered::Completed))
    }

    /// Has the ca finish order `order_id`'s issuance from its stored precertificate `serial`, and records it.
    pub(crate) async fn finish_from_precertificate(&self, order_id: i64, serial: &str) -> Result<String, Problem> {
        let inner = &self.inner;
        let completion = Some(Instant::now() + COMPLETION_TIMEOUT);
        let issued = inner.ca.issue_certificate_for_precertificate(serial, order_id, completion).await?;
        // Storing the certificate made the order valid; recorded here when the ca does not say so (an older one, or
        // a certificate it had stored already).
        if !issued.order_finalized {
            self.record_certificate(order_id, &issued.serial, Some(Instant::now() + SWEEP_CALL_TIMEOUT)).await?;
        }
        tracing::info!(target: "audit", event = "issuance-recovered", order_id, serial = %issued.serial, "an interrupted issuance was finished from its precertificate");
        recovered("order", "completed");
        Ok(issued.serial)
    }
}

fn recovered(work: &'static str, outcome: &'static str) {
    metrics::counter!("quarry_recovered_total", "work" => work, "outcome" => outcome).increment(1);
}
