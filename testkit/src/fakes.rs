//! In-process fakes of peer services, for per-service tests: a va whose verdicts (DCV and CAA) the test decides.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// While true, validations wait (so that a test sees an authorization processing).
    held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Answer as a va older than the CAA part of `DoDCV`: ignore it, and do not say CAA was checked.
    older: Arc<AtomicBool>,
    /// The perspective and RIR it answers as, once started as a remote perspective.
    remote: Arc<std::sync::OnceLock<(String, String)>>,
}

impl FakeVa {
    /// Serves the fake on 127.0.0.1:0, callable by the "ra" certificate; returns its address.
    pub async fn start(&self, pki: &TestPki) -> SocketAddr {
        self.serve(pki, pki.tls("va"), "ra").await
    }

    /// Serves the fake with the identity in `tls` (files a test rotates), callable by `caller`'s certificate names.
    pub async fn start_with_tls(&self, pki: &TestPki, tls: quarry_core::config::TlsFiles, caller: &str) -> SocketAddr {
        self.serve(pki, tls, caller).await
    }

    /// Serves the fake as a remote perspective named `perspective` in `rir`, callable by the primary ("va").
    pub async fn start_as_remote(&self, pki: &TestPki, perspective: &str, rir: &str) -> SocketAddr {
        self.remote.set((perspective.to_owned(), rir.to_owned())).expect("started as a remote once");
        self.serve(pki, pki.tls("va"), "va").await
    }

    async fn serve(&self, pki: &TestPki, tls: quarry_core::config::TlsFiles, caller: &str) -> SocketAddr {
        let name = "quarry.va.v1.VA";
        let grpc = pki.server_config(&[(name, &[caller])]);
        let listener = tokio::net::TcpListener::bind(grpc.listen).await.expect("bind fake va");
        let addr = listener.local_addr().expect("fake va address");
        let allowlist = quarry_core::grpc::ClientAllowlist::for_service(&grpc, name).expect("allowlist");
        let routes = tonic::service::Routes::new(VaServer::with_interceptor(self.clone(), allowlist));
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

    /// While `held`, validations wait before answering; releasing lets the waiting ones answer.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// From now on, answer as a va that predates CAA in `DoDCV` (`true`) or as a current one.
    pub fn answer_as_older_va(&self, older: bool) {
        self.older.store(older, Ordering::SeqCst);
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
        // The ra's own validation timeout bounds the wait.
        let _ = self.held.subscribe().wait_for(|held| !held).await;
        let mut problem = self.verdict.lock().map_err(|_| Status::internal("verdict lock"))?.clone();
        let hostname = request.get_ref().identifier.as_ref().map(|i| i.value.clone()).unwrap_or_default();
        let caa = request.get_ref().caa.clone().filter(|_| !self.older.load(Ordering::SeqCst));
        if problem.is_none()
            && let Some(caa) = &caa
        {
            problem = self.check_caa(caa)?;
        }
        Ok(Response::new(ValidationResult {
            records: vec![quarry_proto::core::ValidationRecord {
                hostname,
                perspective: self.perspective(),
                ..Default::default()
            }],
            problem: problem.as_ref().map(quarry_proto::core::Problem::from),
            perspective: self.perspective(),
            rir: self.rir(),
            caa_checked: caa.is_some(),
        }))
    }

    async fn do_caa(&self, request: Request<CaaRequest>) -> Result<Response<ValidationResult>, Status> {
        let problem = self.check_caa(request.get_ref())?;
        Ok(Response::new(ValidationResult {
            records: Vec::new(),
            problem: problem.as_ref().map(quarry_proto::core::Problem::from),
            perspective: self.perspective(),
            rir: self.rir(),
            caa_checked: true,
        }))
    }
}

impl FakeVa {
    fn perspective(&self) -> String {
        self.remote.get().map_or_else(|| "fake".to_owned(), |(perspective, _)| perspective.clone())
    }

    fn rir(&self) -> String {
        self.remote.get().map(|(_, rir)| rir.clone()).unwrap_or_default()
    }

    /// Records a CAA check (asked alone or with a validation) and gives the test's verdict.
    fn check_caa(&self, request: &CaaRequest) -> Result<Option<Problem>, Status> {
        self.caa_requests.lock().map_err(|_| Status::internal("requests lock"))?.push(request.clone());
        Ok(self.caa_verdict.lock().map_err(|_| Status::internal("verdict lock"))?.clone())
    }
}
