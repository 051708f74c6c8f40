//! In-process fakes of peer services, for per-service tests: a va whose verdicts (DCV and CAA) the test decides.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quarry_core::Problem;
use quarry_proto::va::va_server::{Va, VaServer};
use quarry_proto::va::{CaaRequest, DcvRequest, ValidationResult};
use tonic::{Request, Response, Status};

use crate::pki::TestPki;

/// A va that answers every validation with the verdict set by the test, over mutual TLS like the real one.
#[derive(Clone, Default)]
pub struct FakeVa {
    verdict: Arc<Mutex<Option<Problem>>>,
    calls: Arc<AtomicUsize>,
    caa_verdict: Arc<Mutex<Option<Problem>>>,
    caa_requests: Arc<Mutex<Vec<CaaRequest>>>,
}

impl FakeVa {
    /// Serves the fake on 127.0.0.1:0, callable by the "ra" certificate; returns its address.
    pub async fn start(&self, pki: &TestPki) -> SocketAddr {
        let name = "quarry.va.v1.VA";
        let grpc = pki.server_config(&[(name, &["ra"])]);
        let listener = tokio::net::TcpListener::bind(grpc.listen).await.expect("bind fake va");
        let addr = listener.local_addr().expect("fake va address");
        let allowlist = quarry_core::grpc::ClientAllowlist::for_service(&grpc, name).expect("allowlist");
        let routes = tonic::service::Routes::new(VaServer::with_interceptor(self.clone(), allowlist));
        let tls = pki.tls("va");
        tokio::spawn(async move {
            let _ = quarry_core::grpc::serve(listener, &tls, routes, &[name], std::future::pending()).await;
        });
        addr
    }

    /// Every validation from now on passes.
    pub fn pass(&self) {
        *self.verdict.lock().expect("verdict lock") = None;
    }

    /// Every validation from now on fails with `problem`.
    pub fn fail(&self, problem: Problem) {
        *self.verdict.lock().expect("verdict lock") = Some(problem);
    }

    /// Every CAA check from now on fails with `problem` (`None`: passes, the default).
    pub fn caa(&self, problem: Option<Problem>) {
        *self.caa_verdict.lock().expect("verdict lock") = problem;
    }

    /// The CAA checks asked for so far.
    pub fn caa_requests(&self) -> Vec<CaaRequest> {
        self.caa_requests.lock().expect("requests lock").clone()
    }

    /// How many validations were asked for.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Va for FakeVa {
    async fn do_dcv(&self, request: Request<DcvRequest>) -> Result<Response<ValidationResult>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let problem = self.verdict.lock().map_err(|_| Status::internal("verdict lock"))?.clone();
        let hostname = request.get_ref().identifier.as_ref().map(|i| i.value.clone()).unwrap_or_default();
        Ok(Response::new(ValidationResult {
            records: vec![quarry_proto::core::ValidationRecord {
                hostname,
                perspective: "fake".into(),
                ..Default::default()
            }],
            problem: problem.as_ref().map(quarry_proto::core::Problem::from),
            perspective: "fake".into(),
            rir: String::new(),
        }))
    }

    async fn do_caa(&self, request: Request<CaaRequest>) -> Result<Response<ValidationResult>, Status> {
        self.caa_requests.lock().map_err(|_| Status::internal("requests lock"))?.push(request.get_ref().clone());
        let problem = self.caa_verdict.lock().map_err(|_| Status::internal("verdict lock"))?.clone();
        Ok(Response::new(ValidationResult {
            records: Vec::new(),
            problem: problem.as_ref().map(quarry_proto::core::Problem::from),
            perspective: "fake".into(),
            rir: String::new(),
        }))
    }
}
