//! Authorizations (RFC 8555 §7.5): starting a challenge's validation, which runs in the background at the va
//! (control, then CAA) and outlives the request; recording its outcome, pausing an account that keeps failing; and
//! deactivation.

use std::time::{Duration, Instant};

use quarry_core::clock::now;
use quarry_core::model::{Authorization, AuthorizationStatus, ChallengeStatus, ChallengeType};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};
use quarry_jose::Jwk;
use quarry_proto::convert::identifiers_to_pb;
use quarry_proto::core as pb;
use quarry_proto::ra::{DeactivateAuthorizationRequest, PerformValidationRequest};
use quarry_proto::sa as sapb;
use quarry_proto::va::{CaaRequest, DcvRequest};
use tracing::Instrument;

use crate::ValidationProfile;
use crate::registrar::Registrar;
use crate::validations::{Registered, ValidationUnderWay};

/// How long past its timeout a validation's outcome is offered to the sa before the sweeper may take it over.
pub(crate) const RECORD_GRACE: Duration = Duration::from_secs(30);
/// One attempt at recording a validation's outcome.
const RECORD_ATTEMPT: Duration = Duration::from_secs(5);
/// Between attempts.
const RECORD_RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Registrar {
    pub(crate) async fn perform_validation(
        &self,
        req: PerformValidationRequest,
        deadline: Option<Instant>,
    ) -> Result<Authorization, Problem> {
        let authz = self.authorization_from(req.authorization.as_ref(), req.authorization_id, deadline).await?;
        // With the wfe's copy both sides of this check come from the wfe, which the ra trusts (as Boulder's does);
        // it still catches a wfe that asks for another account's authorization.
        if authz.account_id != req.account_id {
            return Err(Problem::unauthorized("this authorization belongs to another account"));
        }
        match authz.status {
            AuthorizationStatus::Valid => return Ok(authz),
            // The wfe's copy says pending as it was shown; it may have expired since (a read would say so).
            AuthorizationStatus::Pending if authz.expires <= now() => {
                return Err(not_pending(AuthorizationStatus::Expired));
            }
            AuthorizationStatus::Pending => {}
            other => return Err(not_pending(other)),
        }
        let challenge = authz
            .challenges
            .iter()
            .find(|c| c.index == req.challenge_index)
            .ok_or_else(|| Problem::malformed(format!("authorization has no challenge {}", req.challenge_index)))?
            .clone();
        let offered_for = if authz.wildcard {
            Identifier::dns(format!("*.{}", authz.identifier.value))
        } else {
            authz.identifier.clone()
        };
        if !offered_challenges(&offered_for, &self.inner.challenge_types).contains(&challenge.kind) {
            return Err(Problem::malformed(format!("challenge type {} is not enabled", challenge.kind)));
        }
        let account = self.account_from(req.account.as_ref(), authz.account_id, deadline).await?;
        let jwk = Jwk::from_slice(&account.jwk).map_err(|_| Problem::internal("stored account key does not parse"))?;
        let key_authorization = quarry_jose::key_authorization(&challenge.token, &jwk);
        let wait = wait_for_outcome(req.wait_ms, deadline);
        // A validation that holds the fuse already (on another replica, or outlasting its wait here) is not
        // started again: the fuse refuses this one, and the answer is the sa's authorization.
        let fused = authz.challenges.iter().any(|c| c.status == ChallengeStatus::Processing);
        if wait.is_zero() || fused {
            return self.validate_fused_first(authz, challenge.kind, key_authorization, deadline).await;
        }
        self.validate_fused_if_slow(authz, challenge.kind, key_authorization, wait, deadline).await
    }

    /// A caller that will not wait is answered "processing" at once, so the fuse is taken first: every later
    /// reader, and the sweeper, see the validation under way. A POST for a validation fused already ends here too.
    async fn validate_fused_first(
        &self,
        authz: Authorization,
        kind: ChallengeType,
        key_authorization: String,
        deadline: Option<Instant>,
    ) -> Result<Authorization, Problem> {
        match self.take_validation_fuse(&authz, kind, now(), deadline).await {
            Ok(()) => {
                drop(self.validation_of(authz.clone(), kind, key_authorization));
                // The sa's conditional update succeeded, so its state is known without reading it back.
                Ok(processing_started(&authz, kind))
            }
            Err(problem) if problem.kind == ErrorKind::Conflict => self.authorization(authz.id, deadline).await,
            Err(problem) => {
                // A validation started by a racing POST may have finished since the authorization was read: a
                // now-valid authorization is the answer, as it would have been a moment later.
                let current = self.authorization(authz.id, deadline).await?;
                if current.status == AuthorizationStatus::Valid {
                    return Ok(current);
                }
                Err(problem)
            }
        }
    }

    /// A caller that waits for the outcome is answered with it, as the sa recorded it: the validation runs before
    /// any fuse is taken (as Boulder's, which stores no "processing" at all), which saves the sa a write for every
    /// validation that ends within the wait. One that outlasts it is answered "processing", so the fuse is taken
    /// then, before the answer: whatever a client was told is what every reader, and the sweeper, find stored.
    /// POSTs racing on this replica share one validation ([`Registrar::validation_of`]); POSTs racing on two
    /// replicas may validate twice, and the first outcome recorded is the authorization's.
    async fn validate_fused_if_slow(
        &self,
        authz: Authorization,
        kind: ChallengeType,
        key_authorization: String,
        wait: Duration,
        deadline: Option<Instant>,
    ) -> Result<Authorization, Problem> {
        let started_at = now();
        let outcome = self.validation_of(authz.clone(), kind, key_authorization);
        if let Ok(recorded) = tokio::time::timeout(wait, outcome.recorded()).await {
            if let Some(settled) = recorded {
                return Ok(settled);
            }
            // Not recorded by this one: a racing replica's outcome was first (the answer), the sa was out of reach
            // (still pending), or the wfe's copy was stale and the authorization had been deactivated meanwhile,
            // which is refused as it would have been had the wfe read it.
            let current = self.authorization(authz.id, deadline).await?;
            return match current.status {
                AuthorizationStatus::Valid | AuthorizationStatus::Invalid | AuthorizationStatus::Pending => Ok(current),
                other => Err(not_pending(other)),
            };
        }
        match self.take_validation_fuse(&authz, kind, started_at, deadline).await {
            Ok(()) => Ok(processing_started(&authz, kind)),
            Err(problem) => {
                // Another validation holds the fuse, or an outcome was recorded since the wait ended: either way
                // the sa's authorization is the answer.
                let current = self.authorization(authz.id, deadline).await?;
                if problem.kind == ErrorKind::Conflict || current.status != AuthorizationStatus::Pending {
                    return Ok(current);
                }
                Err(problem)
            }
        }
    }

    /// Marks `authz` as under validation by this replica since `started_at`: the sa's conditional update, a fuse
    /// against a second validation and the sweeper's handle on one this replica leaves unfinished.
    async fn take_validation_fuse(
        &self,
        authz: &Authorization,
        kind: ChallengeType,
        started_at: i64,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        let processing = sapb::SetAuthorizationProcessingRequest {
            id: authz.id,
            attempted: kind.as_str().to_owned(),
            attempted_at: started_at,
            owner: self.inner.instance.clone(),
        };
        self.inner.sa.set_authorization_processing(processing, deadline).await
    }

    pub(crate) async fn deactivate_authorization(
        &self,
        req: DeactivateAuthorizationRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::Authorization, Problem> {
        let authz = self.authorization(req.authorization_id, deadline).await?;
        if authz.account_id != req.account_id {
            return Err(Problem::unauthorized("this authorization belongs to another account"));
        }
        let authz = self.inner.sa.deactivate_authorization(authz.id, deadline).await?;
        tracing::info!(target: "audit", event = "authorization-deactivated", authorization_id = req.authorization_id, "authorization deactivated");
        Ok(authz)
    }

    /// The validation of `authz` under way on this replica (or recorded a moment ago), or a new one by `kind`. A
    /// new one outlives the client's request: it has its own timeout, not the request's deadline; it stays part of
    /// the trace of the request that started it, and is recorded as failed if the ra must stop first.
    pub(crate) fn validation_of(
        &self,
        authz: Authorization,
        kind: ChallengeType,
        key_authorization: String,
    ) -> ValidationUnderWay {
        let (settle, outcome) = match self.inner.validations.register(authz.id) {
            Registered::Existing(outcome) => return outcome,
            Registered::New(settle, outcome) => (settle, outcome),
        };
        let registrar = self.clone();
        let abandon = self.inner.abandon.clone();
        self.inner.background.spawn(
            async move {
                let recorded = tokio::select! {
                    recorded = registrar.validate_in_background(authz.clone(), kind, key_authorization) => recorded,
                    () = abandon.cancelled() => registrar.abandon_validation(&authz, kind).await,
                };
                registrar.inner.validations.settle(settle, recorded);
            }
            .in_current_span(),
        );
        outcome
    }

    async fn validate_in_background(
        &self,
        authz: Authorization,
        kind: ChallengeType,
        key_authorization: String,
    ) -> Option<Authorization> {
        quarry_core::fault::point("ra.validation_dispatched");
        let inner = &self.inner;
        let token = authz.challenges.iter().find(|c| c.kind == kind).map(|c| c.token.clone()).unwrap_or_default();
        let request = DcvRequest {
            identifier: Some((&authz.identifier).into()),
            challenge_type: kind.as_str().to_owned(),
            token,
            expected_key_authorization: key_authorization,
            authorization_id: authz.id,
            account_id: authz.account_id,
            // Once control is proven, CAA must also allow this CA to issue (RFC 8659): the va checks it in the
            // same call.
            caa: Some(self.caa_request(&authz, kind)),
        };
        let deadline = Instant::now() + inner.validation_timeout;
        let (records, mut problem, caa_checked) = match inner.va.do_dcv(request, Some(deadline)).await {
            Ok(result) => (result.records, result.problem, result.caa_checked),
            Err(failure) => {
                tracing::error!(authorization_id = authz.id, %failure, "va call failed");
                let problem = Problem::internal("validation could not be performed");
                (Vec::new(), Some(pb::Problem::from(&problem)), false)
            }
        };
        // An older va ignores the CAA part of the request: then CAA is asked for on its own.
        if problem.is_none()
            && !caa_checked
            && let Err(caa) = self.check_caa(&authz, kind, Some(deadline)).await
        {
            problem = Some(pb::Problem::from(&caa));
        }
        let passed = problem.is_none();
        if passed {
            inner.limits.succeeded_validation(authz.account_id, &authz.identifier).await;
        } else if inner.limits.failed_validation(authz.account_id, &authz.identifier).await {
            self.pause(authz.account_id, &authz.identifier).await;
        }
        let attempted_at = now();
        let outcome = sapb::FinalizeAuthorizationRequest {
            id: authz.id,
            status: if passed { "valid" } else { "invalid" }.to_owned(),
            expires: if passed { attempted_at + self.valid_lifetime(&authz.profile) } else { authz.expires },
            attempted: kind.as_str().to_owned(),
            attempted_at,
            validation_records: records,
            validation_error: problem.clone(),
        };
        quarry_core::fault::point("ra.validation_before_record");
        self.record_validation(authz, outcome).await
    }

    /// Stores a validation's outcome, after its audit line. The sa may be down for a moment (a replica restarting,
    /// a database fail-over): the outcome is offered again until [`RECORD_GRACE`] is nearly over, and only then
    /// left for the sweeper, which takes over validations unrecorded past their deadline. Gives the authorization as
    /// recorded, when the sa says.
    pub(crate) async fn record_validation(
        &self,
        authz: Authorization,
        outcome: sapb::FinalizeAuthorizationRequest,
    ) -> Option<Authorization> {
        tracing::info!(
            target: "audit",
            event = "validation-result",
            authorization_id = authz.id,
            identifier = %authz.identifier.value,
            challenge = outcome.attempted.as_str(),
            passed = outcome.status == "valid",
            problem = outcome.validation_error.as_ref().map(|p| p.detail.as_str()).unwrap_or_default(),
            records = ?outcome.validation_records,
            "validation result"
        );
        let give_up = Instant::now() + RECORD_GRACE.saturating_sub(RECORD_ATTEMPT);
        loop {
            let attempt = Some(Instant::now() + RECORD_ATTEMPT);
            let failure = match self.inner.sa.finalize_authorization(outcome.clone(), attempt).await {
                Ok(recorded) => return recorded.and_then(|authz| Authorization::try_from(&authz).ok()),
                // No longer pending: a sweeper recorded it, or it expired. Nothing to add.
                Err(problem) if problem.kind == ErrorKind::Malformed => {
                    tracing::warn!(authorization_id = authz.id, %problem, "the validation result came too late");
                    return None;
                }
                Err(problem) => problem,
            };
            if Instant::now() >= give_up {
                tracing::error!(authorization_id = authz.id, %failure, "cannot record the validation result");
                return None;
            }
            tracing::warn!(authorization_id = authz.id, %failure, "recording the validation result failed; retrying");
            tokio::time::sleep(RECORD_RETRY_PAUSE).await;
        }
    }

    /// Records a validation the ra had to stop before it finished as failed, so that the client learns it (and may
    /// try again with a new authorization) instead of waiting on a challenge that never ends.
    async fn abandon_validation(&self, authz: &Authorization, kind: ChallengeType) -> Option<Authorization> {
        let problem = Problem::internal("the CA stopped before this validation finished; try again");
        self.record_validation(authz.clone(), failed_validation(authz, kind.as_str(), &problem)).await
    }

    /// Pauses the account for `identifier`; a failure to record it is logged (the next failure tries again).
    async fn pause(&self, account_id: i64, identifier: &Identifier) {
        let request = sapb::PausedIdentifiersRequest {
            account_id,
            identifiers: identifiers_to_pb(std::slice::from_ref(identifier)),
        };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        match self.inner.sa.pause_identifiers(request, deadline).await {
            Ok(()) => tracing::warn!(account_id, identifier = %identifier.value, "account paused for the identifier"),
            Err(problem) => tracing::error!(account_id, %problem, "cannot pause the account"),
        }
    }

    /// Asks the va whether CAA lets this CA issue for `authz`'s identifier, validated by `method`.
    pub(crate) async fn check_caa(
        &self,
        authz: &Authorization,
        method: ChallengeType,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        let request = self.caa_request(authz, method);
        let result = self.inner.va.do_caa(request, deadline).await.map_err(|failure| {
            tracing::error!(authorization_id = authz.id, %failure, "va CAA call failed");
            Problem::internal("CAA could not be checked")
        })?;
        match &result.problem {
            None => Ok(()),
            Some(problem) => Err(Problem::from(problem)),
        }
    }

    /// The CAA question for `authz`'s identifier, validated by `method`.
    fn caa_request(&self, authz: &Authorization, method: ChallengeType) -> CaaRequest {
        CaaRequest {
            identifier: Some((&authz.identifier).into()),
            wildcard: authz.wildcard,
            validation_method: method.as_str().to_owned(),
            account_uri: format!("{}{}", self.inner.account_uri_prefix, authz.account_id),
            authorization_id: authz.id,
            account_id: authz.account_id,
        }
    }

    /// How long an authorization of `profile` stays valid once validated; a profile since removed from the
    /// configuration falls back to the default profile's lifetime.
    fn valid_lifetime(&self, profile: &str) -> i64 {
        let inner = &self.inner;
        inner
            .profiles
            .get(profile)
            .or_else(|| inner.profiles.get(&inner.default_profile))
            .map_or(ValidationProfile::classic().valid_authorization_lifetime_secs, |p| {
                p.valid_authorization_lifetime_secs
            })
    }
}

/// The outcome recording a validation as failed with `problem`.
pub(crate) fn failed_validation(
    authz: &Authorization,
    attempted: &str,
    problem: &Problem,
) -> sapb::FinalizeAuthorizationRequest {
    sapb::FinalizeAuthorizationRequest {
        id: authz.id,
        status: "invalid".to_owned(),
        expires: authz.expires,
        attempted: attempted.to_owned(),
        attempted_at: now(),
        validation_records: Vec::new(),
        validation_error: Some(pb::Problem::from(problem)),
    }
}

/// Why an authorization in `status` cannot be validated, as the sa says it too.
fn not_pending(status: AuthorizationStatus) -> Problem {
    Problem::malformed(format!("authorization is not pending (it is {status})"))
}

/// The most the ra waits for a validation's outcome before answering, whatever the wfe asks: a request held
/// longer would hold a client that has its own timeout.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// What the ra leaves of the caller's deadline for its answer to arrive.
const WAIT_MARGIN: Duration = Duration::from_millis(250);

/// How long to wait for a validation's outcome: what the wfe asked (`wait_ms`), at most [`LONGEST_WAIT`] and
/// ending [`WAIT_MARGIN`] before the caller's deadline.
fn wait_for_outcome(wait_ms: u32, deadline: Option<Instant>) -> Duration {
    let asked = Duration::from_millis(u64::from(wait_ms)).min(LONGEST_WAIT);
    match deadline {
        Some(deadline) => asked.min(deadline.saturating_duration_since(Instant::now()).saturating_sub(WAIT_MARGIN)),
        None => asked,
    }
}

/// The authorization as the sa shows it once a validation by `kind` has begun: that challenge is processing.
fn processing_started(authz: &Authorization, kind: ChallengeType) -> Authorization {
    let mut started = authz.clone();
    for challenge in started.challenges.iter_mut().filter(|c| c.kind == kind) {
        challenge.status = ChallengeStatus::Processing;
    }
    started
}

/// The challenge types offered for `identifier`, in configured order: only dns-01 for a wildcard (control of a
/// whole zone), never dns-01 for an IP address (RFC 8738 §7: no DNS name to publish a record under).
pub(crate) fn offered_challenges(identifier: &Identifier, enabled: &[ChallengeType]) -> Vec<ChallengeType> {
    enabled
        .iter()
        .copied()
        .filter(|kind| match identifier.kind {
            IdentifierType::Ip => *kind != ChallengeType::Dns01,
            IdentifierType::Dns if identifier.is_wildcard() => *kind == ChallengeType::Dns01,
            IdentifierType::Dns => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_offered_by_identifier_kind() {
        let all = [ChallengeType::Http01, ChallengeType::Dns01, ChallengeType::TlsAlpn01];
        let ip = Identifier { kind: IdentifierType::Ip, value: "192.0.2.1".into() };
        assert_eq!(offered_challenges(&ip, &all), [ChallengeType::Http01, ChallengeType::TlsAlpn01]);
        assert_eq!(offered_challenges(&Identifier::dns("*.example.org"), &all), [ChallengeType::Dns01]);
        assert_eq!(offered_challenges(&Identifier::dns("example.org"), &all), all);
        assert!(offered_challenges(&ip, &[ChallengeType::Dns01]).is_empty());
    }
}
