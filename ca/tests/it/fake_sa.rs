//! A stand-in for the sa's read-write service that records what the ca reserves and stores, and can be told to
//! refuse serials as duplicates, to fail storage, or to answer as an sa that predates reserving a serial with its
//! precertificate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quarry_core::grpc::ClientAllowlist;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::core::{Account, Empty, Order};
use quarry_proto::sa::storage_authority_server::{StorageAuthority, StorageAuthorityServer};
use quarry_proto::sa::{
    AddCertificateRequest, AddCertificateResponse, AddSerialRequest, FinalizeAuthorizationRequest,
    FinalizeOrderRequest, NewOrderAndAuthorizationsRequest, SetAuthorizationProcessingRequest, SetOrderErrorRequest,
};
use quarry_testkit::pki::TestPki;
use tonic::{Request, Response, Status};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// What the fake saw; refused reservations and precertificates are recorded too.
#[derive(Debug, Default)]
pub struct Recorded {
    /// AddSerial calls: the ca makes them only for an older sa.
    pub serial_attempts: Vec<AddSerialRequest>,
    pub serials: Vec<AddSerialRequest>,
    pub precertificate_attempts: Vec<AddCertificateRequest>,
    pub precertificates: Vec<AddCertificateRequest>,
    pub certificates: Vec<AddCertificateRequest>,
}

#[derive(Debug, Default)]
pub struct FakeSa {
    pub recorded: Mutex<Recorded>,
    /// How many upcoming serial reservations (AddPrecertificate with `expires`, or AddSerial) answer `duplicate`.
    pub duplicates: AtomicUsize,
    /// How many upcoming AddCertificate calls answer `unavailable`.
    pub storage_failures: AtomicUsize,
    /// Answer as an sa that predates reserving a serial with its precertificate: AddPrecertificate ignores `expires`
    /// and `order_id` and wants the serial reserved by AddSerial, and AddCertificate's answer lacks `order_finalized`.
    pub older: AtomicBool,
}

impl FakeSa {
    pub fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().expect("fake sa lock")
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// The serial (hex) of a certificate or precertificate's DER.
pub fn serial_of(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).expect("the ca stores DER that parses");
    hex::encode(cert.raw_serial())
}

/// A shared handle, so the test keeps access to what the server records.
#[derive(Debug, Clone, Default)]
pub struct Handle(pub Arc<FakeSa>);

#[tonic::async_trait]
impl StorageAuthority for Handle {
    async fn add_serial(&self, request: Request<AddSerialRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.0.recorded().serial_attempts.push(request.clone());
        if take_one(&self.0.duplicates) {
            return Err(Problem::new(ErrorKind::Duplicate, "serial already exists").into());
        }
        self.0.recorded().serials.push(request);
        Ok(Response::new(Empty {}))
    }

    async fn add_precertificate(&self, request: Request<AddCertificateRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.0.recorded().precertificate_attempts.push(request.clone());
        let serial = serial_of(&request.der);
        if self.0.older.load(Ordering::SeqCst) {
            if !self.0.recorded().serials.iter().any(|reserved| reserved.serial == serial) {
                return Err(Problem::malformed(format!("serial {serial} was never reserved")).into());
            }
        } else if request.expires != 0 && take_one(&self.0.duplicates) {
            return Err(Problem::new(ErrorKind::Duplicate, "the record already exists").into());
        }
        self.0.recorded().precertificates.push(request);
        Ok(Response::new(Empty {}))
    }

    async fn add_certificate(
        &self,
        request: Request<AddCertificateRequest>,
    ) -> Result<Response<AddCertificateResponse>, Status> {
        if take_one(&self.0.storage_failures) {
            return Err(Problem::new(ErrorKind::Unavailable, "database unavailable").into());
        }
        let request = request.into_inner();
        let order_finalized = request.order_id != 0 && !self.0.older.load(Ordering::SeqCst);
        self.0.recorded().certificates.push(request);
        Ok(Response::new(AddCertificateResponse { order_finalized }))
    }

    async fn pause_identifiers(
        &self,
        _: Request<quarry_proto::sa::PausedIdentifiersRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn unpause_account(
        &self,
        _: Request<quarry_proto::sa::AccountId>,
    ) -> Result<Response<quarry_proto::sa::Count>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn revoke_for_key_compromise(
        &self,
        _: Request<quarry_proto::sa::RevokeForKeyCompromiseRequest>,
    ) -> Result<Response<quarry_proto::sa::RevokeForKeyCompromiseResponse>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn get_unchecked_blocked_keys(
        &self,
        _: Request<quarry_proto::sa::UncheckedBlockedKeysRequest>,
    ) -> Result<Response<quarry_proto::sa::KeyHashes>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn get_serials_by_key(
        &self,
        _: Request<quarry_proto::sa::SerialsByKeyRequest>,
    ) -> Result<Response<quarry_proto::sa::Serials>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn mark_blocked_key_checked(
        &self,
        _: Request<quarry_proto::sa::MarkBlockedKeyCheckedRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn lease_crl_shard(
        &self,
        _: Request<quarry_proto::sa::LeaseCrlShardRequest>,
    ) -> Result<Response<quarry_proto::sa::LeaseCrlShardResponse>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn add_rate_limit_override(
        &self,
        _: Request<quarry_proto::sa::RateLimitOverride>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn disable_rate_limit_override(
        &self,
        _: Request<quarry_proto::sa::RateLimitOverrideKey>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn update_crl_shard(
        &self,
        _: Request<quarry_proto::sa::UpdateCrlShardRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn new_account(&self, _: Request<Account>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn update_account_contact(
        &self,
        _: Request<quarry_proto::sa::UpdateAccountContactRequest>,
    ) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn deactivate_authorization(
        &self,
        _: Request<quarry_proto::sa::AuthorizationId>,
    ) -> Result<Response<quarry_proto::core::Authorization>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn update_account_key(
        &self,
        _: Request<quarry_proto::sa::UpdateAccountKeyRequest>,
    ) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn revoke_certificate(
        &self,
        _: Request<quarry_proto::sa::RevokeCertificateRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn add_blocked_key(
        &self,
        _: Request<quarry_proto::sa::AddBlockedKeyRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn deactivate_account(&self, _: Request<quarry_proto::sa::AccountId>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn new_order_and_authorizations(
        &self,
        _: Request<NewOrderAndAuthorizationsRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn set_authorization_processing(
        &self,
        _: Request<SetAuthorizationProcessingRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn finalize_authorization(
        &self,
        _: Request<FinalizeAuthorizationRequest>,
    ) -> Result<Response<quarry_proto::sa::FinalizeAuthorizationResponse>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn claim_stuck_authorization(
        &self,
        _: Request<quarry_proto::sa::ClaimStuckRequest>,
    ) -> Result<Response<quarry_proto::sa::ClaimedAuthorization>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn claim_stuck_order(
        &self,
        _: Request<quarry_proto::sa::ClaimStuckRequest>,
    ) -> Result<Response<quarry_proto::sa::ClaimedOrder>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn get_order_precertificate(
        &self,
        _: Request<quarry_proto::sa::OrderId>,
    ) -> Result<Response<quarry_proto::sa::Serial>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn set_order_processing(
        &self,
        _: Request<quarry_proto::sa::SetOrderProcessingRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn heartbeat(&self, _: Request<quarry_proto::sa::HeartbeatRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn set_renewal_info_override(
        &self,
        _: Request<quarry_proto::sa::RenewalInfoOverride>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn set_order_error(&self, _: Request<SetOrderErrorRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }

    async fn finalize_order(&self, _: Request<FinalizeOrderRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by the ca"))
    }
}

/// Serves the fake over mutual TLS on loopback, callable by the "ca" certificate only, until the returned sender
/// is dropped.
pub async fn start(pki: &TestPki, fake: Handle) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let name = <StorageAuthorityServer<Handle> as tonic::server::NamedService>::NAME;
    let grpc = pki.server_config(&[(name, &["ca"])]);
    let allowlist = ClientAllowlist::for_service(&grpc, name).expect("allowlist");
    let listener = tokio::net::TcpListener::bind(grpc.listen).await.expect("bind fake sa");
    let addr = listener.local_addr().expect("fake sa address");
    let routes = tonic::service::Routes::new(StorageAuthorityServer::with_interceptor(fake, allowlist));
    let tls = pki.tls("sa");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = quarry_core::grpc::serve(listener, &tls, routes, &[name], shutdown).await {
            panic!("fake sa failed: {e}");
        }
    });
    (addr, stop)
}
