//! Every gRPC call counted by method and status code and timed, on both ends. Each method's series are looked up
//! once and their handles kept: building a metric's key (the method's path copied, the code formatted) and finding
//! it in the recorder's registry at every call cost more than the counting itself (measured: metrics were 4 % of
//! the nonce service's CPU, most of it those look-ups).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tonic::Code;

use super::{VERSION_HEADER, version_header};
use crate::telemetry::kept::KeptSeries;

/// Which end of a call [`Measured`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// The counter's and the histogram's names.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Side::Server => ("quarry_grpc_server_requests_total", "quarry_grpc_server_duration_seconds"),
            Side::Client => ("quarry_grpc_client_requests_total", "quarry_grpc_client_duration_seconds"),
        }
    }
}

/// gRPC calls counted by method and status code and timed until the response headers:
/// `quarry_grpc_server_requests_total` / `quarry_grpc_server_duration_seconds` on every server, and the
/// `quarry_grpc_client_…` pair on every channel to a peer.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    pub(super) inner: S,
    pub(super) side: Side,
}

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let side = self.side;
        let series = MethodSeries::of(side, request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await;
            if let (Side::Server, Ok(response)) = (side, &mut response) {
                response.headers_mut().insert(VERSION_HEADER, version_header());
            }
            // A failed unary call is a trailers-only response: its status is in the headers. Otherwise it succeeded
            // as far as the headers tell.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unavailable,
            };
            series.finished(code, started.elapsed().as_secs_f64());
            response
        })
    }
}

/// gRPC's status codes, `Ok` (0) to `Unauthenticated` (16): `Code::from_i32` maps any other number to `Unknown`.
const STATUS_CODES: usize = 17;

/// Methods whose series one side of a process keeps. A service has a few dozen, and a process calls a few dozen
/// of its peers'; a method past the bound (a client naming paths that exist nowhere) is counted without being
/// kept, as every call was before.
const KEPT_METHODS: usize = 256;

/// The series of one method on one side: its histogram, and its counter for each status code as it first occurs.
struct MethodSeries {
    side: Side,
    rpc: Box<str>,
    duration: metrics::Histogram,
    requests: [OnceLock<metrics::Counter>; STATUS_CODES],
}

/// The series kept for one side of the process, by method.
type SeriesBook = KeptSeries<String, Arc<MethodSeries>>;

impl MethodSeries {
    /// The series of `rpc` on `side`, kept once the process's recorder is installed: a handle taken before would
    /// count nowhere for good.
    fn of(side: Side, rpc: &str) -> Arc<MethodSeries> {
        static BOOKS: [OnceLock<SeriesBook>; 2] = [OnceLock::new(), OnceLock::new()];
        BOOKS[side as usize]
            .get_or_init(|| SeriesBook::new(KEPT_METHODS))
            .get_or_make(rpc, || Arc::new(Self::new(side, rpc)))
    }

    fn new(side: Side, rpc: &str) -> Self {
        let duration = metrics::histogram!(side.names().1, "rpc" => rpc.to_owned());
        Self { side, rpc: rpc.into(), duration, requests: Default::default() }
    }

    /// Counts a call that ended with `code` after `seconds`.
    fn finished(&self, code: Code, seconds: f64) {
        let index = usize::try_from(code as i32).unwrap_or_default().min(STATUS_CODES - 1);
        let counter = self.requests[index].get_or_init(
            || metrics::counter!(self.side.names().0, "rpc" => self.rpc.to_string(), "code" => format!("{code:?}")),
        );
        counter.increment(1);
        self.duration.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series of `rpc` on `side` from `book`, kept whether or not the process's recorder is installed.
    fn series(book: &SeriesBook, side: Side, rpc: &str) -> Arc<MethodSeries> {
        book.get_or_make_kept(rpc, || Arc::new(MethodSeries::new(side, rpc)))
    }

    #[test]
    fn every_status_code_has_a_counter_of_its_own() {
        for number in 0..STATUS_CODES {
            let code = Code::from_i32(i32::try_from(number).expect("small"));
            assert_eq!(code as usize, number, "{code:?}");
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }

    #[test]
    fn kept_series_count_every_call_under_its_method_and_code() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let book = SeriesBook::new(KEPT_METHODS);
            let first = series(&book, Side::Server, "/quarry.test.v1.Kept/Call");
            let again = series(&book, Side::Server, "/quarry.test.v1.Kept/Call");
            assert!(Arc::ptr_eq(&first, &again), "one method's series are looked up once");
            first.finished(Code::Ok, 0.001);
            again.finished(Code::Ok, 0.002);
            again.finished(Code::NotFound, 0.003);
            series(&book, Side::Server, "/quarry.test.v1.Kept/Other").finished(Code::Unavailable, 0.004);
        });
        let text = handle.render();
        for (code, rpc, count) in [("Ok", "Call", 2), ("NotFound", "Call", 1), ("Unavailable", "Other", 1)] {
            let line = text
                .lines()
                .find(|line| {
                    line.starts_with("quarry_grpc_server_requests_total{")
                        && line.contains(&format!("rpc=\"/quarry.test.v1.Kept/{rpc}\""))
                        && line.contains(&format!("code=\"{code}\""))
                })
                .unwrap_or_else(|| panic!("no {code} counter for {rpc} in:\n{text}"));
            assert!(line.ends_with(&format!(" {count}")), "{line}");
        }
        let timed = text
            .lines()
            .find(|line| {
                line.starts_with("quarry_grpc_server_duration_seconds_count{rpc=\"/quarry.test.v1.Kept/Call\"}")
            })
            .unwrap_or_else(|| panic!("no histogram in:\n{text}"));
        assert!(timed.ends_with(" 3"), "{timed}");
    }

    #[test]
    fn a_method_past_the_bound_is_counted_without_being_kept() {
        let book = SeriesBook::new(KEPT_METHODS);
        for n in 0..KEPT_METHODS {
            let _ = series(&book, Side::Client, &format!("/quarry.test.v1.Many/Call{n}"));
        }
        let first = series(&book, Side::Client, "/quarry.test.v1.Many/OneTooMany");
        let second = series(&book, Side::Client, "/quarry.test.v1.Many/OneTooMany");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(book.len(), KEPT_METHODS);
        assert!(Arc::ptr_eq(
            &series(&book, Side::Client, "/quarry.test.v1.Many/Call0"),
            &series(&book, Side::Client, "/quarry.test.v1.Many/Call0")
        ));
    }
}
