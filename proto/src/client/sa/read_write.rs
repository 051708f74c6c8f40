//! The sa client's calls to `quarry.sa.v1.StorageAuthority`: writes, and the reads that must see them.

use quarry_core::Problem;
use quarry_core::model::{Authorization, Order};

use super::{Deadline, SaClient};
use crate::client::rpc;
use crate::core as pb;
use crate::sa::storage_authority_client::StorageAuthorityClient as Rw;
use crate::sa::*;

impl SaClient {
    pub async fn new_account(&self, account: pb::Account, deadline: Deadline) -> Result<pb::Account, Problem> {
        rpc!(self.peer, Rw, new_account, "/quarry.sa.v1.StorageAuthority/NewAccount", account, deadline)
    }

    pub async fn update_account_contact(
        &self,
        request: UpdateAccountContactRequest,
        deadline: Deadline,
    ) -> Result<pb::Account, Problem> {
        rpc!(
            self.peer,
            Rw,
            update_account_contact,
            "/quarry.sa.v1.StorageAuthority/UpdateAccountContact",
            request,
            deadline
        )
    }

    pub async fn deactivate_account(&self, id: i64, deadline: Deadline) -> Result<pb::Account, Problem> {
        rpc!(
            self.peer,
            Rw,
            deactivate_account,
            "/quarry.sa.v1.StorageAuthority/DeactivateAccount",
            AccountId { id },
            deadline
        )
    }

    pub async fn update_account_key(
        &self,
        request: UpdateAccountKeyRequest,
        deadline: Deadline,
    ) -> Result<pb::Account, Problem> {
        rpc!(self.peer, Rw, update_account_key, "/quarry.sa.v1.StorageAuthority/UpdateAccountKey", request, deadline)
    }

    /// The new order, and its authorizations as the sa recorded them (none from an sa that predates
    /// `Order.authorizations`).
    pub async fn new_order_and_authorizations(
        &self,
        request: NewOrderAndAuthorizationsRequest,
        deadline: Deadline,
    ) -> Result<(Order, Vec<Authorization>), Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            new_order_and_authorizations,
            "/quarry.sa.v1.StorageAuthority/NewOrderAndAuthorizations",
            request,
            deadline
        )?;
        let authorizations = reply.authorizations.iter().map(Authorization::try_from).collect::<Result<_, _>>()?;
        Ok((Order::try_from(&reply)?, authorizations))
    }

    pub async fn set_authorization_processing(
        &self,
        request: SetAuthorizationProcessingRequest,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(
            self.peer,
            Rw,
            set_authorization_processing,
            "/quarry.sa.v1.StorageAuthority/SetAuthorizationProcessing",
            request,
            deadline
        )
        .map(drop)
    }

    /// Records a validation's outcome; the authorization as recorded, or `None` from an older sa (which answers
    /// `Empty`).
    pub async fn finalize_authorization(
        &self,
        request: FinalizeAuthorizationRequest,
        deadline: Deadline,
    ) -> Result<Option<pb::Authorization>, Problem> {
        rpc!(
            self.peer,
            Rw,
            finalize_authorization,
            "/quarry.sa.v1.StorageAuthority/FinalizeAuthorization",
            request,
            deadline
        )
        .map(|reply| reply.authorization)
    }

    pub async fn deactivate_authorization(&self, id: i64, deadline: Deadline) -> Result<pb::Authorization, Problem> {
        rpc!(
            self.peer,
            Rw,
            deactivate_authorization,
            "/quarry.sa.v1.StorageAuthority/DeactivateAuthorization",
            AuthorizationId { id },
            deadline
        )
    }

    /// Starts finalization by `owner` (an ra replica's heartbeat instance).
    pub async fn set_order_processing(&self, id: i64, owner: &str, deadline: Deadline) -> Result<(), Problem> {
        let request = SetOrderProcessingRequest { id, owner: owner.to_owned() };
        rpc!(
            self.peer,
            Rw,
            set_order_processing,
            "/quarry.sa.v1.StorageAuthority/SetOrderProcessing",
            request,
            deadline
        )
        .map(drop)
    }

    /// Says that ra replica `instance` is alive for `ttl_secs` more; 0 says it is gone.
    pub async fn heartbeat(&self, instance: &str, ttl_secs: i64, deadline: Deadline) -> Result<(), Problem> {
        let request = HeartbeatRequest { instance: instance.to_owned(), ttl_secs };
        rpc!(self.peer, Rw, heartbeat, "/quarry.sa.v1.StorageAuthority/Heartbeat", request, deadline).map(drop)
    }

    pub async fn set_order_error(&self, id: i64, error: &Problem, deadline: Deadline) -> Result<(), Problem> {
        let request = SetOrderErrorRequest { id, error: Some(pb::Problem::from(error)) };
        rpc!(self.peer, Rw, set_order_error, "/quarry.sa.v1.StorageAuthority/SetOrderError", request, deadline)
            .map(drop)
    }

    /// Records the certificate of a processing order.
    pub async fn finalize_order(&self, id: i64, serial: &str, deadline: Deadline) -> Result<(), Problem> {
        let request = FinalizeOrderRequest { id, certificate_serial: serial.to_owned() };
        rpc!(self.peer, Rw, finalize_order, "/quarry.sa.v1.StorageAuthority/FinalizeOrder", request, deadline).map(drop)
    }

    pub async fn add_serial(&self, request: AddSerialRequest, deadline: Deadline) -> Result<(), Problem> {
        rpc!(self.peer, Rw, add_serial, "/quarry.sa.v1.StorageAuthority/AddSerial", request, deadline).map(drop)
    }

    /// Stores a precertificate's linting copy; with `expires` set, reserving its serial for `order_id` too.
    pub async fn add_precertificate(&self, request: AddCertificateRequest, deadline: Deadline) -> Result<(), Problem> {
        rpc!(self.peer, Rw, add_precertificate, "/quarry.sa.v1.StorageAuthority/AddPrecertificate", request, deadline)
            .map(drop)
    }

    /// Stores a final certificate; `true` when the request's `order_id` now has it (the order is valid).
    pub async fn add_certificate(&self, request: AddCertificateRequest, deadline: Deadline) -> Result<bool, Problem> {
        rpc!(self.peer, Rw, add_certificate, "/quarry.sa.v1.StorageAuthority/AddCertificate", request, deadline)
            .map(|reply| reply.order_finalized)
    }

    pub async fn revoke_certificate(
        &self,
        request: RevokeCertificateRequest,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(self.peer, Rw, revoke_certificate, "/quarry.sa.v1.StorageAuthority/RevokeCertificate", request, deadline)
            .map(drop)
    }

    pub async fn add_blocked_key(&self, request: AddBlockedKeyRequest, deadline: Deadline) -> Result<(), Problem> {
        rpc!(self.peer, Rw, add_blocked_key, "/quarry.sa.v1.StorageAuthority/AddBlockedKey", request, deadline)
            .map(drop)
    }

    pub async fn revoke_for_key_compromise(
        &self,
        request: RevokeForKeyCompromiseRequest,
        deadline: Deadline,
    ) -> Result<revoke_for_key_compromise_response::Outcome, Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            revoke_for_key_compromise,
            "/quarry.sa.v1.StorageAuthority/RevokeForKeyCompromise",
            request,
            deadline
        )?;
        Ok(reply.outcome())
    }

    pub async fn get_unchecked_blocked_keys(&self, limit: i64, deadline: Deadline) -> Result<Vec<Vec<u8>>, Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            get_unchecked_blocked_keys,
            "/quarry.sa.v1.StorageAuthority/GetUncheckedBlockedKeys",
            UncheckedBlockedKeysRequest { limit },
            deadline
        )?;
        Ok(reply.key_hashes)
    }

    pub async fn get_serials_by_key(
        &self,
        request: SerialsByKeyRequest,
        deadline: Deadline,
    ) -> Result<Vec<String>, Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            get_serials_by_key,
            "/quarry.sa.v1.StorageAuthority/GetSerialsByKey",
            request,
            deadline
        )?;
        Ok(reply.serials)
    }

    pub async fn mark_blocked_key_checked(
        &self,
        request: MarkBlockedKeyCheckedRequest,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(
            self.peer,
            Rw,
            mark_blocked_key_checked,
            "/quarry.sa.v1.StorageAuthority/MarkBlockedKeyChecked",
            request,
            deadline
        )
        .map(drop)
    }

    pub async fn lease_crl_shard(
        &self,
        request: LeaseCrlShardRequest,
        deadline: Deadline,
    ) -> Result<LeaseCrlShardResponse, Problem> {
        rpc!(self.peer, Rw, lease_crl_shard, "/quarry.sa.v1.StorageAuthority/LeaseCrlShard", request, deadline)
    }

    pub async fn pause_identifiers(
        &self,
        request: PausedIdentifiersRequest,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(self.peer, Rw, pause_identifiers, "/quarry.sa.v1.StorageAuthority/PauseIdentifiers", request, deadline)
            .map(drop)
    }

    /// Unpauses everything paused for the account; how many identifiers were.
    pub async fn unpause_account(&self, account_id: i64, deadline: Deadline) -> Result<i64, Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            unpause_account,
            "/quarry.sa.v1.StorageAuthority/UnpauseAccount",
            AccountId { id: account_id },
            deadline
        )?;
        Ok(reply.count)
    }

    pub async fn update_crl_shard(&self, request: UpdateCrlShardRequest, deadline: Deadline) -> Result<(), Problem> {
        rpc!(self.peer, Rw, update_crl_shard, "/quarry.sa.v1.StorageAuthority/UpdateCrlShard", request, deadline)
            .map(drop)
    }

    pub async fn add_rate_limit_override(&self, request: RateLimitOverride, deadline: Deadline) -> Result<(), Problem> {
        rpc!(
            self.peer,
            Rw,
            add_rate_limit_override,
            "/quarry.sa.v1.StorageAuthority/AddRateLimitOverride",
            request,
            deadline
        )
        .map(drop)
    }

    /// Takes a stuck validation over for `owner`: `None` when another caller did first; else how often it was taken
    /// over before.
    pub async fn claim_stuck_authorization(
        &self,
        item: StuckItem,
        owner: &str,
        deadline: Deadline,
    ) -> Result<Option<i64>, Problem> {
        let request = ClaimStuckRequest { id: item.id, since: item.since, owner: owner.to_owned() };
        let claimed = rpc!(
            self.peer,
            Rw,
            claim_stuck_authorization,
            "/quarry.sa.v1.StorageAuthority/ClaimStuckAuthorization",
            request,
            deadline
        )?;
        Ok(claimed.claimed.then_some(claimed.recoveries))
    }

    /// Takes a stuck order over for `owner`: `None` when another caller did first; else the serial of its
    /// precertificate, if one was stored.
    pub async fn claim_stuck_order(
        &self,
        item: StuckItem,
        owner: &str,
        deadline: Deadline,
    ) -> Result<Option<Option<String>>, Problem> {
        let request = ClaimStuckRequest { id: item.id, since: item.since, owner: owner.to_owned() };
        let claimed = rpc!(
            self.peer,
            Rw,
            claim_stuck_order,
            "/quarry.sa.v1.StorageAuthority/ClaimStuckOrder",
            request,
            deadline
        )?;
        Ok(claimed.claimed.then(|| Some(claimed.precertificate_serial).filter(|serial| !serial.is_empty())))
    }

    /// The serial of the precertificate stored for order `id`, if one was.
    pub async fn get_order_precertificate(&self, id: i64, deadline: Deadline) -> Result<Option<String>, Problem> {
        let reply = rpc!(
            self.peer,
            Rw,
            get_order_precertificate,
            "/quarry.sa.v1.StorageAuthority/GetOrderPrecertificate",
            OrderId { id },
            deadline
        )?;
        Ok(Some(reply.serial).filter(|serial| !serial.is_empty()))
    }

    /// Stores `response` as the renewal-information answer of the certificate `serial`; an empty one removes it.
    /// Refused (`unauthorized`) by an sa whose `[client_testing]` does not take overrides; `notFound` when no
    /// certificate has the serial.
    pub async fn set_renewal_info_override(
        &self,
        serial: &str,
        response: &str,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        let request = RenewalInfoOverride { serial: serial.to_owned(), response: response.to_owned(), set_at: 0 };
        rpc!(
            self.peer,
            Rw,
            set_renewal_info_override,
            "/quarry.sa.v1.StorageAuthority/SetRenewalInfoOverride",
            request,
            deadline
        )
        .map(drop)
    }

    pub async fn disable_rate_limit_override(
        &self,
        request: RateLimitOverrideKey,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(
            self.peer,
            Rw,
            disable_rate_limit_override,
            "/quarry.sa.v1.StorageAuthority/DisableRateLimitOverride",
            request,
            deadline
        )
        .map(drop)
    }
}
