//! The RegistrationAuthority gRPC service: each call hands its request and deadline to its use case.

use quarry_core::grpc::incoming_deadline;
use quarry_proto::convert::created_order_to_pb;
use quarry_proto::core as pb;
use quarry_proto::ra::registration_authority_server::RegistrationAuthority;
use quarry_proto::ra::{
    DeactivateAccountRequest, DeactivateAuthorizationRequest, FinalizeOrderRequest, NewOrderRequest,
    PerformValidationRequest, RevokeCertByApplicantRequest, RevokeCertByKeyRequest, UpdateAccountContactRequest,
    UpdateAccountKeyRequest,
};
use tonic::{Request, Response, Status};

use crate::registrar::Registrar;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RegistrationAuthority for Registrar {
    async fn new_account(&self, request: Request<pb::Account>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        let client_ip = quarry_core::grpc::client_ip(&request);
        Ok(Response::new(self.new_account(request.into_inner(), client_ip, deadline).await?))
    }

    async fn update_account_contact(&self, request: Request<UpdateAccountContactRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        Ok(Response::new(self.update_account_contact(request.into_inner(), deadline).await?))
    }

    async fn update_account_key(&self, request: Request<UpdateAccountKeyRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        Ok(Response::new(self.update_account_key(request.into_inner(), deadline).await?))
    }

    async fn deactivate_account(&self, request: Request<DeactivateAccountRequest>) -> Reply<pb::Account> {
        let deadline = incoming_deadline(&request);
        Ok(Response::new(self.deactivate_account(request.into_inner(), deadline).await?))
    }

    async fn new_order(&self, request: Request<NewOrderRequest>) -> Reply<pb::Order> {
        let deadline = incoming_deadline(&request);
        let (order, authorizations) = self.new_order(request.into_inner(), deadline).await?;
        Ok(Response::new(created_order_to_pb(&order, &authorizations)))
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
        Ok(Response::new(self.deactivate_authorization(request.into_inner(), deadline).await?))
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
        let (order, certificate_der) = self.finalize_order(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::Order { certificate_der: certificate_der.unwrap_or_default(), ..pb::Order::from(&order) }))
    }
}
