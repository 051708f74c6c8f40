//! The RegistrationAuthority gRPC service: accounts, orders, validation dispatch and finalization.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::clock::now;
use quarry_core::grpc::incoming_deadline;
use quarry_core::identifier::is_public_unicast;
use quarry_core::model::{
    Account, Authorization, AuthorizationStatus, ChallengeStatus, ChallengeType, Order, OrderStatus,
};
use quarry_core::peer::Peer;
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem, SubProblem};
use quarry_jose::Jwk;
use quarry_proto::ca::IssueCertificateRequest;
use quarry_proto::client::{CaClient, SaClient, VaClient};
use quarry_proto::convert::{identifiers_from_pb, identifiers_to_pb};
use quarry_proto::core as pb;
use quarry_proto::ra::registration_authority_server::RegistrationAuthority;
use quarry_proto::ra::{
    DeactivateAccountRequest, DeactivateAuthorizationRequest, FinalizeOrderRequest, NewOrderRequest,
    PerformValidationRequest, RevokeCertByApplicantRequest, RevokeCertByKeyRequest, UpdateAccountContactRequest,
    UpdateAccountKeyRequest,
};
use quarry_proto::sa::revoke_for_key_compromise_response::Outcome;
use quarry_proto::sa::{self as sapb};
use quarry_proto::va::{CaaRequest, DcvRequest};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use quarry_core::policy::IdentifierPolicy;

use crate::keypolicy;
use crate::limits::{Exemption, RateLimits};
use crate::{Config, Error, ValidationProfile};

/// An order for exactly the identifiers of a certificate issued this recently is a renewal (Boulder's 120 days).
const RENEWAL_WINDOW_SECS: i64 = 120 * 86_400;

/// A reused valid authorization must stay valid for an eighth of the order's lifetime, between one hour and one day
/// (Boulder's rule), so that the order can still be finalized.
fn reuse_margin(order_lifetime: i64) -> i64 {
    (order_lifetime / 8).clamp(3_600, 86_400)
}

/// The service state; cheap to clone into background tasks.
#[derive(Clone)]
pub struct Registrar {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) sa: SaClient,
    pub(crate) va: VaClient,
    pub(crate) ca: CaClient,
    pub(crate) profiles: BTreeMap<String, ValidationProfile>,
    pub(crate) default_profile: String,
    pub(crate) allow_non_public_ip: bool,
    pub(crate) challenge_types: Vec<ChallengeType>,
    pub(crate) validation_timeout: Duration,
    pub(crate) finalize_timeout: Duration,
    pub(crate) async_finalize: bool,
    pub(crate) client_testing: crate::ClientTesting,
    pub(crate) account_uri_prefix: String,
    pub(crate) caa_recheck_after: i64,
    pub(crate) limits: RateLimits,
    pub(crate) policy: IdentifierPolicy,
    /// Validations and finalizations that outlive the request that started them.
    pub(crate) background: TaskTracker,
    /// Fired when the grace period for stopping is over: the tasks still running record their failure and end.
    pub(crate) abandon: CancellationToken,
    /// This replica's name in its heartbeats and in the work it owns (random, new at every start).
    pub(crate) instance: String,
    /// Wakes the bad-key revoker when a key was just blocked here.
    pub(crate) bad_key_blocked: tokio::sync::Notify,
}

type Reply<T> = Result<Response<T>, Status>;

/// How long an abandoned validation or finalization may take to record its failure.
const ABANDON_RECORD_TIME: Duration = Duration::from_secs(5);

/// How long past its timeout a validation's outcome is offered to the sa before the sweeper may take it over.
pub(crate) const RECORD_GRACE: Duration = Duration::from_secs(30);
/// One attempt at recording a validation's outcome.
const RECORD_ATTEMPT: Duration = Duration::from_secs(5);
/// Between attempts.
const RECORD_RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Registrar {
    pub fn new(config: &Config, challenge_types: Vec<ChallengeType>, limits: RateLimits) -> Result<Self, Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                sa: SaClient::new(Peer::new(&config.sa, &config.tls)?),
                va: VaClient::new(Peer::new(&config.va, &config.tls)?),
                ca: CaClient::new(Peer::new(&config.ca, &config.tls)?),
                profiles: config.profiles.clone(),
                default_profile: config.default_profile.clone(),
                allow_non_public_ip: config.allow_non_public_ip_identifiers,
                challenge_types,
                validation_timeout: Duration::from_millis(config.validation_timeout_ms),
                finalize_timeout: Duration::from_millis(config.finalize_timeout_ms),
                async_finalize: config.async_finalize || config.client_testing.finalize_delay_secs > 0,
                client_testing: config.client_testing.clone(),
                account_uri_prefix: config.account_uri_prefix.clone(),
                caa_recheck_after: config.caa_recheck_after_secs,
                limits,
                policy: IdentifierPolicy::new(&config.blocklists),
                background: TaskTracker::new(),
                abandon: CancellationToken::new(),
                instance: random_instance()?,
                bad_key_blocked: tokio::sync::Notify::new(),
            }),
        })
    }

    async fn account(&self, id: i64, deadline: Option<Instant>) -> Result<Account, Problem> {
        self.inner.sa.get_account(id, deadline).await
    }

    async fn authorization(&self, id: i64, deadline: Option<Instant>) -> Result<Authorization, Problem> {
        self.inner.sa.get_authorization(id, deadline).await
    }

    async fn order(&self, id: i64, deadline: Option<Instant>) -> Result<Order, Problem> {
        self.inner.sa.get_order(id, deadline).await
    }

    /// The wfe's copy of the account when it sent one (it read it, or verified the request with it, just before),
    /// else the sa's: a round trip saved per validation and per finalization.
    async fn account_from(
        &self,
        sent: Option<&pb::Account>,
        id: i64,
        deadline: Option<Instant>,
    ) -> Result<Account, Problem> {
        match sent {
            Some(account) if account.id == id => Account::try_from(account),
            _ => self.account(id, deadline).await,
        }
    }

    /// The wfe's copy of the authorization when it sent one, else the sa's.
    async fn authorization_from(
        &self,
        sent: Option<&pb::Authorization>,
        id: i64,
        deadline: Option<Instant>,
    ) -> Result<Authorization, Problem> {
        match sent {
            Some(authz) if authz.id == id => Authorization::try_from(authz),
            _ => self.authorization(id, deadline).await,
        }
    }

    /// The wfe's copy of the order when it sent one, else the sa's.
    async fn order_from(&self, sent: Option<&pb::Order>, id: i64, deadline: Option<Instant>) -> Result<Order, Problem> {
        match sent {
            Some(order) if order.id == id => Order::try_from(order),
            _ => self.order(id, deadline).await,
        }
    }

    async fn new_account(
        &self,
        account: pb::Account,
        client_ip: Option<std::net::IpAddr>,
        deadline: Option<Instant>,
    ) -> Result<pb::Account, Problem> {
        let jwk = Jwk::from_slice(&account.jwk).map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        keypolicy::check_key(&jwk)?;
        self.check_key_not_blocked(&jwk, deadline).await?;
        check_contacts(&account.contact)?;
        let spent = self.inner.limits.new_account(client_ip).await?;
        let created = self.create_account(jwk, account, deadline).await;
        if !matches!(&created, Ok((_, true))) {
            // No account came of it: the registration is not counted.
            self.inner.limits.refund(&spent).await;
        }
        created.map(|(account, _)| account)
    }

    /// Stores a new account; (the account, whether it is new) — a racing request may have registered the key.
    async fn create_account(
        &self,
        jwk: Jwk,
        account: pb::Account,
        deadline: Option<Instant>,
    ) -> Result<(pb::Account, bool), Problem> {
        let new = pb::Account {
            jwk: jwk.canonical_json().into_bytes(),
            status: "valid".into(),
            contact: account.contact,
            terms_of_service_agreed: account.terms_of_service_agreed,
            created_at: now(),
            external_account_id: account.external_account_id,
            external_account_exclusive: account.external_account_exclusive,
            ..Default::default()
        };
        match self.inner.sa.new_account(new.clone(), deadline).await {
            Ok(created) => {
                tracing::info!(target: "audit", event = "account-created", account_id = created.id, "account created");
                Ok((created, true))
            }
            Err(problem) if problem.kind == ErrorKind::Duplicate => {
                // Another request registered the same key first: that account is the answer.
                let existing = self.inner.sa.get_account_by_key(new.jwk, deadline).await?;
                Ok((pb::Account::from(&existing), false))
            }
            Err(problem) => Err(problem),
        }
    }

    /// A key blocked in the sa (compromised, reported) may not become an account key either.
    async fn check_key_not_blocked(&self, jwk: &Jwk, deadline: Option<Instant>) -> Result<(), Problem> {
        if self.inner.sa.key_blocked(jwk.key_hash().to_vec(), deadline).await? {
            return Err(Problem::new(ErrorKind::BadPublicKey, "the account key is blocked"));
        }
        Ok(())
    }

    async fn new_order(&self, req: NewOrderRequest, deadline: Option<Instant>) -> Result<Order, Problem> {
        let inner = &self.inner;
        if req.not_before != 0 || req.not_after != 0 {
            return Err(Problem::malformed("NotBefore and NotAfter are not supported"));
        }
        let profile_name = if req.profile.is_empty() { inner.default_profile.clone() } else { req.profile.clone() };
        let profile = inner.profiles.get(&profile_name).ok_or_else(|| {
            let offered: Vec<&String> = inner.profiles.keys().collect();
            Problem::new(
                ErrorKind::InvalidProfile,
                format!("profile {profile_name:?} is not offered; choose one of {offered:?}"),
            )
        })?;
        let identifiers: BTreeSet<Identifier> =
            identifiers_from_pb(&req.identifiers)?.iter().map(Identifier::normalized).collect();
        let identifiers: Vec<Identifier> = identifiers.into_iter().collect();
        if identifiers.is_empty() {
            return Err(Problem::malformed("NewOrder request did not specify any identifiers"));
        }
        if identifiers.len() > profile.max_names {
            return Err(Problem::malformed(format!(
                "order cannot contain more than {} identifiers (profile {profile_name:?})",
                profile.max_names
            )));
        }
        check_identifiers(&identifiers, profile, &profile_name, inner.allow_non_public_ip, &inner.policy)?;

        let wanted = || identifiers_to_pb(&identifiers);
        let reuse = sapb::GetOrderForNamesRequest {
            account_id: req.account_id,
            identifiers: wanted(),
            profile: profile_name.clone(),
        };
        // A replacement order is always new, so that the replaced certificate is linked to exactly this order.
        if req.replaces_serial.is_empty() {
            match inner.sa.get_order_for_names(reuse, deadline).await {
                Ok(order) => return Ok(order),
                Err(problem) if problem.kind == ErrorKind::NotFound => {}
                Err(problem) => return Err(problem),
            }
        }

        let limited: Vec<Identifier> = identifiers.iter().map(Identifier::without_wildcard).collect();
        self.check_not_paused(req.account_id, &limited, deadline).await?;
        let exemption = if req.replacement_in_window && !req.replaces_serial.is_empty() {
            Exemption::Replacement
        } else if self.is_renewal(&identifiers, deadline).await? {
            Exemption::Renewal
        } else {
            Exemption::None
        };
        let spent = inner.limits.new_order(req.account_id, &limited, exemption).await?;
        let created = self.create_order(req, &identifiers, profile, profile_name, deadline).await;
        if created.is_err() {
            inner.limits.refund(&spent).await;
        }
        created
    }

    /// Refuses an order naming an identifier the account is paused for, saying how to get unpaused.
    async fn check_not_paused(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        let request = sapb::PausedIdentifiersRequest { account_id, identifiers: identifiers_to_pb(identifiers) };
        let paused = self.inner.sa.check_identifiers_paused(request, deadline).await?;
        let paused: Vec<&str> = paused.iter().map(|i| i.value.as_str()).collect();
        if paused.is_empty() {
            return Ok(());
        }
        Err(Problem::new(
            ErrorKind::RateLimited,
            format!(
                "account {account_id} is paused for {} after failing validation for it too many times in a row; fix \
                 the client's validation setup, then ask the CA's operators to unpause the account \
                 (quarry admin unpause --account {account_id})",
                paused.join(", ")
            ),
        ))
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

    /// Reads the sa's rate-limit overrides now and then every `period`, for as long as the ra runs.
    pub fn refresh_overrides(&self, period: Duration) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                match registrar.inner.sa.get_enabled_rate_limit_overrides(deadline).await {
                    Ok(list) => {
                        let entries: Vec<quarry_ratelimits::OverrideEntry> = list
                            .into_iter()
                            .filter_map(|o| {
                                Some(quarry_ratelimits::OverrideEntry {
                                    limit: o.limit,
                                    bucket: o.bucket,
                                    count: u64::try_from(o.count).ok()?,
                                    period_secs: u64::try_from(o.period_secs).ok()?,
                                    burst: u64::try_from(o.burst).ok()?,
                                    comment: o.comment,
                                })
                            })
                            .collect();
                        registrar.inner.limits.set_sa_overrides(&entries);
                    }
                    Err(problem) => tracing::warn!(%problem, "cannot read the sa's rate-limit overrides"),
                }
            }
        });
    }

    /// Whether a certificate for exactly `identifiers` was issued within the renewal window: such an order is a
    /// renewal, exempt from the new-order and per-domain limits.
    async fn is_renewal(&self, identifiers: &[Identifier], deadline: Option<Instant>) -> Result<bool, Problem> {
        let request = sapb::FqdnSetIssuanceTimesRequest {
            identifiers: identifiers_to_pb(identifiers),
            since: now() - RENEWAL_WINDOW_SECS,
        };
        Ok(!self.inner.sa.fqdn_set_issuance_times(request, deadline).await?.is_empty())
    }

    /// Creates the order and its new authorizations, reusing the account's valid ones.
    async fn create_order(
        &self,
        req: NewOrderRequest,
        identifiers: &[Identifier],
        profile: &ValidationProfile,
        profile_name: String,
        deadline: Option<Instant>,
    ) -> Result<Order, Problem> {
        let inner = &self.inner;
        let wanted = || identifiers_to_pb(identifiers);
        let now = now();
        let valid = sapb::GetValidAuthorizationsRequest {
            account_id: req.account_id,
            identifiers: wanted(),
            valid_until: now + reuse_margin(profile.order_lifetime_secs),
            profile: profile_name.clone(),
        };
        let valid = inner.sa.get_valid_authorizations(valid, deadline).await?;
        let mut reusable: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for authz in valid {
            let value = if authz.wildcard { format!("*.{}", authz.identifier.value) } else { authz.identifier.value };
            reusable.insert(value, (authz.id, authz.expires));
        }
        let mut reused_ids = Vec::new();
        let mut new_authorizations = Vec::new();
        let mut expires = now + profile.order_lifetime_secs;
        let reuse_percent = inner.client_testing.authz_reuse_percent.unwrap_or(100);
        for identifier in identifiers {
            let reused = reusable.get(&identifier.value).filter(|_| quarry_core::testing::chance(reuse_percent));
            if let Some((id, authz_expires)) = reused {
                reused_ids.push(*id);
                expires = expires.min(*authz_expires);
                continue;
            }
            let types = offered_challenges(identifier, &inner.challenge_types);
            if types.is_empty() {
                return Err(Problem::new(
                    ErrorKind::UnsupportedIdentifier,
                    format!("no enabled challenge type can validate {}", identifier.value),
                ));
            }
            let types: Vec<String> = types.iter().map(|t| t.as_str().to_owned()).collect();
            let authz_expires = now + profile.pending_authorization_lifetime_secs;
            expires = expires.min(authz_expires);
            new_authorizations.push(sapb::NewAuthorization {
                identifier: Some(identifier.into()),
                challenge_types: types,
                token: random_token()?,
                expires: authz_expires,
            });
        }
        let create = sapb::NewOrderAndAuthorizationsRequest {
            account_id: req.account_id,
            identifiers: wanted(),
            expires,
            reused_authorization_ids: reused_ids,
            new_authorizations,
            profile: profile_name,
            replaces: req.replaces,
            replaces_serial: req.replaces_serial,
        };
        let order = inner.sa.new_order_and_authorizations(create, deadline).await?;
        tracing::info!(
            target: "audit",
            event = "order-created",
            order_id = order.id,
            account_id = order.account_id,
            names = ?identifiers.iter().map(|i| &i.value).collect::<Vec<_>>(),
            "order created"
        );
        Ok(order)
    }

    async fn perform_validation(
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
            AuthorizationStatus::Pending => {}
            other => return Err(Problem::malformed(format!("authorization is not pending (it is {other})"))),
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
        let processing = sapb::SetAuthorizationProcessingRequest {
            id: authz.id,
            attempted: challenge.kind.as_str().to_owned(),
            attempted_at: now(),
            owner: self.inner.instance.clone(),
        };
        match self.inner.sa.set_authorization_processing(processing, deadline).await {
            Ok(()) => {
                let started = processing_started(&authz, challenge.kind);
                self.spawn_validation(authz, challenge.kind, key_authorization);
                // The sa's conditional update succeeded, so its state is known without reading it back.
                return Ok(started);
            }
            Err(problem) if problem.kind == ErrorKind::Conflict => {}
            Err(problem) => {
                // A validation started by a racing POST may have finished since the authorization was read: a
                // now-valid authorization is the answer, as it would have been a moment later.
                let current = self.authorization(authz.id, deadline).await?;
                if current.status == AuthorizationStatus::Valid {
                    return Ok(current);
                }
                return Err(problem);
            }
        }
        self.authorization(authz.id, deadline).await
    }

    /// Runs a validation whose start the sa recorded. It outlives the client's request: it has its own timeout, not
    /// the request's deadline; it stays part of the challenge request's trace, and is recorded as failed if the ra
    /// must stop first.
    pub(crate) fn spawn_validation(&self, authz: Authorization, kind: ChallengeType, key_authorization: String) {
        let registrar = self.clone();
        let abandon = self.inner.abandon.clone();
        self.inner.background.spawn(
            async move {
                tokio::select! {
                    () = registrar.validate_in_background(authz.clone(), kind, key_authorization) => {}
                    () = abandon.cancelled() => registrar.abandon_validation(&authz, kind).await,
                }
            }
            .in_current_span(),
        );
    }

    async fn validate_in_background(&self, authz: Authorization, kind: ChallengeType, key_authorization: String) {
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
        self.record_validation(authz, outcome).await;
    }

    /// Stores a validation's outcome, after its audit line. The sa may be down for a moment (a replica restarting,
    /// a database fail-over): the outcome is offered again until [`RECORD_GRACE`] is nearly over, and only then
    /// left for the sweeper, which takes over validations unrecorded past their deadline.
    pub(crate) async fn record_validation(&self, authz: Authorization, outcome: sapb::FinalizeAuthorizationRequest) {
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
                Ok(()) => return,
                // No longer pending: a sweeper recorded it, or it expired. Nothing to add.
                Err(problem) if problem.kind == ErrorKind::Malformed => {
                    tracing::warn!(authorization_id = authz.id, %problem, "the validation result came too late");
                    return;
                }
                Err(problem) => problem,
            };
            if Instant::now() >= give_up {
                tracing::error!(authorization_id = authz.id, %failure, "cannot record the validation result");
                return;
            }
            tracing::warn!(authorization_id = authz.id, %failure, "recording the validation result failed; retrying");
            tokio::time::sleep(RECORD_RETRY_PAUSE).await;
        }
    }

    /// Asks the va whether CAA lets this CA issue for `authz`'s identifier, validated by `method`.
    async fn check_caa(
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

    async fn finalize_order(&self, req: FinalizeOrderRequest, deadline: Option<Instant>) -> Result<Order, Problem> {
        let inner = &self.inner;
        let order = self.order_from(req.order.as_ref(), req.order_id, deadline).await?;
        if order.account_id != req.account_id {
            return Err(Problem::unauthorized("this order belongs to another account"));
        }
        if order.status != OrderStatus::Ready {
            return Err(Problem::new(
                ErrorKind::OrderNotReady,
                format!("Order's status ({:?}) is not acceptable for finalization", order.status.as_str()),
            ));
        }
        let csr = quarry_core::csr::parse_csr(&req.csr).map_err(|e| match e {
            quarry_core::csr::CsrError::UnsupportedKey(detail) => Problem::new(ErrorKind::BadPublicKey, detail),
            other => Problem::new(ErrorKind::BadCsr, format!("invalid CSR: {other}")),
        })?;
        keypolicy::check_key(&csr.key)?;
        let account = self.account_from(req.account.as_ref(), order.account_id, deadline).await?;
        let account_key =
            Jwk::from_slice(&account.jwk).map_err(|_| Problem::internal("stored account key does not parse"))?;
        // Both keys are canonical, so a CSR carrying the account key in another encoding is still caught.
        if csr.key == account_key {
            return Err(Problem::new(ErrorKind::BadCsr, "certificate public key must be different than account key"));
        }
        if inner.sa.key_blocked(csr.key.key_hash().to_vec(), deadline).await? {
            return Err(Problem::new(ErrorKind::BadPublicKey, "the CSR's public key is forbidden"));
        }
        check_csr_names(&csr.identifiers(), &order.identifiers)?;
        let authzs = inner.sa.get_order_authorizations(order.id, deadline).await?;
        let all_valid = authzs.iter().all(|a| a.status == AuthorizationStatus::Valid);
        if !all_valid || authzs.is_empty() {
            return Err(Problem::new(ErrorKind::OrderNotReady, "not every authorization of the order is valid"));
        }
        // CAA answers age: an authorization validated long ago (reused, or a slow client) is checked again.
        let stale_before = now() - inner.caa_recheck_after;
        for authz in &authzs {
            let Some(challenge) = authz.challenges.iter().find(|c| c.status == ChallengeStatus::Valid) else {
                continue;
            };
            if challenge.validated <= stale_before {
                self.check_caa(authz, challenge.kind, deadline).await?;
            }
        }

        inner.sa.set_order_processing(order.id, &inner.instance, deadline).await?;
        if inner.async_finalize {
            let registrar = self.clone();
            // The sa's conditional update succeeded: the order is processing, without reading it back (the sa
            // stamps `began_processing` by its own clock, which this one approximates; no client sees it).
            let processing = Order { status: OrderStatus::Processing, began_processing: now().max(1), ..order.clone() };
            let csr = req.csr;
            // Issuance outlives the client's request: it has its own timeout, not the request's deadline.
            let abandon = self.inner.abandon.clone();
            self.inner.background.spawn(
                async move {
                    let delay = Duration::from_secs(registrar.inner.client_testing.finalize_delay_secs);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = abandon.cancelled() => {}
                    }
                    let deadline = Some(Instant::now() + registrar.inner.finalize_timeout);
                    tokio::select! {
                        _ = registrar.issue_or_invalidate(&order, csr, deadline) => {}
                        () = abandon.cancelled() => {
                            let stopped = Problem::internal("the CA stopped before this order was issued; order again");
                            registrar.fail_order(&order, &stopped, deadline).await;
                        }
                    }
                }
                .in_current_span(),
            );
            return Ok(processing);
        }
        // Issuance stops short of the caller's deadline, leaving the ra time to learn what became of it and answer.
        let deadline = match deadline {
            Some(deadline) => deadline.checked_sub(RECONCILE_MARGIN).filter(|d| *d > Instant::now()).or(Some(deadline)),
            None => Some(Instant::now() + inner.finalize_timeout),
        };
        let began_processing = now().max(1);
        match self.issue_or_invalidate(&order, req.csr, deadline).await? {
            // The sa recorded the certificate, so the order is valid: no need to read it back.
            Issuance::Issued(serial) => {
                Ok(Order { status: OrderStatus::Valid, certificate_serial: serial, began_processing, ..order })
            }
            // The client polls the order until its certificate is stored.
            Issuance::Finishing => Ok(Order { status: OrderStatus::Processing, began_processing, ..order }),
        }
    }

    /// Issues (giving the certificate's serial), or marks the order invalid: past "processing" an order cannot go
    /// back to ready, and the client starts over with a new order. When the ca's answer was lost (a timeout, a
    /// broken connection) after it stored a precertificate, the order is not failed: the certificate is finished
    /// from the precertificate in the background, so a certificate the ca signed is never lost.
    async fn issue_or_invalidate(
        &self,
        order: &Order,
        csr: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Issuance, Problem> {
        let problem = match self.issue(order, csr, deadline).await {
            Ok(serial) => return Ok(Issuance::Issued(serial)),
            Err(problem) => problem,
        };
        if matches!(problem.kind, ErrorKind::Timeout | ErrorKind::Unavailable) {
            let lookup = Some(Instant::now() + ABANDON_RECORD_TIME);
            match self.inner.sa.get_order_precertificate(order.id, lookup).await {
                Ok(Some(serial)) => {
                    tracing::warn!(order_id = order.id, serial, %problem, "the ca's answer was lost after its precertificate: finishing from it");
                    self.finish_in_background(order.id, serial);
                    return Ok(Issuance::Finishing);
                }
                Ok(None) => {}
                // Unknown either way: the sweeper decides once the order has been processing too long.
                Err(lookup_failed) => {
                    tracing::warn!(order_id = order.id, %lookup_failed, "cannot tell whether a precertificate was signed; the sweeper will");
                    return Err(problem);
                }
            }
        }
        match self.fail_order(order, &problem, deadline).await {
            Some(serial) => Ok(Issuance::Issued(serial)),
            None => Err(problem),
        }
    }

    /// Finishes order `order_id` from its precertificate once the interrupted call has surely ended (a call the ra
    /// gave up on is cancelled at the ca, but a store already sent may still land). Failing that, the order stays
    /// processing, and the sweeper takes it over past its deadline.
    fn finish_in_background(&self, order_id: i64, serial: String) {
        let registrar = self.clone();
        let abandon = self.inner.abandon.clone();
        self.inner.background.spawn(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(LOST_ANSWER_SETTLE) => {}
                    () = abandon.cancelled() => return,
                }
                let settled = registrar.order(order_id, Some(Instant::now() + ABANDON_RECORD_TIME)).await;
                if settled.is_ok_and(|order| order.status != OrderStatus::Processing) {
                    return;
                }
                tokio::select! {
                    finished = registrar.finish_from_precertificate(order_id, &serial) => {
                        if let Err(problem) = finished {
                            tracing::warn!(order_id, %problem, "finishing from the precertificate failed; the sweeper will retry");
                        }
                    }
                    () = abandon.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }

    /// Marks `order` invalid with `problem` — unless its certificate was stored meanwhile (the ca finished after
    /// this ra stopped waiting for it): then the order is valid, and that certificate's serial is returned.
    async fn fail_order(&self, order: &Order, problem: &Problem, deadline: Option<Instant>) -> Option<String> {
        // The caller's deadline may be what ran out: recording the failure gets a moment of its own.
        let deadline = deadline
            .filter(|d| *d > Instant::now() + ABANDON_RECORD_TIME)
            .or_else(|| Some(Instant::now() + ABANDON_RECORD_TIME));
        match self.inner.sa.set_order_error(order.id, problem, deadline).await {
            Ok(()) => {}
            Err(conflict) if conflict.kind == ErrorKind::Conflict => {
                let stored = self.order(order.id, deadline).await.ok().map(|o| o.certificate_serial);
                if let Some(serial) = stored.filter(|serial| !serial.is_empty()) {
                    tracing::info!(order_id = order.id, serial, "the certificate was stored after all");
                    return Some(serial);
                }
            }
            Err(failure) => tracing::error!(order_id = order.id, %failure, "cannot mark the failed order invalid"),
        }
        tracing::warn!(order_id = order.id, %problem, "issuance failed");
        None
    }

    /// Records a validation the ra had to stop before it finished as failed, so that the client learns it (and may
    /// try again with a new authorization) instead of waiting on a challenge that never ends.
    async fn abandon_validation(&self, authz: &Authorization, kind: ChallengeType) {
        let problem = Problem::internal("the CA stopped before this validation finished; try again");
        self.record_validation(authz.clone(), failed_validation(authz, kind.as_str(), &problem)).await;
    }

    /// At shutdown: lets validations and finalizations in flight run for `grace`, then makes those still running
    /// record their failure (for at most a few seconds more).
    pub async fn drain_background(&self, grace: Duration) {
        let background = &self.inner.background;
        background.close();
        if tokio::time::timeout(grace, background.wait()).await.is_err() {
            tracing::warn!(
                tasks = background.len(),
                "stopping: validations and finalizations still running are recorded as failed"
            );
            self.inner.abandon.cancel();
            let _ = tokio::time::timeout(ABANDON_RECORD_TIME, background.wait()).await;
        }
    }

    async fn issue(&self, order: &Order, csr: Vec<u8>, deadline: Option<Instant>) -> Result<String, Problem> {
        // Asked before this certificate joins the history it looks at.
        let renewal = self.is_renewal(&order.identifiers, deadline).await?;
        quarry_core::fault::point("ra.finalize_before_issue");
        let issue = IssueCertificateRequest {
            csr,
            account_id: order.account_id,
            order_id: order.id,
            profile: order.profile.clone(),
        };
        let issued = self.inner.ca.issue_certificate(issue, deadline).await?;
        quarry_core::fault::point("ra.finalize_after_issue");
        self.inner.sa.finalize_order(order.id, &issued.serial, deadline).await?;
        let limited: Vec<Identifier> = order.identifiers.iter().map(Identifier::without_wildcard).collect();
        self.inner.limits.issued(order.account_id, &limited, renewal).await;
        tracing::info!(target: "audit", event = "certificate-issued", order_id = order.id, account_id = order.account_id, serial = %issued.serial, names = ?order.identifiers.iter().map(|i| &i.value).collect::<Vec<_>>(), "certificate issued");
        Ok(issued.serial)
    }
}

/// What finalization achieved.
enum Issuance {
    /// The certificate is stored, under this serial.
    Issued(String),
    /// Its precertificate is, and the certificate is being finished from it.
    Finishing,
}

/// What a synchronous finalization keeps of its caller's deadline to reconcile an issuance whose answer it lost.
const RECONCILE_MARGIN: Duration = Duration::from_secs(3);

/// How long an interrupted call to the ca is given to settle before its issuance is finished from the
/// precertificate.
const LOST_ANSWER_SETTLE: Duration = Duration::from_secs(2);

/// CRL reason codes a subscriber may ask for (RFC 5280 §5.3.1, as Let's Encrypt allows them).
const SUBSCRIBER_REASONS: &[i64] = &[0, 1, 4, 5];
const KEY_COMPROMISE: i64 = 1;
const CESSATION_OF_OPERATION: i64 = 5;

/// What the ra needs to know about a certificate being revoked.
struct RevocationTarget {
    serial: String,
    names: Vec<Identifier>,
    spki_hash: Vec<u8>,
}

impl RevocationTarget {
    fn parse(der: &[u8]) -> Result<Self, Problem> {
        use x509_parser::prelude::*;
        let (_, cert) =
            parse_x509_certificate(der).map_err(|_| Problem::malformed("the certificate does not parse"))?;
        Ok(Self {
            serial: cert.raw_serial_as_string().replace(':', ""),
            names: quarry_core::certificate::identifiers(&cert),
            spki_hash: Jwk::from_spki_der(cert.public_key().raw)
                .map_err(|e| Problem::malformed(format!("the certificate's public key: {e}")))?
                .key_hash()
                .to_vec(),
        })
    }
}

impl Registrar {
    /// The stored certificate with `der`'s serial, which must be exactly `der`: only certificates Quarry issued.
    async fn issued_certificate(
        &self,
        der: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(RevocationTarget, i64), Problem> {
        let target = RevocationTarget::parse(der)?;
        let stored = match self.inner.sa.get_certificate(&target.serial, deadline).await {
            Ok(stored) => stored,
            Err(problem) if problem.kind == ErrorKind::NotFound => {
                return Err(Problem::not_found("no such certificate was issued here"));
            }
            Err(problem) => return Err(problem),
        };
        if stored.der != der {
            return Err(Problem::not_found("no such certificate was issued here"));
        }
        Ok((target, stored.account_id))
    }

    async fn revoke(&self, serial: &str, reason: i64, deadline: Option<Instant>) -> Result<(), Problem> {
        let revoke = sapb::RevokeCertificateRequest { serial: serial.to_owned(), reason, date: now() };
        self.inner.sa.revoke_certificate(revoke, deadline).await?;
        tracing::info!(target: "audit", event = "certificate-revoked", serial, reason, "certificate revoked");
        Ok(())
    }

    async fn revoke_by_applicant(
        &self,
        req: RevokeCertByApplicantRequest,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        if !SUBSCRIBER_REASONS.contains(&req.reason) {
            return Err(Problem::new(
                ErrorKind::BadRevocationReason,
                format!("reason code {} is not allowed; use one of {SUBSCRIBER_REASONS:?}", req.reason),
            ));
        }
        let (target, owner) = self.issued_certificate(&req.der, deadline).await?;
        if owner == req.account_id {
            return self.revoke(&target.serial, req.reason, deadline).await;
        }
        // Another account may revoke only with valid authorizations for every name, and only as cessationOfOperation.
        let valid = sapb::GetValidAuthorizationsRequest {
            account_id: req.account_id,
            identifiers: identifiers_to_pb(&target.names),
            valid_until: now(),
            profile: String::new(),
        };
        let valid = self.inner.sa.get_valid_authorizations(valid, deadline).await?;
        let covered: BTreeSet<String> = valid
            .into_iter()
            .map(|a| if a.wildcard { format!("*.{}", a.identifier.value) } else { a.identifier.value })
            .collect();
        if target.names.is_empty() || !target.names.iter().all(|name| covered.contains(&name.value)) {
            return Err(Problem::unauthorized(
                "the account neither issued this certificate nor holds authorizations for all its names",
            ));
        }
        self.revoke(&target.serial, CESSATION_OF_OPERATION, deadline).await
    }

    async fn revoke_by_key(&self, req: RevokeCertByKeyRequest, deadline: Option<Instant>) -> Result<(), Problem> {
        let (target, _) = self.issued_certificate(&req.der, deadline).await?;
        // Revoked first, so that the bad-key revoker woken below cannot take this one and leave its requester an
        // `alreadyRevoked`; revoked already for another reason: the reason becomes keyCompromise (Boulder).
        let request = sapb::RevokeForKeyCompromiseRequest { serial: target.serial.clone(), date: now() };
        let revoked = self.inner.sa.revoke_for_key_compromise(request, deadline).await;
        // The key is blocked whatever the revocation's outcome, and every other certificate with it, whoever holds
        // it, is the bad-key revoker's to revoke.
        let block = sapb::AddBlockedKeyRequest {
            key_hash: target.spki_hash.clone(),
            source: "revocation".into(),
            comment: format!("key compromise reported for serial {}", target.serial),
        };
        self.inner.sa.add_blocked_key(block, deadline).await?;
        self.inner.bad_key_blocked.notify_one();
        match revoked? {
            Outcome::Already => Err(Problem::new(
                ErrorKind::AlreadyRevoked,
                format!("certificate {} is already revoked for key compromise", target.serial),
            )),
            outcome => {
                tracing::info!(
                    target: "audit",
                    event = "certificate-revoked",
                    serial = target.serial,
                    reason = KEY_COMPROMISE,
                    upgraded = outcome == Outcome::Upgraded,
                    "certificate revoked by its key"
                );
                Ok(())
            }
        }
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
fn offered_challenges(identifier: &Identifier, enabled: &[ChallengeType]) -> Vec<ChallengeType> {
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

/// A replica's name for its heartbeats: 64 random bits, hex.
fn random_instance() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Invalid("the random number generator failed".into()))?;
    Ok(hex::encode(bytes))
}

/// 32 random bytes, base64url: a challenge token (RFC 8555 §8.1 asks for at least 128 bits).
fn random_token() -> Result<String, Problem> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Problem::internal("random number generator failed"))?;
    Ok(quarry_jose::b64_encode(&bytes))
}

/// At most this many contacts per account, as Let's Encrypt allows.
const MAX_CONTACTS: usize = 10;
/// The longest address SMTP can carry (RFC 5321 §4.5.3.1.3: a 256-octet path, less its angle brackets).
const MAX_ADDRESS_LEN: usize = 254;
/// The longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART_LEN: usize = 64;

/// An account's contacts (RFC 8555 §7.3): a handful of `mailto:` URLs of one plain address each.
fn check_contacts(contacts: &[String]) -> Result<(), Problem> {
    if contacts.len() > MAX_CONTACTS {
        return Err(Problem::malformed(format!(
            "too many contacts: {} given, at most {MAX_CONTACTS} allowed",
            contacts.len()
        )));
    }
    contacts.iter().try_for_each(|contact| check_contact(contact))
}

fn check_contact(contact: &str) -> Result<(), Problem> {
    // The detail quotes the contact with its control characters escaped, and no more than a screenful of it.
    let shown: String = contact.chars().take(80).flat_map(char::escape_debug).collect();
    let invalid = |why: &str| Err(Problem::new(ErrorKind::InvalidContact, format!("contact \"{shown}\" {why}")));
    let Some(address) = contact.strip_prefix("mailto:") else {
        return Err(Problem::new(ErrorKind::UnsupportedContact, format!("contact \"{shown}\" is not a mailto: URL")));
    };
    if address.len() > MAX_ADDRESS_LEN {
        return invalid(&format!("is longer than {MAX_ADDRESS_LEN} characters"));
    }
    if !address.is_ascii() {
        return invalid("must be ASCII");
    }
    if address.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return invalid("must not contain spaces or control characters");
    }
    if address.contains('?') {
        return invalid("must not contain header fields");
    }
    if address.contains('#') {
        return invalid("must not contain a fragment");
    }
    if address.contains(',') {
        return invalid("must hold exactly one address");
    }
    let Some((local, domain)) = address.rsplit_once('@') else { return invalid("is not an email address") };
    // A dot-atom local part (RFC 5322 §3.4.1); quoted local parts and comments are not accepted.
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!$%&'*+/=^_`{|}~-".contains(&b);
    let dot_atom = !local.is_empty() && local.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(atext));
    if !dot_atom || local.len() > MAX_LOCAL_PART_LEN {
        return invalid("is not an email address");
    }
    let domain = Identifier::dns(domain.to_ascii_lowercase());
    if domain.check_well_formed().and_then(|()| quarry_core::policy::check_fixed(&domain)).is_err() {
        return invalid("has an invalid domain");
    }
    Ok(())
}

/// Identifier checks: one subproblem per offending identifier (RFC 8555 §6.7.1).
fn check_identifiers(
    identifiers: &[Identifier],
    profile: &ValidationProfile,
    profile_name: &str,
    allow_non_public_ip: bool,
    policy: &IdentifierPolicy,
) -> Result<(), Problem> {
    let mut subproblems = Vec::new();
    for identifier in identifiers {
        let problem = if !profile.identifier_types.contains(&identifier.kind) {
            Some(Problem::new(
                ErrorKind::RejectedIdentifier,
                format!("profile {profile_name:?} does not permit {} identifiers", identifier.kind.as_str()),
            ))
        } else {
            identifier.check_well_formed().and_then(|()| policy.check(identifier)).err().or_else(|| {
                match identifier.value.parse() {
                    Ok(ip)
                        if identifier.kind == IdentifierType::Ip && !allow_non_public_ip && !is_public_unicast(ip) =>
                    {
                        Some(Problem::new(
                            ErrorKind::RejectedIdentifier,
                            format!("{ip} is not a public unicast address"),
                        ))
                    }
                    _ => None,
                }
            })
        };
        if let Some(problem) = problem {
            subproblems.push(SubProblem {
                kind: problem.kind,
                detail: problem.detail,
                identifier: Some(identifier.clone()),
            });
        }
    }
    Problem::from_identifier_subproblems(subproblems).map_or(Ok(()), Err)
}

/// The CSR must ask for exactly the order's identifiers.
fn check_csr_names(csr_identifiers: &BTreeSet<Identifier>, identifiers: &[Identifier]) -> Result<(), Problem> {
    let ordered: BTreeSet<Identifier> = identifiers.iter().map(Identifier::normalized).collect();
    if *csr_identifiers == ordered {
        return Ok(());
    }
    let values = |set: std::collections::btree_set::Difference<'_, Identifier>| -> Vec<String> {
        set.map(|i| i.value.clone()).collect()
    };
    let missing = values(ordered.difference(csr_identifiers));
    let extra = values(csr_identifiers.difference(&ordered));
    Err(Problem::new(
        ErrorKind::BadCsr,
        format!("CSR does not specify same identifiers as Order (missing {missing:?}, not in order {extra:?})"),
    ))
}

#[tonic::async_trait]
impl RegistrationAuthority for Registrar {
    async fn new_account(&self, request: Request<pb::Account>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        let client_ip = quarry_core::grpc::client_ip(&request);
        Ok(Response::new(self.new_account(request.into_inner(), client_ip, deadline).await?))
    }

    async fn update_account_contact(&self, request: Request<UpdateAccountContactRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        let req = request.into_inner();
        check_contacts(&req.contact)?;
        let update = sapb::UpdateAccountContactRequest { id: req.account_id, contact: req.contact };
        let account = self.inner.sa.update_account_contact(update, deadline).await?;
        tracing::info!(target: "audit", event = "account-updated", account_id = req.account_id, "account contacts updated");
        Ok(Response::new(account))
    }

    async fn update_account_key(&self, request: Request<UpdateAccountKeyRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        let req = request.into_inner();
        let jwk = Jwk::from_slice(&req.jwk).map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        keypolicy::check_key(&jwk)?;
        self.check_key_not_blocked(&jwk, deadline).await?;
        let update = sapb::UpdateAccountKeyRequest { id: req.account_id, jwk: jwk.canonical_json().into_bytes() };
        let account = self.inner.sa.update_account_key(update, deadline).await?;
        tracing::info!(target: "audit", event = "account-key-changed", account_id = req.account_id, "account key rolled over");
        Ok(Response::new(account))
    }

    async fn deactivate_account(&self, request: Request<DeactivateAccountRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        let id = request.get_ref().account_id;
        let account = self.inner.sa.deactivate_account(id, deadline).await?;
        tracing::info!(target: "audit", event = "account-deactivated", account_id = id, "account deactivated");
        Ok(Response::new(account))
    }

    async fn new_order(&self, request: Request<NewOrderRequest>) -> Reply<pb::Order> {
        let deadline = incoming_deadline(&request);
        let order = self.new_order(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Order::from(&order)))
    }

    async fn perform_validation(&self, request: Request<PerformValidationRequest>) -> Reply<pb::Authorization> {
        let deadline = incoming_deadline(&request);
        let authz = self.perform_validation(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Authorization::from(&authz)))
    }

    async fn deactivate_authorization(
        &self,
        request: Request<DeactivateAuthorizationRequest>,
    ) -> Reply<pb::Authorization> {
        let deadline = incoming_deadline(&request);
        let req = request.into_inner();
        let authz = self.authorization(req.authorization_id, deadline).await?;
        if authz.account_id != req.account_id {
            return Err(Problem::unauthorized("this authorization belongs to another account").into());
        }
        let authz = self.inner.sa.deactivate_authorization(authz.id, deadline).await?;
        tracing::info!(target: "audit", event = "authorization-deactivated", authorization_id = req.authorization_id, "authorization deactivated");
        Ok(Response::new(authz))
    }

    async fn revoke_cert_by_applicant(&self, request: Request<RevokeCertByApplicantRequest>) -> Reply<pb::Empty> {
        let deadline = incoming_deadline(&request);
        self.revoke_by_applicant(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn revoke_cert_by_key(&self, request: Request<RevokeCertByKeyRequest>) -> Reply<pb::Empty> {
        let deadline = incoming_deadline(&request);
        self.revoke_by_key(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn finalize_order(&self, request: Request<FinalizeOrderRequest>) -> Reply<pb::Order> {
        let deadline = incoming_deadline(&request);
        let order = self.finalize_order(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Order::from(&order)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts() {
        let cases: &[(&str, Option<ErrorKind>)] = &[
            ("mailto:ops@example.org", None),
            ("tel:+1234", Some(ErrorKind::UnsupportedContact)),
            ("mailto:a@example.org?subject=x", Some(ErrorKind::InvalidContact)),
            ("mailto:a@example.org,b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:nobody", Some(ErrorKind::InvalidContact)),
            ("mailto:a@bad..domain", Some(ErrorKind::InvalidContact)),
            ("mailto:first.last+tag@mail.example.org", None),
            // Found accepted by the attack run: control characters, NUL, a 5,000-character address.
            ("mailto:a@example.org\r\nBcc: all@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a\0b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a\tb@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a@example.org#x", Some(ErrorKind::InvalidContact)),
            ("mailto:\"quoted\"@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:.a@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:a..b@example.org", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@localhost", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@service.internal", Some(ErrorKind::InvalidContact)),
            ("mailto:ops@b\u{fc}cher.example", Some(ErrorKind::InvalidContact)),
        ];
        for (contact, expected) in cases {
            assert_eq!(check_contact(contact).err().map(|p| p.kind), *expected, "{contact:?}");
        }
        let long = format!("mailto:{}@example.org", "a".repeat(5_000));
        let problem = check_contact(&long).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::InvalidContact);
        assert!(problem.detail.len() < 200, "the detail does not echo the whole address");
        let long_local = format!("mailto:{}@example.org", "a".repeat(65));
        assert_eq!(check_contact(&long_local).unwrap_err().kind, ErrorKind::InvalidContact);
    }

    #[test]
    fn at_most_ten_contacts() {
        let contacts: Vec<String> = (0..11).map(|i| format!("mailto:ops{i}@example.org")).collect();
        assert_eq!(check_contacts(&contacts[..10]), Ok(()));
        let problem = check_contacts(&contacts).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::Malformed);
        assert!(problem.detail.contains("at most 10"), "{}", problem.detail);
    }

    #[test]
    fn identifier_problems_name_each_identifier() {
        let classic = ValidationProfile::classic();
        let ids =
            [Identifier::dns("ok.example.org"), Identifier::dns("bad..example.org"), Identifier::dns("-x.example.org")];
        let problem = check_identifiers(&ids, &classic, "classic", false, &IdentifierPolicy::default()).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::RejectedIdentifier);
        assert_eq!(problem.subproblems.len(), 2);
        assert_eq!(problem.subproblems[0].identifier.as_ref().unwrap().value, "bad..example.org");
    }

    #[test]
    fn ip_identifiers_follow_the_profile_and_the_address_policy() {
        let public = Identifier { kind: IdentifierType::Ip, value: "64.112.117.1".into() };
        let loopback = Identifier { kind: IdentifierType::Ip, value: "127.0.0.1".into() };
        let classic = ValidationProfile::classic();
        let problem =
            check_identifiers(std::slice::from_ref(&public), &classic, "classic", false, &IdentifierPolicy::default())
                .unwrap_err();
        assert_eq!(problem.kind, ErrorKind::RejectedIdentifier);
        assert!(problem.detail.contains("does not permit ip identifiers"), "{}", problem.detail);
        let shortlived =
            ValidationProfile { identifier_types: vec![IdentifierType::Dns, IdentifierType::Ip], ..classic };
        assert!(
            check_identifiers(
                std::slice::from_ref(&public),
                &shortlived,
                "shortlived",
                false,
                &IdentifierPolicy::default()
            )
            .is_ok()
        );
        let problem = check_identifiers(
            std::slice::from_ref(&loopback),
            &shortlived,
            "shortlived",
            false,
            &IdentifierPolicy::default(),
        )
        .unwrap_err();
        assert!(problem.detail.contains("not a public unicast address"), "{}", problem.detail);
        assert!(check_identifiers(&[loopback], &shortlived, "shortlived", true, &IdentifierPolicy::default()).is_ok());
    }

    #[test]
    fn challenges_offered_by_identifier_kind() {
        let all = [ChallengeType::Http01, ChallengeType::Dns01, ChallengeType::TlsAlpn01];
        let ip = Identifier { kind: IdentifierType::Ip, value: "192.0.2.1".into() };
        assert_eq!(offered_challenges(&ip, &all), [ChallengeType::Http01, ChallengeType::TlsAlpn01]);
        assert_eq!(offered_challenges(&Identifier::dns("*.example.org"), &all), [ChallengeType::Dns01]);
        assert_eq!(offered_challenges(&Identifier::dns("example.org"), &all), all);
        assert!(offered_challenges(&ip, &[ChallengeType::Dns01]).is_empty());
    }

    #[test]
    fn reuse_margin_is_an_eighth_of_the_order_lifetime_within_bounds() {
        assert_eq!(reuse_margin(7 * 86_400), 75_600);
        assert_eq!(reuse_margin(14 * 86_400), 86_400);
        assert_eq!(reuse_margin(8 * 3_600), 3_600);
        assert_eq!(reuse_margin(24 * 3_600), 3 * 3_600);
    }

    #[test]
    fn csr_names_must_equal_the_order() {
        let ip = Identifier { kind: IdentifierType::Ip, value: "192.0.2.1".into() };
        let order = [Identifier::dns("a.example.org"), Identifier::dns("*.b.example.org"), ip.clone()];
        let names = |list: &[&str]| {
            let mut set: BTreeSet<Identifier> = list.iter().map(|s| Identifier::dns(*s)).collect();
            set.insert(ip.clone());
            set
        };
        assert!(check_csr_names(&names(&["a.example.org", "*.b.example.org"]), &order).is_ok());
        let problem = check_csr_names(&names(&["a.example.org", "c.example.org"]), &order).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::BadCsr);
        assert!(problem.detail.contains("*.b.example.org") && problem.detail.contains("c.example.org"));
        let without_ip: BTreeSet<Identifier> =
            [Identifier::dns("a.example.org"), Identifier::dns("*.b.example.org")].into();
        assert!(check_csr_names(&without_ip, &order).unwrap_err().detail.contains("192.0.2.1"));
    }
}
