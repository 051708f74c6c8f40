//! The sa client's calls to `quarry.sa.v1.StorageAuthorityReadOnly`: reads, which any replica (or its read
//! replica) may answer.

use quarry_core::Problem;
use quarry_core::model::{Account, Authorization, NewOrderFacts, Order, OrderPage};
use tonic::codec::Streaming;

use super::{Deadline, FinalizationFacts, SaClient};
use crate::client::{rpc, unless_unimplemented};
use crate::core as pb;
use crate::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient as Ro;
use crate::sa::*;

impl SaClient {
    pub async fn get_account(&self, id: i64, deadline: Deadline) -> Result<Account, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_account,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetAccount",
            AccountId { id },
            deadline
        )?;
        Account::try_from(&reply)
    }

    /// The account of a JSON JWK (canonical form); `notFound` when the key has none.
    pub async fn get_account_by_key(&self, jwk: Vec<u8>, deadline: Deadline) -> Result<Account, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_account_by_key,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetAccountByKey",
            AccountKey { jwk },
            deadline
        )?;
        Account::try_from(&reply)
    }

    pub async fn get_order(&self, id: i64, deadline: Deadline) -> Result<Order, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_order,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetOrder",
            OrderId { id },
            deadline
        )?;
        Order::try_from(&reply)
    }

    /// The newest pending or ready order of the account for exactly these identifiers; `notFound` when none.
    pub async fn get_order_for_names(
        &self,
        request: GetOrderForNamesRequest,
        deadline: Deadline,
    ) -> Result<Order, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_order_for_names,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetOrderForNames",
            request,
            deadline
        )?;
        Order::try_from(&reply)
    }

    /// What a new order depends on, in one call: the account's reusable order (the whole answer when there is one),
    /// else the paused identifiers, whether it is a renewal, and the valid authorizations it may reuse.
    pub async fn get_new_order_facts(
        &self,
        request: NewOrderFactsRequest,
        deadline: Deadline,
    ) -> Result<Option<NewOrderFacts>, Problem> {
        const PATH: &str = "/quarry.sa.v1.StorageAuthorityReadOnly/GetNewOrderFacts";
        let reply = self
            .peer
            .call(PATH, crate::client::idempotence(PATH), &request, deadline, |channel, request| async move {
                Ro::new(channel).get_new_order_facts(request).await
            })
            .await;
        unless_unimplemented(reply)?.as_ref().map(NewOrderFacts::try_from).transpose()
    }

    pub async fn get_authorization(&self, id: i64, deadline: Deadline) -> Result<Authorization, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_authorization,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetAuthorization",
            AuthorizationId { id },
            deadline
        )?;
        Authorization::try_from(&reply)
    }

    pub async fn get_order_authorizations(&self, id: i64, deadline: Deadline) -> Result<Vec<Authorization>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_order_authorizations,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetOrderAuthorizations",
            OrderId { id },
            deadline
        )?;
        reply.authorizations.iter().map(Authorization::try_from).collect()
    }

    pub async fn get_valid_authorizations(
        &self,
        request: GetValidAuthorizationsRequest,
        deadline: Deadline,
    ) -> Result<Vec<Authorization>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_valid_authorizations,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetValidAuthorizations",
            request,
            deadline
        )?;
        reply.authorizations.iter().map(Authorization::try_from).collect()
    }

    pub async fn get_certificate(&self, serial: &str, deadline: Deadline) -> Result<pb::Certificate, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        rpc!(self.peer, Ro, get_certificate, "/quarry.sa.v1.StorageAuthorityReadOnly/GetCertificate", serial, deadline)
    }

    pub async fn get_certificate_status(
        &self,
        serial: &str,
        deadline: Deadline,
    ) -> Result<pb::CertificateStatus, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        rpc!(
            self.peer,
            Ro,
            get_certificate_status,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetCertificateStatus",
            serial,
            deadline
        )
    }

    /// Whether the key with this SPKI hash is blocked.
    pub async fn key_blocked(&self, key_hash: Vec<u8>, deadline: Deadline) -> Result<bool, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            key_blocked,
            "/quarry.sa.v1.StorageAuthorityReadOnly/KeyBlocked",
            KeyHash { key_hash },
            deadline
        )?;
        Ok(reply.exists)
    }

    pub async fn serial_exists(&self, serial: &str, deadline: Deadline) -> Result<bool, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        let reply = rpc!(
            self.peer,
            Ro,
            serial_exists,
            "/quarry.sa.v1.StorageAuthorityReadOnly/SerialExists",
            serial,
            deadline
        )?;
        Ok(reply.exists)
    }

    pub async fn replacement_order_exists(&self, serial: &str, deadline: Deadline) -> Result<bool, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        let reply = rpc!(
            self.peer,
            Ro,
            replacement_order_exists,
            "/quarry.sa.v1.StorageAuthorityReadOnly/ReplacementOrderExists",
            serial,
            deadline
        )?;
        Ok(reply.exists)
    }

    pub async fn get_revoked_certificates(
        &self,
        request: GetRevokedCertificatesRequest,
        deadline: Deadline,
    ) -> Result<Streaming<RevokedCertificate>, Problem> {
        rpc!(
            self.peer,
            Ro,
            get_revoked_certificates,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetRevokedCertificates",
            request,
            deadline
        )
    }

    pub async fn get_crl(&self, shard: CrlShard, deadline: Deadline) -> Result<Crl, Problem> {
        rpc!(self.peer, Ro, get_crl, "/quarry.sa.v1.StorageAuthorityReadOnly/GetCrl", shard, deadline)
    }

    /// Which of the identifiers are paused for the account.
    pub async fn check_identifiers_paused(
        &self,
        request: PausedIdentifiersRequest,
        deadline: Deadline,
    ) -> Result<Vec<pb::Identifier>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            check_identifiers_paused,
            "/quarry.sa.v1.StorageAuthorityReadOnly/CheckIdentifiersPaused",
            request,
            deadline
        )?;
        Ok(reply.identifiers)
    }

    pub async fn get_paused_identifiers(
        &self,
        account_id: i64,
        deadline: Deadline,
    ) -> Result<Vec<pb::Identifier>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_paused_identifiers,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetPausedIdentifiers",
            AccountId { id: account_id },
            deadline
        )?;
        Ok(reply.identifiers)
    }

    pub async fn get_enabled_rate_limit_overrides(
        &self,
        deadline: Deadline,
    ) -> Result<Vec<RateLimitOverride>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            get_enabled_rate_limit_overrides,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetEnabledRateLimitOverrides",
            pb::Empty {},
            deadline
        )?;
        Ok(reply.overrides)
    }

    /// When certificates for exactly these identifiers were issued since `since`, newest first.
    pub async fn fqdn_set_issuance_times(
        &self,
        request: FqdnSetIssuanceTimesRequest,
        deadline: Deadline,
    ) -> Result<Vec<i64>, Problem> {
        let reply = rpc!(
            self.peer,
            Ro,
            fqdn_set_issuance_times,
            "/quarry.sa.v1.StorageAuthorityReadOnly/FqdnSetIssuanceTimes",
            request,
            deadline
        )?;
        Ok(reply.issued)
    }

    /// A stored precertificate (its linting copy) by serial.
    pub async fn get_precertificate(&self, serial: &str, deadline: Deadline) -> Result<pb::Certificate, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        rpc!(
            self.peer,
            Ro,
            get_precertificate,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetPrecertificate",
            serial,
            deadline
        )
    }

    /// Validations begun and orders processing longer ago than the deadlines: work a crash may have interrupted.
    pub async fn get_stuck_work(&self, request: StuckWorkRequest, deadline: Deadline) -> Result<StuckWork, Problem> {
        rpc!(self.peer, Ro, get_stuck_work, "/quarry.sa.v1.StorageAuthorityReadOnly/GetStuckWork", request, deadline)
    }

    /// The renewal-information answer a client test suite stored for the certificate `serial` (quarry dev only), or
    /// `None` when there is none.
    pub async fn get_renewal_info_override(&self, serial: &str, deadline: Deadline) -> Result<Option<String>, Problem> {
        let serial = Serial { serial: serial.to_owned() };
        let found = rpc!(
            self.peer,
            Ro,
            get_renewal_info_override,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetRenewalInfoOverride",
            serial,
            deadline
        );
        match found {
            Ok(stored) => Ok(Some(stored.response)),
            Err(problem) if problem.kind == quarry_core::ErrorKind::NotFound => Ok(None),
            Err(problem) => Err(problem),
        }
    }

    /// One page of the account's orders list: the ids of its orders that are not invalid, after `after_id`
    /// (0 from the start), at most `limit` (1 to 1000), ascending.
    pub async fn get_account_orders(
        &self,
        account_id: i64,
        after_id: i64,
        limit: i64,
        deadline: Deadline,
    ) -> Result<OrderPage, Problem> {
        let request = AccountOrdersRequest { account_id, after_id, limit };
        let page = rpc!(
            self.peer,
            Ro,
            get_account_orders,
            "/quarry.sa.v1.StorageAuthorityReadOnly/GetAccountOrders",
            request,
            deadline
        )?;
        Ok(OrderPage::from(&page))
    }

    /// What finalizing order `order_id` checks in one read: its authorizations, whether the key with hash `key_hash`
    /// is blocked, and whether a certificate for exactly `identifiers` (empty: the order's) was issued since
    /// `renewal_since`; with the order itself when `with_order`. `None` when the sa predates the call
    /// (`unimplemented`, during a rolling update): the caller asks the reads it replaces instead.
    pub async fn get_finalization_facts(
        &self,
        order_id: i64,
        key_hash: Vec<u8>,
        identifiers: &[quarry_core::Identifier],
        renewal_since: i64,
        with_order: bool,
        deadline: Deadline,
    ) -> Result<Option<FinalizationFacts>, Problem> {
        const PATH: &str = "/quarry.sa.v1.StorageAuthorityReadOnly/GetFinalizationFacts";
        let request = GetFinalizationFactsRequest {
            order_id,
            key_hash,
            identifiers: crate::convert::identifiers_to_pb(identifiers),
            renewal_since,
            with_order,
        };
        let reply = self
            .peer
            .call(PATH, crate::client::idempotence(PATH), &request, deadline, |channel, request| async move {
                Ro::new(channel).get_finalization_facts(request).await
            })
            .await;
        let Some(reply) = unless_unimplemented(reply)? else { return Ok(None) };
        Ok(Some(FinalizationFacts {
            authorizations: reply.authorizations.iter().map(Authorization::try_from).collect::<Result<_, _>>()?,
            key_blocked: reply.key_blocked,
            renewal: reply.renewal,
            order: reply.order.as_ref().map(Order::try_from).transpose()?,
        }))
    }
}
