//! An older release of the sa, as a newer caller meets it during a rolling update: a proxy in front of the real sa
//! that passes every call on and clears, on the way, the request fields that release did not know yet (its protobuf
//! decoder skips them), so a test sees how the caller copes with the answer that release gives.

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

/// The sa before `GetFinalizationFactsRequest.with_order`: it answers the facts without the order.
pub struct SaWithoutOrderInFacts {
    /// Where callers reach it (it presents the sa's certificate).
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
}

impl SaWithoutOrderInFacts {
    /// Serves on `listener` (bound beforehand, so that a caller can be configured with its address before the real
    /// sa at `sa` exists), passing calls on as the ra.
    pub async fn start(pki: &TestPki, listener: tokio::net::TcpListener, sa: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("bound address");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let upstream = pki.channel("ra", "sa", sa);
        let routes = tonic::service::Routes::new(Forward::<ReadOnly>::new(upstream.clone(), calls.clone()))
            .add_service(Forward::<ReadWrite>::new(upstream, calls.clone()));
        let tls = pki.tls("sa");
        tokio::spawn(async move {
            let names = [ReadOnly::NAME, ReadWrite::NAME];
            let _ = quarry_core::grpc::serve(listener, &tls, routes, &names, std::future::pending()).await;
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
    name: PhantomData<N>,
}

impl<N> Forward<N> {
    fn new(upstream: quarry_core::grpc::Channel, calls: Arc<Mutex<Vec<String>>>) -> Self {
        Self { upstream, calls, name: PhantomData }
    }
}

impl<N> Clone for Forward<N> {
    fn clone(&self) -> Self {
        Self::new(self.upstream.clone(), self.calls.clone())
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
        Box::pin(async move {
            let request = match path.as_str() {
                "/quarry.sa.v1.StorageAuthorityReadOnly/GetFinalizationFacts" => without_order_asked(request).await,
                _ => request,
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

/// The request as an sa that predates `with_order` decodes it. A gRPC message is framed by a compression flag and
/// its length (four bytes, big-endian); the test's calls are never compressed.
async fn without_order_asked(request: http::Request<Body>) -> http::Request<Body> {
    let (mut parts, body) = request.into_parts();
    let framed = body.collect().await.expect("the request's body").to_bytes();
    let mut facts = GetFinalizationFactsRequest::decode(&framed[5..]).expect("a GetFinalizationFactsRequest");
    facts.with_order = false;
    let message = facts.encode_to_vec();
    let mut reframed = BytesMut::with_capacity(5 + message.len());
    reframed.put_u8(0);
    reframed.put_u32(u32::try_from(message.len()).expect("a small message"));
    reframed.put_slice(&message);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(Bytes::from(reframed))))
}
