//! A gRPC call's bodies on an h2 stream: the request's frames queued by the caller's own task up to a bound (the last
//! DATA frame carrying END_STREAM), the rest sent by a task of its own as the window allows, and the response's data
//! and trailers read for tonic, each chunk's window given back as it is taken.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;

/// The caller's task stops taking a request body's frames once this much is queued (every unary request is far
/// smaller; the frame that crosses it goes whole, as hyper's body task handed h2 whole frames); the rest is sent by a
/// task of its own, as the window allows, rather than all kept in h2's send buffer.
pub(super) const QUEUED_BY_THE_CALLER: usize = 64 * 1024;

/// Queues the frames `body` has ready now until [`QUEUED_BY_THE_CALLER`] is reached, looking one frame ahead so that the last
/// DATA frame carries END_STREAM itself (a unary call is then a HEADERS and a DATA frame, queued before the
/// connection's task runs); `Ok(true)` once the body has ended, `Ok(false)` when more is to come.
pub(super) fn queue_ready_frames(body: &mut Body, stream: &mut h2::SendStream<Bytes>) -> Result<bool, ()> {
    let Some(mut ahead) = body.frame().now_or_never() else { return Ok(false) };
    let mut queued = 0;
    loop {
        let Some(frame) = ahead else { return send_frame(None, true, stream).map(|_| true) };
        queued += frame.as_ref().ok().and_then(Frame::data_ref).map_or(0, Bytes::len);
        let next = if body.is_end_stream() {
            Some(None)
        } else if queued >= QUEUED_BY_THE_CALLER {
            None
        } else {
            body.frame().now_or_never()
        };
        if !send_frame(Some(frame), matches!(next, Some(None)), stream)? {
            return Ok(true);
        }
        match next {
            Some(next) => ahead = next,
            None => return Ok(false),
        }
    }
}

/// Sends the rest of a request body as the stream's window allows (as hyper's body task does), until the body ends
/// or the peer resets the stream.
pub(super) async fn pipe(mut body: Body, mut stream: h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = futures::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        // Some window before sending more: h2 would keep whatever goes beyond it, however long the body.
        if frame.as_ref().and_then(|frame| frame.as_ref().ok()?.data_ref()).is_some_and(|data| !data.is_empty()) {
            stream.reserve_capacity(1);
            while stream.capacity() == 0 {
                match futures::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        }
        match send_frame(frame, body.is_end_stream(), &mut stream) {
            Ok(true) => {}
            Ok(false) | Err(()) => return,
        }
    }
}

/// Sends one frame of a request body (`None`: the body has ended); whether more is to come. A body that fails resets
/// the stream, which the response reports.
fn send_frame(
    frame: Option<Result<Frame<Bytes>, Status>>,
    ends: bool,
    stream: &mut h2::SendStream<Bytes>,
) -> Result<bool, ()> {
    let sent = match frame {
        None => stream.send_data(Bytes::new(), true).map(|()| false),
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => stream.send_data(data, ends).map(|()| !ends),
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => stream.send_trailers(trailers).map(|()| false),
                // No other kind of frame exists; were there one, the stream must still end.
                Err(_) if ends => stream.send_data(Bytes::new(), true).map(|()| false),
                Err(_) => Ok(true),
            },
        },
        Some(Err(status)) => {
            tracing::debug!(%status, "a request body failed");
            stream.send_reset(h2::Reason::CANCEL);
            return Err(());
        }
    };
    sent.map_err(|_| ())
}

/// A response's body as tonic reads it: h2's received data, each chunk's window given back as it is taken, then the
/// trailers.
pub struct ResponseBody {
    received: h2::RecvStream,
    /// All the data has been taken: the trailers are next.
    data_ended: bool,
}

impl ResponseBody {
    pub(super) fn new(received: h2::RecvStream) -> Self {
        Self { received, data_ended: false }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_ended {
            match ready!(this.received.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Given back at once: tonic takes what it is given, so the window only paces the sender.
                    let _ = this.received.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_ended = true,
            }
        }
        Poll::Ready(ready!(this.received.poll_trailers(cx)).transpose().map(|trailers| trailers.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.received.is_end_stream()
    }
}
