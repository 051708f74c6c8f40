//! The registration authority's client (the wfe's, and the operator's).

use std::net::IpAddr;
use std::time::Instant;

use quarry_core::Problem;
use quarry_core::peer::Peer;

use crate::client::{idempotence, rpc};
use crate::core as pb;
use crate::ra::registration_authority_client::RegistrationAuthorityClient as Ra;
use crate::ra::*;

/// The ra, through every replica.
#[derive(Clone, Debug)]
pub struct RaClient {
    peer: Peer,
}

type Deadline = Option<Instant>;

impl RaClient {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Registers an account for `client_ip` (the per-IP registration limits count it).
    pub async fn new_account(
        &self,
        account: pb::Account,
        client_ip: Option<IpAddr>,
        deadline: Deadline,
    ) -> Result<pb::Account, Problem> {
        const PATH: &str = "/quarry.ra.v1.RegistrationAuthority/NewAccount";
        self.peer
            .call(PATH, idempotence(PATH), &account, deadline, |channel, mut request| {
                if let Some(ip) = client_ip {
                    quarry_core::grpc::set_client_ip(&mut request, ip);
                }
                async move { Ra::new(channel).new_account(request).await }
            })
            .await
            .map_err(Problem::from)
    }

    pub async fn update_account_contact(
        &self,
        request: UpdateAccountContactRequest,
        deadline: Deadline,
    ) -> Result<pb::Account, Problem> {
        rpc!(
            self.peer,
            Ra,
            update_account_contact,
            "/quarry.ra.v1.RegistrationAuthority/UpdateAccountContact",
            request,
            deadline
        )
    }

    pub async fn deactivate_account(&self, account_id: i64, deadline: Deadline) -> Result<pb::Account, Problem> {
        let request = DeactivateAccountRequest { account_id };
        rpc!(
            self.peer,
            Ra,
            deactivate_account,
            "/quarry.ra.v1.RegistrationAuthority/DeactivateAccount",
            request,
            deadline
        )
    }

    pub async fn update_account_key(
        &self,
        request: UpdateAccountKeyRequest,
        deadline: Deadline,
    ) -> Result<pb::Account, Problem> {
        rpc!(
            self.peer,
            Ra,
            update_account_key,
            "/quarry.ra.v1.RegistrationAuthority/UpdateAccountKey",
            request,
            deadline
        )
    }

    /// Creates (or reuses) an order.
    pub async fn new_order(&self, request: NewOrderRequest, deadline: Deadline) -> Result<pb::Order, Problem> {
        rpc!(self.peer, Ra, new_order, "/quarry.ra.v1.RegistrationAuthority/NewOrder", request, deadline)
    }

    pub async fn perform_validation(
        &self,
        request: PerformValidationRequest,
        deadline: Deadline,
    ) -> Result<pb::Authorization, Problem> {
        rpc!(
            self.peer,
            Ra,
            perform_validation,
            "/quarry.ra.v1.RegistrationAuthority/PerformValidation",
            request,
            deadline
        )
    }

    pub async fn deactivate_authorization(
        &self,
        request: DeactivateAuthorizationRequest,
        deadline: Deadline,
    ) -> Result<pb::Authorization, Problem> {
        rpc!(
            self.peer,
            Ra,
            deactivate_authorization,
            "/quarry.ra.v1.RegistrationAuthority/DeactivateAuthorization",
            request,
            deadline
        )
    }

    pub async fn finalize_order(
        &self,
        request: FinalizeOrderRequest,
        deadline: Deadline,
    ) -> Result<pb::Order, Problem> {
        rpc!(self.peer, Ra, finalize_order, "/quarry.ra.v1.RegistrationAuthority/FinalizeOrder", request, deadline)
    }

    pub async fn revoke_cert_by_applicant(
        &self,
        request: RevokeCertByApplicantRequest,
        deadline: Deadline,
    ) -> Result<(), Problem> {
        rpc!(
            self.peer,
            Ra,
            revoke_cert_by_applicant,
            "/quarry.ra.v1.RegistrationAuthority/RevokeCertByApplicant",
            request,
            deadline
        )
        .map(drop)
    }

    pub async fn revoke_cert_by_key(&self, der: Vec<u8>, deadline: Deadline) -> Result<(), Problem> {
        let request = RevokeCertByKeyRequest { der };
        rpc!(
            self.peer,
            Ra,
            revoke_cert_by_key,
            "/quarry.ra.v1.RegistrationAuthority/RevokeCertByKey",
            request,
            deadline
        )
        .map(drop)
    }
}
