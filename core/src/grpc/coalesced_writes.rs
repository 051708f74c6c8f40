//! A gRPC client's call sent in one write: the connection's small writes wait one turn of the scheduler, and a
//! request body says it has ended with its last frame.
//!
//! hyper's HTTP/2 client queues a request's HEADERS from one task and its DATA from another (the body's pipe, which
//! waits for the send window the connection task assigns), and the connection task writes whatever is queued each
//! time it runs. So a unary call left the client as two or three TLS records in as many `writev`s (HEADERS, DATA, and
//! for a DATA frame over h2's 256-byte chaining threshold an empty end-of-stream frame, which h2 queues only after
//! flushing the chained one), each a system call, a loopback delivery and an ACK for a fraction of a request.
//! Yielding once before the first small write of each flush lets the tasks already woken on this worker (the body's
//! pipe) queue their frames first, and they go out together; [`EndsWithLastFrame`] looks one frame ahead so that the
//! last DATA frame carries END_STREAM itself.
//!
//! On one worker (every service under `quarry dev`) tokio runs a task that woke itself after the tasks already in the
//! queue, so a call is one write. With several workers another worker may take the yielded task first, and a call
//! measured 1.0–1.3 writes on two workers; the yield costs one more poll of the connection's task either way.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a connection is between flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Nothing written since the last flush: the next write, if small, yields first.
    Quiet,
    /// Yielded once (or the first write was a full batch); writes go through until the flush completes.
    Writing,
}

/// A write at least this long is a full batch (h2 writes when its 16 KiB buffer fills): nothing to wait for.
const SMALL_WRITE: usize = 16 * 1024;

/// `io` whose first small write after each flush is put off by one turn of the scheduler.
#[derive(Debug)]
pub(crate) struct CoalescedWrites<T> {
    io: T,
    turn: Turn,
}

impl<T> CoalescedWrites<T> {
    pub(crate) fn new(io: T) -> Self {
        Self { io, turn: Turn::Quiet }
    }

    /// Whether a write of `len` bytes should yield first; a task woken by itself is queued behind the tasks already
    /// woken (tokio runs a self-woken task after them), which is the point.
    fn yield_first(&mut self, cx: &mut Context<'_>, len: usize) -> bool {
        if self.turn == Turn::Writing {
            return false;
        }
        self.turn = Turn::Writing;
        if len >= SMALL_WRITE {
            return false;
        }
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.yield_first(cx, buf.len()) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.yield_first(cx, bufs.iter().map(|buf| buf.len()).sum()) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if flushed.is_ready() {
            self.turn = Turn::Quiet;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that polls its body once more after each frame, so that `is_end_stream` is true as the last frame
/// is handed over, and the DATA frame carrying it also ends the stream.
pub(crate) struct EndsWithLastFrame<B: Body> {
    body: B,
    /// The frame (or error) found when looking ahead, handed over next.
    ahead: Option<Result<Frame<B::Data>, B::Error>>,
    /// The body said it had no more frames.
    ended: bool,
}

impl<B: Body> EndsWithLastFrame<B> {
    pub(crate) fn new(body: B) -> Self {
        Self { body, ahead: None, ended: false }
    }
}

impl<B: Body + Unpin> Body for EndsWithLastFrame<B>
where
    B::Data: Unpin,
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = match this.ahead.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(frame)) => frame,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        if frame.is_ok() && !this.ended {
            // A body not ready yet has registered the waker: hyper polls again when woken.
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(next)) => this.ahead = Some(next),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // What was looked ahead at is still to come, so the body's own hint no longer counts it.
        match &self.ahead {
            None if self.ended => SizeHint::with_exact(0),
            None => self.body.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// A channel whose request bodies end with their last frame ([`EndsWithLastFrame`]).
#[derive(Debug, Clone)]
pub struct EndingBodies<S>(pub(crate) S);

impl<S> tower::Service<http::Request<tonic::body::Body>> for EndingBodies<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(request.map(|body| tonic::body::Body::new(EndsWithLastFrame::new(body))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::net::{TcpListener, TcpStream};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// A socket that counts the writes that reach it.
    struct CountedWrites {
        io: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountedWrites {
        fn counted(&self, written: &Poll<std::io::Result<usize>>) {
            if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl AsyncRead for CountedWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountedWrites {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            self.counted(&written);
            written
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            self.counted(&written);
            written
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Which of the two mends a test channel has.
    #[derive(Debug, Clone, Copy)]
    struct Mends {
        coalesced: bool,
        ending_bodies: bool,
    }

    /// A service name long enough that a health check's DATA frame passes h2's 256-byte chaining threshold, past
    /// which h2 flushes a DATA frame before queueing the frame after it.
    fn long_service_name() -> String {
        "quarry.test.".repeat(30)
    }

    /// A health service on loopback serving `long_service_name()`, and a channel to it whose socket writes are
    /// counted.
    async fn health_channel(coalesced: bool) -> (tonic::transport::Channel, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status(long_service_name(), tonic_health::ServingStatus::Serving).await;
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let writes = Arc::new(AtomicUsize::new(0));
        let counter = writes.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let writes = counter.clone();
            async move {
                let mut stream = TcpStream::connect(addr).await?;
                crate::tcp::no_delay(&mut stream);
                let io = CountedWrites { io: stream, writes };
                let io: Pin<Box<dyn Io>> = if coalesced { Box::pin(CoalescedWrites::new(io)) } else { Box::pin(io) };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        });
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1")
            .connect_with_connector(connector)
            .await
            .unwrap();
        (channel, writes)
    }

    trait Io: AsyncRead + AsyncWrite + Send {}
    impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

    /// Socket writes per unary call (a health check of `service`), after two calls that settle the connection.
    async fn writes_per_call<S>(mut client: HealthClient<S>, writes: &AtomicUsize, service: &str) -> f64
    where
        S: tonic::client::GrpcService<tonic::body::Body>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <S::ResponseBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        const CALLS: usize = 10;
        let ask = || HealthCheckRequest { service: service.to_owned() };
        for _ in 0..2 {
            client.check(ask()).await.unwrap();
        }
        let before = writes.load(Ordering::SeqCst);
        for _ in 0..CALLS {
            client.check(ask()).await.unwrap();
        }
        (writes.load(Ordering::SeqCst) - before) as f64 / CALLS as f64
    }

    async fn writes_per_call_with(mends: Mends, service: &str) -> f64 {
        let (channel, writes) = health_channel(mends.coalesced).await;
        if mends.ending_bodies {
            writes_per_call(HealthClient::new(EndingBodies(channel)), &writes, service).await
        } else {
            writes_per_call(HealthClient::new(channel), &writes, service).await
        }
    }

    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write() {
        let both = Mends { coalesced: true, ending_bodies: true };
        let long = long_service_name();
        assert_eq!(writes_per_call_with(both, "").await, 1.0, "a short call, both mends");
        assert_eq!(writes_per_call_with(both, &long).await, 1.0, "a call past the chaining threshold, both mends");
        // What each mend is for. Without the coalescing, HEADERS and DATA go out apart.
        let uncoalesced = writes_per_call_with(Mends { coalesced: false, ending_bodies: true }, "").await;
        assert!(uncoalesced >= 2.0, "writes per call without the coalescing: {uncoalesced}");
        // Without bodies that say they ended, a DATA frame past h2's chaining threshold is flushed before hyper's
        // empty end-of-stream frame is queued.
        let unended = writes_per_call_with(Mends { coalesced: true, ending_bodies: false }, &long).await;
        assert!(unended >= 2.0, "writes per call of a long request without ending bodies: {unended}");
    }

    type Frames = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    /// A body of frames, the last one marked by the body only when polled after it.
    fn frames(chunks: &[&'static str]) -> Frames {
        let frames: Vec<_> = chunks.iter().map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))).collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_says_it_ended_as_its_last_frame_is_handed_over() {
        let mut body = EndsWithLastFrame::new(frames(&["one", "two"]));
        assert!(!body.is_end_stream());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "one");
        assert!(!body.is_end_stream(), "a frame is still to come");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "two");
        assert!(body.is_end_stream(), "the last frame was handed over");
        assert!(body.frame().await.is_none());
        assert_eq!(body.size_hint().exact(), Some(0));

        let empty = EndsWithLastFrame::new(frames(&[]));
        assert_eq!(empty.collect().await.unwrap().to_bytes(), "");
    }

    #[tokio::test]
    async fn a_body_not_ready_after_a_frame_is_polled_again_when_it_wakes() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::io::Error>>();
        let mut body = EndsWithLastFrame::new(StreamBody::new(receiver));
        sender.unbounded_send(Ok(Frame::data(Bytes::from_static(b"one")))).unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "one");
        assert!(!body.is_end_stream(), "the sender may send more");
        // The next frame comes only after the body has been asked for it and found nothing: the wake-up must bring it.
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            sender.unbounded_send(Ok(Frame::data(Bytes::from_static(b"two")))).unwrap();
            sender
        });
        let two = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.expect("woken");
        assert_eq!(two.unwrap().unwrap().into_data().unwrap(), "two");
        assert!(!body.is_end_stream(), "the sender is still there");
        drop(later.await.unwrap());
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn errors_and_trailers_are_handed_over_in_order() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Ok(Frame::data(Bytes::from_static(b"one"))), Ok(Frame::trailers(trailers))];
        let mut body = EndsWithLastFrame::new(StreamBody::new(futures::stream::iter(frames)));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "one");
        assert!(!body.is_end_stream(), "the trailers are still to come");
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert!(body.is_end_stream());

        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Ok(Frame::data(Bytes::from_static(b"one"))), Err(std::io::Error::other("broken"))];
        let mut body = EndsWithLastFrame::new(StreamBody::new(futures::stream::iter(frames)));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "one");
        assert!(!body.is_end_stream(), "an error is still to come");
        assert_eq!(body.frame().await.unwrap().unwrap_err().to_string(), "broken");
    }
}
