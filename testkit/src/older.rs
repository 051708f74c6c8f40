//! Older releases of the sa, the ca and the publisher, as a newer caller meets them during a rolling update: a proxy
//! in front of the real service that passes every call on and clears, on the way, the request fields that release
//! did not know yet (its protobuf decoder skips them), or answers `unimplemented` for an RPC it did not have, so a
//! test sees how the caller copes with the answer that release gives.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use quarry_proto::ca::IssueCertificateRequest;
use quarry_proto::sa::GetFinalizationFactsRequest;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::pki::TestPki;

/// What each gRPC service the proxy stands for is called, as routes know it.
pub trait ServiceName: Send + Sync + 'static {
    const NAME: &'static str;
}

pub struct ReadOnly;
impl ServiceName for ReadOnly {
    const NAME: &'static str = "quarry.sa.v1.StorageAuthorityReadOnly";
}

pub struct ReadWrite;
impl ServiceName for ReadWrite {
    const NAME: &'static str = "quarry.sa.v1.StorageAuthority";
}

pub struct CertificateAuthority;
impl ServiceName for CertificateAuthority {
    const NAME: &'static str = "quarry.ca.v1.CertificateAuthority";
}

pub struct Publisher;
impl ServiceName for Publisher {
    const NAME: &'static str = "quarry.publisher.v1.Publisher";
}

/// A request's message as the older release reads it (the message alone, without gRPC's framing).
type Rewrite = fn(&[u8]) -> Vec<u8>;

/// The one RPC the older release has differently: its request read another way (`rewrite` gives the message as it
/// reads it, without gRPC's framing), or, without `rewrite`, the RPC missing.
#[derive(Clone, Copy)]
struct Forgets {
    rpc: &'static str,
    rewrite: Option<Rewrite>,
}

/// An older release of a service, in front of the real one, as the ra reaches it.
pub struct OlderRelease {
    /// Where callers reach it (it presents the real service's certificate).
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
}

impl OlderRelease {
    /// The sa before `GetFinalizationFactsRequest.with_order`: it answers the facts without the order. Serves on
    /// `listener` (bound beforehand, so that a caller can be configured with its address before the real sa at `sa`
    /// exists), passing calls on as the ra.
    pub async fn sa_without_order_in_facts(pki: &TestPki, listener: tokio::net::TcpListener, sa: SocketAddr) -> Self {
        let forgets = Forgets {
            rpc: "/quarry.sa.v1.StorageAuthorityReadOnly/GetFinalizationFacts",
            rewrite: Some(|message| {
                let mut facts = GetFinalizationFactsRequest::decode(message).expect("a GetFinalizationFactsRequest");
                facts.with_order = false;
                facts.encode_to_vec()
            }),
        };
        let upstream = pki.channel("ra", "sa", sa);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let routes = tonic::service::Routes::new(Forward::<ReadOnly>::new(upstream.clone(), calls.clone(), forgets))
            .add_service(Forward::<ReadWrite>::new(upstream, calls.clone(), forgets));
        Self::serve(pki, listener, "sa", routes, &[ReadOnly::NAME, ReadWrite::NAME], calls)
    }

    /// The ca before `IssueCertificateRequest.processing_by`: the sa does not take the order's fuse as it stores the
    /// precertificate, and does not record the certificate as the order's. Serves on `listener`, passing calls on
    /// to the real ca at `ca` as the ra.
    pub async fn ca_without_fuse_in_precertificate(
        pki: &TestPki,
        listener: tokio::net::TcpListener,
        ca: SocketAddr,
    ) -> Self {
        let forgets = Forgets {
            rpc: "/quarry.ca.v1.CertificateAuthority/IssueCertificate",
            rewrite: Some(|message| {
                let mut issue = IssueCertificateRequest::decode(message).expect("an IssueCertificateRequest");
                issue.processing_by.clear();
                issue.encode_to_vec()
            }),
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let routes = tonic::service::Routes::new(Forward::<CertificateAuthority>::new(
            pki.channel("ra", "ca", ca),
            calls.clone(),
            forgets,
        ));
        Self::serve(pki, listener, "ca", routes, &[CertificateAuthority::NAME], calls)
    }

    /// The publisher before `SubmitFinalCertificates`. Serves on `listener`, passing calls on to the real publisher
    /// at `publisher` as the ca.
    pub async fn publisher_without_batches(
        pki: &TestPki,
        listener: tokio::net::TcpListener,
        publisher: SocketAddr,
    ) -> Self {
        let forgets = Forgets { rpc: "/quarry.publisher.v1.Publisher/SubmitFinalCertificates", rewrite: None };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let upstream = pki.channel("ca", "publisher", publisher);
        let routes = tonic::service::Routes::new(Forward::<Publisher>::new(upstream, calls.clone(), forgets));
        Self::serve(pki, listener, "publisher", routes, &[Publisher::NAME], calls)
    }

    fn serve(
        pki: &TestPki,
        listener: tokio::net::TcpListener,
        service: &str,
        routes: tonic::service::Routes,
        names: &'static [&'static str],
        calls: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let addr = listener.local_addr().expect("bound address");
        let tls = pki.tls(service);
        tokio::spawn(async move {
            let _ = quarry_core::grpc::serve(listener, &tls, routes, names, std::future::pending()).await;
        });
        Self { addr, calls }
    }

    /// How many calls of `rpc` (its path, `/service/Method`) went through.
    pub fn calls(&self, rpc: &str) -> usize {
        self.calls.lock().expect("calls").iter().filter(|path| *path == rpc).count()
    }
}

/// Passes each call of one service on to the real one, as its older release would read the request.
struct Forward<N> {
    upstream: quarry_core::grpc::Channel,
    calls: Arc<Mutex<Vec<String>>>,
    forgets: Forgets,
    name: PhantomData<N>,
}

impl<N> Forward<N> {
    fn new(upstream: quarry_core::grpc::Channel, calls: Arc<Mutex<Vec<String>>>, forgets: Forgets) -> Self {
        Self { upstream, calls, forgets, name: PhantomData }
    }
}

impl<N> Clone for Forward<N> {
    fn clone(&self) -> Self {
        Self::new(self.upstream.clone(), self.calls.clone(), self.forgets)
    }
}

impl<N: ServiceName> NamedService for Forward<N> {
    const NAME: &'static str = N::NAME;
}

impl<N: ServiceName> Service<http::Request<Body>> for Forward<N> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut upstream = self.upstream.clone();
        let path = request.uri().path().to_owned();
        self.calls.lock().expect("calls").push(path.clone());
        let forgets = self.forgets;
        Box::pin(async move {
            let request = match forgets.rewrite {
                _ if path != forgets.rpc => request,
                Some(rewrite) => as_read_by(request, rewrite).await,
                None => return Ok(tonic::Status::unimplemented(format!("{path} is not known here")).into_http()),
            };
            let response = std::future::poll_fn(|cx| upstream.poll_ready(cx)).await;
            let response = match response {
                Ok(()) => upstream.call(request).await,
                Err(err) => Err(err),
            };
            Ok(match response {
                Ok(response) => response.map(Body::new),
                Err(err) => tonic::Status::unavailable(err.to_string()).into_http(),
            })
        })
    }
}

/// The request with its message as `rewrite` gives it. A gRPC message is framed by a compression flag and its
/// length (four bytes, big-endian); the tests' calls are never compressed.
async fn as_read_by(request: http::Request<Body>, rewrite: Rewrite) -> http::Request<Body> {
    let (mut parts, body) = request.into_parts();
    let framed = body.collect().await.expect("the request's body").to_bytes();
    let message = rewrite(&framed[5..]);
    let mut reframed = BytesMut::with_capacity(5 + message.len());
    reframed.put_u8(0);
    reframed.put_u32(u32::try_from(message.len()).expect("a small message"));
    reframed.put_slice(&message);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(Bytes::from(reframed))))
}
