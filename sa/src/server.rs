//! The two gRPC services of the sa, thin translations between prost messages and [`Store`] calls.
// size: one thin method per RPC of the sa's two services, which the generated traits want in one impl each.

use quarry_core::model::{Account, AccountStatus, AuthorizationStatus};
use std::future::Future;

use quarry_core::{ErrorKind, Problem};
use quarry_proto::convert::{
    created_order_to_pb, identifiers_from_pb, identifiers_to_pb, problem_from_pb, records_from_pb,
};
use quarry_proto::core as pb;
use quarry_proto::sa::storage_authority_read_only_server::StorageAuthorityReadOnly;
use quarry_proto::sa::storage_authority_server::StorageAuthority;
use quarry_proto::sa::{self as sapb};
use tonic::{Request, Response, Status};

use crate::config::ClientTesting;
use crate::store::controls::RateLimitOverride;
use crate::store::recovery::{StuckItem, StuckSince};
use crate::store::{
    FinalizationFacts, FinalizationQuestion, NewOrderQuestion, SerialReservation, Store, ValidationOutcome,
};

/// Both services share one store; the read-only service may also read from a replica.
#[derive(Clone)]
pub struct Storage {
    store: Store,
    replica: Option<Store>,
    client_testing: ClientTesting,
}

impl Storage {
    pub fn new(store: Store) -> Self {
        Self { store, replica: None, client_testing: ClientTesting::default() }
    }

    /// Reads of the read-only service go to `replica` first.
    pub fn with_replica(store: Store, replica: Store) -> Self {
        Self { store, replica: Some(replica), client_testing: ClientTesting::default() }
    }

    /// The test-only writes `knobs` allow (quarry dev's).
    pub fn with_client_testing(mut self, knobs: ClientTesting) -> Self {
        self.client_testing = knobs;
        self
    }

    /// Runs a read on the replica when there is one; a row the replica lacks may just not have arrived yet
    /// (replication lag), so a `notFound` is asked again of the primary.
    async fn read<T, F, Fut>(&self, query: F) -> Result<T, Problem>
    where
        F: Fn(Store) -> Fut,
        Fut: Future<Output = Result<T, Problem>>,
    {
        let Some(replica) = &self.replica else { return query(self.store.clone()).await };
        match query(replica.clone()).await {
            Err(problem) if problem.kind == ErrorKind::NotFound => query(self.store.clone()).await,
            other => other,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The longest renewal-information override stored: a management API's whole request body (64 KiB) leaves less.
const MAX_RENEWAL_INFO_OVERRIDE_BYTES: usize = 64 * 1024;

fn reply<T>(result: Result<T, Problem>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

fn authorizations(list: Vec<quarry_core::model::Authorization>) -> sapb::Authorizations {
    sapb::Authorizations { authorizations: list.iter().map(pb::Authorization::from).collect() }
}

#[tonic::async_trait]
impl StorageAuthorityReadOnly for Storage {
    async fn get_account(&self, request: Request<sapb::AccountId>) -> Reply<pb::Account> {
        let id = request.get_ref().id;
        reply(self.read(|s| async move { s.get_account(id).await }).await.map(|a| pb::Account::from(&a)))
    }

    async fn get_account_by_key(&self, request: Request<sapb::AccountKey>) -> Reply<pb::Account> {
        let jwk = &request.get_ref().jwk;
        reply(self.read(|s| async move { s.get_account_by_key(jwk).await }).await.map(|a| pb::Account::from(&a)))
    }

    async fn get_order(&self, request: Request<sapb::OrderId>) -> Reply<pb::Order> {
        let id = request.get_ref().id;
        reply(self.read(|s| async move { s.get_order(id).await }).await.map(|o| pb::Order::from(&o)))
    }

    async fn get_order_for_names(&self, request: Request<sapb::GetOrderForNamesRequest>) -> Reply<pb::Order> {
        let req = request.into_inner();
        let identifiers = identifiers_from_pb(&req.identifiers)?;
        let (identifiers, profile) = (&identifiers, &req.profile);
        reply(
            self.read(|s| async move { s.get_order_for_names(req.account_id, identifiers, profile).await })
                .await
                .map(|o| pb::Order::from(&o)),
        )
    }

    /// From the primary: a pause must not slip through a lagging replica (as in
    /// `check_identifiers_paused`), and the usual answer, no reusable order, asked the primary anyway.
    async fn get_new_order_facts(&self, request: Request<sapb::NewOrderFactsRequest>) -> Reply<sapb::NewOrderFacts> {
        let req = request.into_inner();
        let question = NewOrderQuestion {
            account_id: req.account_id,
            identifiers: identifiers_from_pb(&req.identifiers)?,
            profile: req.profile,
            replacement: req.replacement,
            renewal_since: req.renewal_since,
            valid_until: req.valid_until,
        };
        reply(self.store.new_order_facts(&question).await.map(|facts| sapb::NewOrderFacts::from(&facts)))
    }

    async fn get_authorization(&self, request: Request<sapb::AuthorizationId>) -> Reply<pb::Authorization> {
        let id = request.get_ref().id;
        reply(self.read(|s| async move { s.get_authorization(id).await }).await.map(|a| pb::Authorization::from(&a)))
    }

    async fn get_order_authorizations(&self, request: Request<sapb::OrderId>) -> Reply<sapb::Authorizations> {
        let id = request.get_ref().id;
        reply(self.read(|s| async move { s.get_order_authorizations(id).await }).await.map(authorizations))
    }

    async fn get_valid_authorizations(
        &self,
        request: Request<sapb::GetValidAuthorizationsRequest>,
    ) -> Reply<sapb::Authorizations> {
        let req = request.into_inner();
        let identifiers = identifiers_from_pb(&req.identifiers)?;
        let (identifiers, profile) = (&identifiers, &req.profile);
        reply(
            self.read(|s| async move {
                s.get_valid_authorizations(req.account_id, identifiers, req.valid_until, profile).await
            })
            .await
            .map(authorizations),
        )
    }

    async fn get_certificate(&self, request: Request<sapb::Serial>) -> Reply<pb::Certificate> {
        let serial = &request.get_ref().serial;
        reply(self.read(|s| async move { s.get_certificate(serial).await }).await.map(|c| pb::Certificate::from(&c)))
    }

    async fn get_certificate_status(&self, request: Request<sapb::Serial>) -> Reply<pb::CertificateStatus> {
        let serial = request.into_inner().serial;
        let wanted = &serial;
        let status = self.read(|s| async move { s.get_certificate_status(wanted).await }).await;
        reply(status.map(|(status, revoked_date, revoked_reason, not_after, issuer_id)| pb::CertificateStatus {
            serial,
            status,
            revoked_date,
            revoked_reason,
            not_after,
            issuer_id,
        }))
    }

    // Security decisions (a blocked key, a replaced certificate) are read from the primary: a lagging replica
    // must not let a blocked key through.
    async fn key_blocked(&self, request: Request<sapb::KeyHash>) -> Reply<sapb::Exists> {
        reply(self.store.key_blocked(&request.get_ref().key_hash).await.map(|exists| sapb::Exists { exists }))
    }

    async fn serial_exists(&self, request: Request<sapb::Serial>) -> Reply<sapb::Exists> {
        reply(self.store.serial_exists(&request.get_ref().serial).await.map(|exists| sapb::Exists { exists }))
    }

    async fn replacement_order_exists(&self, request: Request<sapb::Serial>) -> Reply<sapb::Exists> {
        let serial = &request.get_ref().serial;
        reply(self.store.replacement_order_exists(serial).await.map(|exists| sapb::Exists { exists }))
    }

    type GetRevokedCertificatesStream =
        futures::stream::Iter<std::vec::IntoIter<Result<sapb::RevokedCertificate, Status>>>;

    /// Read from the primary: a revocation that the replica has not seen yet must not miss its CRL update.
    async fn get_revoked_certificates(
        &self,
        request: Request<sapb::GetRevokedCertificatesRequest>,
    ) -> Reply<Self::GetRevokedCertificatesStream> {
        let req = request.into_inner();
        let revoked = self.store.revoked_certificates(req.issuer_id, req.shard, req.expires_after).await?;
        let entries: Vec<Result<sapb::RevokedCertificate, Status>> = revoked
            .into_iter()
            .map(|r| {
                Ok(sapb::RevokedCertificate {
                    serial: r.serial,
                    revoked_date: r.revoked_date,
                    reason: r.revoked_reason,
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(entries)))
    }

    async fn check_identifiers_paused(
        &self,
        request: Request<sapb::PausedIdentifiersRequest>,
    ) -> Reply<sapb::Identifiers> {
        let req = request.into_inner();
        let identifiers = identifiers_from_pb(&req.identifiers)?;
        // From the primary: an account paused a moment ago must not slip through a lagging replica.
        let paused = self.store.paused_identifiers(req.account_id, &identifiers).await;
        reply(paused.map(|paused| sapb::Identifiers { identifiers: identifiers_to_pb(&paused) }))
    }

    async fn get_paused_identifiers(&self, request: Request<sapb::AccountId>) -> Reply<sapb::Identifiers> {
        let paused = self.store.account_paused_identifiers(request.get_ref().id).await;
        reply(paused.map(|paused| sapb::Identifiers { identifiers: identifiers_to_pb(&paused) }))
    }

    async fn get_enabled_rate_limit_overrides(&self, _: Request<pb::Empty>) -> Reply<sapb::RateLimitOverrides> {
        let overrides = self.store.enabled_rate_limit_overrides().await.map(|list| sapb::RateLimitOverrides {
            overrides: list
                .into_iter()
                .map(|o| sapb::RateLimitOverride {
                    limit: o.limit_name,
                    bucket: o.bucket_key,
                    count: o.count,
                    period_secs: o.period_secs,
                    burst: o.burst,
                    comment: o.comment,
                })
                .collect(),
        });
        reply(overrides)
    }

    async fn fqdn_set_issuance_times(
        &self,
        request: Request<sapb::FqdnSetIssuanceTimesRequest>,
    ) -> Reply<sapb::IssuanceTimes> {
        let req = request.into_inner();
        let identifiers = identifiers_from_pb(&req.identifiers)?;
        let times = self
            .read(|store| {
                let identifiers = identifiers.clone();
                async move { store.fqdn_set_issuance_times(&identifiers, req.since).await }
            })
            .await;
        reply(times.map(|issued| sapb::IssuanceTimes { issued }))
    }

    async fn get_crl(&self, request: Request<sapb::CrlShard>) -> Reply<sapb::Crl> {
        let req = request.into_inner();
        let crl = self.read(|store| async move { store.get_crl(req.issuer_id, req.shard).await }).await;
        reply(crl.map(|crl| sapb::Crl { der: crl.der, this_update: crl.this_update, next_update: crl.next_update }))
    }

    async fn get_precertificate(&self, request: Request<sapb::Serial>) -> Reply<pb::Certificate> {
        let precertificate = self.store.get_precertificate(&request.get_ref().serial).await;
        reply(precertificate.map(|p| pb::Certificate {
            serial: p.serial,
            account_id: p.account_id,
            der: p.der,
            issued: p.issued,
            expires: p.expires,
            issuer_id: p.issuer_id,
            ..Default::default()
        }))
    }

    /// From the primary: a replica's lag would show work as stuck that has just finished.
    async fn get_stuck_work(&self, request: Request<sapb::StuckWorkRequest>) -> Reply<sapb::StuckWork> {
        let req = request.into_inner();
        let limit = req.limit.clamp(1, 1_000);
        let items = |list: Vec<StuckItem>| {
            list.into_iter().map(|item| sapb::StuckItem { id: item.id, since: item.since }).collect()
        };
        let since = |before| StuckSince { before, orphaned_before: req.orphaned_before };
        let authorizations = self.store.stuck_authorizations(since(req.authorizations_before), limit).await?;
        let orders = self.store.stuck_orders(since(req.orders_before), limit).await?;
        reply(Ok(sapb::StuckWork { authorizations: items(authorizations), orders: items(orders) }))
    }

    /// From the replica when there is one: a list has no missing row to ask the primary for, and it may be long.
    async fn get_account_orders(&self, request: Request<sapb::AccountOrdersRequest>) -> Reply<sapb::AccountOrders> {
        let req = request.into_inner();
        let page = self.read(|s| async move { s.account_orders(req.account_id, req.after_id, req.limit).await }).await;
        reply(page.map(|page| sapb::AccountOrders::from(&page)))
    }

    /// From the primary: a suite reads the answer it has just stored.
    async fn get_renewal_info_override(&self, request: Request<sapb::Serial>) -> Reply<sapb::RenewalInfoOverride> {
        let serial = request.into_inner().serial;
        let found = self.store.renewal_info_override(&serial).await;
        reply(found.map(|o| sapb::RenewalInfoOverride { serial, response: o.response, set_at: o.set_at }))
    }

    /// One connection's reads, replica first; with a replica, the blocked key is read again from the primary, as
    /// `KeyBlocked` reads it (a key blocked a moment ago must count). Asked `with_order`, the order's
    /// authorizations come with it (one read fewer), and its identifiers stand for absent ones.
    async fn get_finalization_facts(
        &self,
        request: Request<sapb::GetFinalizationFactsRequest>,
    ) -> Reply<sapb::GetFinalizationFactsResponse> {
        let req = request.into_inner();
        let question = &FinalizationQuestion {
            order_id: req.order_id,
            with_order: req.with_order,
            key_hash: req.key_hash,
            identifiers: identifiers_from_pb(&req.identifiers)?,
            renewal_since: req.renewal_since,
        };
        let mut facts = self.read(|s| async move { s.finalization_facts(question).await }).await?;
        if self.replica.is_some() {
            facts.key_blocked = self.store.key_blocked(&question.key_hash).await?;
        }
        let FinalizationFacts { order, authorizations, key_blocked, renewal } = facts;
        reply(Ok(sapb::GetFinalizationFactsResponse {
            authorizations: authorizations.iter().map(pb::Authorization::from).collect(),
            key_blocked,
            renewal,
            order: order.as_ref().map(pb::Order::from),
        }))
    }
}

#[tonic::async_trait]
impl StorageAuthority for Storage {
    async fn new_account(&self, request: Request<pb::Account>) -> Reply<pb::Account> {
        let req = request.into_inner();
        let account = Account {
            id: 0,
            jwk: req.jwk,
            status: AccountStatus::parse(&req.status).unwrap_or(AccountStatus::Valid),
            contact: req.contact,
            terms_of_service_agreed: req.terms_of_service_agreed,
            created_at: req.created_at,
            external_account_id: req.external_account_id,
        };
        let exclusive = req.external_account_exclusive;
        reply(self.store.new_account(&account, exclusive).await.map(|a| pb::Account::from(&a)))
    }

    async fn update_account_contact(&self, request: Request<sapb::UpdateAccountContactRequest>) -> Reply<pb::Account> {
        let req = request.into_inner();
        reply(self.store.update_account_contact(req.id, &req.contact).await.map(|a| pb::Account::from(&a)))
    }

    async fn update_account_key(&self, request: Request<sapb::UpdateAccountKeyRequest>) -> Reply<pb::Account> {
        let req = request.into_inner();
        reply(self.store.update_account_key(req.id, &req.jwk).await.map(|a| pb::Account::from(&a)))
    }

    async fn deactivate_account(&self, request: Request<sapb::AccountId>) -> Reply<pb::Account> {
        reply(self.store.deactivate_account(request.get_ref().id).await.map(|a| pb::Account::from(&a)))
    }

    async fn new_order_and_authorizations(
        &self,
        request: Request<sapb::NewOrderAndAuthorizationsRequest>,
    ) -> Reply<pb::Order> {
        let order = crate::requests::new_order(request.into_inner())?;
        let created = self.store.new_order_and_authorizations(&order).await;
        reply(created.map(|(order, authorizations)| created_order_to_pb(&order, &authorizations)))
    }

    async fn set_authorization_processing(
        &self,
        request: Request<sapb::SetAuthorizationProcessingRequest>,
    ) -> Reply<pb::Empty> {
        let req = request.into_inner();
        reply(
            self.store
                .set_authorization_processing(req.id, &req.attempted, req.attempted_at, &req.owner)
                .await
                .map(|()| pb::Empty {}),
        )
    }

    async fn finalize_authorization(
        &self,
        request: Request<sapb::FinalizeAuthorizationRequest>,
    ) -> Reply<sapb::FinalizeAuthorizationResponse> {
        let req = request.into_inner();
        let status = AuthorizationStatus::parse(&req.status)
            .ok_or_else(|| Problem::malformed(format!("unknown authorization status {:?}", req.status)))?;
        let outcome = ValidationOutcome {
            id: req.id,
            status,
            expires: req.expires,
            attempted: req.attempted,
            attempted_at: req.attempted_at,
            records: records_from_pb(&req.validation_records),
            error: problem_from_pb(&req.validation_error),
        };
        let recorded = self.store.finalize_authorization(&outcome).await;
        reply(recorded.map(|authz| sapb::FinalizeAuthorizationResponse { authorization: Some((&authz).into()) }))
    }

    async fn deactivate_authorization(&self, request: Request<sapb::AuthorizationId>) -> Reply<pb::Authorization> {
        reply(self.store.deactivate_authorization(request.get_ref().id).await.map(|a| pb::Authorization::from(&a)))
    }

    async fn set_order_processing(&self, request: Request<sapb::SetOrderProcessingRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        reply(self.store.set_order_processing(req.id, &req.owner).await.map(|()| pb::Empty {}))
    }

    async fn heartbeat(&self, request: Request<sapb::HeartbeatRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        if req.instance.is_empty() || req.instance.len() > 64 {
            return Err(Problem::malformed("a heartbeat names its instance in at most 64 characters").into());
        }
        reply(self.store.heartbeat(&req.instance, req.ttl_secs.min(3_600)).await.map(|()| pb::Empty {}))
    }

    async fn set_order_error(&self, request: Request<sapb::SetOrderErrorRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        let problem = problem_from_pb(&req.error).unwrap_or_else(|| Problem::internal("the order failed"));
        reply(self.store.set_order_error(req.id, &problem).await.map(|()| pb::Empty {}))
    }

    async fn finalize_order(&self, request: Request<sapb::FinalizeOrderRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        reply(self.store.finalize_order(req.id, &req.certificate_serial).await.map(|()| pb::Empty {}))
    }

    async fn add_serial(&self, request: Request<sapb::AddSerialRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        let added = self.store.add_serial(req.account_id, req.order_id, &req.serial, req.created, req.expires).await;
        reply(added.map(|()| pb::Empty {}))
    }

    async fn revoke_certificate(&self, request: Request<sapb::RevokeCertificateRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        reply(self.store.revoke_certificate(&req.serial, req.reason, req.date).await.map(|()| pb::Empty {}))
    }

    async fn pause_identifiers(&self, request: Request<sapb::PausedIdentifiersRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        let identifiers = identifiers_from_pb(&req.identifiers)?;
        let paused = self.store.pause_identifiers(req.account_id, &identifiers, quarry_core::clock::now()).await;
        reply(paused.map(|()| pb::Empty {}))
    }

    async fn add_rate_limit_override(&self, request: Request<sapb::RateLimitOverride>) -> Reply<pb::Empty> {
        let o = request.into_inner();
        let entry = RateLimitOverride {
            limit_name: o.limit,
            bucket_key: o.bucket,
            count: o.count,
            period_secs: o.period_secs,
            burst: o.burst,
            comment: o.comment,
            enabled: true,
        };
        reply(self.store.set_rate_limit_override(&entry, quarry_core::clock::now()).await.map(|()| pb::Empty {}))
    }

    async fn disable_rate_limit_override(&self, request: Request<sapb::RateLimitOverrideKey>) -> Reply<pb::Empty> {
        let key = request.get_ref();
        let disabled = self.store.disable_rate_limit_override(&key.limit, &key.bucket, quarry_core::clock::now()).await;
        reply(disabled.map(|()| pb::Empty {}))
    }

    async fn unpause_account(&self, request: Request<sapb::AccountId>) -> Reply<sapb::Count> {
        let unpaused = self.store.unpause_account(request.get_ref().id, quarry_core::clock::now()).await;
        reply(unpaused.map(|count| sapb::Count { count: i64::try_from(count).unwrap_or(i64::MAX) }))
    }

    async fn lease_crl_shard(
        &self,
        request: Request<sapb::LeaseCrlShardRequest>,
    ) -> Reply<sapb::LeaseCrlShardResponse> {
        let req = request.into_inner();
        if req.shard_count < 1 {
            return Err(Problem::malformed("shard_count must be at least 1").into());
        }
        self.store.check_crl_shard_count(req.shard_count).map_err(Status::from)?;
        let now = quarry_core::clock::now();
        let stale_before = if req.stale_before == 0 { i64::MAX } else { req.stale_before };
        let leased = self
            .store
            .lease_crl_shard(req.issuer_id, req.shard_count, now, req.until, req.updated_before, stale_before)
            .await;
        reply(leased.map(|lease| sapb::LeaseCrlShardResponse {
            leased: lease.is_some(),
            shard: lease.map_or(0, |l| l.idx),
            revocations_pending: lease.map_or(0, |l| l.revocations_pending),
        }))
    }

    async fn update_crl_shard(&self, request: Request<sapb::UpdateCrlShardRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        let updated = self.store.update_crl_shard(
            req.issuer_id,
            req.shard,
            req.this_update,
            req.next_update,
            &req.der,
            req.revocations_seen,
        );
        reply(updated.await.map(|()| pb::Empty {}))
    }

    async fn add_blocked_key(&self, request: Request<sapb::AddBlockedKeyRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        reply(self.store.add_blocked_key(&req.key_hash, &req.source, &req.comment).await.map(|()| pb::Empty {}))
    }

    async fn revoke_for_key_compromise(
        &self,
        request: Request<sapb::RevokeForKeyCompromiseRequest>,
    ) -> Reply<sapb::RevokeForKeyCompromiseResponse> {
        use crate::store::KeyCompromise;
        use sapb::revoke_for_key_compromise_response::Outcome;
        let req = request.into_inner();
        reply(self.store.revoke_for_key_compromise(&req.serial, req.date).await.map(|outcome| {
            let outcome = match outcome {
                KeyCompromise::Revoked => Outcome::Revoked,
                KeyCompromise::Upgraded => Outcome::Upgraded,
                KeyCompromise::Already => Outcome::Already,
            };
            sapb::RevokeForKeyCompromiseResponse { outcome: outcome.into() }
        }))
    }

    async fn get_unchecked_blocked_keys(
        &self,
        request: Request<sapb::UncheckedBlockedKeysRequest>,
    ) -> Reply<sapb::KeyHashes> {
        let limit = request.get_ref().limit;
        reply(self.store.unchecked_blocked_keys(limit).await.map(|key_hashes| sapb::KeyHashes { key_hashes }))
    }

    async fn get_serials_by_key(&self, request: Request<sapb::SerialsByKeyRequest>) -> Reply<sapb::Serials> {
        let req = request.get_ref();
        reply(self.store.serials_by_key(&req.key_hash, req.now).await.map(|serials| sapb::Serials { serials }))
    }

    async fn mark_blocked_key_checked(&self, request: Request<sapb::MarkBlockedKeyCheckedRequest>) -> Reply<pb::Empty> {
        let req = request.get_ref();
        reply(self.store.mark_blocked_key_checked(&req.key_hash, req.added_before).await.map(|()| pb::Empty {}))
    }

    async fn add_precertificate(&self, request: Request<sapb::AddCertificateRequest>) -> Reply<pb::Empty> {
        let req = request.into_inner();
        let stored = if req.expires == 0 {
            // An older ca, which reserved the serial with AddSerial.
            self.store.add_precertificate(req.account_id, &req.der, req.issued, req.issuer_id).await
        } else {
            let reservation = SerialReservation {
                order_id: req.order_id,
                expires: req.expires,
                processing_by: Some(req.processing_by.as_str()).filter(|by| !by.is_empty()),
            };
            self.store
                .reserve_and_add_precertificate(req.account_id, &req.der, req.issued, req.issuer_id, reservation)
                .await
        };
        reply(stored.map(|_| pb::Empty {}))
    }

    async fn claim_stuck_authorization(
        &self,
        request: Request<sapb::ClaimStuckRequest>,
    ) -> Reply<sapb::ClaimedAuthorization> {
        let req = request.into_inner();
        let claimed = self.store.claim_stuck_authorization(req.id, req.since, &req.owner).await;
        reply(claimed.map(|recoveries| sapb::ClaimedAuthorization {
            claimed: recoveries.is_some(),
            recoveries: recoveries.unwrap_or_default(),
        }))
    }

    async fn claim_stuck_order(&self, request: Request<sapb::ClaimStuckRequest>) -> Reply<sapb::ClaimedOrder> {
        let req = request.into_inner();
        let claimed = self.store.claim_stuck_order(req.id, req.since, &req.owner).await;
        reply(claimed.map(|serial| sapb::ClaimedOrder {
            claimed: serial.is_some(),
            precertificate_serial: serial.flatten().unwrap_or_default(),
        }))
    }

    async fn get_order_precertificate(&self, request: Request<sapb::OrderId>) -> Reply<sapb::Serial> {
        let precertificate = self.store.order_precertificate(request.get_ref().id).await;
        reply(precertificate.map(|serial| sapb::Serial { serial: serial.unwrap_or_default() }))
    }

    async fn set_renewal_info_override(&self, request: Request<sapb::RenewalInfoOverride>) -> Reply<pb::Empty> {
        if !self.client_testing.renewal_info_overrides {
            return Err(Problem::unauthorized(
                "this sa takes no renewal-information overrides: they are for client test suites against quarry dev \
                 ([client_testing] renewal_info_overrides)",
            )
            .into());
        }
        let req = request.into_inner();
        if req.response.len() > MAX_RENEWAL_INFO_OVERRIDE_BYTES {
            return Err(Problem::malformed(format!(
                "a renewal-information override is at most {MAX_RENEWAL_INFO_OVERRIDE_BYTES} bytes"
            ))
            .into());
        }
        let stored = self.store.set_renewal_info_override(&req.serial, &req.response, quarry_core::clock::now()).await;
        reply(stored.map(|()| pb::Empty {}))
    }

    async fn add_certificate(
        &self,
        request: Request<sapb::AddCertificateRequest>,
    ) -> Reply<sapb::AddCertificateResponse> {
        let req = request.into_inner();
        let stored =
            self.store.add_certificate_for_order(req.account_id, req.order_id, &req.der, req.issued, req.issuer_id);
        reply(stored.await.map(|stored| sapb::AddCertificateResponse { order_finalized: stored.order_finalized }))
    }
}
